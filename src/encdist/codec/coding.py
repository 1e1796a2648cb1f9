"""Entropy-coding helpers around ``compressai.ans``: vectorized CDF tables and safe decoding.

Two things CompressAI does not give us:

* **Per-image CDF tables, fast.** ``EntropyBottleneck.update()`` turns one pmf
  per channel into a quantized CDF with a Python loop over channels. The
  adaptive codec needs new tables for *every image*, so
  :func:`quantized_cdf_table` builds all ``(n, C)`` tables at once with tensor
  operations. It is deterministic: the same pmfs give the same integers, which
  is what lets encoder and decoder agree bit for bit.
* **Decoding that cannot crash the process.** The rANS decoder in
  ``compressai.ans`` reads 32-bit words past the end of a short or corrupt
  string (an empty string is a segmentation fault). :func:`decode_with_indexes`
  refuses empty strings and hands the decoder a copy followed by enough zero
  words that no input, however corrupt, makes it read outside the buffer
  (every decoded symbol reads at most two words, and bypass-coded values at
  most sixteen times the string's own length). A valid stream never reads the
  padding, so decoding is unchanged.
* **Decoding bounded by the stream.** The padding is sized by the symbols decoded,
  so a y string is coded as independent substreams of at most
  :data:`~encdist.codec.bitstream.SUBSTREAM_SYMBOLS` symbols (the format's layout,
  :mod:`encdist.codec.bitstream`), each padded only when decoding reaches it: the
  decoder's buffers are one substream's, whatever the image size (and the encoder's
  too, :class:`BufferedEncoder`). Before anything is allocated, a string is checked to
  be long enough for the declared number of symbols: its substream lengths, and the
  fewest bits rANS can spend on them under their tables (:func:`check_capacity`).
"""

from __future__ import annotations

import contextlib
import gc
import math
import struct
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import torch
from compressai import ans
from torch import Tensor

from encdist.codec.bitstream import (
    SUBSTREAM_MIN_BYTES,
    SUBSTREAM_SYMBOLS,
    check_symbols,
    checked_string,
    join_substreams,
    split_checked,
    split_substreams,
)
from encdist.errors import BitstreamError

__all__ = [
    "PRECISION",
    "gc_paused",
    "quantized_cdf_table",
    "integer_cdf_table",
    "weight_tables",
    "table_bits",
    "CHUNK_SYMBOLS",
    "BufferedEncoder",
    "encode_with_indexes",
    "symbol_bits_floor",
    "table_bits_floor",
    "index_bits_floor",
    "check_capacity",
    "decode_with_indexes",
    "StreamDecoder",
    "entropy_bottleneck_symbols",
    "entropy_bottleneck_decompress",
    "static_tables",
    "table_support",
    "pmf_tables",
    "channel_bits",
    "mixed_tables",
    "gaussian_conditional_compress",
    "gaussian_conditional_bits_floor",
    "gaussian_conditional_decompress",
]

#: Bits of precision of the range coder's CDFs (CompressAI's ``entropy_coder_precision``).
PRECISION = 16



@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while the coder's tables become millions of list objects.

    ``compressai.ans`` takes its tables as Python lists; building them allocates one object per
    entry, and each few hundred allocations trigger a collection pass over all of them, which
    made the conversion 2-3 times slower than the allocation itself (measured). The lists hold
    no cycles, so nothing is left for the collector to find; it is restored on exit.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def quantized_cdf_table(pmf: Tensor, lengths: Tensor, precision: int = PRECISION) -> Tensor:
    """Quantized CDFs of many pmfs at once, in CompressAI's table layout.

    Args:
        pmf: ``(..., L)`` probabilities of the in-support symbols; entries at or
            beyond ``lengths`` are ignored.
        lengths: ``(...)`` number of in-support symbols of each pmf (``1 … L``).
        precision: the CDF's total is ``2**precision``.

    Returns:
        ``(..., L + 2)`` int32 tables: ``cdf[0] = 0``, then the cumulative
        frequencies of the ``length`` symbols and of one tail (escape) symbol
        that receives the mass left outside the support; entries past
        ``length + 1`` repeat the total. Every used symbol gets a frequency of
        at least 1 and the frequencies are as close to ``pmf * 2**precision``
        as integers allow (largest-remainder rounding).
    """
    total = 1 << precision
    *batch, L = pmf.shape
    # NaN / inf entries (a pathological p̂) must not break the table's invariants.
    pmf = pmf.detach().to(torch.float64).nan_to_num(0.0, posinf=1.0, neginf=0.0).clamp_min(0)
    pos = torch.arange(L + 1, device=pmf.device)
    lengths = lengths.to(pmf.device).long()
    inside = pos[:L] < lengths[..., None]
    pmf = torch.where(inside, pmf, torch.zeros((), dtype=pmf.dtype, device=pmf.device))
    tail = (1 - pmf.sum(-1, keepdim=True)).clamp_min(0)
    ext = torch.cat([pmf, torch.zeros_like(tail)], dim=-1)
    is_tail = pos == lengths[..., None]
    ext = torch.where(is_tail, tail.expand_as(ext), ext)
    used = pos <= lengths[..., None]
    ext = ext / ext.sum(-1, keepdim=True).clamp_min(1e-300)

    k = used.sum(-1, keepdim=True)  # symbols in use, including the tail
    scaled = ext * (total - k).to(ext.dtype)
    freq = torch.where(used, scaled.floor().long() + 1, torch.zeros_like(pos))
    remainder = total - freq.sum(-1, keepdim=True)  # 0 <= remainder < k
    frac = torch.where(used, scaled - scaled.floor(), torch.full_like(scaled, -1.0))
    order = torch.argsort(frac, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, pos.expand_as(order).contiguous())
    freq = freq + (rank < remainder).long()

    cdf = torch.cat([torch.zeros_like(freq[..., :1]), freq.cumsum(-1)], dim=-1)
    return cdf.to(torch.int32)


def integer_cdf_table(weights: np.ndarray, used: np.ndarray, precision: int = PRECISION) -> np.ndarray:
    """Quantized CDFs ``(..., K+1)`` from non-negative integer weights ``(..., K)``, integers only.

    Every used symbol (``used``, broadcast to ``weights``) gets a frequency of
    at least 1, the rest of ``2**precision`` is shared in proportion to
    ``weights`` (floor), and the rounding remainder goes to the heaviest
    symbol (the first one on ties); unused entries get 0, so the CDF repeats
    its total there. Exact on every platform, unlike a float normalization.
    """
    total = 1 << precision
    used = np.broadcast_to(used, weights.shape)
    w = np.where(used, np.maximum(weights, 0), 0).astype(np.int64, copy=False)
    s = w.sum(-1, keepdims=True)
    if (s == 0).any():
        # A row of zero weights (impossible with a base table, but be safe) becomes uniform.
        w = np.where(used & (s == 0), 1, w)
        s = w.sum(-1, keepdims=True)
    k = used.sum(-1, keepdims=True)
    freq = (w * (total - k)) // s + used
    K = w.shape[-1]
    flat = freq.reshape(-1, K)
    rows = np.arange(len(flat))
    flat[rows, w.reshape(-1, K).argmax(1)] += total - flat.sum(1)
    cdf = np.zeros(freq.shape[:-1] + (K + 1,), dtype=np.int32)
    np.cumsum(flat.reshape(freq.shape), -1, out=cdf[..., 1:])
    return cdf


def table_bits(counts: Tensor, cdf: Tensor, precision: int = PRECISION) -> Tensor:
    """Bits to code symbol counts with a table (ignoring coder overhead and escapes).

    ``counts`` is ``(..., K)`` occurrences of each of the first ``K`` table
    symbols; ``cdf`` is a table from :func:`quantized_cdf_table`.
    """
    freq = (cdf[..., 1:] - cdf[..., :-1])[..., : counts.shape[-1]].double()
    bits = counts.double() * (precision - torch.log2(freq.clamp_min(1)))
    return torch.where(counts > 0, bits, torch.zeros_like(bits)).sum(-1)


#: Symbols handed to the range coder per call. ``compressai.ans`` takes Python lists
#: (about 36 bytes an entry): chunks keep that memory bounded whatever the image size,
#: and give the same bytes as one call (the coder buffers every symbol until ``flush``).
CHUNK_SYMBOLS = 1 << 20


def _flat_chunks(t: Tensor, chunk: int):
    """``t`` flattened (row-major), as 1-D pieces of at most ``chunk`` elements.

    Never flattens more than a piece at once: ``indexes.reshape(-1)`` of a broadcast
    index tensor (one channel index expanded over ``h·w`` positions) would allocate
    8 bytes per symbol.
    """
    if t.numel() <= chunk or t.dim() <= 1:
        flat = t.reshape(-1)
        for i in range(0, flat.numel(), chunk):
            yield flat[i : i + chunk]
        return
    row = t[0].numel()
    if row > chunk:
        for i in range(t.shape[0]):
            yield from _flat_chunks(t[i], chunk)
        return
    for i in range(0, t.shape[0], chunk // row):
        yield t[i : i + chunk // row].reshape(-1)


#: Largest substream (in coder records: symbols, plus bypass records of escapes) that
#: ``BufferedRansEncoder.flush`` cannot be trusted with: it writes the stream into a
#: buffer of one 32-bit word per record, but the final state alone is two words, so one
#: record (and two records of 16 bits each) writes before the buffer and corrupts the heap
#: (``EntropyBottleneck.compress`` of a single symbol does). From three records on it
#: fits: ``W`` renormalization words hold at most the records' bits (16 each at most), so
#: ``W <= 16·n/32 <= n - 2``. A substream of a few symbols is coded by :func:`_small_rans`.
_SMALL_SUBSTREAM = 2
_RANS_L = 1 << 31  # compressai.ans: Rans64's lower bound of the state
_BYPASS_BITS = 4


def _coder_records(symbol: int, cdf: list, length: int, offset: int) -> List[Tuple[int, int, int]]:
    """``(start, frequency or 0 for a bypass record, bits)`` of one symbol, as ``BufferedRansEncoder`` pushes them."""
    max_value = length - 2
    value, raw = symbol - offset, 0
    if value < 0:
        raw, value = -2 * value - 1, max_value
    elif value >= max_value:
        raw, value = 2 * (value - max_value), max_value
    out = [(cdf[value], cdf[value + 1] - cdf[value], PRECISION)]
    if value == max_value:
        top = (1 << _BYPASS_BITS) - 1
        n = 0
        while raw >> (n * _BYPASS_BITS):
            n += 1
        val = n
        while val >= top:
            out.append((top, 0, _BYPASS_BITS))
            val -= top
        out.append((val, 0, _BYPASS_BITS))
        out += [((raw >> (j * _BYPASS_BITS)) & top, 0, _BYPASS_BITS) for j in range(n)]
    return out


def _small_rans(records: List[Tuple[int, int, int]]) -> bytes:
    """CompressAI's ``BufferedRansEncoder.flush`` of a few records, in Python (same bytes, no overrun).

    Rans64 (``rans64.h``): records are coded last first from the state ``2**31``; a
    renormalization writes the state's low word before the ones already written; the
    final state's two words (low, high) come first; words are little-endian.
    """
    x, words = _RANS_L, []
    for start, freq, bits in reversed(records):
        scale_freq = freq if freq else 1 << (PRECISION - bits)
        if x >= ((_RANS_L >> PRECISION) << 32) * scale_freq:
            words.append(x & 0xFFFFFFFF)
            x >>= 32
        x = ((x // freq) << bits) + x % freq + start if freq else (x << bits) | start
    return struct.pack(f"<{2 + len(words)}I", x & 0xFFFFFFFF, x >> 32, *reversed(words))


class BufferedEncoder:
    """One y string built from several calls, each with its own tables, as rANS substreams.

    Every ``substream_symbols`` symbols (across calls) the range coder is flushed and a
    new substream starts (:data:`~encdist.codec.bitstream.SUBSTREAM_SYMBOLS`, the format's;
    another value only for tests): CompressAI's coder buffers every symbol until its flush
    (a 6-byte record each, plus 4 bytes of output), so this bounds the encoder's memory by
    one substream. A string of one substream is exactly one ``compressai.ans`` stream
    (a substream of one or two symbols is coded in Python: :data:`_SMALL_SUBSTREAM`).
    """

    def __init__(self, substream_symbols: int = SUBSTREAM_SYMBOLS):
        if int(substream_symbols) < 1:
            raise ValueError(f"substream_symbols must be >= 1, got {substream_symbols!r}")
        self.substream_symbols = int(substream_symbols)
        self._parts: List[bytes] = []
        self._open()

    def _open(self) -> None:
        self._enc = ans.BufferedRansEncoder()
        self._count = 0  # symbols in the open substream
        self._first: List[Tuple[int, int, int]] = []  # its first records, while it may be small

    def _close(self) -> None:
        if len(self._first) <= _SMALL_SUBSTREAM:
            self._parts.append(_small_rans(self._first))  # the C++ coder's records are dropped unflushed
        else:
            self._parts.append(self._enc.flush())
        self._open()

    def add(self, symbols: list, indexes: list, cdf: list, lengths: list, offsets: list) -> None:
        i, n = 0, len(symbols)
        while i < n:
            if self._count == self.substream_symbols:  # closed only once more symbols come: no empty last substream
                self._close()
            take = min(self.substream_symbols - self._count, n - i)
            whole = i == 0 and take == n
            for j in range(i, i + take):
                if len(self._first) > _SMALL_SUBSTREAM:
                    break
                t = indexes[j]
                self._first += _coder_records(symbols[j], cdf[t], lengths[t], offsets[t])
            self._enc.encode_with_indexes(symbols if whole else symbols[i : i + take],
                                          indexes if whole else indexes[i : i + take], cdf, lengths, offsets)
            self._count += take
            i += take

    def flush(self) -> bytes:
        self._close()
        parts, self._parts = self._parts, []
        return join_substreams(parts)


def encode_with_indexes(symbols: Tensor, indexes: Tensor, cdf: Tensor, lengths: Tensor, offsets: Tensor,
                        chunk: int = CHUNK_SYMBOLS, substream_symbols: int = SUBSTREAM_SYMBOLS) -> bytes:
    """Range-code one image's symbols; ``indexes`` pick a row of ``cdf`` for each symbol.

    Same bytes as CompressAI's ``RansEncoder.encode_with_indexes`` in one call when the
    symbols fit one substream; more are split into substreams (:class:`BufferedEncoder`).
    """
    if symbols.numel() != indexes.numel():
        raise ValueError(f"{symbols.numel()} symbols but {indexes.numel()} indexes")
    symbols = symbols.reshape(indexes.shape)  # chunked alike
    enc = BufferedEncoder(substream_symbols)
    tables, sizes, offs = cdf.tolist(), lengths.reshape(-1).int().tolist(), offsets.reshape(-1).int().tolist()
    for sym, idx in zip(_flat_chunks(symbols, chunk), _flat_chunks(indexes, chunk)):
        enc.add(sym.int().tolist(), idx.int().tolist(), tables, sizes, offs)
    return enc.flush()


# ---------------------------------------------------------------------- stream capacity
def symbol_bits_floor(max_freq, precision: int = PRECISION):
    """The fewest bits rANS can spend on a symbol of a table whose largest frequency is ``max_freq``.

    Proof (``compressai.ans``: 64-bit state ``x``, 32-bit words, ``L = 2**31``, CDF total
    ``M = 2**precision``). Before coding a symbol of frequency ``f`` the encoder's state is
    ``x >= 2**15·f`` (at least ``L``, or at least ``x_max / 2**32`` just after a renormalization),
    and coding gives ``x' = (x // f)·M + x % f + start >= x + (x // f)·(M - f)``, so

    .. code-block:: none

        log2(x'/x) >= log2(1 + (M - f)/f · (1 - (f - 1)/x)) >= log2(1 + (M - f)/f · (1 - 2**-15))

    which decreases with ``f``: a table's largest frequency gives the bound for all its
    symbols. Bypass-coded bits only add to the state. Returns a float64 array like ``max_freq``.
    """
    f = np.asarray(max_freq, dtype=np.float64)
    total = float(1 << precision)
    return np.log2(1.0 + (total - f) / np.maximum(f, 1.0) * (1.0 - 2.0 ** -15))


def table_bits_floor(cdf: Tensor, lengths: Tensor) -> np.ndarray:
    """:func:`symbol_bits_floor` of each table ``(T, K)`` in CompressAI's layout (``lengths``: used CDF entries)."""
    cdf = torch.as_tensor(cdf).long()
    freq = cdf[:, 1:] - cdf[:, :-1]
    used = torch.arange(freq.shape[1]).view(1, -1) < (torch.as_tensor(lengths).long().view(-1, 1) - 1)
    return symbol_bits_floor(torch.where(used, freq, torch.zeros_like(freq)).amax(1).clamp_min(1).numpy())


def index_bits_floor(indexes: Tensor, floors: np.ndarray, chunk: int = CHUNK_SYMBOLS) -> float:
    """Σ over the symbols of their table's :func:`table_bits_floor` (``indexes`` pick the table), in chunks."""
    counts = torch.zeros(len(floors), dtype=torch.float64)
    for part in _flat_chunks(indexes, chunk):
        counts += torch.bincount(part.long().clamp(0, len(floors) - 1), minlength=len(floors)).double()
    return float((counts.numpy() * floors).sum())


def check_capacity(string, num_symbols: int, min_bits: float = 0.0, what: str = "bitstream",
                   substream_symbols: int = SUBSTREAM_SYMBOLS) -> List[Tuple[int, int]]:
    """Substream bounds of ``string`` (:func:`~encdist.codec.bitstream.split_substreams`), refusing a string
    too short for ``num_symbols`` symbols whose information is at least ``min_bits`` bits.

    What is proven: from a state of ``2**31`` (the encoder's start) to one below ``2**64``
    (its flushed final state), each renormalization writing 32 bits (and losing at most
    ``-log2(1 - 2**-15)`` of the bound of :func:`symbol_bits_floor` to rounding), a
    substream of ``W`` words after its 8-byte state holds at most ``33·W + 33`` bits of
    symbol information. Over ``k`` substreams, ``Σ W >= (min_bits - 33·k) / 33``. Any
    longer declared shape (or tables claiming more bits) than that cannot have been
    written by this encoder: :class:`BitstreamError`, with nothing allocated for the shape.
    """
    if not isinstance(string, (bytes, bytearray)):
        raise BitstreamError(f"{what}: expected bytes, got {type(string).__name__}")
    bounds = split_substreams(string, num_symbols, substream_symbols, what)
    k = len(bounds)
    words = math.ceil(max(0.0, float(min_bits) - 33 * k) / 33 - 1e-9)
    need = k * SUBSTREAM_MIN_BYTES + 4 * (k - 1) + 4 * words
    if len(string) < need:
        raise BitstreamError(f"{what}: {len(string)} bytes cannot hold {num_symbols} symbols under their tables "
                             f"(at least {need} bytes); truncated, or a shape larger than the stream's")
    return bounds


class StreamDecoder:
    """Decodes one y string in several calls (tables may change in between); safe on any input.

    ``num_symbols`` is the total number of symbols the string holds, ``min_bits`` a lower
    bound on their information under the tables that will decode them
    (:func:`table_bits_floor`): the string's substreams are checked against both before
    anything is allocated (:func:`check_capacity`), and decoding more symbols is refused.
    Each substream gets its own zero-padded buffer when decoding reaches it (see the
    module docstring), so the padding is sized by one substream, not by the image.
    """

    def __init__(self, string: bytes, num_symbols: int, what: str = "bitstream", min_bits: float = 0.0,
                 substream_symbols: int = SUBSTREAM_SYMBOLS):
        self.left = int(num_symbols)
        self.what = what
        self._bounds = check_capacity(string, self.left, min_bits, what, substream_symbols)
        self._string = string
        self._substream_symbols = int(substream_symbols)
        self._next = 0  # substream to open next
        self._in_substream = 0  # symbols left in the open one
        self._decoder = None

    def _open(self) -> None:
        start, end = self._bounds[self._next]
        self._next += 1
        self._in_substream = min(self._substream_symbols, self.left)
        # One zero-padded buffer (the decoder copies it twice more): no temporary concatenation.
        n = end - start
        buf = bytearray(n + 16 * n + 8 * self._in_substream + 64)
        buf[:n] = memoryview(self._string)[start:end]
        self._decoder = ans.RansDecoder()
        self._decoder.set_stream(buf)
        del buf

    def decode(self, indexes: Tensor, cdf: Tensor, lengths: Tensor, offsets: Tensor, chunk: int = CHUNK_SYMBOLS,
               dtype: torch.dtype = torch.int64) -> Tensor:
        """The next ``indexes.numel()`` symbols, shaped like ``indexes``, decoded in bounded chunks."""
        if indexes.numel() > self.left:
            raise RuntimeError(f"decoding {indexes.numel()} more symbols than the {self.left} the stream was opened for")
        out = torch.empty(indexes.numel(), dtype=dtype)
        tables, sizes, offs = cdf.tolist(), lengths.reshape(-1).int().tolist(), offsets.reshape(-1).int().tolist()
        i = 0
        for part in _flat_chunks(indexes, chunk):
            out[i : i + part.numel()] = torch.tensor(self.decode_lists(part.int().tolist(), tables, sizes, offs), dtype=dtype)
            i += part.numel()
        return out.reshape(indexes.shape)

    def decode_lists(self, indexes: list, cdf: list, lengths: list, offsets: list) -> list:
        """:meth:`decode` on plain lists (what ``compressai.ans`` takes), for callers that build them directly."""
        if len(indexes) > self.left:
            raise RuntimeError(f"decoding {len(indexes)} more symbols than the {self.left} the stream was opened for")
        if len(lengths) != len(cdf) or len(offsets) != len(cdf):
            raise ValueError(f"{len(cdf)} CDF tables but {len(lengths)} lengths and {len(offsets)} offsets")
        out, i, n = None, 0, len(indexes)
        while i < n:
            if self._in_substream == 0:
                self._open()
            take = min(self._in_substream, n - i)
            values = self._decoder.decode_stream(indexes if take == n else indexes[i : i + take], cdf, lengths, offsets)
            if take == n:
                out = values
            else:
                out = values if out is None else out + values
            self._in_substream -= take
            self.left -= take
            i += take
        return [] if out is None else out


def decode_with_indexes(
    string: bytes, indexes: Tensor, cdf: Tensor, lengths: Tensor, offsets: Tensor, what: str = "bitstream",
    dtype: torch.dtype = torch.int64,
) -> Tensor:
    """Decode one image's symbols; never reads outside the buffer, whatever ``string`` holds.

    A string too short for ``indexes.numel()`` symbols under these tables is refused before
    anything the size of the image is allocated (:func:`check_capacity`).
    """
    check_capacity(string, indexes.numel(), 0.0, what)  # the layout first, before a pass over the indexes
    min_bits = index_bits_floor(indexes, table_bits_floor(cdf, lengths))
    return StreamDecoder(string, indexes.numel(), what, min_bits).decode(indexes, cdf, lengths, offsets, dtype=dtype)


def entropy_bottleneck_symbols(eb, strings: Sequence[bytes], size: Sequence[int], what: str = "bitstream") -> Tensor:
    """The integer symbols ``(n, C, *size)`` of ``EntropyBottleneck`` strings, decoded with its stored tables, safely."""
    indexes = torch.arange(eb.channels).view(-1, *([1] * len(size))).expand(-1, *size)
    tables = static_tables(eb)
    return torch.stack([decode_with_indexes(s, indexes, *tables, what) for s in strings])


def entropy_bottleneck_decompress(eb, strings: Sequence[bytes], size: Sequence[int], what: str = "bitstream") -> Tensor:
    """Safe ``EntropyBottleneck.decompress``: same result, but corrupt strings raise :class:`BitstreamError`."""
    symbols = entropy_bottleneck_symbols(eb, strings, size, what)
    medians = eb.quantiles[:, 0, 1].detach().view(1, -1, *([1] * len(size)))
    return symbols.to(medians.device, medians.dtype) + medians


def _gc_tables(gc) -> Tuple[Tensor, Tensor, Tensor]:
    if gc._offset.numel() == 0:
        raise RuntimeError("gaussian conditional not updated: call model.update() first")
    return gc._quantized_cdf.cpu(), gc._cdf_length.cpu(), gc._offset.cpu()


def gaussian_conditional_compress(gc, inputs: Tensor, indexes: Tensor, means: Tensor | None = None) -> List[bytes]:
    """``GaussianConditional.compress`` in the format: the symbols' crc32, then CompressAI's bytes in substreams.

    :func:`encdist.codec.bitstream.checked_string`: the same bytes as CompressAI's behind a
    4-byte checksum, when one substream holds them.
    """
    if inputs.shape != indexes.shape:
        raise ValueError(f"inputs {tuple(inputs.shape)} and indexes {tuple(indexes.shape)} differ in shape")
    symbols = gc.quantize(inputs, "symbols", means).cpu()
    tables = _gc_tables(gc)
    return [checked_string(encode_with_indexes(symbols[i], indexes[i].cpu(), *tables), symbols[i]) for i in range(symbols.shape[0])]


def gaussian_conditional_bits_floor(gc) -> float:
    """The fewest bits rANS spends on a symbol under any of ``gc``'s tables (:func:`table_bits_floor`)."""
    cdf, lengths, _ = _gc_tables(gc)
    return float(table_bits_floor(cdf, lengths).min())


def gaussian_conditional_decompress(gc, strings: Sequence[bytes], indexes: Tensor, means: Tensor | None = None, what: str = "bitstream") -> Tensor:
    """Safe ``GaussianConditional.decompress`` (per-element table indexes) of checked strings (:func:`gaussian_conditional_compress`)."""
    cdf, lengths, offsets = _gc_tables(gc)
    if len(strings) != indexes.shape[0]:
        raise BitstreamError(f"{what}: {len(strings)} strings for {indexes.shape[0]} images")
    out = []
    for i, s in enumerate(strings):
        crc, string = split_checked(s, what)
        sym = decode_with_indexes(string, indexes[i].cpu(), cdf, lengths, offsets, what, torch.int32)
        check_symbols(crc, sym, what)
        out.append(sym)
    return gc.dequantize(torch.stack(out).to(indexes.device), means, torch.float)


# ---------------------------------------------------------------------- per-channel tables
def static_tables(eb) -> Tuple[Tensor, Tensor, Tensor]:
    """The static bottleneck's ``(cdf, lengths, offsets)`` on the CPU (after ``update()``)."""
    if eb._offset.numel() == 0:
        raise RuntimeError("entropy bottleneck not updated: call model.update() before coding")
    return eb._quantized_cdf.cpu(), eb._cdf_length.cpu(), eb._offset.cpu()


def table_support(eb, num_bins: int) -> Tuple[Tensor, Tensor]:
    """Coded symbol range per channel, ``(lo, length)``: the static support, clipped to the ``B`` bins."""
    if eb._offset.numel() == 0:
        raise RuntimeError("entropy bottleneck not updated: call model.update() before coding")
    lo = eb._offset.long().cpu().clamp(min=-(num_bins // 2))
    hi = (eb._offset + eb._cdf_length - 3).long().cpu().clamp(max=num_bins // 2 - 1)
    hi = torch.maximum(hi, lo)
    return lo, hi - lo + 1


def pmf_tables(p_hat: Tensor, lo: Tensor, length: Tensor, num_bins: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Integer CDF tables ``(n, C, L+2)``, lengths ``(C,)``, offsets ``(C,)`` of per-image pmfs ``p̂`` ``(n, C, B)``."""
    L = int(length.max())
    idx = (lo + num_bins // 2).view(1, -1, 1) + torch.arange(L).view(1, 1, -1)
    idx = idx.clamp(max=num_bins - 1).expand(p_hat.shape[0], -1, -1).to(p_hat.device)
    pmf = p_hat.double().gather(2, idx)
    cdf = quantized_cdf_table(pmf, length.view(1, -1).expand(p_hat.shape[0], -1))
    return cdf.cpu(), (length + 2).int().cpu(), lo.int().cpu()


def weight_tables(weights: np.ndarray, lo: Tensor, length: Tensor, num_bins: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Integer CDF tables ``(n, C, L+2)``, lengths ``(C,)``, offsets ``(C,)`` from integer bin weights, integers only.

    ``weights`` ``(n, C, B)`` are non-negative integers over the ``B`` bins (bin ``b`` holds
    symbol ``b - B/2``): the integer softmax of p̂ (:mod:`encdist.codec.fixed_point`) or an
    image's exact counts (ideal mode). As :func:`pmf_tables` does with floats, channel ``c``
    codes symbols ``lo[c] … lo[c]+length[c]-1`` and one tail (escape) symbol that receives
    the weight outside them; :func:`integer_cdf_table` shares ``2**PRECISION`` among them
    with floor divisions, so the tables are the same on every platform.
    """
    w = np.maximum(np.asarray(weights, dtype=np.int64), 0)
    n, C, B = w.shape
    lo_, len_ = lo.long().numpy(), length.long().numpy()
    L = int(len_.max())
    k = np.arange(L + 1)[None, :]
    bins = np.clip(lo_[:, None] + num_bins // 2 + k, 0, B - 1)  # (C, L+1)
    inside = k < len_[:, None]
    ext = np.where(inside[None], np.take_along_axis(w, np.broadcast_to(bins, (n, C, L + 1)), 2), 0)
    tail = w.sum(-1) - ext.sum(-1)  # (n, C): the weight outside the support
    ext = np.where((k == len_[:, None])[None], tail[..., None], ext)
    cdf = integer_cdf_table(ext, k <= len_[:, None])
    return torch.from_numpy(cdf), torch.from_numpy((len_ + 2).astype(np.int32)), torch.from_numpy(lo_.astype(np.int32))


def channel_bits(symbols: Tensor, cdf: Tensor, lengths: Tensor, offsets: Tensor, chunk: int = 16) -> Tensor:
    """Bits of each channel of ``symbols`` ``(C, h, w)`` under integer tables; out-of-support symbols count as escapes.

    Counted ``chunk`` channels at a time, so the temporaries stay small on large latents.
    """
    C = symbols.shape[0]
    K = cdf.shape[-1] - 1
    counts = torch.zeros(C, K, dtype=torch.long)
    for c0 in range(0, C, chunk):
        c = slice(c0, min(C, c0 + chunk))
        escape = (lengths[c].long() - 2).view(-1, 1)  # index of each table's tail (escape) symbol
        rel = symbols[c].reshape(c.stop - c.start, -1).long() - offsets[c].long().view(-1, 1)
        rel = torch.where((rel < 0) | (rel > escape), escape, rel)
        counts[c].scatter_add_(1, rel, torch.ones_like(rel))
    return table_bits(counts, cdf)


def mixed_tables(use: Tensor, first, second) -> Tuple[Tensor, Tensor, Tensor]:
    """Per channel, table set ``first`` where ``use`` is set, ``second`` elsewhere (``(cdf, lengths, offsets)`` each)."""
    (a_cdf, a_len, a_off), (s_cdf, s_len, s_off) = first, second
    W = max(a_cdf.shape[-1], s_cdf.shape[-1])
    a_cdf = torch.nn.functional.pad(a_cdf.to(torch.int32), (0, W - a_cdf.shape[-1]))
    s_cdf = torch.nn.functional.pad(s_cdf.to(torch.int32), (0, W - s_cdf.shape[-1]))
    return (torch.where(use.view(-1, 1), a_cdf, s_cdf), torch.where(use, a_len.int(), s_len.int()),
            torch.where(use, a_off.int(), s_off.int()))
