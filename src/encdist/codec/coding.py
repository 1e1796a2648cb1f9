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
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch
from compressai import ans
from torch import Tensor

from encdist.errors import BitstreamError

__all__ = [
    "PRECISION",
    "quantized_cdf_table",
    "integer_cdf_table",
    "weight_tables",
    "table_bits",
    "CHUNK_SYMBOLS",
    "BufferedEncoder",
    "encode_with_indexes",
    "decode_with_indexes",
    "StreamDecoder",
    "entropy_bottleneck_decompress",
    "static_tables",
    "table_support",
    "pmf_tables",
    "channel_bits",
    "mixed_tables",
    "gaussian_conditional_decompress",
]

#: Bits of precision of the range coder's CDFs (CompressAI's ``entropy_coder_precision``).
PRECISION = 16


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


class BufferedEncoder:
    """One rANS stream built from several calls, each with its own tables (``compressai.ans``)."""

    def __init__(self):
        self._enc = ans.BufferedRansEncoder()

    def add(self, symbols: list, indexes: list, cdf: list, lengths: list, offsets: list) -> None:
        self._enc.encode_with_indexes(symbols, indexes, cdf, lengths, offsets)

    def flush(self) -> bytes:
        return self._enc.flush()


def encode_with_indexes(symbols: Tensor, indexes: Tensor, cdf: Tensor, lengths: Tensor, offsets: Tensor,
                        chunk: int = CHUNK_SYMBOLS) -> bytes:
    """Range-code one image's symbols; ``indexes`` pick a row of ``cdf`` for each symbol.

    Same bytes as CompressAI's ``RansEncoder.encode_with_indexes`` in one call.
    """
    sym, idx = symbols.reshape(-1), indexes.reshape(-1)
    enc = BufferedEncoder()
    tables, sizes, offs = cdf.tolist(), lengths.reshape(-1).int().tolist(), offsets.reshape(-1).int().tolist()
    for i in range(0, max(1, sym.numel()), chunk):
        enc.add(sym[i : i + chunk].int().tolist(), idx[i : i + chunk].int().tolist(), tables, sizes, offs)
    return enc.flush()


class StreamDecoder:
    """Decodes one rANS string in several calls (tables may change in between); safe on any input.

    ``num_symbols`` is the total number of symbols the string holds: the
    buffer is padded for that many (see the module docstring), and decoding
    more is refused.
    """

    def __init__(self, string: bytes, num_symbols: int, what: str = "bitstream"):
        if not isinstance(string, (bytes, bytearray)):
            raise BitstreamError(f"{what}: expected bytes, got {type(string).__name__}")
        if len(string) < 8:
            # A rANS stream always holds at least its 64-bit final state.
            raise BitstreamError(f"{what}: {len(string)} bytes is too short to be a rANS stream (truncated or empty)")
        self.left = int(num_symbols)
        self._decoder = ans.RansDecoder()
        # One zero-padded buffer (the decoder copies it once more): no temporary concatenation.
        buf = bytearray(len(string) + 16 * len(string) + 8 * self.left + 64)
        buf[: len(string)] = string
        self._decoder.set_stream(buf)
        del buf

    def decode(self, indexes: Tensor, cdf: Tensor, lengths: Tensor, offsets: Tensor, chunk: int = CHUNK_SYMBOLS,
               dtype: torch.dtype = torch.int64) -> Tensor:
        """The next ``indexes.numel()`` symbols, shaped like ``indexes``, decoded in bounded chunks."""
        idx = indexes.reshape(-1)
        out = torch.empty(idx.numel(), dtype=dtype)
        tables, sizes, offs = cdf.tolist(), lengths.reshape(-1).int().tolist(), offsets.reshape(-1).int().tolist()
        for i in range(0, idx.numel(), chunk):
            part = idx[i : i + chunk]
            out[i : i + part.numel()] = torch.tensor(self.decode_lists(part.int().tolist(), tables, sizes, offs), dtype=dtype)
        return out.reshape(indexes.shape)

    def decode_lists(self, indexes: list, cdf: list, lengths: list, offsets: list) -> list:
        """:meth:`decode` on plain lists (what ``compressai.ans`` takes), for callers that build them directly."""
        if len(indexes) > self.left:
            raise RuntimeError(f"decoding {len(indexes)} more symbols than the {self.left} the stream was opened for")
        if len(lengths) != len(cdf) or len(offsets) != len(cdf):
            raise ValueError(f"{len(cdf)} CDF tables but {len(lengths)} lengths and {len(offsets)} offsets")
        self.left -= len(indexes)
        return self._decoder.decode_stream(indexes, cdf, lengths, offsets)


def decode_with_indexes(
    string: bytes, indexes: Tensor, cdf: Tensor, lengths: Tensor, offsets: Tensor, what: str = "bitstream",
    dtype: torch.dtype = torch.int64,
) -> Tensor:
    """Decode one image's symbols; never reads outside the buffer, whatever ``string`` holds."""
    return StreamDecoder(string, indexes.numel(), what).decode(indexes, cdf, lengths, offsets, dtype=dtype)


def entropy_bottleneck_decompress(eb, strings: Sequence[bytes], size: Sequence[int], what: str = "bitstream") -> Tensor:
    """Safe ``EntropyBottleneck.decompress``: same result, but corrupt strings raise :class:`BitstreamError`."""
    if eb._offset.numel() == 0:
        raise RuntimeError("entropy bottleneck not updated: call model.update() first")
    indexes = torch.arange(eb.channels).view(-1, *([1] * len(size))).expand(-1, *size)
    cdf, lengths, offsets = eb._quantized_cdf.cpu(), eb._cdf_length.cpu(), eb._offset.cpu()
    symbols = torch.stack([decode_with_indexes(s, indexes, cdf, lengths, offsets, what) for s in strings])
    medians = eb.quantiles[:, 0, 1].detach().view(1, -1, *([1] * len(size)))
    return symbols.to(medians.device, medians.dtype) + medians


def gaussian_conditional_decompress(gc, strings: Sequence[bytes], indexes: Tensor, means: Tensor | None = None, what: str = "bitstream") -> Tensor:
    """Safe ``GaussianConditional.decompress`` (per-element table indexes)."""
    cdf, lengths, offsets = gc._quantized_cdf.cpu(), gc._cdf_length.cpu(), gc._offset.cpu()
    if len(strings) != indexes.shape[0]:
        raise BitstreamError(f"{what}: {len(strings)} strings for {indexes.shape[0]} images")
    symbols = torch.stack(
        [decode_with_indexes(s, indexes[i].cpu(), cdf, lengths, offsets, what) for i, s in enumerate(strings)]
    ).to(indexes.device)
    return gc.dequantize(symbols, means, torch.float)


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
