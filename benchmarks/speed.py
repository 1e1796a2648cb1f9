"""Section 3: compress + decompress time of a 768x512 image in each way of coding, vs static, side by side."""

from __future__ import annotations

import copy
import time
from typing import Any, Dict

import torch

import _helpers as H
import common as C


def _coding_image():
    """A 768x512 photograph: the photo corpus' first test photograph, or scikit-image's coffee resized."""
    import torchvision.transforms.functional as TF
    from PIL import Image

    from encdist.datasets import PhotoCorpus

    ds = PhotoCorpus("test")
    img, name = ds.image(0), ds.names[0]
    if img.size != (768, 512):
        img, name = img.resize((768, 512), Image.BICUBIC), f"{name} resized to 768x512"
    return TF.to_tensor(img).unsqueeze(0), f"{name} ({ds.source})"


def _call_timer(model, mode: str) -> "H.CallTimer":
    """Timers around the steps of the codec's own compress/decompress (real code path)."""
    import encdist.codec.backward as bw
    import encdist.codec.bitstream as bs
    import encdist.latent_codecs.adaptive as lc
    import encdist.codec.pdf_model as pm

    codec, pdf = model.adaptive_codec, model.adaptive_codec.pdf_model
    ct = H.CallTimer()
    ct.hook(model.g_a, "g_a (analysis)")
    ct.hook(model.g_s, "g_s (synthesis)")
    ct.add(lc, "hard_histogram", "histogram p")
    ct.hook(pdf.g_a, "side: pdf analysis")
    ct.add(pdf.entropy_bottleneck, "compress", "side: entropy coding")
    ct.add(pm, "entropy_bottleneck_decompress", "side: entropy decoding")
    ct.add(pdf, "synthesize", "p̂ synthesis (g_s of the pdf model + softmax)")
    ct.add(codec, "adaptive_tables", "CDF tables from p̂")
    ct.add(lc, "channel_bits", "fixed tables: per-channel bits")
    if mode == "static":
        ct.add(lc, "encode_with_indexes", "y rANS encode")
    else:
        ct.add(lc, "encode_with_indexes", lambda n: "y rANS encode" if n == 0 else "y rANS encode, 2nd table (fallback: both coded)")
    ct.add(lc, "decode_with_indexes", "y rANS decode")
    ct.add(bw.AdaptedPlan, "__init__", "backward: block tables + exact bits (encoder)")
    ct.add(bw.AdaptedPlan, "encode", lambda n: "y rANS encode, backward tables" if n == 0 else "y rANS encode, backward tables, 2nd mode")
    ct.add(bw, "decode_adapted", "backward: block-by-block tables + rANS decode")
    ct.add(bs, "write_side", "header / crc")
    ct.add(bs, "check_crc", "crc check")
    return ct


@torch.no_grad()
def section_coding(args, prof, model, model_desc) -> Dict[str, Any]:

    model = copy.deepcopy(model).cpu().eval()
    model.update()
    codec = model.adaptive_codec
    x, image_name = _coding_image()
    reps, warm = prof["coding_reps"], prof["coding_warmup"]
    from encdist.latent_codecs import CODING_MODES, CodingOptions

    # (name, options): the named ways of coding (encdist.latent_codecs.CODING_MODES).
    arms = [(name, CODING_MODES[name] or codec.options) for name in ("static", "adaptive", "fallback", "paper", "static_backward")]
    if args.refine_steps:
        arms.append(("adaptive_refined", CodingOptions(refine_steps=int(args.refine_steps))))
    times = {a[0]: {"encode": [], "decode": []} for a in arms}
    sizes = {}
    C.log(f"coding speed: 768x512 image, batch 1, CPU, {warm} warm-up + {reps} reps per mode, alternating")
    for r in range(warm + reps):
        order = arms[r % len(arms):] + arms[: r % len(arms)]
        for name, options in order:
            t0 = time.perf_counter()
            enc = model.compress(x, options)
            t1 = time.perf_counter()
            model.decompress(enc["strings"], enc["shape"], options)
            t2 = time.perf_counter()
            if r >= warm:
                times[name]["encode"].append(t1 - t0)
                times[name]["decode"].append(t2 - t1)
            sizes[name] = {"y_bytes": sum(len(s) for s in enc["strings"][0]), "side_bytes": sum(len(s) for s in enc["strings"][-1]),
                           "mode_byte": enc["strings"][-1][0][0] if enc["strings"][-1][0] else None}
    res: Dict[str, Any] = {"model": model_desc, "image": image_name, "reps": reps, "warmup": warm,
                           "refine_steps": int(args.refine_steps),
                           "threads": torch.get_num_threads(), "modes": {}}
    for name in times:
        e, d = H.median(times[name]["encode"]), H.median(times[name]["decode"])
        tot = H.median([a + b for a, b in zip(times[name]["encode"], times[name]["decode"])])
        res["modes"][name] = {"encode_s": e, "decode_s": d, "total_s": tot, "raw": times[name], **sizes[name]}
    st = res["modes"]["static"]
    for name in [a[0] for a in arms[1:]]:
        m = res["modes"][name]
        m["ratio_encode"], m["ratio_decode"], m["ratio_total"] = m["encode_s"] / st["encode_s"], m["decode_s"] / st["decode_s"], m["total_s"] / st["total_s"]
    ratio = res["modes"]["adaptive"]["ratio_total"]
    res["target"] = {"target": f"adaptive enc+dec <= {C.TARGET_CODING_RATIO:g}x static", "value": ratio, "met": ratio <= C.TARGET_CODING_RATIO}
    if "adaptive_refined" in res["modes"]:
        rr = res["modes"]["adaptive_refined"]["ratio_total"]
        res["target_refined"] = {"target": f"adaptive + refinement ({args.refine_steps} steps) enc+dec <= {C.TARGET_CODING_RATIO:g}x static",
                                 "value": rr, "met": rr <= C.TARGET_CODING_RATIO}
    # Breakdown: the same compress/decompress calls, with timers around their steps (separate reps).
    try:
        laps: Dict[str, Dict[str, list]] = {}
        for r in range(max(2, reps)):
            for name, options in (arms[1:2] + arms[:1]) if r % 2 else arms[:2]:
                ct = _call_timer(model, name)
                try:
                    t0 = time.perf_counter()
                    enc = model.compress(x, options)
                    t1 = time.perf_counter()
                    e_laps = ct.take()
                    model.decompress(enc["strings"], enc["shape"], options)
                    t2 = time.perf_counter()
                    d_laps = ct.take()
                finally:
                    ct.close()
                e_laps["other (untimed code)"] = (t1 - t0) - sum(e_laps.values())
                d_laps["other (untimed code)"] = (t2 - t1) - sum(d_laps.values())
                for side, lp in (("encode", e_laps), ("decode", d_laps)):
                    laps.setdefault(name, {}).setdefault(side, []).append(lp)
        res["breakdown_median_s"] = {name: {side: H.median_laps(v) for side, v in d.items()} for name, d in laps.items()}
        res["breakdown_missing_timers"] = ct.missing
    except Exception as e:  # timers wrap codec internals; report rather than fail
        res["breakdown_error"] = f"{type(e).__name__}: {e}"
    return res

