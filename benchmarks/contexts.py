"""Context-adaptive coding on the committed RD family: the rate, the ablation, the time (issue 18).

For every committed quality: the frozen transforms, context tables counted on latents of
crops of the corpus' train split (never the test split), then every test photograph coded
with real bitstreams, decoded and checked:

* ``static``: the static bottleneck (the anchor);
* ``static_backward``: backward adaptation, one table per channel (no p̂);
* ``static_context``: the same with contexts, under the context models of the ablation
  (none: the row above; spatial only; channel only; both, the default).

These ways of coding use no p̂, so no distribution codec has to be trained for them: they
isolate what contexts add. (What p̂ adds inside the context coder needs a trained
distribution codec: the rate section.) Timings: encode + decode of the whole codec
(``g_a``, entropy coding, ``g_s``) for the default context model and the static
bottleneck, side by side on the same image, as ratios.

    python benchmarks/bench.py --sections contexts
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch

import common as C

#: The context models of the ablation (ContextModel's keyword arguments); "both" is the default.
ABLATION = {
    "spatial": {"groups": 1, "channel_levels": 1},
    "channel": {"spatial_levels": 1},
    "both": {},
}
#: Target (issue 18): the context coder's rate at least this far below the coder without contexts.
TARGET_CONTEXT_GAIN = 6.0
TARGET_TIME_RATIO = 1.25


def _train_crops(num: int, size: int = 512):
    """``num`` crops of the corpus' train split, spread over its photographs (deterministic)."""
    import torchvision.transforms as T

    from encdist.datasets import PhotoCorpus

    ds = PhotoCorpus("train", transform=T.ToTensor())
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(num):
        img = ds[i % len(ds)]
        h, w = img.shape[-2:]
        s = min(size, h, w) // 64 * 64
        r = int(torch.randint(h - s + 1, (), generator=g))
        c = int(torch.randint(w - s + 1, (), generator=g))
        out.append(img[:, r:r + s, c:c + s].unsqueeze(0))
    return out


def _model(weights, context_model=None):
    from encdist.models import FactorizedPriorPdf
    from encdist.training.pretrained import load_pretrained_into

    model = FactorizedPriorPdf(128, 192, context_model=context_model)
    load_pretrained_into(model, weights)
    model.update()
    return model.eval()


@torch.no_grad()
def section_contexts(args, prof) -> Dict[str, Any]:
    from encdist.evaluation.bd import bd_rate
    from encdist.evaluation.evaluate import evaluate_image
    from encdist.recipes.base_family import weights_path
    from rate import committed_family, eval_images

    fam = committed_family()
    source, images = eval_images(prof.get("rate_images"))
    crops = _train_crops(prof.get("context_crops", 32))
    points = []
    for f in fam:
        weights = weights_path(f["quality"])
        models = {name: _model(weights, kw) for name, kw in ABLATION.items()}
        latents = [models["both"].g_a(x) for x in crops]  # the same frozen g_a in every model
        fitted = {name: m.fit_contexts(latents) for name, m in models.items()}
        rows = []
        for name, x in images:
            res = evaluate_image(models["both"], x, modes=("static", "static_backward", "static_context"))
            row = {"image": name, "psnr": res["static"]["psnr-rgb"]}
            for mode, r in res.items():
                row[mode] = {"bpp": r["bpp"], "enc": r["encoding_time"], "dec": r["decoding_time"]}
            for variant in ("spatial", "channel"):
                r = evaluate_image(models[variant], x, modes=("static_context",))["static_context"]
                row[f"context_{variant}"] = {"bpp": r["bpp"]}
            rows.append(row)
            C.log(f"contexts q{f['quality']} {name}: static {row['static']['bpp']:.4f}, backward "
                  f"{row['static_backward']['bpp']:.4f}, context {row['static_context']['bpp']:.4f} bpp")
        m = lambda key, k="bpp": C.mean([r[key][k] for r in rows])  # noqa: E731
        p = {"quality": f["quality"], "lambda": f["lambda"], "psnr": C.mean([r["psnr"] for r in rows]), "crops_fitted": fitted["both"],
             "bpp_static": m("static"), "bpp_none": m("static_backward"), "bpp_both": m("static_context"),
             "bpp_spatial": m("context_spatial"), "bpp_channel": m("context_channel"),
             "time_ratio": (m("static_context", "enc") + m("static_context", "dec")) / (m("static", "enc") + m("static", "dec")),
             "enc_s": {k: m(k, "enc") for k in ("static", "static_backward", "static_context")},
             "dec_s": {k: m(k, "dec") for k in ("static", "static_backward", "static_context")},
             "never_above_static": all(r["static_context"]["bpp"] <= r["static"]["bpp"] + 1e-12 for r in rows),
             "rows": rows}
        for k in ("none", "spatial", "channel", "both"):
            p[f"{k}_vs_static_pct"] = 100 * (p[f"bpp_{k}"] / p["bpp_static"] - 1)
            p[f"{k}_vs_none_pct"] = 100 * (p[f"bpp_{k}"] / p["bpp_none"] - 1)
        points.append(p)
    gains = [-p["both_vs_none_pct"] for p in points]
    ratios = [p["time_ratio"] for p in points]
    bd = {}
    for k in ("none", "spatial", "channel", "both"):
        try:
            bd[k] = bd_rate([p["bpp_static"] for p in points], [p["psnr"] for p in points],
                            [p[f"bpp_{k}"] for p in points], [p["psnr"] for p in points], method="pchip")
        except Exception as e:  # too few points
            bd[k] = f"n/a ({e})"
    return {
        "source": source, "points": points, "bd_pchip": bd,
        "targets": {
            "context_gain": {"target": f"contexts >= {TARGET_CONTEXT_GAIN:.0f} % below one table per channel at every λ "
                                       "(no p̂: static_context vs static_backward; min over λ)",
                             "value": min(gains) if gains else None, "met": bool(gains) and min(gains) >= TARGET_CONTEXT_GAIN},
            "context_time": {"target": f"context coder enc+dec <= {TARGET_TIME_RATIO}x static (whole codec, max over λ)",
                             "value": max(ratios) if ratios else None, "met": bool(ratios) and max(ratios) <= TARGET_TIME_RATIO},
            "context_never_above_static": {"target": "the context coder never above the static bottleneck on a test image",
                                           "value": None, "met": all(p["never_above_static"] for p in points)},
        },
    }


def md_contexts(r: Dict[str, Any]) -> List[str]:
    pts = r["points"]
    L = ["## Contexts: rate, ablation and time on the committed family (no p̂)", "",
         f"Test images: `{r['source']}`. Context tables counted on {pts[0]['crops_fitted'] if pts else 0} crops of the train split "
         "per quality (`benchmarks/contexts.py`). Rates are real bytes (decoded and checked); every way of coding has the "
         "same PSNR (same transforms).", "",
         "| way of coding (no p̂) | " + " | ".join(f"q{p['quality']}" for p in pts) + " | BD-rate PCHIP vs static |",
         "|---|" + "---|" * (len(pts) + 1)]
    names = {"none": "backward adaptation, one table per channel (c)", "spatial": "+ spatial context only",
             "channel": "+ channel context only", "both": "+ both (the default context model)"}
    L.append("| static bottleneck (bpp) | " + " | ".join(f"{p['bpp_static']:.4f}" for p in pts) + " | 0 |")
    for k, label in names.items():
        bd = r["bd_pchip"].get(k)
        L.append(f"| {label} | " + " | ".join(f"{p[f'bpp_{k}']:.4f} ({p[f'{k}_vs_none_pct']:+.2f} %)" for p in pts)
                 + f" | {C.fmt(bd, '+.2f') + ' %' if isinstance(bd, float) else bd} |")
    L += ["", "(In brackets: the rate change against one table per channel.)", "",
          "| whole codec, seconds per image (768x512) | " + " | ".join(f"q{p['quality']}" for p in pts) + " |",
          "|---|" + "---|" * len(pts)]
    for k, label in (("static", "static: encode + decode"), ("static_backward", "one table per channel"),
                     ("static_context", "contexts")):
        L.append(f"| {label} | " + " | ".join(f"{p['enc_s'][k]:.2f} + {p['dec_s'][k]:.2f}" for p in pts) + " |")
    L.append("| ratio contexts / static | " + " | ".join(f"{p['time_ratio']:.2f}x" for p in pts) + " |")
    return L + [""]
