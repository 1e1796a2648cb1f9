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

Decoding is bounded before it starts: ``decompress(..., max_pixels=N)`` refuses a
shape whose image is over ``N`` pixels (:data:`encdist.codec.bitstream.MAX_DECODE_PIXELS`
by default), for the hyperprior models on ``z`` and ``y`` alike, and every stream is
checked against the declared shape before anything of that size is allocated. The
synthesis transform runs in tiles on large latents (:meth:`AdaptiveModelMixin.synthesize`).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models import FactorizedPrior, MeanScaleHyperprior, ScaleHyperprior
from compressai.models.base import get_scale_table
from torch import Tensor

from encdist.codec import bitstream as bs
from encdist.codec.coding import (
    check_capacity,
    gaussian_conditional_bits_floor,
    gaussian_conditional_compress,
    gaussian_conditional_decompress,
)
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
        ``M``, ``kernel_size``, ``groups``, ``num_downsample``, ``logit_prior``); every other keyword
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

    def codec_latent(self, y: Tensor) -> Tensor:
        """What the adaptive codec codes, from ``y = g_a(x)``: ``y`` itself (hyperprior models: ``z``)."""
        return y

    def fit_contexts(self, latents, reduce=None) -> int:
        """Fit the codec's context tables to the latents ``g_a(x)`` of training images (an iterable of
        ``(n, M, h, w)``); returns the images used (:meth:`AdaptiveEntropyBottleneckLatentCodec.fit_contexts`)."""
        with torch.no_grad():
            return self.adaptive_codec.fit_contexts((self.codec_latent(y) for y in latents), reduce)

    # ---------------------------------------------------------------- state dicts
    @staticmethod
    def remap_state_dict(state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        """Map a CompressAI parent's keys (``entropy_bottleneck.*``) onto this model's."""
        return {(_CODEC_EB + k[len(_EB):] if k.startswith(_EB) else k): v for k, v in state_dict.items()}

    def load_state_dict(self, state_dict, strict: bool = True):
        return super().load_state_dict(self.remap_state_dict(state_dict), strict=strict)

    def load_pretrained_transforms(self, state_dict: Mapping[str, Tensor], source: str = "state dict") -> None:
        """Load everything but the distribution codec (p̂, context tables) from a CompressAI parent's state dict.

        Raises :class:`CheckpointError` (naming ``source``) if a key of the
        transforms or the static bottleneck is missing or has another shape.
        """
        sd = self.remap_state_dict(state_dict)
        own = self.state_dict()
        # The distribution codec (p̂'s network, the context tables) is what a run trains or fits on top.
        needed = [k for k in own if not k.startswith(("adaptive_codec.pdf_model.", "adaptive_codec.context_weights"))]
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
        bs.check_strings(strings, count)

    # ---------------------------------------------------------------- synthesis
    #: Latent positions a side above which ``g_s`` runs in tiles of this size (1024x1024 pixels at 16x).
    SYNTHESIS_TILE = 64
    #: Latent positions each tile reads beyond its own on every side: ``g_s``'s receptive field.
    #: CompressAI's ``g_s`` is four transposed convolutions (kernel 5, stride 2, padding 2),
    #: each output depending on inputs within ±1 of its position / 2, and pointwise (I)GDNs:
    #: a pixel depends on latent positions within ±(1 + 1/2 + 1/4 + 1/8) < 2 of its own.
    SYNTHESIS_HALO = 2

    def synthesize(self, y_hat: Tensor, tile: int | None = None) -> Tensor:
        """``g_s(y_hat)``, in overlapping tiles when the latent is larger than ``tile`` (:attr:`SYNTHESIS_TILE`) a side.

        Beyond a tile, ``g_s``'s activations (``N`` channels at half the image's size, with
        the (I)GDNs' temporaries: gigabytes at 8K) would grow with the image; in tiles, only
        the output does. Each tile is decoded with :attr:`SYNTHESIS_HALO` latent positions
        of context a side, so it is the whole-image result up to float rounding (convolution
        kernels chosen by size sum in another order: about 1e-6 here, exact in float64).
        """
        T, H = int(tile or self.SYNTHESIS_TILE), self.SYNTHESIS_HALO
        h, w = y_hat.shape[-2:]
        if h <= T and w <= T:
            return self.g_s(y_hat)
        out, f = None, None
        for r0 in range(0, h, T):
            for c0 in range(0, w, T):
                r1, c1 = min(h, r0 + T), min(w, c0 + T)
                a0, b0 = max(0, r0 - H), max(0, c0 - H)
                tile = self.g_s(y_hat[..., a0 : min(h, r1 + H), b0 : min(w, c1 + H)])
                if out is None:
                    f = tile.shape[-1] // (min(w, c1 + H) - b0)  # the transform's upsampling
                    out = tile.new_empty(*tile.shape[:-2], h * f, w * f)
                out[..., r0 * f : r1 * f, c0 * f : c1 * f] = tile[..., (r0 - a0) * f : (r1 - a0) * f, (c0 - b0) * f : (c1 - b0) * f]
                del tile
        return out


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

    def decompress(self, strings, shape, options=None, max_pixels: int | None = None) -> Dict[str, Any]:
        """``{"x_hat"}``; a shape whose image is over ``max_pixels`` is refused (:data:`~encdist.codec.bitstream.MAX_DECODE_PIXELS`)."""
        self._check_strings(strings, 2)
        y_hat = self.adaptive_codec.decompress(strings, shape, options, max_pixels=max_pixels,
                                               scale=self.downsampling_factor)["y_hat"]
        return {"x_hat": self.synthesize(y_hat).clamp_(0, 1)}


class _HyperpriorPdf(AdaptiveModelMixin):
    """Hyperprior models with the adaptive codec on the hyper-latent ``z``."""

    stream_names = ("y", "z", "pdf")

    def _gaussian_params(self, z_hat: Tensor):
        raise NotImplementedError

    def _h_a_input(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def codec_latent(self, y: Tensor) -> Tensor:
        return self.h_a(self._h_a_input(y))

    def forward(self, x: Tensor, with_x_hat: bool = True) -> Dict[str, Any]:
        self._check_image(x)
        y = self.g_a(x)
        z_out = self.adaptive_codec(self.codec_latent(y))
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
        z_out = self.adaptive_codec.compress(self.codec_latent(y), options)
        scales, means = self._gaussian_params(z_out["y_hat"])
        indexes = self.gaussian_conditional.build_indexes(scales)
        y_strings = gaussian_conditional_compress(self.gaussian_conditional, y, indexes, means)
        z_strings, pdf_strings = z_out["strings"]
        return {"strings": [y_strings, z_strings, pdf_strings], "shape": z_out["shape"]}

    #: Downsampling of ``y`` (``g_a``'s four stride-2 layers); ``z`` is ``downsampling_factor`` (64), 4x less a side.
    Y_FACTOR = 16

    def decompress(self, strings, shape, options=None, max_pixels: int | None = None) -> Dict[str, Any]:
        """``{"x_hat"}``; ``max_pixels`` bounds ``z``'s image and so ``y``'s, which is the same image.

        ``shape`` is ``z``'s; ``y`` is ``downsampling_factor / 16`` times larger a side, so
        its image, checked again at 16x, is the same number of pixels. Each ``y`` string is
        checked against ``y``'s size (substream lengths, and the bits of the cheapest table)
        before ``z`` is decoded and ``h_s`` allocates anything of that size.
        """
        y_strings, z_strings, pdf_strings = bs.check_strings(strings, 3)
        zh, zw = bs.check_shape(shape, self.downsampling_factor, max_pixels)
        k = self.downsampling_factor // self.Y_FACTOR
        yh, yw = bs.check_shape((zh * k, zw * k), self.Y_FACTOR, max_pixels)
        floor = gaussian_conditional_bits_floor(self.gaussian_conditional)
        for s in y_strings:
            check_capacity(bs.split_checked(s, "y stream")[1], self.M * yh * yw, floor * self.M * yh * yw, "y stream")
        z_hat = self.adaptive_codec.decompress([z_strings, pdf_strings], (zh, zw), options, max_pixels=max_pixels,
                                               scale=self.downsampling_factor)["y_hat"]
        scales, means = self._gaussian_params(z_hat)
        indexes = self.gaussian_conditional.build_indexes(scales)
        y_hat = gaussian_conditional_decompress(self.gaussian_conditional, y_strings, indexes, means, "y stream")
        return {"x_hat": self.synthesize(y_hat).clamp_(0, 1)}


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
