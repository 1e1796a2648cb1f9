"""Section 4: parameters and MACs per pixel of the distribution codec vs a scale hyperprior's h_a/h_s."""

from __future__ import annotations

from typing import Any, Dict

import torch

import _helpers as H


def section_cost(args) -> Dict[str, Any]:
    from compressai.models import FactorizedPrior, ScaleHyperprior

    from encdist.codec.pdf_model import PdfModel

    H_, W_ = 512, 768
    pixels = H_ * W_
    rows = []

    def add(name, family, module_a, fn_a, module_s, fn_s, extra_params=0, note=""):
        ma, ms = H.count_macs(fn_a, module_a), H.count_macs(fn_s, module_s)
        fa, fs = H.count_flop_macs(fn_a), H.count_flop_macs(fn_s)
        pa, ps = H.num_params(module_a), H.num_params(module_s)
        rows.append({
            "name": name, "family": family,
            "params_analysis": pa, "params_synthesis": ps, "params_entropy_model": extra_params,
            "macs_analysis": ma, "macs_synthesis": ms,
            "mac_per_px_analysis": ma / pixels, "mac_per_px_synthesis": ms / pixels, "mac_per_px_total": (ma + ms) / pixels,
            "flopcounter_mac_per_px_total": (fa + fs) / pixels, "note": note,
        })

    torch.manual_seed(0)
    with torch.no_grad():
        for C, N, M in ((192, 32, 16), (320, 64, 32), (96, 32, 16)):
            pdf = PdfModel(C, 256, N=N, M=M).eval()
            p = torch.softmax(torch.randn(1, C, 256), -1)
            v = pdf.g_a(p)
            add(f"distribution codec C={C}, (N,M)=({N},{M})", "pdf", pdf.g_a, lambda: pdf.g_a(p), pdf.g_s, lambda: pdf.g_s(v),
                H.num_params(pdf.entropy_bottleneck),
                "paper size" if C != 96 else "this repo's quickstart latent (C=96)")
        for N, M in ((128, 192), (192, 320)):
            hp = ScaleHyperprior(N=N, M=M).eval()
            y = torch.randn(1, M, H_ // 16, W_ // 16)
            z = hp.h_a(torch.abs(y))
            add(f"scale hyperprior h_a/h_s, (N,M)=({N},{M})", "hyperprior", hp.h_a, lambda: hp.h_a(torch.abs(y)), hp.h_s, lambda: hp.h_s(z),
                H.num_params(hp.entropy_bottleneck), f"latent C={M}")
        fp = FactorizedPrior(N=128, M=192).eval()
        x = torch.rand(1, 3, H_, W_)
        yy = fp.g_a(x)
        add("bmshj2018-factorized g_a/g_s, (N,M)=(128,192)", "transforms", fp.g_a, lambda: fp.g_a(x), fp.g_s, lambda: fp.g_s(yy),
            H.num_params(fp.entropy_bottleneck), "the main transforms, for scale")
    comparison = {}
    for C, hp_name in ((192, "(N,M)=(128,192)"), (320, "(N,M)=(192,320)")):
        pr = next(r for r in rows if r["family"] == "pdf" and f"C={C}," in r["name"])
        hr = next(r for r in rows if r["family"] == "hyperprior" and hp_name in r["name"])
        comparison[f"C={C}"] = {
            "analysis_params": [pr["params_analysis"], hr["params_analysis"]],
            "analysis_mac_per_px": [pr["mac_per_px_analysis"], hr["mac_per_px_analysis"]],
            "all_params": [pr["params_analysis"] + pr["params_synthesis"] + pr["params_entropy_model"],
                           hr["params_analysis"] + hr["params_synthesis"] + hr["params_entropy_model"]],
            "all_mac_per_px": [pr["mac_per_px_total"], hr["mac_per_px_total"]],
        }
    return {"image": f"{W_}x{H_}", "pixels": pixels, "rows": rows, "comparison": comparison,
            "method": "forward hooks on Conv1d/Conv2d/ConvTranspose1d/ConvTranspose2d: conv MACs = output elements x in_channels/groups x kernel size; "
                      "transposed conv MACs = input elements x out_channels/groups x kernel size (the products it computes). "
                      "Cross-check: torch.utils.flop_counter.FlopCounterMode FLOPs/2 (matmuls and convolutions, including GDN's F.conv2d). "
                      "Not counted by either: biases, ReLU, softmax, histogram and CDF building, entropy coding."}

