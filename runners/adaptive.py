"""The runner of the paper's second stage: the distribution codec on frozen transforms.

Ulhaq & Bajić, ICIP 2024: ``g_a``, ``g_s`` and the static bottleneck stay as
pretrained; only the distribution codec (and its bottleneck's quantiles)
train. Frozen parts get no gradient, and the training steps skip the ``g_s``
pass altogether when ``g_s`` is frozen: distortion is then a constant of the
loss. Valid and infer loaders still decode and report distortion.

On every infer pass it also codes each image with the static bottleneck and
the ideal bound (same weights), and logs to Aim the RD figure, the target vs
reconstructed distributions, and the per-channel rate of ``y`` under the
static and the adaptive distribution.
"""

from __future__ import annotations

import torch

from encdist.datasets import pad_to_multiple
from encdist.registry import register_runner

from .base import BaseRunner

__all__ = ["AdaptiveDistributionRunner"]


def _latent_crop(value) -> tuple[int, int]:
    """``runner.latent_crop``: ``[min, max]`` side of the random latent crops (latent positions)."""
    from encdist.errors import ConfigError

    try:
        lo, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"runner.latent_crop must be [min, max] latent positions, got {value!r}") from None
    if not 1 <= lo <= hi:
        raise ConfigError(f"runner.latent_crop must be [min, max] with 1 <= min <= max, got {[lo, hi]}")
    return lo, hi


@register_runner("AdaptiveDistributionRunner")
class AdaptiveDistributionRunner(BaseRunner):
    """The distribution codec on frozen transforms (``conf/runner/AdaptiveDistributionRunner.yaml``).

    Args (besides :class:`BaseRunner`'s):
        skip_frozen_synthesis: skip the ``g_s`` pass in training steps when ``g_s`` is frozen.
        latent_cache: reuse the first epoch's latents of a frozen ``g_a`` in later epochs.
        latent_crop: ``[min, max]`` latent positions a side of the random crops of cached latents.
    """

    def __init__(self, *, skip_frozen_synthesis: bool, latent_cache: bool, latent_crop, **kwargs):
        super().__init__(**kwargs)
        self.skip_frozen_synthesis = bool(skip_frozen_synthesis)
        self.latent_cache = bool(latent_cache)
        self.latent_crop = _latent_crop(latent_crop) if latent_crop is not None else None
        self._cache: list[tuple[torch.Tensor, tuple]] = []
        self._cache_complete = False
        self._contexts_done = False

    def _cacheable(self) -> bool:
        model = self.raw_model
        return self.latent_cache and getattr(model, "latent_input", False) and model.is_frozen("g_a")

    def _forward(self, x, training: bool):
        model = self.raw_model
        skip = training and self.skip_frozen_synthesis and model.is_frozen("g_s")
        if training and skip and self._cacheable():
            with torch.no_grad():
                y = model.g_a(x)
            self._cache.append((y.detach(), tuple(x.shape)))
            return self.model(x, with_x_hat=False, y=y)
        return self.model(x, with_x_hat=not skip)

    # ------------------------------------------------------------------ latent cache
    # With a frozen g_a, the latents of the first epoch's crops are reused by later
    # epochs (in a new random order), so those epochs cost only the distribution codec.
    def _run_loader(self) -> None:
        if not (self.is_train_loader and self._cache_complete):
            super()._run_loader()
            if self.is_train_loader and self._cacheable() and self._cache:
                self._cache_complete = True
            if self.is_train_loader and not self._contexts_done:
                self._fit_contexts()
            return
        with torch.set_grad_enabled(True):
            for i in torch.randperm(len(self._cache)).tolist():
                y, shape = self._cache[i]
                if self.latent_crop is not None:
                    y, shape = self._random_latent_crop(y, shape)
                self.batch = [y]
                self._run_event("on_batch_start")
                # Only the pixel count of the target is read when x_hat is not computed.
                target = torch.zeros((), device=y.device).expand(*shape)
                out = self.criterion(self.model(target, with_x_hat=False, y=y), target)
                self._optimize(out)
                self._run_event("on_batch_end")

    # ------------------------------------------------------------------ context tables
    # The codec's context tables (encdist.codec.context) are statistics of the frozen g_a's
    # latents, not trained by gradient: they are counted once, after the first train epoch, from
    # its latents (the cache; without one, a pass of g_a over the train loader), summed over the
    # ranks so that every rank holds the same tables. A run resumed from its checkpoint keeps its own.
    def _fit_contexts(self) -> None:
        self._contexts_done = True
        model = self.raw_model
        if not hasattr(model, "fit_contexts") or (self.resumed_from and model.adaptive_codec.contexts_fitted):
            return
        if self._cache:
            latents = (y for y, _ in self._cache)
        else:
            device = next(model.parameters()).device

            def latents():
                with torch.no_grad():
                    for batch in self.loaders["train"]:
                        x = batch[0] if isinstance(batch, (list, tuple)) else batch
                        yield model.g_a(x.to(device))

            latents = latents()
        reduce = None
        if self.engine.is_ddp:
            import torch.distributed as dist

            def reduce(counts):
                t = torch.from_numpy(counts).to(next(model.parameters()).device)
                dist.all_reduce(t)
                return t.cpu().numpy()

        images = model.fit_contexts(latents, reduce=reduce)
        self.epoch_metrics["_epoch_"]["context_fit_images"] = float(images)

    def _random_latent_crop(self, y: torch.Tensor, shape: tuple):
        """A random crop of a cached latent batch: size drawn in ``latent_crop``, one position per batch.

        With a frozen ``g_a``, cropping ``y`` is cropping the image (up to the
        transform's border effects), so every later epoch sees new histograms
        of varied sizes instead of the first epoch's crops again.
        """
        lo, hi = self.latent_crop
        h, w = y.shape[-2:]
        sh = int(torch.randint(min(lo, h), min(hi, h) + 1, ()))
        sw = int(torch.randint(min(lo, w), min(hi, w) + 1, ()))
        i = int(torch.randint(h - sh + 1, ()))
        j = int(torch.randint(w - sw + 1, ()))
        f = shape[-1] // w  # pixels per latent position
        return y[..., i : i + sh, j : j + sw], (*shape[:-2], sh * f, sw * f)

    @torch.no_grad()
    def _log_infer_figures(self, x) -> None:
        if self.aim is None:
            return
        from encdist.evaluation.plotting import plot_channel_rates, plot_distributions, plot_rd

        model = self.raw_model
        x_pad, _ = pad_to_multiple(x, self.pad_multiple)
        out = model(x_pad, with_x_hat=False)
        p, p_hat = out["p"][0], out["p_hat"][0]
        # Latent positions per channel: y for factorized models, z for hyperpriors.
        counts = p * (x_pad.shape[-2] * x_pad.shape[-1] // model.downsampling_factor**2)
        static = model.adaptive_codec.static_pmf()
        bits_static = -(counts * torch.log2(static.clamp_min(1e-9))).sum(-1)
        bits_adaptive = -(counts * torch.log2(p_hat.clamp_min(1e-9))).sum(-1)
        ctx = {"loader": self.loader_key}
        figs = {
            "distributions": plot_distributions(p.cpu().numpy(), p_hat.cpu().numpy(), only_support=True),
            "channel_rates": plot_channel_rates(bits_static.cpu().numpy(), bits_adaptive.cpu().numpy()),
        }
        row = self.infer_rows[0]
        curves = [
            {"name": mode, "results": {"bpp": [row[f"bpp{suffix}"]], "psnr-rgb": [row[f"psnr-rgb{suffix}"]]}}
            for mode, suffix in [("adaptive", "")] + [(m, f"_{m}") for m in self.baselines]
            if f"bpp{suffix}" in row
        ]
        figs["rd"] = plot_rd(self._reference_curves() + curves)
        for name, fig in figs.items():
            self.aim.log_figure(name, fig, context=ctx, step=self.epoch_step)

    def _reference_curves(self):
        """The paper's Kodak curves, when the infer set is Kodak."""
        meta = self.conf.dataset.infer.get("meta") or {}
        if meta.get("name") != "kodak":
            return []
        from encdist.evaluation.plotting import reference_results_dir
        from encdist.evaluation.results import load_results

        ref = reference_results_dir()
        return [load_results(f) for f in sorted(ref.glob("*.json"))] if ref else []
