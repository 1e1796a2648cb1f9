"""Rate-distortion criterion with the side-stream rate weighted for the patch size.

Ulhaq & Bajić, ICIP 2024, Sec. 3:

    L = R_y + λ_pdf · R_pdf + λ · 255² · MSE(x, x̂)

with rates in bits per pixel of the input. The side stream costs the same bits
per *image* whatever its size, so on training patches smaller than the target
images its per-pixel rate is scaled down: ``λ_pdf = (H·W of the batch's images)
/ (H·W of the target images)``; for 256×256 patches and Kodak-sized targets
(768×512) this is 1/6.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from encdist.errors import ConfigError
from encdist.registry import register_criterion

__all__ = ["AdaptiveRateDistortionLoss", "split_bpp"]


def split_bpp(likelihoods: Dict[str, Tensor], num_pixels: int) -> Dict[str, Tensor]:
    """Bits per pixel of each likelihood tensor, keyed like ``likelihoods``."""
    return {
        k: torch.log(v).sum() / (-math.log(2) * num_pixels) if v.numel() else v.new_zeros(())
        for k, v in likelihoods.items()
    }


@register_criterion("AdaptiveRateDistortionLoss")
class AdaptiveRateDistortionLoss(nn.Module):
    """``bpp_y + λ_pdf · bpp_pdf + λ · distortion``.

    Args:
        lmbda: rate-distortion trade-off (CompressAI's λ, 255² scaled for MSE).
        metric: ``"mse"`` or ``"ms-ssim"``.
        target_size: ``(H, W)`` of the images the side rate is amortized over.
        lmbda_pdf: fixed side-rate weight (default: derived from ``target_size``).

    Returns ``loss``, ``bpp_loss`` (true total rate), ``bpp_y_loss`` (every
    stream but the side streams), ``bpp_pdf_loss`` (keys starting with
    ``pdf``), and ``mse_loss`` or ``ms_ssim_loss``: the distortion keys are
    present only when the model produced ``x_hat`` (the runner skips a frozen
    ``g_s`` in training steps, where distortion is constant).
    """

    def __init__(
        self,
        lmbda: float = 0.01,
        metric: str = "mse",
        target_size: Sequence[int] = (512, 768),
        lmbda_pdf: float | None = None,
    ):
        super().__init__()
        if not isinstance(lmbda, (int, float)) or isinstance(lmbda, bool) or not math.isfinite(lmbda) or lmbda <= 0:
            raise ConfigError(f"criterion.lmbda must be a positive number, got {lmbda!r}")
        if metric not in ("mse", "ms-ssim"):
            raise ConfigError(f"criterion.metric must be 'mse' or 'ms-ssim', got {metric!r}")
        if len(target_size) != 2 or min(target_size) <= 0:
            raise ConfigError(f"criterion.target_size must be [H, W], got {list(target_size)!r}")
        self.lmbda = float(lmbda)
        self.metric = metric
        self.target_size = tuple(int(s) for s in target_size)
        self.lmbda_pdf = lmbda_pdf

    def side_weight(self, height: int, width: int) -> float:
        if self.lmbda_pdf is not None:
            return float(self.lmbda_pdf)
        return height * width / (self.target_size[0] * self.target_size[1])

    def forward(self, output: Dict[str, Any], target: Tensor) -> Dict[str, Tensor]:
        n, _, H, W = target.shape
        bpp = split_bpp(output["likelihoods"], n * H * W)
        zero = target.new_zeros(())
        bpp_pdf = sum((v for k, v in bpp.items() if k.startswith("pdf")), zero)
        bpp_y = sum((v for k, v in bpp.items() if not k.startswith("pdf")), zero)
        out = {
            "bpp_loss": bpp_y + bpp_pdf,
            "bpp_y_loss": bpp_y,
            "bpp_pdf_loss": bpp_pdf,
        }
        loss = bpp_y + self.side_weight(H, W) * bpp_pdf
        x_hat = output.get("x_hat")
        if x_hat is not None:
            if self.metric == "mse":
                out["mse_loss"] = F.mse_loss(x_hat, target)
                loss = loss + self.lmbda * 255**2 * out["mse_loss"]
            else:
                from pytorch_msssim import ms_ssim

                out["ms_ssim_loss"] = ms_ssim(x_hat, target, data_range=1.0)
                loss = loss + self.lmbda * (1 - out["ms_ssim_loss"])
        out["loss"] = loss
        return out
