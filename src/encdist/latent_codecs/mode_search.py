"""The encoder's choice of coding mode for one image: a pure function of cost estimates.

Each *family* of tables (fixed tables, or backward-adapted ones) offers the static,
adaptive (p̂) and per-channel mixed modes. :func:`choose_mode` takes the families'
per-channel cost estimates and returns the mode byte, the ``y`` string and the side
payload of the cheapest way; it codes a second candidate only when the two best
estimates are too close to trust.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from encdist.codec.bitstream import MODE_ADAPTIVE, MODE_MIXED, MODE_STATIC, mask_bytes, pack_mask

__all__ = ["Family", "cheapest_likelihoods", "choose_mode", "FALLBACK_MARGIN", "EXACT_MARGIN_BITS"]

#: Relative margin within which fixed-table estimates are not trusted and both candidates are coded
#: (the estimates leave the escapes' bypass bits out).
FALLBACK_MARGIN = 0.03
#: The same when both estimates are exact (backward-adapted tables' own bits): rANS flushes at most this many bits more or less.
EXACT_MARGIN_BITS = 64


class Family(NamedTuple):
    """One way of building tables.

    ``bits()`` returns per-channel cost estimates ``(adaptive, static)`` (``adaptive`` is
    ``None`` when p̂ is not offered); ``encode(use)`` returns the ``y`` string that codes the
    channels flagged in ``use`` from p̂'s table and the others from the static one.
    """

    flag: int  # OR-ed into the mode byte
    prefix: bytes  # side bytes before the mode's payload
    bits: Callable[[], Tuple[Optional[Tensor], Tensor]]
    encode: Callable[[Tensor], bytes]
    exact: bool  # bits() are the tables' exact bits


def choose_mode(
    families: Sequence[Family], pdf_payload: Optional[bytes], channels: int, fallback: bool
) -> Tuple[int, bytes, bytes]:
    """``(mode byte, y string, side payload)`` of the cheapest way to code one image.

    Without ``fallback`` the first family's adaptive mode is used (its static mode when p̂
    is not offered, ``pdf_payload is None``). With it, every family's static, adaptive and
    mixed modes compete on estimated bits (side bytes and channel flags included); mixed
    takes, per channel, the cheaper table and pays one flag bit per channel. When the two
    best estimates lie within the margin, both are coded and the shorter kept:
    :data:`FALLBACK_MARGIN` of the rate for fixed tables, :data:`EXACT_MARGIN_BITS` when
    both estimates are exact.
    """
    every = torch.ones(channels, dtype=torch.bool)
    if not fallback:
        f = families[0]
        if pdf_payload is None:
            return MODE_STATIC | f.flag, f.encode(~every), f.prefix
        return MODE_ADAPTIVE | f.flag, f.encode(every), f.prefix + pdf_payload
    side = 8 * len(pdf_payload or b"")
    cost, plan = {}, {}
    for f in families:
        a_bits, s_bits = f.bits()
        extra = 8 * len(f.prefix)
        # (Insertion order breaks ties between equal estimates: adaptive, static, mixed.)
        if pdf_payload is not None:
            cost[MODE_ADAPTIVE | f.flag] = float(a_bits.sum()) + side + extra
            plan[MODE_ADAPTIVE | f.flag] = (f, every, pdf_payload)
        cost[MODE_STATIC | f.flag] = float(s_bits.sum()) + extra
        plan[MODE_STATIC | f.flag] = (f, ~every, b"")
        if pdf_payload is None:
            continue
        use = a_bits < s_bits  # channels coded with p̂'s table
        if 0 < int(use.sum()) < channels:
            cost[MODE_MIXED | f.flag] = float(torch.where(use, a_bits, s_bits).sum()) + side + extra + 8 * mask_bytes(channels)
            plan[MODE_MIXED | f.flag] = (f, use, pack_mask(use.numpy()) + pdf_payload)

    def code(mode):
        f, use, payload = plan[mode]
        return f.encode(use), f.prefix + payload

    ranked = sorted(cost, key=cost.get)
    best = ranked[0]
    y_string, payload = code(best)
    if len(ranked) == 1:
        return best, y_string, payload
    second = ranked[1]
    exact = plan[best][0].exact and plan[second][0].exact
    margin = EXACT_MARGIN_BITS if exact else cost[second] * FALLBACK_MARGIN
    if cost[best] < cost[second] - margin:
        return best, y_string, payload
    y2, payload2 = code(second)
    if len(y2) + len(payload2) < len(y_string) + len(payload):
        return second, y2, payload2
    return best, y_string, payload


def cheapest_likelihoods(families: Sequence[Sequence[Tensor]], fallback: bool) -> Tensor:
    """Training-time counterpart of :func:`choose_mode`: the likelihoods of the tables it would pick.

    ``families`` holds, per family of tables, the ``(n, C, h, w)`` likelihoods of its
    starts: ``[p̂'s, static]``, or ``[static]`` alone. Without ``fallback``: the first
    family's first start. With it, the value is, per image, the family of fewest bits
    and, within it, per channel, the cheaper start (as :func:`choose_mode`, leaving out
    side and flag bits), so the rate a model trains for is the rate it codes at.

    The gradient is that of p̂'s tables in *every* family, on every channel: p̂ is both
    the start of the adapted tables and the fixed table the encoder may pick instead.
    A hard minimum would give no gradient to the channels the static table wins (a p̂
    that starts uniform would stay so); and the adapted tables' gradient alone lets p̂
    move mass outside the coded support to weaken its own prior, which fits training
    crops and fails on whole images (measured: docs/METHOD.md).
    """
    ref = families[0][0]
    if not fallback:
        return ref
    best, best_cost = None, None
    for fam in families:
        bits = torch.stack([-torch.log2(lik.detach()).flatten(2).sum(-1) for lik in fam])  # (S, n, C)
        pick = bits.argmin(0)  # (n, C)
        lik = torch.stack([f.detach() for f in fam]).gather(0, pick.view(1, *pick.shape, 1, 1).expand(1, *ref.shape))[0]
        cost = bits.min(0).values.sum(-1)  # (n,)
        if best is None:
            best, best_cost = lik, cost
        else:
            better = cost < best_cost
            best = torch.where(better.view(-1, 1, 1, 1), lik, best)
            best_cost = torch.minimum(cost, best_cost)
    pdf = [f[0] for f in families if len(f) == 2]  # p̂'s likelihoods in each family that offers it
    if not pdf:
        return best
    log_pdf = sum(torch.log(lik) for lik in pdf)
    return best * torch.exp(log_pdf - log_pdf.detach())
