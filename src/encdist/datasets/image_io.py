"""Robust image loading and inference padding.

:func:`load_image` turns any image file Pillow can decode into an 8-bit RGB
``PIL.Image`` and reports unreadable files with a one-line
:class:`~encdist.errors.DatasetError` that names the file.

Mode handling (documented behaviour):

* ``RGB``: returned as is (a loaded copy; the file is closed).
* ``1``, ``L``, ``P`` (no transparency), ``CMYK``, ``YCbCr``: ``Image.convert("RGB")``.
  CMYK uses Pillow's plain (profile-less) conversion.
* Anything with alpha (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``, ``P`` with a
  ``transparency`` entry) is **composited over a white background** (the way
  viewers show transparent images on a page) rather than dropping the alpha
  channel, which would expose whatever colour is stored under fully transparent
  pixels (often black or garbage).
* 16-bit single-channel (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, e.g. 16-bit
  grayscale PNG/TIFF): scaled with numpy, ``round(v * 255 / 65535)``, so a full
  0..65535 ramp maps onto the full 0..255 range.
* ``I`` (32-bit int): treated as 16-bit samples if every value lies in
  ``[0, 65535]``, otherwise min-max rescaled to ``[0, 255]``.
* ``F`` (float): values in ``[0, 1]`` are multiplied by 255, other ranges are
  min-max rescaled; NaN becomes 0.
* 16-bit *multi-channel* files (16-bit RGB/RGBA PNG or TIFF) are reduced to 8 bits
  by Pillow itself while decoding (high byte; at most one level away from
  rounding) and then follow the rules above.
* Multi-frame files (GIF, multi-page TIFF): the first frame.
* EXIF orientation is **not** applied (pixel data as stored, like CompressAI's
  ``ImageFolder``), so sizes agree with other CompressAI tools.

:func:`pad_to_multiple` / :func:`crop_padding` pad a batch the way CompressAI-Trainer
does for inference: zero ("constant") padding split evenly left/right and
top/bottom, computed by :func:`compressai.ops.compute_padding`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from compressai.ops import compute_padding

from encdist.errors import DatasetError

__all__ = [
    "IMG_EXTENSIONS",
    "is_image_file",
    "load_image",
    "to_rgb",
    "pad_to_multiple",
    "crop_padding",
]

#: File extensions (lower case) treated as images by :class:`RobustImageFolder`.
IMG_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
)

PathLike = Union[str, "os.PathLike[str]"]

_WHITE = (255, 255, 255)
_16BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I;16S")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def is_image_file(path: PathLike) -> bool:
    """True for a non-hidden file name with an image extension (case-insensitive).

    Hidden files (``.foo.png``, including macOS ``._foo.png`` resource forks, which
    are not images) are ignored.
    """
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg if len(msg) <= 200 else msg[:197] + "..."


def _scale_16bit(arr: np.ndarray) -> np.ndarray:
    a = arr.astype(np.uint32)
    return ((a * 255 + 32767) // 65535).astype(np.uint8)


def _minmax(arr: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _gray_to_uint8(img: Image.Image) -> np.ndarray:
    """8-bit array for a high-bit-depth single-channel image (modes I;16*, I, F)."""
    arr = np.asarray(img)
    if img.mode in _16BIT_MODES:
        if arr.dtype.kind == "i":  # I;16S (signed): shift into 0..65535
            arr = arr.astype(np.int32) + 32768
        return _scale_16bit(arr)
    if img.mode == "I":
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return _scale_16bit(arr)
        return _minmax(arr)
    # "F"
    a = np.nan_to_num(arr.astype(np.float64), nan=0.0)
    finite = a[np.isfinite(a)]
    if finite.size == 0 or (finite.min() >= 0.0 and finite.max() <= 1.0):
        return np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    return _minmax(a)


def to_rgb(img: Image.Image, background: Tuple[int, int, int] = _WHITE) -> Image.Image:
    """Convert a *loaded* Pillow image of any mode to 8-bit RGB (a new image).

    See the module docstring for the per-mode rules. Raises ``ValueError`` for a mode
    that cannot be converted (``load_image`` turns it into a ``DatasetError``).
    """
    mode = img.mode
    if mode in _16BIT_MODES or mode in ("I", "F"):
        return Image.fromarray(_gray_to_uint8(img), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: PathLike, *, background: Tuple[int, int, int] = _WHITE) -> Image.Image:
    """Read ``path`` fully and return it as an 8-bit RGB ``PIL.Image``.

    Alpha is composited over ``background`` (white by default). Raises
    :class:`~encdist.errors.DatasetError` (one line, naming the file) if the file is
    missing, is not an image, is truncated/corrupt or has an unsupported mode.
    """
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"image file {str(p)!r} does not exist")
    if not p.is_file():
        raise DatasetError(f"image path {str(p)!r} is not a file")
    try:
        with Image.open(p) as img:
            img.load()  # decode now: truncated / corrupt data fails here
            return to_rgb(img, background)
    except DatasetError:
        raise
    except Image.DecompressionBombError as e:
        raise DatasetError(
            f"cannot read image {str(p)!r}: too large for Pillow's decompression-bomb guard "
            f"({_one_line(e)}); raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted"
        ) from None
    except Image.UnidentifiedImageError:
        raise DatasetError(f"cannot read image {str(p)!r}: not a recognised image file") from None
    except MemoryError:
        raise DatasetError(f"cannot read image {str(p)!r}: out of memory while decoding") from None
    except Exception as e:  # OSError (truncated), SyntaxError (broken header), ValueError (mode), ...
        raise DatasetError(f"cannot read image {str(p)!r}: {_one_line(e)}") from None


def _check_multiple(multiple: int) -> int:
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be a positive int, got {multiple!r}")
    return multiple


def pad_to_multiple(x: torch.Tensor, multiple: int = 64) -> Tuple[torch.Tensor, Tuple[int, int, int, int]]:
    """Zero-pad the last two dims of ``x`` (e.g. ``(n, c, h, w)``) up to multiples of ``multiple``.

    Padding is split evenly (extra pixel right/bottom) as in CompressAI-Trainer's
    inference, via :func:`compressai.ops.compute_padding`. Works for images smaller
    than ``multiple`` (a 5x7 image becomes 64x64) and very elongated ones.

    Returns ``(x_padded, (pad_left, pad_right, pad_top, pad_bottom))``; undo with
    :func:`crop_padding`.
    """
    _check_multiple(multiple)
    if x.dim() < 2:
        raise ValueError(f"pad_to_multiple needs a tensor with at least 2 dims, got shape {tuple(x.shape)}")
    h, w = int(x.shape[-2]), int(x.shape[-1])
    pad, _ = compute_padding(h, w, min_div=multiple)
    pad = tuple(int(p) for p in pad)
    if not any(pad):
        return x, pad  # type: ignore[return-value]
    return F.pad(x, pad, mode="constant", value=0), pad  # type: ignore[return-value]


def crop_padding(x: torch.Tensor, padding: Tuple[int, int, int, int]) -> torch.Tensor:
    """Remove ``padding = (left, right, top, bottom)`` added by :func:`pad_to_multiple`."""
    if len(padding) != 4 or any(int(p) < 0 for p in padding):
        raise ValueError(f"padding must be 4 non-negative ints (left, right, top, bottom), got {padding!r}")
    if not any(padding):
        return x
    return F.pad(x, tuple(-int(p) for p in padding))
