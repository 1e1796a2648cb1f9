"""Real-bitstream evaluation of one image: rate per stream, PSNR, MS-SSIM, timings.

Used by the runner's infer loader and by ``compressai-eval``. Every rate is
counted from the bytes ``compress`` returns: the side stream is the last
string list of the adaptive models (key ``pdf``), everything else is the
latent bitstream (``bpp_y``).

Coding modes of an adaptive model (same weights, same frozen transforms):

* ``adaptive``: the paper's codec, with the extensions the model enables (by
  default the static fallback and backward adaptation);
* ``static``: the plain static entropy bottleneck (``enable_adaptive=False``), the baseline;
* ``ideal``: ``p̂ = p`` at zero side cost, the bound for one table per image;
  its ``bpp`` is the latent rate alone. (Backward adaptation, which follows
  the statistics within the image, can go below it.)
* ``paper``, ``fallback``, ``static_backward``, ``default``: the other named ways
  of :data:`encdist.latent_codecs.CODING_MODES` (the benchmark's arms).

Each mode is a :class:`~encdist.latent_codecs.CodingOptions` passed to
``compress`` / ``decompress``: the model is never changed.
"""

from __future__ import annotations

import math
import time
from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from encdist.datasets import crop_padding, pad_to_multiple

__all__ = ["MODES", "stream_names", "coding_options", "evaluate_image", "psnr", "mean_metrics"]

#: The coding modes ``compressai-eval`` and the runner report by default.
MODES = ("adaptive", "static", "ideal")


def stream_names(model, num_streams: int) -> list[str]:
    """Names of the string lists ``compress`` returns (side streams start with ``pdf``).

    A model declares them (``stream_names``, as encdist's models do); for any other
    CompressAI model the first is ``y`` and the second ``z``.
    """
    names = getattr(model, "stream_names", None)
    if names is not None:
        if len(names) != num_streams:
            raise ValueError(f"{type(model).__name__}.compress returned {num_streams} string lists, it declares {list(names)}")
        return list(names)
    return ["y", "z"][:num_streams] + [f"s{i}" for i in range(2, num_streams)]


def coding_options(model, mode: str) -> dict:
    """Keyword arguments of ``compress`` / ``decompress`` that code in ``mode`` (a name of
    :data:`encdist.latent_codecs.CODING_MODES`); empty for the model's own default."""
    from encdist.latent_codecs import CODING_MODES

    if mode not in CODING_MODES:
        raise ValueError(f"unknown coding mode {mode!r} (known: {', '.join(CODING_MODES)})")
    if not hasattr(model, "adaptive_codec"):
        if mode != "adaptive":
            raise ValueError(f"{type(model).__name__} has no adaptive codec to code in mode {mode!r}")
        return {}
    options = CODING_MODES[mode]
    return {} if options is None else {"options": options}


def psnr(a: Tensor, b: Tensor) -> float:
    mse = F.mse_loss(a, b).item()
    return float("inf") if mse == 0 else -10 * math.log10(mse)


def _ms_ssim(a: Tensor, b: Tensor) -> float | None:
    from pytorch_msssim import ms_ssim

    if min(a.shape[-2:]) <= 160:  # 5 scales of an 11-tap window need > 160 pixels
        return None
    return float(ms_ssim(a, b, data_range=1.0))


@torch.no_grad()
def evaluate_image(model, x: Tensor, modes: Sequence[str] = ("adaptive",), pad_multiple: int = 64,
                   streams: Dict[str, Dict] | None = None) -> Dict[str, Dict[str, float]]:
    """Compress and decompress one image ``(1, 3, H, W)`` in each mode; metrics per mode.

    Metrics: ``bpp``, ``bpp_y``, ``bpp_pdf``, ``bpp_side_sent`` (side bytes
    actually written, which differs from ``bpp_pdf`` only in ideal mode),
    ``psnr-rgb``, ``ms-ssim``, ``ms-ssim-db``, ``encoding_time``, ``decoding_time``.
    With a dict ``streams``, each mode's ``{"strings", "shape", "x_hat"}`` is put in it:
    the very streams that were measured (to save them without coding twice).
    """
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"evaluate_image takes one image (1, 3, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    x_pad, padding = pad_to_multiple(x, pad_multiple)
    results = {}
    # Its own streams: the decoder's limit (MAX_DECODE_PIXELS, against forged sizes) is this image's size.
    limit = {"max_pixels": x_pad.shape[-2] * x_pad.shape[-1]} if hasattr(model, "adaptive_codec") else {}
    for mode in modes:
        kw = coding_options(model, mode)
        t0 = time.perf_counter()
        enc = model.compress(x_pad, **kw)
        t1 = time.perf_counter()
        dec = model.decompress(enc["strings"], enc["shape"], **kw, **limit)
        t2 = time.perf_counter()
        x_hat = crop_padding(dec["x_hat"], padding).clamp(0, 1)
        if streams is not None:
            streams[mode] = {"strings": enc["strings"], "shape": enc["shape"], "x_hat": x_hat}
        names = stream_names(model, len(enc["strings"]))
        bits = {n: 8 * sum(len(s) for s in ss) / (h * w) for n, ss in zip(names, enc["strings"])}
        side = sum(v for n, v in bits.items() if n.startswith("pdf"))
        latent = sum(v for n, v in bits.items() if not n.startswith("pdf"))
        charged_side = 0.0 if mode == "ideal" else side
        m = {
            "bpp": latent + charged_side,
            "bpp_y": latent,
            "bpp_pdf": charged_side,
            "bpp_side_sent": side,
            "psnr-rgb": psnr(x_hat, x),
            "encoding_time": t1 - t0,
            "decoding_time": t2 - t1,
        }
        s = _ms_ssim(x_hat, x)
        if s is not None:
            m["ms-ssim"] = s
            m["ms-ssim-db"] = -10 * math.log10(max(1 - s, 1e-12))
        results[mode] = m
    return results


def mean_metrics(rows: Sequence[Dict[str, float]]) -> Dict[str, float]:
    """Average each metric over the images that have it."""
    keys = {k for r in rows for k in r}
    return {k: sum(r[k] for r in rows if k in r) / sum(1 for r in rows if k in r) for k in sorted(keys)}
