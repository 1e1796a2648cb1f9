"""Evidence behind the rate section's targets: where the bits go, and what limits them.

Each function takes trained models (or trains small ones) and returns plain dicts for the
report. Everything here is measured on the corpus' photographs; the test split is only
*evaluated*, never used to choose anything.

* :func:`training_rate`: the rate a model trains for (``forward``'s y rate in the coder it
  deploys, logged as ``bpp_y_loss``) next to the bytes it writes, per split.
* :func:`oracle_start`: exact bits of the backward-adapted coder started from an *oracle start*
  (each image's exact histogram, free), from the trained p̂ and from the static tables. Not an
  upper bound on what a distribution codec can add inside the adaptive coder: the adapted
  tables mix the start with decayed counts, and the best start for that update is not the
  image's histogram (a flatter start, histogram^0.85, beat it on 20 of 20 non-stationary test
  channels, by 0.15–0.37 % of their y bits, in a replica of the coder's table update).
* :func:`share_estimates`: the paper's codec's share of the static→ideal gap on the train and
  the test split (estimated bits: cross-entropies and the side latent's likelihoods), and how the
  remaining loss spreads over channels.
* :func:`corpus_ablation`: the paper's codec trained on the first 4, 8, 16 train photographs
  with one fixed budget.
* :func:`capacity_ablation`: the paper's codec at a larger size, same budget, same quality.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

import common as C


def _photos(split: str):
    import torchvision.transforms as T

    from encdist.datasets import PhotoCorpus, pad_to_multiple

    ds = PhotoCorpus(split, transform=T.ToTensor())
    return [(ds.names[i], pad_to_multiple(ds[i].unsqueeze(0), 64)[0], ds[i].shape[-2] * ds[i].shape[-1]) for i in range(len(ds.names))]


@torch.no_grad()
def training_rate(model, mode: str, splits: Sequence[str] = ("valid", "test")) -> Dict[str, Any]:
    """``forward``'s y rate (what the criterion logs as ``bpp_y_loss``) against the y bytes written, in ``mode``."""
    codec = model.adaptive_codec
    out = {}
    for split in splits:
        est = real = 0.0
        for _, x, _px in _photos(split):
            y = model.g_a(x)
            est += float(-torch.log2(codec(y, mode)["likelihoods"]["y"]).sum())
            real += 8.0 * sum(len(s) for s in codec.compress(y, mode)["strings"][0])
        out[split] = {"estimated_bits": est, "real_bits": real, "rel_error_pct": 100 * (est / real - 1)}
    return out


@torch.no_grad()
def oracle_start(model, split: str = "test") -> Dict[str, Any]:
    """Exact bits (integer tables) of the backward coder from the exact histogram (an oracle start), from p̂ and from the static tables."""
    from encdist.codec.coding import static_tables, table_support

    codec = model.adaptive_codec
    ad = codec.adaptation
    static = static_tables(codec.entropy_bottleneck)
    lo, length = (t.numpy() for t in table_support(codec.entropy_bottleneck, codec.num_bins))
    tot = {"exact_histogram": 0.0, "p_hat": 0.0, "static": 0.0, "p_hat_or_static": 0.0, "exact_or_static": 0.0}
    photos = _photos(split)
    for _, x, px in photos:
        y = model.g_a(x)
        sym = codec._symbols(y)[0].numpy()
        p = codec._hard_histogram(y)
        p_hat = codec.pdf_model.decompress(codec.pdf_model.compress(p)["strings"])
        starts = []
        for pmf in (p, p_hat):
            cdf, _, off = codec.adaptive_tables(pmf)
            starts.append((cdf[0].numpy(), off.numpy()))
        starts.append((static[0].numpy(), static[2].numpy()))
        freqs, b_lo, b_len = ad.base_freqs(starts, lo, length, ad.radius(sym, codec.num_bins))
        bits = ad.plan(sym, np.stack(freqs), b_lo, b_len).bits  # (3, C)
        for k, name in enumerate(("exact_histogram", "p_hat", "static")):
            tot[name] += bits[k].sum() / px
        tot["p_hat_or_static"] += np.minimum(bits[1], bits[2]).sum() / px
        tot["exact_or_static"] += np.minimum(bits[0], bits[2]).sum() / px
    bpp = {k: v / len(photos) for k, v in tot.items()}
    below = {k: 100 * (1 - bpp[k] / bpp["static"]) for k in bpp if k != "static"}
    return {"split": split, "bpp_y": bpp, "pct_below_static_start": below, "adaptation": list(ad.params)}


@torch.no_grad()
def share_estimates(model, splits: Sequence[str] = ("train", "test"), top: int = 5) -> Dict[str, Any]:
    """The paper's codec (fixed p̂ tables) against the static tables and the exact histogram, in estimated bits."""
    codec, pm = model.adaptive_codec, model.adaptive_codec.pdf_model
    static = codec.static_pmf()
    out = {}
    for split in splits:
        photos = _photos(split)
        st = idl = pap = side = 0.0
        ch_gap, ch_loss = torch.zeros(codec.channels), torch.zeros(codec.channels)
        for _, x, px in photos:
            y = model.g_a(x)
            p = codec._hard_histogram(y)
            counts = p * (y.shape[-2] * y.shape[-1])
            v_hat = pm.entropy_bottleneck.quantize(pm.g_a(p), "dequantize", pm._side_medians())
            bits_y, bits_v = pm.coding_cost(v_hat, counts)
            b_static = -(counts[0] * torch.log2(static)).sum(-1)
            b_ideal = -(counts[0] * torch.log2(p[0].clamp_min(1e-12))).sum(-1)
            st, idl, pap, side = st + b_static.sum() / px, idl + b_ideal.sum() / px, pap + bits_y.sum() / px, side + float(bits_v) / px
            ch_gap += (b_static - b_ideal) / px
            ch_loss += (bits_y[0] - b_ideal) / px
        n = len(photos)
        gap, loss = float(st - idl), float(pap + side - idl)
        order = torch.argsort(ch_loss, descending=True)
        k10 = max(1, codec.channels // 10)
        out[split] = {
            "images": n, "bpp_static": float(st) / n, "bpp_ideal": float(idl) / n, "bpp_paper_y": float(pap) / n,
            "bpp_side": side / n, "gap_closed_pct": 100 * (1 - loss / gap) if gap > 0 else None,
            "side_share_of_loss_pct": 100 * side / loss if loss > 0 else None,
            "loss_share_top10pct_channels_pct": 100 * float(ch_loss[order[:k10]].sum() / ch_loss.sum()),
            "channels_keeping_half_their_gap": int((ch_loss > 0.5 * ch_gap.clamp_min(0)).sum()),
            "channels": codec.channels,
            "top_channels": [{"channel": int(c), "loss_bpp": float(ch_loss[c]) / n, "gap_bpp": float(ch_gap[c]) / n} for c in order[:top]],
        }
    return out


def share_by_steps(run: Path, model, steps: Sequence[int] = (512, 1024, 2048, 4096, 8192)) -> Dict[str, Any]:
    """The paper's codec's share of the gap on the valid photograph after ``steps`` training steps.

    From the run's own per-epoch log (``results/epochs.jsonl``: ``valid/bpp_loss``, the
    criterion's estimate, fixed p̂ tables plus the side latent's bits) against the static tables
    and the exact histogram on the same photograph (:func:`share_estimates`; the transforms are
    frozen, so both are constant during training). ``final_pct``: :func:`share_estimates` of the
    trained model itself, which the last epoch's entry should match (a check of the method).
    """
    est = share_estimates(model, splits=("valid",), top=0)["valid"]
    static, ideal = est["bpp_static"], est["bpp_ideal"]
    log = Path(run) / "results" / "epochs.jsonl"
    by_steps = {}
    for line in log.read_text().splitlines() if log.is_file() else []:
        row = json.loads(line) if line.strip() else {}
        if "valid/bpp_loss" in row and "train_steps" in row:
            by_steps[int(row["train_steps"])] = 100 * (static - row["valid/bpp_loss"]) / (static - ideal)
    return {"bpp_static": static, "bpp_ideal": ideal, "final_pct": est["gap_closed_pct"],
            "last_steps": max(by_steps) if by_steps else None, "last_pct": by_steps[max(by_steps)] if by_steps else None,
            "pct_at_steps": {str(n): by_steps[n] for n in steps if n in by_steps}}


def ablation_run(wdir: Path, quality: int, k: int, prof) -> Tuple[Path, List[str], Path]:
    """The root, overrides (beyond the paper objective) and log file of the ablation run on ``k`` photographs."""
    over = [f"++dataset.train.config.max_images={k}", *C.budget_overrides(prof["ablation_epochs"], prof["ablation_samples"])]
    root, log = C.work_run(wdir, "ablation", quality, f"k{k}")
    return root, over, log


def _shares(run: Path, est: Dict[str, Any] | None = None) -> Dict[str, Any]:
    """A trained paper-objective run's codec: its size and its shares of the gap on train and test (estimated bits).

    ``est``: :func:`share_estimates` of the same run, when already computed.
    """
    model, _, _ = C.load_model(run)
    pm = model.adaptive_codec.pdf_model
    est = share_estimates(model, top=0) if est is None else est
    return {"run": C.rel(run), "N": pm.N, "M": pm.M, "params": sum(q.numel() for q in pm.parameters()),
            **{f"{s}_gap_closed_pct": est[s]["gap_closed_pct"] for s in est}, "test_bpp_side": est["test"]["bpp_side"]}


def corpus_ablation(prof, wdir: Path, quality: int, sizes: Sequence[int], train_fn) -> List[Dict[str, Any]]:
    """The paper's codec trained on the first ``k`` train photographs (same budget each), then its shares."""
    return [{"train_images": k, **_shares(train_fn(quality, *ablation_run(wdir, quality, k, prof)))} for k in sizes]


def capacity_run(wdir: Path, quality: int, size: Sequence[int], prof) -> Tuple[Path, List[str], Path]:
    """The root, overrides (beyond the paper objective) and log file of the paper's codec at size ``(N, M)``.

    Same budget as the rate section's paper-objective runs, so that the only difference from the
    rate section's run of the same quality is the codec's size.
    """
    n, m = (int(v) for v in size)
    over = [f"hp.pdf_model.N={n}", f"hp.pdf_model.M={m}", *C.budget_overrides(prof["paper_epochs"], prof["paper_samples"])]
    root, log = C.work_run(wdir, "capacity", quality, f"{n}x{m}")
    return root, over, log


def capacity_ablation(prof, wdir: Path, quality: int, sizes: Sequence[Sequence[int]], train_fn, paper_run: Path,
                      paper_shares: Dict[str, Any] | None = None) -> List[Dict[str, Any]]:
    """The paper's codec at ``quality`` at its own size (the rate section's ``paper_run``) and at each of ``sizes``.

    Shares of the gap on the photographs it trains on and on the test split: a larger codec that
    gains on train but not on test is limited by its training photographs, not by its size.
    ``paper_shares``: :func:`share_estimates` of ``paper_run``, when the caller has it already.
    """
    return [_shares(paper_run, paper_shares)] + [_shares(train_fn(quality, *capacity_run(wdir, quality, size, prof))) for size in sizes]
