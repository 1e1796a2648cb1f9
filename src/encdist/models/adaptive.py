"""CompressAI models whose entropy bottleneck codes per-image distributions.

Ulhaq & Bajić, "Learned Compression of Encoding Distributions", ICIP 2024
(arXiv:2406.13059). Each model is its CompressAI parent with the parent's
``entropy_bottleneck`` moved inside an
:class:`~encdist.latent_codecs.AdaptiveEntropyBottleneckLatentCodec`
(``self.adaptive_codec``); ``model.entropy_bottleneck`` still names it, and
CompressAI checkpoints of the parent load unchanged (keys are remapped).

================================  ===============  ================================
registry name                     parent           adaptive codec on
================================  ===============  ================================
``bmshj2018-factorized-pdf``      FactorizedPrior  ``y`` (the paper's model)
``bmshj2018-hyperprior-pdf``      ScaleHyperprior  hyper-latent ``z``
``mbt2018-mean-pdf``              MeanScale...     hyper-latent ``z``
================================  ===============  ================================

.. code-block:: none

    bmshj2018-factorized-pdf:

    x ──► g_a ──► y ──► AdaptiveEB ──► ŷ ──► g_s ──► x̂
                          │  ▲
                  "y" strings, "pdf" strings (side)

Outputs: ``forward`` gives ``{"x_hat", "likelihoods": {..., "pdf"}, "p",
"p_hat"}`` (``x_hat`` is ``None`` with ``with_x_hat=False``, which the
runner uses to skip a frozen ``g_s`` in training steps); ``compress`` gives
``{"strings", "shape"}`` with the side strings last; ``decompress(strings,
shape)`` gives ``{"x_hat"}``.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models import FactorizedPrior, MeanScaleHyperprior, ScaleHyperprior
from compressai.models.base import get_scale_table
from torch import Tensor

from encdist.codec.coding import gaussian_conditional_decompress
from encdist.errors import BitstreamError, CheckpointError
from encdist.latent_codecs import AdaptiveEntropyBottleneckLatentCodec
from encdist.registry import register_model

__all__ = ["AdaptiveModelMixin", "FactorizedPriorPdf", "ScaleHyperpriorPdf", "MeanScaleHyperpriorPdf"]

_EB = "entropy_bottleneck."
_CODEC_EB = "adaptive_codec.entropy_bottleneck."


class AdaptiveModelMixin:
    """Shared plumbing: codec construction, key remapping, freezing, input checks."""

    adaptive_codec: AdaptiveEntropyBottleneckLatentCodec
    #: Names of the string lists ``compress`` returns, in order; side streams start with ``pdf``.
    stream_names: tuple = ("y", "pdf")
    #: ``forward(x, y=g_a(x))`` is supported, so a runner may cache ``y`` of a frozen ``g_a``.
    latent_input: bool = False

    def _init_adaptive(self, pdf_model: Mapping[str, Any] | None = None, **codec_kwargs) -> None:
        """Replace the static bottleneck by the adaptive codec around it.

        ``pdf_model`` holds :class:`~encdist.codec.pdf_model.PdfModel`'s keyword arguments (``N``,
        ``M``, ``kernel_size``, ``groups``, ``num_downsample``); every other keyword
        (``num_bins``, ``fallback_static``, ``backward_adaptation``, …) goes to
        :class:`AdaptiveEntropyBottleneckLatentCodec`. Their signatures hold the defaults
        (an unknown key is a ``TypeError``, reported as a config error naming it).
        """
        eb = self._modules.pop("entropy_bottleneck")
        pdf = dict(pdf_model or {})
        self.adaptive_codec = AdaptiveEntropyBottleneckLatentCodec(entropy_bottleneck=eb, pdf_model=pdf, **codec_kwargs)

    @property
    def entropy_bottleneck(self):
        return self.adaptive_codec.entropy_bottleneck

    def update(self, scale_table=None, force: bool = False, update_quantiles: bool = False) -> bool:
        """Builds the entropy-coding tables a model lacks; ``force`` rebuilds those of trainable modules.

        The integer tables are weights (CompressAI keeps them as buffers, the file format
        hashes them into the model's fingerprint): computed once, from float arithmetic,
        by whoever trains the module, then used as stored. So a decoder calls
        ``update()`` and rebuilds nothing, and a frozen module (the pretrained static
        bottleneck of a distribution-codec run, a ``GaussianConditional``) keeps the
        tables it was loaded with even under ``force``: every model trained on the same
        frozen transforms codes the static baseline with the same integers. A rebuilt side
        bottleneck also refits its quantiles by bisection (the distribution codec trains for
        far fewer steps than its quantiles need to converge under the aux loss); another
        bottleneck's quantiles only with ``update_quantiles``.
        """
        if scale_table is None:
            scale_table = get_scale_table()
        side = self.adaptive_codec.pdf_model.entropy_bottleneck
        updated = False
        for module in self.modules():
            if not isinstance(module, (EntropyBottleneck, GaussianConditional)):
                continue
            trainable = any(p.requires_grad for p in module.parameters())
            if module._offset.numel() and not (force and trainable):
                continue
            if isinstance(module, EntropyBottleneck):
                updated |= module.update(force=True, update_quantiles=update_quantiles or module is side)
            else:
                updated |= module.update_scale_table(scale_table, force=True)
        return updated

    # ---------------------------------------------------------------- state dicts
    @staticmethod
    def remap_state_dict(state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        """Map a CompressAI parent's keys (``entropy_bottleneck.*``) onto this model's."""
        return {(_CODEC_EB + k[len(_EB):] if k.startswith(_EB) else k): v for k, v in state_dict.items()}

    def load_state_dict(self, state_dict, strict: bool = True):
        return super().load_state_dict(self.remap_state_dict(state_dict), strict=strict)

    def load_pretrained_transforms(self, state_dict: Mapping[str, Tensor], source: str = "state dict") -> None:
        """Load everything but the distribution codec from a CompressAI parent's state dict.

        Raises :class:`CheckpointError` (naming ``source``) if a key of the
        transforms or the static bottleneck is missing or has another shape.
        """
        sd = self.remap_state_dict(state_dict)
        own = self.state_dict()
        needed = [k for k in own if not k.startswith("adaptive_codec.pdf_model.")]
        data_dependent = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")
        missing = [k for k in needed if k not in sd]
        wrong = [
            f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
            for k in needed
            if k in sd and not k.endswith(data_dependent) and sd[k].shape != own[k].shape
        ]
        if missing or wrong:
            detail = "; ".join(
                ([f"missing {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}"] if missing else [])
                + ([f"shape of {', '.join(wrong[:3])}"] if wrong else [])
            )
            raise CheckpointError(f"{source} does not fit {type(self).__name__}: {detail}")
        unexpected = [k for k in sd if k not in own]
        if unexpected:
            raise CheckpointError(f"{source} has keys {type(self).__name__} does not know: {', '.join(unexpected[:3])}")
        self.load_state_dict({k: sd[k] for k in needed} | {k: v for k, v in own.items() if k not in needed}, strict=True)

    # ---------------------------------------------------------------- freezing
    def freeze(self, names: Iterable[str]) -> list[str]:
        """Freeze the named submodules (``g_a``, ``g_s``, ``h_a``, ``h_s``, ``entropy_bottleneck``…).

        Returns the names frozen; unknown names raise ``ValueError``.
        """
        frozen = []
        for name in names:
            module = getattr(self, name, None)
            if not isinstance(module, torch.nn.Module):
                raise ValueError(f"cannot freeze {name!r}: {type(self).__name__} has no such module")
            for p in module.parameters():
                p.requires_grad_(False)
            frozen.append(name)
        return frozen

    def is_frozen(self, name: str) -> bool:
        module = getattr(self, name, None)
        return module is not None and not any(p.requires_grad for p in module.parameters())

    # ---------------------------------------------------------------- checks
    def _check_image(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"expected an image batch of shape (n, 3, H, W), got {shape}")
        if x.shape[1] != 3:
            raise ValueError(f"expected 3 colour channels, got {x.shape[1]}")
        f = self.downsampling_factor
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} is not a multiple of {f}: pad it first "
                "(encdist.datasets.pad_to_multiple)"
            )

    @staticmethod
    def _check_strings(strings, count: int) -> None:
        from encdist.codec.bitstream import check_strings

        check_strings(strings, count)


@register_model("bmshj2018-factorized-pdf")
class FactorizedPriorPdf(AdaptiveModelMixin, FactorizedPrior):
    """``bmshj2018-factorized`` with the adaptive encoding-distribution codec on ``y``.

    Ulhaq & Bajić, "Learned Compression of Encoding Distributions", ICIP 2024.
    Keyword arguments after ``N``, ``M`` configure the codec: ``num_bins``,
    ``bound_factor``, ``enable_adaptive``, ``ideal``, ``fallback_static``, … and
    ``pdf_model``, the distribution codec's keyword arguments (``{"N": 32, "M": 16}``, …).
    """

    latent_input = True

    def __init__(self, N: int = 128, M: int = 192, **kwargs):
        super().__init__(N=N, M=M)
        self._init_adaptive(**kwargs)

    def forward(self, x: Tensor, with_x_hat: bool = True, y: Tensor | None = None) -> Dict[str, Any]:
        """Forward pass; ``y`` may be given (a cached ``g_a(x)``) to skip the analysis transform."""
        if y is None:
            self._check_image(x)
            y = self.g_a(x)
        out = self.adaptive_codec(y)
        return {
            "x_hat": self.g_s(out["y_hat"]) if with_x_hat else None,
            "likelihoods": out["likelihoods"],
            "p": out["p"],
            "p_hat": out["p_hat"],
        }

    def compress(self, x: Tensor, options=None) -> Dict[str, Any]:
        """Strings ``[y, pdf]``; ``options``: a :class:`~encdist.latent_codecs.CodingOptions` or mode name."""
        self._check_image(x)
        out = self.adaptive_codec.compress(self.g_a(x), options)
        return {"strings": out["strings"], "shape": out["shape"]}

    def decompress(self, strings, shape, options=None) -> Dict[str, Any]:
        self._check_strings(strings, 2)
        y_hat = self.adaptive_codec.decompress(strings, shape, options)["y_hat"]
        return {"x_hat": self.g_s(y_hat).clamp_(0, 1)}


class _HyperpriorPdf(AdaptiveModelMixin):
    """Hyperprior models with the adaptive codec on the hyper-latent ``z``."""

    stream_names = ("y", "z", "pdf")

    def _gaussian_params(self, z_hat: Tensor):
        raise NotImplementedError

    def _h_a_input(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, with_x_hat: bool = True) -> Dict[str, Any]:
        self._check_image(x)
        y = self.g_a(x)
        z_out = self.adaptive_codec(self.h_a(self._h_a_input(y)))
        scales, means = self._gaussian_params(z_out["y_hat"])
        y_hat, y_likelihoods = self.gaussian_conditional(y, scales, means=means)
        lk = z_out["likelihoods"]
        return {
            "x_hat": self.g_s(y_hat) if with_x_hat else None,
            "likelihoods": {"y": y_likelihoods, "z": lk["y"], "pdf": lk["pdf"]},
            "p": z_out["p"],
            "p_hat": z_out["p_hat"],
        }

    def compress(self, x: Tensor, options=None) -> Dict[str, Any]:
        self._check_image(x)
        y = self.g_a(x)
        z_out = self.adaptive_codec.compress(self.h_a(self._h_a_input(y)), options)
        scales, means = self._gaussian_params(z_out["y_hat"])
        indexes = self.gaussian_conditional.build_indexes(scales)
        y_strings = self.gaussian_conditional.compress(y, indexes, means=means)
        z_strings, pdf_strings = z_out["strings"]
        return {"strings": [y_strings, z_strings, pdf_strings], "shape": z_out["shape"]}

    def decompress(self, strings, shape, options=None) -> Dict[str, Any]:
        self._check_strings(strings, 3)
        y_strings, z_strings, pdf_strings = strings
        z_hat = self.adaptive_codec.decompress([z_strings, pdf_strings], shape, options)["y_hat"]
        scales, means = self._gaussian_params(z_hat)
        indexes = self.gaussian_conditional.build_indexes(scales)
        y_hat = gaussian_conditional_decompress(self.gaussian_conditional, y_strings, indexes, means, "y stream")
        return {"x_hat": self.g_s(y_hat).clamp_(0, 1)}


@register_model("bmshj2018-hyperprior-pdf")
class ScaleHyperpriorPdf(_HyperpriorPdf, ScaleHyperprior):
    """``bmshj2018-hyperprior`` with the adaptive codec on the hyper-latent ``z``."""

    def __init__(self, N: int = 128, M: int = 192, **kwargs):
        super().__init__(N=N, M=M)
        self._init_adaptive(**kwargs)

    def _h_a_input(self, y):
        return torch.abs(y)

    def _gaussian_params(self, z_hat):
        return self.h_s(z_hat), None


@register_model("mbt2018-mean-pdf")
class MeanScaleHyperpriorPdf(_HyperpriorPdf, MeanScaleHyperprior):
    """``mbt2018-mean`` with the adaptive codec on the hyper-latent ``z``."""

    def __init__(self, N: int = 128, M: int = 192, **kwargs):
        super().__init__(N=N, M=M)
        self._init_adaptive(**kwargs)

    def _h_a_input(self, y):
        return y

    def _gaussian_params(self, z_hat):
        return self.h_s(z_hat).chunk(2, 1)
