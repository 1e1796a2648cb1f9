"""The ``encdist-codec`` file of one image: its streams plus what a decoder needs.

The file's layout is :mod:`encdist.codec.bitstream`'s (magic number, format version, the way
of coding, the model's fingerprint, the image size, every stream, a checksum). Here are the
steps between images and files that ``encdist-codec`` and ``compressai-eval`` share, below
both command lines so that neither imports the other.
"""

from __future__ import annotations

from pathlib import Path

import torch
from compressai.ops import compute_padding

from encdist.codec import bitstream as bs
from encdist.datasets import crop_padding, pad_to_multiple
from encdist.errors import BitstreamError
from encdist.evaluation.evaluate import coding_options
from encdist.evaluation.results import write_atomic
from encdist.latent_codecs import CODING_MODES, CodingOptions

__all__ = ["file_coding", "pack", "encode_image", "decode_file", "write_bitstream", "read_bitstream", "decode_bitstream"]


def file_coding(model, mode: str) -> str:
    """The file's coding byte (:data:`encdist.codec.bitstream.FILE_CODING`) of a way of coding."""
    options = coding_options(model, mode).get("options") or getattr(getattr(model, "adaptive_codec", None), "options", None)
    if options is None or not options.adaptive:
        return "static"
    return "ideal" if options.ideal else "adaptive"


def pack(model, strings, shape, image_size, mode: str) -> bytes:
    """The file's bytes of one image's ``compress`` output (``shape``) coded in ``mode``."""
    return bs.pack_file(strings, tuple(image_size), tuple(shape), bs.model_fingerprint(model), file_coding(model, mode))


def encode_image(model, x, mode: str = "adaptive", pad_multiple: int = 64) -> bytes:
    """The file's bytes for one image ``x`` ``(1, 3, H, W)`` in [0, 1]."""
    x_pad, _ = pad_to_multiple(x, pad_multiple)
    with torch.no_grad():
        enc = model.compress(x_pad.to(next(model.parameters()).device), **coding_options(model, mode))
    return pack(model, enc["strings"], enc["shape"], x.shape[-2:], mode)


def decode_file(model, data: bytes, pad_multiple: int = 64, max_pixels: int | None = None):
    """The decoded image ``(1, 3, H, W)`` of a file's bytes; an image over ``max_pixels`` is refused.

    ``max_pixels`` counts the padded image that is decoded
    (:data:`encdist.codec.bitstream.MAX_DECODE_PIXELS` by default).
    """
    strings, (H, W), shape, coding = bs.unpack_file(data, bs.model_fingerprint(model))
    kw = {}
    if hasattr(model, "adaptive_codec"):  # the decoder needs to know static and ideal streams; the rest is in them
        kw["options"] = {"adaptive": CodingOptions(), "static": CODING_MODES["static"], "ideal": CODING_MODES["ideal"]}[coding]
        kw["max_pixels"] = max_pixels
    pad, _ = compute_padding(H, W, min_div=pad_multiple)
    f = int(getattr(model, "downsampling_factor", 1))
    if ((H + pad[2] + pad[3]) // f, (W + pad[0] + pad[1]) // f) != tuple(shape):
        raise BitstreamError(f"file header: a {shape[0]}x{shape[1]} latent does not fit a {W}x{H} image")
    bs.check_shape(shape, f, max_pixels)  # before any model, ours or CompressAI's, sees the shape
    with torch.no_grad():
        x_hat = model.decompress(strings, shape, **kw)["x_hat"]
    return crop_padding(x_hat, tuple(int(p) for p in pad)).clamp(0, 1).cpu()


def write_bitstream(path: str | Path, model, strings, shape, image_size, mode: str) -> Path:
    """Writes one image's ``compress`` output to ``path`` as an ``encdist-codec`` file, atomically.

    The format is :mod:`encdist.codec.bitstream`'s file (magic, version, coding, the model's
    fingerprint, the image size, the streams, a checksum): ``encdist-codec decode`` reads it.
    The streams are exactly the bytes counted in ``bpp``.
    """
    return write_atomic(path, pack(model, strings, shape, image_size, mode))


def read_bitstream(path: str | Path):
    """``(strings, (H, W), latent shape, coding)`` of a saved file; :class:`BitstreamError` if malformed."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BitstreamError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return bs.unpack_file(data)
    except BitstreamError as e:
        raise BitstreamError(f"{path}: {e}") from None


def decode_bitstream(model, path: str | Path, max_pixels: int | None = None) -> torch.Tensor:
    """The image ``(1, 3, H, W)`` that ``model`` decodes from a saved file (``max_pixels``: :func:`decode_file`)."""
    try:
        return decode_file(model, Path(path).read_bytes(), max_pixels=max_pixels)
    except BitstreamError as e:
        raise BitstreamError(f"{path}: {e}") from None
