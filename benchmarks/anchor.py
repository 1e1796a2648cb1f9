"""The anchor a user would pick instead: ``bmshj2018-hyperprior`` trained with the family's recipe (issue 18).

The hyperprior family (``make base-models BASE_ARGS="--model bmshj2018-hyperprior"``,
``weights/``) has the factorized family's corpus, λ ladder, steps and schedule, so the two
differ only in the model. For every committed hyperprior quality, every test photograph is
coded with real bitstreams, decoded and checked, in two ways:

* ``hyperprior``: CompressAI's ``ScaleHyperprior`` as it is (``y`` under the Gaussian
  conditional, ``z`` under its static bottleneck; the bytes of both strings, no header):
  the anchor;
* ``hyperprior_z_context``: the same with ``z`` coded by this project's context coder
  (``bmshj2018-hyperprior-pdf``, mode ``static_context``: no p̂, so no distribution codec
  to train; context tables counted on ``z`` of train crops).

Against it, from the rate section of the same run: the factorized family with the default
coder (and with the static bottleneck), as BD-rates (cubic and PCHIP, the hyperprior as the
anchor). Decoder cost: MAC per pixel of what each decoder runs per pixel (``g_s``, plus
``h_s`` for the hyperprior), and decode time of a 768x512 photograph, the two decoders in
alternation in this process.

    python benchmarks/bench.py --sections rate,anchor
"""

from __future__ import annotations

import time
from typing import Any, Dict, List

import torch

import _helpers as H
import common as C

MODEL = "bmshj2018-hyperprior"


def _load(weights, pdf: bool):
    from compressai.models import ScaleHyperprior

    from encdist.models.adaptive import ScaleHyperpriorPdf
    from encdist.training.pretrained import load_pretrained_into, load_state_dict_file

    if pdf:
        model = ScaleHyperpriorPdf(128, 192)
        load_pretrained_into(model, weights)
    else:
        model = ScaleHyperprior(128, 192)
        model.load_state_dict({k: v.float() for k, v in load_state_dict_file(weights).items()})
    model.update(force=True)
    return model.eval()


def _bd(anchor: List[Dict[str, float]], test: List[Dict[str, float]]) -> Dict[str, Any]:
    from encdist.evaluation.bd import bd_rate

    out = {}
    for method in ("cubic", "pchip"):
        try:
            out[method] = bd_rate([p["bpp"] for p in anchor], [p["psnr"] for p in anchor],
                                  [p["bpp"] for p in test], [p["psnr"] for p in test], method=method)
        except Exception as e:  # too few points, or curves that do not overlap
            out[method] = f"n/a ({e})"
    return out


def _pareto(points: List[Dict[str, float]]) -> List[Dict[str, float]]:
    """The points no other point beats on both rate and PSNR, by rate."""
    return sorted((p for p in points if not any(q["bpp"] <= p["bpp"] and q["psnr"] > p["psnr"] for q in points)),
                  key=lambda p: p["bpp"])


def _at_equal_psnr(anchor: List[Dict[str, float]], test: List[Dict[str, float]]) -> List[Dict[str, Any]]:
    """Each test point's rate against the anchor's at the same PSNR: log-rate interpolated linearly in
    PSNR between the anchor's non-dominated points (test points outside their PSNR range are left out)."""
    import numpy as np

    front = _pareto(anchor)
    ps, lr = np.array([p["psnr"] for p in front]), np.log([p["bpp"] for p in front])
    out = []
    for t in test:
        if len(front) >= 2 and ps.min() <= t["psnr"] <= ps.max():
            ref = float(np.exp(np.interp(t["psnr"], ps, lr)))
            out.append({"psnr": t["psnr"], "bpp": t["bpp"], "anchor_bpp": ref, "diff_pct": 100 * (t["bpp"] / ref - 1)})
    return out


@torch.no_grad()
def _decode_times(fact, hyper, reps: int) -> Dict[str, Any]:
    """Median decode time of a 768x512 photograph, the two decoders alternating."""
    from encdist.evaluation.evaluate import coding_options
    from speed import _coding_image

    x, name = _coding_image()
    kw = coding_options(fact, "adaptive")
    enc_f, enc_h = fact.compress(x, **kw), hyper.compress(x)
    times = {"factorized_default": [], "hyperprior": []}
    for i in range(reps + 1):
        for key, model, enc, opts in (("factorized_default", fact, enc_f, kw), ("hyperprior", hyper, enc_h, {})):
            t = time.perf_counter()
            model.decompress(enc["strings"], enc["shape"], **opts)
            if i:  # the first round warms up
                times[key].append(time.perf_counter() - t)
    med = {k: H.median(v) for k, v in times.items()}
    return {"image": name, "reps": reps, "seconds": med, "ratio_factorized_to_hyperprior": med["factorized_default"] / med["hyperprior"]}


def _macs(fact, hyper) -> Dict[str, float]:
    """MAC per pixel of each decoder's per-pixel networks at 768x512."""
    h, w = 512, 768
    y = torch.zeros(1, 192, h // 16, w // 16)
    z = torch.zeros(1, 128, h // 64, w // 64)
    gs = H.count_macs(lambda: fact.g_s(y), fact.g_s)
    hs = H.count_macs(lambda: hyper.h_s(z), hyper.h_s)
    gs_h = H.count_macs(lambda: hyper.g_s(y), hyper.g_s)
    # The distribution codec's synthesis runs once per image (on p̂'s latent), not per pixel.
    pdf = fact.adaptive_codec.pdf_model
    p = torch.full((1, pdf.num_channels, pdf.num_bins), 1.0 / pdf.num_bins)
    pdf_macs = H.count_macs(lambda: pdf.g_s(pdf.g_a(p)), pdf.g_s)
    return {"factorized_decoder": (gs + pdf_macs) / (h * w), "factorized_pdf_synthesis": pdf_macs / (h * w),
            "hyperprior_decoder": (gs_h + hs) / (h * w), "hyperprior_h_s": hs / (h * w)}


@torch.no_grad()
def section_anchor(args, prof, rate: Dict[str, Any] | None) -> Dict[str, Any]:
    from contexts import _train_crops
    from encdist.evaluation.evaluate import evaluate_image
    from encdist.recipes.base_family import weights_path
    from rate import committed_family, eval_images, reference_model

    fam = committed_family(MODEL)
    if not fam:
        raise RuntimeError(f"no committed {MODEL} weights match weights/MANIFEST.json: "
                           'make base-models BASE_ARGS="--model bmshj2018-hyperprior"')
    source, images = eval_images(prof.get("rate_images"))
    crops = _train_crops(prof.get("context_crops", 32))
    points = []
    for f in fam:
        weights = weights_path(f["quality"], model=MODEL)
        plain, pdf = _load(weights, pdf=False), _load(weights, pdf=True)
        fitted = pdf.fit_contexts([pdf.g_a(x) for x in crops])
        rows = []
        for name, x in images:
            a = evaluate_image(plain, x, modes=("adaptive",))["adaptive"]  # a plain CompressAI model: its own coder
            b = evaluate_image(pdf, x, modes=("static_context",))["static_context"]
            if abs(a["psnr-rgb"] - b["psnr-rgb"]) > 1e-6:
                raise RuntimeError(f"{MODEL} q{f['quality']} {name}: the two ways of coding decode differently")
            rows.append({"image": name, "psnr": a["psnr-rgb"], "hyperprior": a["bpp"], "hyperprior_z_context": b["bpp"]})
        m = lambda k: C.mean([r[k] for r in rows])  # noqa: E731
        points.append({"quality": f["quality"], "lambda": f["lambda"], "steps": f["steps"], "init": f["init"],
                       "crops_fitted": fitted, "psnr": m("psnr"), "bpp_hyperprior": m("hyperprior"),
                       "bpp_hyperprior_z_context": m("hyperprior_z_context"), "rows": rows})
        C.log(f"anchor q{f['quality']}: {points[-1]['bpp_hyperprior']:.4f} bpp at {points[-1]['psnr']:.2f} dB "
              f"(z with contexts: {points[-1]['bpp_hyperprior_z_context']:.4f})")
    anchor = [{"bpp": p["bpp_hyperprior"], "psnr": p["psnr"]} for p in points]
    out: Dict[str, Any] = {"model": MODEL, "source": source, "family": fam, "points": points,
                           "psnr_span_db": max(p["psnr"] for p in points) - min(p["psnr"] for p in points)}
    out["bd_rate"] = {"hyperprior_z_context": _bd(anchor, [{"bpp": p["bpp_hyperprior_z_context"], "psnr": p["psnr"]} for p in points])}
    dominated = [p["quality"] for p, a in zip(points, anchor) if a not in _pareto(anchor)]
    out["anchor_dominated_qualities"] = dominated
    out["equal_psnr"] = {}
    if rate and rate.get("points"):
        for arm in ("adaptive", "backward", "static"):
            key = "bpp_static" if arm == "static" else f"bpp_{arm}"
            test = [{"bpp": p[key], "psnr": p["psnr"]} for p in rate["points"]]
            out["bd_rate"][f"factorized_{arm}"] = _bd(anchor, test)
            out["equal_psnr"][f"factorized_{arm}"] = _at_equal_psnr(anchor, test)
        # The quickstart's quality (the rate section's trained model) against the hyperprior of that quality.
        fact, desc = reference_model(rate, None, args)
        fact = fact.eval()
        fact.update()
        q = next((f["quality"] for f in fam if f"hp.quality={f['quality']}" in desc), fam[-1]["quality"])
        hyper = _load(weights_path(q, model=MODEL), pdf=False)
        out["decode_quality"] = q
        out["decode"] = _decode_times(fact, hyper, prof.get("coding_reps", 7))
        out["mac_per_px"] = _macs(fact, hyper)
    bd = out["bd_rate"].get("factorized_adaptive", {}).get("pchip")
    out["targets"] = {"anchor_bd_rate": {
        "target": "the factorized model with the default coder at or below the hyperprior trained the same way (BD-rate PCHIP <= 0 %)",
        "value": bd if isinstance(bd, float) else None, "met": (bd <= 0.0) if isinstance(bd, float) else None}}
    return out


def _provenance(p: Dict[str, Any]) -> str:
    return f"q{p['quality']}: {p['steps']} steps " + (f"from {p['init']}" if p["init"] else "from scratch")


def md_anchor(r: Dict[str, Any]) -> List[str]:
    pts = r["points"]
    L = [f"## The anchor: `{r['model']}` (N=128, M=192) trained with the same recipe", "",
         f"Test images: `{r['source']}`, real bytes, decoded and checked. The hyperprior's weights: `weights/` "
         f"({', '.join(_provenance(p) for p in pts)}). "
         "`hyperprior`: CompressAI's `ScaleHyperprior` as it is (both strings, no header). `z with contexts`: `z` coded by this "
         f"project's context coder without p̂ (context tables counted on {pts[0]['crops_fitted'] if pts else 0} train crops).", "",
         "| quality | λ | PSNR dB | hyperprior bpp | z with contexts bpp |", "|---|---|---|---|---|"]
    for p in pts:
        L.append(f"| q{p['quality']} | {C.lam_str(p['lambda'])} | {p['psnr']:.2f} | {p['bpp_hyperprior']:.4f} | {p['bpp_hyperprior_z_context']:.4f} |")
    L += ["", "BD-rate against the hyperprior (negative: fewer bits at equal PSNR):", "",
          "| | cubic | PCHIP |", "|---|---|---|"]
    labels = {"factorized_adaptive": "factorized family, the default coder (d')", "factorized_backward": "factorized family, the previous default (d)",
              "factorized_static": "factorized family, static bottleneck", "hyperprior_z_context": "hyperprior with z under the context coder"}
    for k, label in labels.items():
        if k in r["bd_rate"]:
            v = r["bd_rate"][k]
            L.append(f"| {label} | " + " | ".join(C.fmt(v[m], '+.2f') + " %" if isinstance(v[m], float) else str(v[m]) for m in ("cubic", "pchip")) + " |")
    if r.get("anchor_dominated_qualities"):
        L += ["", f"The anchor's {', '.join(f'q{q}' for q in r['anchor_dominated_qualities'])}: dominated by another of its points (fewer "
              "bits and more PSNR), so its PSNR does not increase with λ and the BD fits above pass through a fold. Rate at equal PSNR "
              "against the anchor's non-dominated points instead (log-rate interpolated linearly in PSNR; factorized points outside "
              "their PSNR range left out):"]
    if r.get("equal_psnr", {}).get("factorized_adaptive"):
        L += ["", "| factorized point (PSNR dB) | " + " | ".join(f"{e['psnr']:.2f}" for e in r["equal_psnr"].get("factorized_adaptive", []))
              + " | mean |", "|---|" + "---|" * (len(r["equal_psnr"].get("factorized_adaptive", [])) + 1)]
        for k in ("factorized_adaptive", "factorized_backward", "factorized_static"):
            rows = r["equal_psnr"].get(k, [])
            if rows:
                mean = sum(e["diff_pct"] for e in rows) / len(rows)
                L.append(f"| {labels[k]}: rate vs the hyperprior at equal PSNR | " + " | ".join(f"{e['diff_pct']:+.2f} %" for e in rows)
                         + f" | {mean:+.2f} % |")
    if "decode" in r:
        d, mac = r["decode"], r["mac_per_px"]
        L += ["", f"Decoder cost at 768x512 ({d['image']}; median of {d['reps']} alternating decodes): factorized with the default coder "
              f"{d['seconds']['factorized_default']:.3f} s, {mac['factorized_decoder']:.0f} MAC/px (of which p̂'s synthesis "
              f"{mac['factorized_pdf_synthesis']:.2f}); hyperprior {d['seconds']['hyperprior']:.3f} s, {mac['hyperprior_decoder']:.0f} MAC/px "
              f"(of which h_s {mac['hyperprior_h_s']:.0f}). Time ratio factorized / hyperprior: {d['ratio_factorized_to_hyperprior']:.2f}x."]
    return L + [""]
