"""The bitstream format of the adaptive codec: the one place that writes and parses it.

Everything a decoder relies on is defined here: the mode byte and its flags, the side
stream's header and checksum, the per-channel flags, the payloads, the order of the
``y`` symbols under backward adaptation, the limits that bound decoding, and the
self-describing file that ``encdist-codec`` writes. :data:`FORMAT_VERSION` names this
format; golden-bytes tests (``tests/test_bitstream.py``) pin it, so a change of bytes
fails them until the version is raised.

Per image, the latent codec returns ``strings = [y_strings, pdf_strings]`` (hyperprior models put
their ``GaussianConditional`` ``y`` strings first, each behind the crc32 of its symbols,
:func:`checked_string`):

.. code-block:: none

    y string:    the C·h·w latent symbols in coding order, as k = ceil(C·h·w / SUBSTREAM_SYMBOLS)
                 independent rANS substreams (compressai.ans) of SUBSTREAM_SYMBOLS symbols each
                 (the last one: the rest), concatenated, each but the last preceded by its
                 length (4 bytes, big-endian):
                   [len 1][substream 1] … [len k-1][substream k-1][substream k]
                 coding order:
                   fixed tables: channel-major, raster order (CompressAI's layout)
                   MODE_BACKWARD: block by block (:func:`block_order`), channel-major within a block
                   MODE_CONTEXT:  the same, channels in the context model's order
                                  (:func:`encdist.codec.context.channel_order`)
    pdf string:  [mode: 1 byte][crc32: 4 bytes, big-endian][payload]
                 (the static baseline, ``CodingOptions(adaptive=False)``, writes the header alone:
                 MODE_STATIC and its checksum, behind CompressAI's own y bytes)
    payload:     [radius: 1 byte, if MODE_BACKWARD]
                 [context thresholds, if MODE_CONTEXT: (G-1)·(Q-1) Exp-Golomb codes of their
                  steps behind a 3-bit order, to whole bytes (ContextModel.pack_thresholds)]
                 then, by the mode's low bits,
                   MODE_STATIC   nothing
                   MODE_ADAPTIVE side strings of p̂ (the pdf model's EntropyBottleneck stream),
                                 or zlib-packed int32 counts (C·B) in ideal mode
                   MODE_MIXED    ceil(C/8) bytes of channel flags (bit set: p̂'s table), then as MODE_ADAPTIVE

Every table a decoder uses is integers from integers: the static bottleneck's tables are
part of the weights (CompressAI's ``_quantized_cdf`` buffers, in the model's fingerprint,
never rebuilt by a decoder), p̂'s tables come from the side symbols through an integer-only
synthesis (:mod:`encdist.codec.fixed_point`), ideal-mode tables from the sent counts, and
the backward-adapted ones from integer counts. So a stream decodes to the same symbols on
any platform, thread count, device or float precision.

The checksum is ``crc32`` over, in order: the model configuration's fingerprint (seed),
``pack(">BI", mode, len(y string))``, the payload, and the decoded symbols as
native-endian int32 (C, h, w). It covers the *decoded symbols*, so a truncated or
corrupt stream or a stream of another configuration is refused instead of decoding to a
wrong image, in every way of coding, the static baseline's included.

Substreams (:data:`SUBSTREAM_SYMBOLS`) bound what the rANS coder holds at once, on
both sides: CompressAI's encoder buffers every symbol until its flush (about 10 bytes a
symbol), and its decoder reads past the end of a corrupt string, so it must be given a
zero-padded copy sized by the symbols it decodes (:mod:`encdist.codec.coding`); with
substreams both are sized by one substream instead of the image. A latent of at most
:data:`SUBSTREAM_SYMBOLS` symbols is one substream with no length: exactly the bytes of
one rANS stream, as before, so the static baseline stays CompressAI's
``EntropyBottleneck.compress`` up to that size (a 1920x1088 image at C=192). The lengths
are checked before anything else (:func:`split_substreams`): a string too short to hold
the substreams that its declared shape needs, at least 8 bytes each (the rANS coder's
final state), is refused before any allocation that grows with the shape. The y
streams of the hyperprior models (``GaussianConditional``) use the same layout.

Decoding is bounded by limits a caller can raise: :data:`MAX_DECODE_PIXELS` per image
(the latent's positions times its downsampling factor squared: the hyperprior models
check ``z`` at 64x and so ``y``, 4x ``z`` a side, at 16x, within the same number) and
:data:`MAX_DECODE_IMAGES` per call (:func:`check_shape`, :func:`check_strings`).

The file ``encdist-codec`` writes holds one image, big-endian::

    magic "EDC\\x89" (4) | version (1) | coding (1) | model fingerprint (4) | image H, W (4 + 4) |
    latent h, w (2 + 2) | k string lists (1) | k x [length (4) | bytes] | crc32 of all before (4)

so decoding needs nothing but the file and the model that wrote it; a file of another
model (:func:`model_fingerprint`: class and weights) or another version is refused.
"""

from __future__ import annotations

import functools
import math
import struct
import zlib
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from encdist.errors import BitstreamError

__all__ = [
    "FORMAT_VERSION",
    "MODE_STATIC",
    "MODE_ADAPTIVE",
    "MODE_MIXED",
    "MODE_BACKWARD",
    "MODE_CONTEXT",
    "HEADER_SIZE",
    "MAX_DECODE_PIXELS",
    "MAX_DECODE_IMAGES",
    "SUBSTREAM_SYMBOLS",
    "SUBSTREAM_MIN_BYTES",
    "MISMATCH",
    "SideStream",
    "fingerprint",
    "checksum",
    "write_side",
    "parse_side",
    "check_crc",
    "pack_mask",
    "unpack_mask",
    "mask_bytes",
    "pack_counts",
    "unpack_counts",
    "block_order",
    "stream_layout",
    "substream_count",
    "join_substreams",
    "split_substreams",
    "check_strings",
    "check_shape",
    "FILE_MAGIC",
    "model_fingerprint",
    "FILE_CODING",
    "pack_file",
    "unpack_file",
]

#: Version of this format (side stream, y-symbol order, tables, file container).
#: 2: a checksummed header on static streams too; p̂'s and ideal mode's tables integers only.
#: 3: context-adaptive coding (MODE_CONTEXT), and the codec's context tables in the model's fingerprint.
#: 4: the context thresholds as Exp-Golomb codes of their steps (two bytes each in version 3).
FORMAT_VERSION = 4
#: Why a file of an older version is refused (re-encoding it with this version is the fix).
_OLD_VERSIONS = {1: "version 1 rebuilt tables with float arithmetic",
                 2: "its model had no context tables, so its fingerprint no longer matches",
                 3: "version 3 wrote the context thresholds in two bytes each"}

MODE_STATIC = 0
MODE_ADAPTIVE = 1
MODE_MIXED = 2  # per channel: p̂'s table where its flag bit is set, the static one elsewhere
MODE_BACKWARD = 0x10  # flag on any of the above: the tables adapt block by block (encdist.codec.backward)
MODE_CONTEXT = 0x20  # flag with MODE_BACKWARD: one adapted table per channel and context (encdist.codec.context)
_BASE_MODES = (MODE_STATIC, MODE_ADAPTIVE, MODE_MIXED)

_HEADER = struct.Struct(">BI")  # mode, crc32
HEADER_SIZE = _HEADER.size

#: Largest image (pixels) a decoder accepts unless told otherwise (``max_pixels``,
#: ``encdist-codec decode --max-pixels``): 2**25 = 8192x4096, so that an 8K UHD frame
#: (7680x4320, 7680x4352 once padded to a multiple of 64) decodes, the size whose
#: entropy-decoding memory is measured (``benchmarks/memory.py``). Decoding allocates and
#: decodes C·h·w symbols and runs the synthesis transform at the declared size, and the
#: stream bounds that size only loosely (a flat latent codes to a few bytes per substream,
#: :func:`split_substreams`), so the declared shape is bounded by a limit as well.
MAX_DECODE_PIXELS = 1 << 25
#: Most images one ``decompress`` call decodes (string lists' length): each costs its own
#: side stream and tables, and all of them are held at once; decode more in batches.
MAX_DECODE_IMAGES = 16

MISMATCH = (
    "bitstream checksum mismatch: the streams are corrupt or truncated, or were made by "
    "a model of another configuration"
)


def fingerprint(config: tuple) -> int:
    """CRC seed of a codec configuration (everything the decoder must share with the encoder)."""
    return zlib.crc32(repr(config).encode())


def checksum(seed: int, mode: int, y_length: int, payload: bytes, symbols) -> int:
    """The header's crc32 (module docstring); ``symbols`` is an int tensor or array ``(C, h, w)``."""
    crc = zlib.crc32(payload, zlib.crc32(struct.pack(">BI", mode, y_length), seed))
    # The array's own buffer (no bytes copy: the symbols are the size of the latent).
    return zlib.crc32(np.ascontiguousarray(np.asarray(symbols), dtype=np.int32), crc)


def write_side(seed: int, mode: int, payload: bytes, symbols, y_length: int) -> bytes:
    """One image's pdf string: header, then ``payload``."""
    return _HEADER.pack(mode, checksum(seed, mode, y_length, payload, symbols)) + payload


#: A hyperprior model's ``y`` string (``GaussianConditional``) starts with the crc32 of its decoded
#: symbols (4 bytes, big-endian), so that it is checked like every other stream. Its tables are
#: CompressAI's stored ones, but their indexes come from ``h_s`` in float: a decoder that computes
#: them differently is refused here instead of decoding garbage.
CHECKED_PREFIX = 4


def checked_string(string: bytes, symbols) -> bytes:
    """``string`` behind the crc32 of the ``symbols`` it holds."""
    return struct.pack(">I", zlib.crc32(np.ascontiguousarray(np.asarray(symbols), dtype=np.int32))) + string


def split_checked(data, what: str = "y stream") -> Tuple[int, bytes]:
    """``(crc, string)`` of a checked string; :class:`BitstreamError` if it cannot hold its checksum."""
    if not isinstance(data, (bytes, bytearray)):
        raise BitstreamError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) < CHECKED_PREFIX:
        raise BitstreamError(f"{what}: {len(data)} bytes is shorter than its checksum")
    return struct.unpack_from(">I", data)[0], bytes(data[CHECKED_PREFIX:])


def check_symbols(crc: int, symbols, what: str = "y stream") -> None:
    if zlib.crc32(np.ascontiguousarray(np.asarray(symbols), dtype=np.int32)) != crc:
        raise BitstreamError(f"{what}: checksum mismatch: corrupt or truncated, made by another model, or its "
                             "scales were computed differently by this decoder's h_s")


@dataclass(frozen=True)
class SideStream:
    """A parsed pdf string (nothing decoded yet but the fixed fields)."""

    mode: int
    crc: int
    payload: bytes  # everything after the header (what the checksum covers)
    radius: int | None  # largest symbol magnitude, with MODE_BACKWARD
    mask: bytes | None  # channel flags, MODE_MIXED
    pdf: bytes  # p̂'s side strings (or ideal-mode counts); empty for MODE_STATIC
    thresholds: np.ndarray | None = None  # the context thresholds, with MODE_CONTEXT

    @property
    def base(self) -> int:
        return self.mode & ~(MODE_BACKWARD | MODE_CONTEXT)

    @property
    def backward(self) -> bool:
        return bool(self.mode & MODE_BACKWARD)

    @property
    def context(self) -> bool:
        return bool(self.mode & MODE_CONTEXT)


def mask_bytes(channels: int) -> int:
    return math.ceil(channels / 8)


def parse_side(data, channels: int, num_bins: int, ideal: bool = False, contexts=None) -> SideStream:
    """Split a pdf string into its fields; anything malformed raises :class:`BitstreamError`.

    ``contexts``: the decoder's :class:`~encdist.codec.context.ContextModel` (how many
    thresholds a MODE_CONTEXT stream carries); ``None``: a MODE_CONTEXT stream is refused.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise BitstreamError(f"pdf stream: expected bytes, got {type(data).__name__}")
    if len(data) < HEADER_SIZE:
        raise BitstreamError(f"pdf stream: {len(data)} bytes is shorter than its header")
    mode, crc = _HEADER.unpack_from(data)
    payload = bytes(data[HEADER_SIZE:])
    base, backward, context = mode & ~(MODE_BACKWARD | MODE_CONTEXT), bool(mode & MODE_BACKWARD), bool(mode & MODE_CONTEXT)
    if base not in _BASE_MODES or (context and not backward):
        raise BitstreamError(f"pdf stream: unknown coding mode {mode} (corrupt stream?)")
    if context and contexts is None:
        raise BitstreamError(f"{MISMATCH} (a context-coded stream, and this codec has no context model)")
    if ideal and (base == MODE_MIXED or backward):
        raise BitstreamError(f"{MISMATCH} (coding mode {mode} is never written in ideal mode)")
    rest, radius, mask = payload, None, None
    if backward:
        if not rest or rest[0] > num_bins // 2:
            raise BitstreamError(f"pdf stream: missing or invalid symbol radius ({MISMATCH})")
        radius, rest = rest[0], rest[1:]
    thresholds = None
    if context:
        thresholds, rest = contexts.unpack_thresholds(rest)
    if base == MODE_MIXED:
        n = mask_bytes(channels)
        if len(rest) < n:
            raise BitstreamError(f"{MISMATCH} (pdf stream: {len(rest)} bytes is shorter than the {n}-byte channel flags)")
        mask, rest = rest[:n], rest[n:]
    if base == MODE_STATIC and rest:
        raise BitstreamError(f"{MISMATCH} (pdf stream: {len(rest)} unexpected bytes after a static header)")
    return SideStream(mode, crc, payload, radius, mask, rest, thresholds)


def check_crc(side: SideStream, seed: int, symbols, y_length: int) -> None:
    if checksum(seed, side.mode, y_length, side.payload, symbols) != side.crc:
        raise BitstreamError(MISMATCH)


def pack_mask(use) -> bytes:
    """Channel flags (bool per channel) as ``ceil(C/8)`` bytes, most significant bit first."""
    return np.packbits(np.asarray(use, dtype=np.uint8)).tobytes()


def unpack_mask(data: bytes, channels: int) -> np.ndarray:
    n = mask_bytes(channels)
    if len(data) < n:
        raise BitstreamError(f"pdf stream: {len(data)} bytes is shorter than the {n}-byte channel flags")
    return np.unpackbits(np.frombuffer(data[:n], dtype=np.uint8))[:channels].astype(bool)


def pack_counts(counts: np.ndarray) -> bytes:
    """Ideal-mode payload: the exact histogram ``(C, B)`` as zlib-packed int32."""
    return zlib.compress(np.ascontiguousarray(counts, dtype=np.int32).tobytes(), 9)


def unpack_counts(data: bytes, channels: int, num_bins: int) -> np.ndarray:
    size = 4 * channels * num_bins
    try:
        d = zlib.decompressobj()
        raw = d.decompress(data, size + 1)  # bounded: a zip bomb stops here
    except zlib.error as e:
        raise BitstreamError(f"pdf stream: corrupt ideal-mode histogram ({e})") from None
    if len(raw) != size or not d.eof:
        raise BitstreamError("pdf stream: ideal-mode histogram of the wrong size")
    return np.frombuffer(raw, dtype=np.int32).reshape(channels, num_bins)


# ---------------------------------------------------------------------- y symbol order
def block_order(shape: Tuple[int, int], phases: int) -> Tuple[np.ndarray, List[int]]:
    """Coding order of the ``h·w`` latent positions under backward adaptation, and its block bounds.

    Row by row; within a row, phase ``φ`` holds columns ``φ, φ+P, …``.
    Returns ``(order, bounds)``: ``order[i]`` is the flat position coded
    ``i``-th, block ``b`` is ``order[bounds[b]:bounds[b+1]]``.
    """
    h, w = shape
    P = max(1, min(int(phases), w))
    cols = [np.arange(phi, w, P) for phi in range(P)]
    order = np.concatenate([r * w + c for r in range(h) for c in cols])
    bounds = np.concatenate([[0], np.cumsum([len(c) for _ in range(h) for c in cols])]).tolist()
    return order, bounds


@functools.lru_cache(maxsize=16)
def stream_layout(num_channels: int, h: int, w: int, phases: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(positions, indexes)`` of the single rANS call that codes all blocks of an ``h×w`` latent.

    Symbols go block by block, channel-major within a block: ``positions``
    picks them from the ``(C, h·w)`` coding-order array (flattened),
    ``indexes`` (int64, read-only) is ``block · C + channel``, a row of the
    stacked tables. Cached: it depends on the shape only.
    """
    _, bounds = block_order((h, w), phases)
    n = bounds[-1]
    ch = np.arange(num_channels)[:, None]
    pos, idx = [], []
    for b, (b0, b1) in enumerate(zip(bounds[:-1], bounds[1:])):
        pos.append((ch * n + np.arange(b0, b1)[None, :]).ravel())
        idx.append(np.repeat(b * num_channels + np.arange(num_channels), b1 - b0))
    pos, idx = np.concatenate(pos), np.concatenate(idx)
    pos.flags.writeable = idx.flags.writeable = False  # shared by every call of this shape
    return pos, idx


# ---------------------------------------------------------------------- y substreams
#: Symbols per rANS substream of a y string (module docstring). 2**21: a 1920x1088 image's
#: latent at C=192 (1.57 M symbols) is still one substream (CompressAI's bytes), and the
#: decoder's zero padding (8 bytes a symbol) stays near 16 MB.
SUBSTREAM_SYMBOLS = 1 << 21
_SUBSTREAM_LEN = struct.Struct(">I")
#: Fewest bytes of a substream: the rANS coder's final 64-bit state.
SUBSTREAM_MIN_BYTES = 8


def substream_count(num_symbols: int, substream_symbols: int = SUBSTREAM_SYMBOLS) -> int:
    """Substreams of a string of ``num_symbols`` symbols (one at least: an empty stream is its final state)."""
    return max(1, -(-int(num_symbols) // int(substream_symbols)))


def join_substreams(parts: Sequence[bytes]) -> bytes:
    """The y string of substreams ``parts``: each but the last preceded by its length."""
    out = bytearray()
    for p in parts[:-1]:
        out += _SUBSTREAM_LEN.pack(len(p))
        out += p
    out += parts[-1]
    return bytes(out)


def split_substreams(string, num_symbols: int, substream_symbols: int = SUBSTREAM_SYMBOLS,
                     what: str = "bitstream") -> List[Tuple[int, int]]:
    """``(start, end)`` of each substream of a string that holds ``num_symbols`` symbols.

    :class:`BitstreamError` unless the lengths tile the string exactly with substreams of
    at least :data:`SUBSTREAM_MIN_BYTES` each. The string's length alone is checked first,
    in constant time, so a shape the string is too short for is refused before anything
    that grows with the shape (the list returned grows with the string, not the shape).
    """
    k = substream_count(num_symbols, substream_symbols)
    n = len(string)
    need = k * SUBSTREAM_MIN_BYTES + (k - 1) * _SUBSTREAM_LEN.size
    if n < need:
        detail = "" if k == 1 else f" ({k} substreams of {substream_symbols} symbols: {need} bytes at least)"
        raise BitstreamError(f"{what}: {n} bytes is too short to hold {num_symbols} symbols{detail}; "
                             "truncated, or a shape larger than the stream's")
    bounds, pos = [], 0
    view = memoryview(string)
    for i in range(k - 1):
        (m,) = _SUBSTREAM_LEN.unpack_from(view, pos)
        pos += _SUBSTREAM_LEN.size
        rest = (k - 2 - i) * (SUBSTREAM_MIN_BYTES + _SUBSTREAM_LEN.size) + SUBSTREAM_MIN_BYTES  # what the others need
        if m < SUBSTREAM_MIN_BYTES or pos + m + rest > n:
            raise BitstreamError(f"{what}: substream {i + 1} of {k} has an invalid length ({m} bytes); corrupt or truncated")
        bounds.append((pos, pos + m))
        pos += m
    bounds.append((pos, n))
    return bounds


# ---------------------------------------------------------------------- decoder input checks
def _is_bytes(s) -> bool:
    return isinstance(s, (bytes, bytearray))


def check_strings(strings, num_lists: int) -> List[List[bytes]]:
    """``strings`` as ``num_lists`` lists of bytes of one length, at most :data:`MAX_DECODE_IMAGES`; :class:`BitstreamError` otherwise."""
    if not isinstance(strings, (list, tuple)) or len(strings) != num_lists:
        raise BitstreamError(f"expected strings = a list of {num_lists} string lists")
    lists = []
    for i, ss in enumerate(strings):
        if not isinstance(ss, (list, tuple)) or not all(_is_bytes(s) for s in ss):
            raise BitstreamError(f"strings[{i}] must be a list of bytes objects")
        lists.append(list(ss))
    counts = {len(ss) for ss in lists}
    if len(counts) != 1 or 0 in counts:
        raise BitstreamError(f"string lists must hold one string per image each, got {[len(ss) for ss in lists]}")
    if len(lists[0]) > MAX_DECODE_IMAGES:
        raise BitstreamError(f"{len(lists[0])} images in one call exceed the decoder's limit of {MAX_DECODE_IMAGES} "
                             "(encdist.codec.bitstream.MAX_DECODE_IMAGES): decode them in smaller batches")
    return lists


def _latent_shape(shape) -> Tuple[int, int]:
    if not isinstance(shape, (list, tuple)) or len(shape) != 2:
        raise BitstreamError(f"invalid latent shape {shape!r}: expected (h, w)")
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise BitstreamError(f"invalid latent shape {shape!r}: expected two integers") from None
    if any(isinstance(s, bool) or int(s) != s for s in shape) or h < 1 or w < 1:
        raise BitstreamError(f"invalid latent shape {tuple(shape)!r}")
    return h, w


def check_shape(shape, scale: int, max_pixels: int | None = None) -> Tuple[int, int]:
    """A latent ``(h, w)`` whose image, ``h·scale x w·scale`` pixels, is within ``max_pixels``.

    ``scale`` is the latent's downsampling factor; ``max_pixels`` defaults to
    :data:`MAX_DECODE_PIXELS`. :class:`BitstreamError` otherwise, naming the limit and how
    to raise it.
    """
    h, w = _latent_shape(shape)
    limit = MAX_DECODE_PIXELS if max_pixels is None else int(max_pixels)
    pixels = h * w * int(scale) ** 2
    if pixels > limit:
        raise BitstreamError(
            f"latent shape {h}x{w} is a {w * scale}x{h * scale} image ({pixels} pixels), over the decoder's limit of "
            f"{limit} pixels: raise it with max_pixels= (encdist-codec decode --max-pixels) if the stream is trusted"
        )
    return h, w


# ---------------------------------------------------------------------- the file (encdist-codec)
#: First bytes of an ``encdist-codec`` file.
FILE_MAGIC = b"EDC\x89"
_FILE_HEAD = struct.Struct(">4sBBIIIHHB")  # magic, version, coding, model fingerprint, H, W, h, w, string lists
#: The file's coding byte: what the decoder must know beyond the streams (the adaptive codec's
#: streams say the rest in their mode byte).
FILE_CODING = {"adaptive": 0, "static": 1, "ideal": 2}
_LEN = struct.Struct(">I")
#: Largest image a file may declare (pixels a side).
MAX_IMAGE_SIDE = 1 << 16


#: Integer entropy-coding tables in a state dict: hashed as int32, exactly.
_TABLE_KEYS = ("_quantized_cdf", "_offset", "_cdf_length")


def model_fingerprint(model) -> int:
    """crc32 of a model's class, every weight (float32 little-endian) and every table (int32), by name.

    Which model wrote a file. The entropy-coding tables are part of it: they are weights a
    decoder uses as stored, never rebuilt, so a model whose tables differ is another model.
    The same weights in float16, float64 or channels_last give the same fingerprint.
    """
    import torch

    crc = zlib.crc32(type(model).__name__.encode())
    for name, t in sorted(model.state_dict().items()):
        if name.rsplit(".", 1)[-1] == "scale_table":
            continue  # a float parameter of GaussianConditional's tables, which are hashed themselves
        crc = zlib.crc32(name.encode(), crc)
        dtype, np_dtype = (torch.int32, "<i4") if name.endswith(_TABLE_KEYS) else (torch.float32, "<f4")
        crc = zlib.crc32(t.detach().to("cpu", dtype).contiguous().numpy().astype(np_dtype).tobytes(), crc)
    return crc


def pack_file(strings: Sequence[Sequence[bytes]], image_size: Tuple[int, int], latent_shape: Tuple[int, int], fingerprint: int,
              coding: str = "adaptive") -> bytes:
    """A self-describing file of one image: header, every string list, crc32 of all of it.

    ``coding`` is :data:`FILE_CODING`'s key: ``static`` (the static bottleneck's streams,
    no side header), ``ideal``, or ``adaptive`` (any other way of the adaptive codec).
    """
    lists = check_strings(strings, len(strings))
    if any(len(ss) != 1 for ss in lists):
        raise BitstreamError("a file holds one image: each string list must hold one string")
    H, W = (int(v) for v in image_size)
    h, w = _latent_shape(latent_shape)
    if max(h, w) > 0xFFFF:
        raise BitstreamError(f"latent shape {h}x{w} does not fit the file's 2-byte fields")
    if coding not in FILE_CODING:
        raise ValueError(f"coding must be one of {', '.join(FILE_CODING)}, got {coding!r}")
    out = bytearray(_FILE_HEAD.pack(FILE_MAGIC, FORMAT_VERSION, FILE_CODING[coding], fingerprint & 0xFFFFFFFF, H, W, h, w, len(lists)))
    for (s,) in lists:
        out += _LEN.pack(len(s)) + bytes(s)
    out += _LEN.pack(zlib.crc32(bytes(out)))
    return bytes(out)


def unpack_file(data: bytes, fingerprint: int | None = None):
    """``(strings, (H, W), (h, w), coding)`` of a file; one-line :class:`BitstreamError` for anything wrong."""
    if not isinstance(data, (bytes, bytearray)):
        raise BitstreamError(f"expected the file's bytes, got {type(data).__name__}")
    if len(data) < 4 or bytes(data[:4]) != FILE_MAGIC:
        raise BitstreamError("not an encdist-codec file (bad magic number)")
    if len(data) < _FILE_HEAD.size + _LEN.size:
        raise BitstreamError(f"truncated file: {len(data)} bytes is shorter than the header")
    _, version, coding, fp, H, W, h, w, k = _FILE_HEAD.unpack_from(data)
    if version != FORMAT_VERSION:
        hint = f" (re-encode the image: {_OLD_VERSIONS[version]})" if version in _OLD_VERSIONS else ""
        raise BitstreamError(f"file format version {version}: this decoder reads version {FORMAT_VERSION}{hint}")
    if zlib.crc32(bytes(data[:-_LEN.size])) != _LEN.unpack_from(data, len(data) - _LEN.size)[0]:
        raise BitstreamError("corrupt or truncated file (checksum mismatch)")
    if fingerprint is not None and fp != (fingerprint & 0xFFFFFFFF):
        raise BitstreamError(f"the file was written by another model (fingerprint {fp:08x}, this model {fingerprint & 0xFFFFFFFF:08x})")
    names = {v: k for k, v in FILE_CODING.items()}
    if not (1 <= H <= MAX_IMAGE_SIDE and 1 <= W <= MAX_IMAGE_SIDE) or not 1 <= k <= 8 or coding not in names:
        raise BitstreamError(f"invalid file header (image {W}x{H}, {k} string lists, coding {coding})")
    _latent_shape((h, w))  # the decoder checks it against its limit (check_shape)
    pos, end, strings = _FILE_HEAD.size, len(data) - _LEN.size, []
    for _ in range(k):
        if pos + _LEN.size > end:
            raise BitstreamError("corrupt file: string lengths run past its end")
        (n,) = _LEN.unpack_from(data, pos)
        pos += _LEN.size
        if pos + n > end:
            raise BitstreamError("corrupt file: string lengths run past its end")
        strings.append([bytes(data[pos : pos + n])])
        pos += n
    if pos != end:
        raise BitstreamError(f"corrupt file: {end - pos} unexpected bytes after the strings")
    return strings, (H, W), (h, w), names[coding]
