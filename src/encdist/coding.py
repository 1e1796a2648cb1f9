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

from typing import Sequence

import torch
from compressai import ans
from torch import Tensor

from encdist.errors import BitstreamError

__all__ = [
    "PRECISION",
    "quantized_cdf_table",
    "table_bits",
    "encode_with_indexes",
    "encode_lists",
    "decode_with_indexes",
    "StreamDecoder",
    "entropy_bottleneck_decompress",
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


def table_bits(counts: Tensor, cdf: Tensor, precision: int = PRECISION) -> Tensor:
    """Bits to code symbol counts with a table (ignoring coder overhead and escapes).

    ``counts`` is ``(..., K)`` occurrences of each of the first ``K`` table
    symbols; ``cdf`` is a table from :func:`quantized_cdf_table`.
    """
    freq = (cdf[..., 1:] - cdf[..., :-1])[..., : counts.shape[-1]].double()
    bits = counts.double() * (precision - torch.log2(freq.clamp_min(1)))
    return torch.where(counts > 0, bits, torch.zeros_like(bits)).sum(-1)


def encode_with_indexes(symbols: Tensor, indexes: Tensor, cdf: Tensor, lengths: Tensor, offsets: Tensor) -> bytes:
    """Range-code one image's symbols; ``indexes`` pick a row of ``cdf`` for each symbol."""
    return encode_lists(
        symbols.reshape(-1).int().tolist(),
        indexes.reshape(-1).int().tolist(),
        cdf.tolist(),
        lengths.reshape(-1).int().tolist(),
        offsets.reshape(-1).int().tolist(),
    )


def encode_lists(symbols: list, indexes: list, cdf: list, lengths: list, offsets: list) -> bytes:
    """:func:`encode_with_indexes` on plain lists (what ``compressai.ans`` takes)."""
    return ans.RansEncoder().encode_with_indexes(symbols, indexes, cdf, lengths, offsets)


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
        self._decoder.set_stream(bytes(string) + bytes(16 * len(string) + 8 * self.left + 64))

    def decode(self, indexes: Tensor, cdf: Tensor, lengths: Tensor, offsets: Tensor) -> Tensor:
        """The next ``indexes.numel()`` symbols, shaped like ``indexes``."""
        values = self.decode_lists(
            indexes.reshape(-1).int().tolist(), cdf.tolist(), lengths.reshape(-1).int().tolist(), offsets.reshape(-1).int().tolist()
        )
        return torch.tensor(values, dtype=torch.int64).reshape(indexes.shape)

    def decode_lists(self, indexes: list, cdf: list, lengths: list, offsets: list) -> list:
        """:meth:`decode` on plain lists (what ``compressai.ans`` takes), for callers that build them directly."""
        if len(indexes) > self.left:
            raise RuntimeError(f"decoding {len(indexes)} more symbols than the {self.left} the stream was opened for")
        if len(lengths) != len(cdf) or len(offsets) != len(cdf):
            raise ValueError(f"{len(cdf)} CDF tables but {len(lengths)} lengths and {len(offsets)} offsets")
        self.left -= len(indexes)
        return self._decoder.decode_stream(indexes, cdf, lengths, offsets)


def decode_with_indexes(
    string: bytes, indexes: Tensor, cdf: Tensor, lengths: Tensor, offsets: Tensor, what: str = "bitstream"
) -> Tensor:
    """Decode one image's symbols; never reads outside the buffer, whatever ``string`` holds."""
    return StreamDecoder(string, indexes.numel(), what).decode(indexes, cdf, lengths, offsets)


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
