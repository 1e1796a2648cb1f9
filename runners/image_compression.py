"""Plain end-to-end CompressAI training (the offline base model of the quickstart)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from encdist.registry import register_runner

from .base import BaseRunner

__all__ = ["ImageCompressionRunner", "RefitOptions"]


@dataclass(frozen=True)
class RefitOptions:
    """``runner.refit_bottleneck``: refit the bottleneck density before the last infer pass.

    ``steps`` Adam steps (0 disables) at ``lr`` on ``samples_per_step`` latent positions drawn
    from the latents of ``batches`` train batches.
    """

    steps: int
    batches: int
    samples_per_step: int
    lr: float


@register_runner("ImageCompressionRunner")
class ImageCompressionRunner(BaseRunner):
    """Trains every parameter with the standard rate-distortion objective.

    ``runner.refit_bottleneck`` (``steps``, ``batches``, ``samples_per_step``, ``lr``): before the last
    infer pass, refit the entropy bottleneck's density to the latents of the
    final ``g_a`` (then its quantiles, by bisection). A short training leaves
    the static density lagging behind the transforms; refitting it makes the
    static baseline as strong as the transforms allow, so comparisons against
    it are conservative.
    """

    def __init__(self, *, refit_bottleneck: Mapping[str, Any], **kwargs):
        super().__init__(**kwargs)
        self.refit = RefitOptions(**dict(refit_bottleneck))
        self._refitted = False

    def _before_infer(self) -> None:
        if self.epoch_step >= self.num_epochs:
            self._refit_once()

    def on_experiment_end(self, runner):
        self._refit_once()  # also without an infer loader
        super().on_experiment_end(runner)

    def _refit_once(self) -> None:
        if self.refit.steps > 0 and not self._refitted:
            self._refit_bottleneck()
            self._refitted = True

    def _bottleneck_inputs(self) -> torch.Tensor:
        """What the entropy bottleneck codes, for ``batches`` train batches: ``g_a(x)`` for the
        factorized model, ``h_a(...)`` for hyperprior models. Read with a pre-hook on the
        bottleneck during the model's own forward, so it holds for any CompressAI model."""
        model = self.raw_model
        seen = []
        handle = model.entropy_bottleneck.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
        try:
            with torch.no_grad():
                for i, batch in enumerate(self.loaders["train"]):
                    if i >= int(self.refit.batches):
                        break
                    x = batch[0] if isinstance(batch, (list, tuple)) else batch
                    model(x.to(next(model.parameters()).device))
        finally:
            handle.remove()
        return torch.cat(seen)

    def _refit_bottleneck(self) -> None:
        model = self.raw_model
        eb = model.entropy_bottleneck
        # (samples, C, 1, 1): every latent position is one sample of each channel's density.
        y = self._bottleneck_inputs().permute(0, 2, 3, 1).reshape(-1, eb.channels, 1, 1)
        size = min(len(y), int(self.refit.samples_per_step))
        params = [p for n, p in eb.named_parameters() if not n.endswith("quantiles")]
        opt = torch.optim.Adam(params, lr=float(self.refit.lr))
        eb.train()
        with torch.enable_grad():
            for _ in range(int(self.refit.steps)):
                _, likelihoods = eb(y[torch.randint(len(y), (size,))])
                loss = -torch.log2(likelihoods).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        eb.eval()
        eb.update(force=True, update_quantiles=True)
        self.epoch_metrics["_epoch_"]["refit_bits_per_symbol"] = float(loss)
