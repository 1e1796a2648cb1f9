"""Backward adaptation of per-channel CDF tables, row by row (beyond the paper).

The paper's codec is *forward* adaptive: the encoder sends each image's
distribution ``p̂`` as side information and both sides code every latent
symbol with that one fixed table. A latent's statistics also change *within*
an image (sky rows, textured rows), which no per-image table can follow. Here
the decoder re-estimates each channel's distribution from the symbols it has
already decoded, starting from the transmitted (or static) table, so the
adaptation costs no bits:

.. code-block:: none

    row r, phase φ  ─►  table_b = quantize(α·f_base + Σ_{b'<b} γ^{b-1-b'} · count_b')
                          (block b = columns φ, φ+P, φ+2P, … of latent row r)

* ``f_base`` is the channel's integer base table (the static bottleneck's or
  the one rebuilt from ``p̂``): a Dirichlet prior of strength ``α``
  pseudo-symbols.
* ``count_b'`` are the symbol counts of already coded blocks, forgotten by a
  factor ``γ`` per block, so recent rows weigh most.
* A latent row is split into ``P`` interleaved phases (even then odd columns
  for ``P = 2``): the odd columns are coded with counts that include their
  row's even columns, their neighbours, which is most of the gain, at ``P``
  table builds and range-decoder calls per latent row (not one per symbol).

This is a Dirichlet (add-α) estimator with exponential forgetting, the idea
behind the adaptive probability states of video entropy coders, applied to
whole per-channel tables. The codec limits the tables to the image's largest
symbol magnitude (one byte in the side stream), so they stay short.

Everything is integer arithmetic (counts in 1/256 units, floor division), so
encoder and decoder build the same tables on any platform. Block order, the
block of each symbol and the per-block tables are the whole contract: the
encoder codes all blocks in one rANS call, the decoder decodes block by block
(``RansDecoder.decode_stream``) and updates its counts in between.
"""

from __future__ import annotations

import functools
from typing import List, Tuple

import numpy as np

from encdist.coding import PRECISION

__all__ = ["adapted_tables", "block_order", "decode_adapted", "integer_cdf_table", "stream_layout", "table_indexes"]

#: Fixed-point unit of the decayed counts (one symbol adds this much).
COUNT_ONE = 256
#: A count unit's weight next to the base table's frequencies (which sum to ``2**PRECISION``).
_COUNT_SCALE = (1 << PRECISION) // COUNT_ONE


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


def block_order(shape: Tuple[int, int], phases: int) -> Tuple[np.ndarray, List[int]]:
    """Coding order of the ``h·w`` latent positions and the block boundaries in it.

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


def table_indexes(values: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Table index of each symbol value, ``(C, m)``: ``value - offset``, or ``length`` (the escape) outside the support."""
    rel = values - offsets.reshape(-1, 1)
    esc = lengths.reshape(-1, 1)
    return np.where((rel < 0) | (rel >= esc), esc, rel)


class _Setup:
    """What encoder and decoder derive alike from the base tables and the parameters."""

    def __init__(self, base_freq, lengths, alpha: int, decay: int):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        K = base_freq.shape[-1]
        self.used = np.arange(K)[None, :] <= self.lengths[:, None]
        # The base tables give every used symbol a frequency >= 1, so every row's weight is positive
        # and zero exactly where unused: ``tables`` can skip integer_cdf_table's guards (same result).
        self.prior = np.where(self.used, np.maximum(np.asarray(base_freq, dtype=np.int64), 1) * int(alpha), 0)
        self.share = (1 << PRECISION) - self.used.sum(-1, keepdims=True)  # what is left after 1 per used symbol
        self.used_i = self.used.astype(np.int64)
        self.decay = int(decay)

    def next_counts(self, counts: np.ndarray, hist: np.ndarray) -> np.ndarray:
        """Counts after a block: the old ones forgotten by ``decay``/256, plus the block's histogram."""
        return ((counts * self.decay) >> 8) + COUNT_ONE * hist

    def tables(self, counts: np.ndarray) -> np.ndarray:
        """``integer_cdf_table(prior + counts·scale, used)`` for counts ``(..., C, K)``, with fewer operations."""
        w = self.prior + counts * _COUNT_SCALE
        K = w.shape[-1]
        freq = (w * self.share) // w.sum(-1, keepdims=True) + self.used_i
        flat = freq.reshape(-1, K)
        flat[np.arange(len(flat)), w.reshape(-1, K).argmax(1)] += (1 << PRECISION) - flat.sum(1)
        cdf = np.zeros(freq.shape[:-1] + (K + 1,), dtype=np.int32)
        np.cumsum(freq, -1, out=cdf[..., 1:])
        return cdf


def adapted_tables(symbols, base_freqs, offsets, lengths, alpha: int, decay: int, phases: int):
    """Encoder side: every block's tables and each channel's exact bits, all blocks at once.

    The counts depend on the symbols only, so several starting points (the
    static and the transmitted tables) are adapted for the price of one.

    Args:
        symbols: ``(C, h, w)`` symbol values of one image.
        base_freqs: ``(S, C, K)`` integer frequencies of ``S`` starting
            tables over the ``K`` table symbols (index ``lengths[c]`` is
            channel ``c``'s escape; entries past it are unused), each row
            summing to ``2**16``.
        offsets: ``(C,)`` value of table index 0; ``lengths``: ``(C,)`` in-support symbols.
        alpha: prior strength in pseudo-symbols; decay: retention per block in 1/256.

    Returns:
        ``(tables, bits, ordered, bounds)``: ``(S, num_blocks, C, K+1)`` int32
        CDF tables, ``(S, C)`` bits under them (escapes' bypass bits left
        out), ``(C, h·w)`` symbol values in coding order and the block bounds.
    """
    symbols, offsets = np.asarray(symbols, dtype=np.int64), np.asarray(offsets, dtype=np.int64)
    C, h, w = symbols.shape
    setups = [_Setup(f, lengths, alpha, decay) for f in base_freqs]
    K = setups[0].prior.shape[-1]
    order, bounds = block_order((h, w), phases)
    nb = len(bounds) - 1
    ordered = symbols.reshape(C, -1)[:, order]
    rel = table_indexes(ordered, offsets, setups[0].lengths)
    block = np.repeat(np.arange(nb), np.diff(bounds))[None, :]
    chan = np.arange(C)[:, None]
    hist = np.bincount(((block * C + chan) * K + rel).ravel(), minlength=nb * C * K).reshape(nb, C, K)
    counts = np.zeros((nb, C, K), dtype=np.int64)
    for b in range(1, nb):
        counts[b] = setups[0].next_counts(counts[b - 1], hist[b - 1])
    tables = np.stack([setup.tables(counts) for setup in setups])
    freq = np.diff(tables, axis=-1)
    bits = (hist * (PRECISION - np.log2(np.maximum(freq, 1)))).sum((1, 3))  # (coded symbols have freq >= 1)
    return tables, bits, ordered, bounds


@functools.lru_cache(maxsize=16)
def stream_layout(num_channels: int, h: int, w: int, phases: int) -> Tuple[np.ndarray, List[int]]:
    """``(positions, indexes)`` of the single rANS call that codes all blocks of an ``h×w`` latent.

    Symbols go block by block, channel-major within a block: ``positions``
    picks them from the ``(C, h·w)`` coding-order array (flattened),
    ``indexes`` (a list, as the coder takes it) is ``block · C + channel``,
    a row of the stacked tables. Cached: it depends on the shape only.
    """
    _, bounds = block_order((h, w), phases)
    n = bounds[-1]
    ch = np.arange(num_channels)[:, None]
    pos, idx = [], []
    for b, (b0, b1) in enumerate(zip(bounds[:-1], bounds[1:])):
        pos.append((ch * n + np.arange(b0, b1)[None, :]).ravel())
        idx.append(np.repeat(b * num_channels + np.arange(num_channels), b1 - b0))
    return np.concatenate(pos), np.concatenate(idx).tolist()


def decode_adapted(decoder, shape: Tuple[int, int], base_freq, offsets, lengths, alpha: int, decay: int,
                   phases: int) -> np.ndarray:
    """Decoder side: ``(C, h, w)`` symbol values, decoded block by block from a :class:`~encdist.coding.StreamDecoder`."""
    offsets = np.asarray(offsets, dtype=np.int64)
    setup = _Setup(base_freq, lengths, alpha, decay)
    C, K = setup.prior.shape
    h, w = shape
    order, bounds = block_order((h, w), phases)
    out = np.empty((C, h * w), dtype=np.int64)
    counts = np.zeros((C, K), dtype=np.int64)
    sizes = (setup.lengths + 2).tolist()
    offs = offsets.tolist()
    chan = np.arange(C)
    channel_lists = {m: np.repeat(chan, m).tolist() for m in set(np.diff(bounds).tolist())}
    for b0, b1 in zip(bounds[:-1], bounds[1:]):
        m = b1 - b0
        values = decoder.decode_lists(channel_lists[m], setup.tables(counts).tolist(), sizes, offs)
        values = np.fromiter(values, dtype=np.int64, count=C * m).reshape(C, m)
        out[:, order[b0:b1]] = values
        rel = table_indexes(values, offsets, setup.lengths)
        hist = np.bincount((chan[:, None] * K + rel).ravel(), minlength=C * K).reshape(C, K)
        counts = setup.next_counts(counts, hist)
    return out.reshape(C, h, w)
