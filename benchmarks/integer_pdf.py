"""What the integer-only p̂ costs against p̂ in float, at every λ of the committed family (issue 19).

The decoder builds p̂'s tables with integers only (:mod:`encdist.codec.fixed_point`); this
measures the rate that costs against the float tables it replaced, on the test split:

* a distribution codec per quality, fitted here for ``--steps`` Adam steps to histograms of
  256×256 crops of the train split's latents (a short fit: the integer path's precision,
  not p̂'s quality, is what is measured; both paths use the same p̂ network and side strings);
* per test photograph, the side string once, then the y bits of the paper's coder (fixed p̂
  tables) and of the default's p̂-started backward adaptation, exactly (the tables' own
  bits), under the integer tables and under the float ones.

    python benchmarks/integer_pdf.py [--steps 300] [--out benchmarks/results/integer_pdf.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _photos(split: str):
    import torchvision.transforms as T

    from encdist.datasets import PhotoCorpus

    ds = PhotoCorpus(split, transform=T.ToTensor())
    return [ds[i].unsqueeze(0) for i in range(len(ds))]


def _model(quality: int):
    from encdist.models import FactorizedPriorPdf
    from encdist.recipes.base_family import weights_path
    from encdist.training.pretrained import load_state_dict_file

    sd = {k: v.float() if v.is_floating_point() else v for k, v in load_state_dict_file(weights_path(quality)).items()}
    model = FactorizedPriorPdf(128, 192)
    model.load_pretrained_transforms(sd, f"q{quality}")
    return model.eval()


def _fit(model, train, steps: int, seed: int = 0) -> None:
    codec = model.adaptive_codec
    g = torch.Generator().manual_seed(seed)
    hists = []
    with torch.no_grad():
        for x in train:
            H, W = x.shape[-2:]
            for _ in range(4):
                r, c = (int(torch.randint(0, s - 256 + 1, (1,), generator=g)) for s in (H, W))
                hists.append(codec._hard_histogram(model.g_a(x[..., r : r + 256, c : c + 256])))
    p = torch.cat(hists)
    pdf = codec.pdf_model
    opt = torch.optim.Adam(pdf.parameters(), lr=1e-3)
    pdf.train()
    for _ in range(steps):
        out = pdf(p)
        loss = (-(p * 256 * torch.log2(out["p_hat"].clamp_min(1e-9))).sum() - torch.log2(out["likelihoods"]).sum()
                + pdf.entropy_bottleneck.loss()) / len(p)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pdf.eval()
    model.update(force=True)


def _measure(model, x) -> dict:
    from encdist.codec.coding import channel_bits, static_tables

    codec = model.adaptive_codec
    with torch.no_grad():
        y = model.g_a(x)
        sym = codec._symbols(y)[0]
        p = codec._hard_histogram(y)[0]
        payload = codec.pdf_model.compress(p.unsqueeze(0))["strings"][0]
        integer = codec.side_tables(payload, ideal=False)
        f_cdf, f_len, f_off = codec.adaptive_tables(codec.pdf_model.decompress([payload]))
        floating = (f_cdf[0], f_len, f_off)
        static = static_tables(codec.entropy_bottleneck)
        out = {"side_bits": 8 * len(payload), "pixels": x.shape[-2] * x.shape[-1]}
        for name, tables in (("integer", integer), ("float", floating)):
            out[f"paper_{name}"] = float(channel_bits(sym, *tables).sum())
            out[f"backward_{name}"] = float(codec._backward_family(sym, tables, static).bits()[0].sum())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "integer_pdf.json"))
    args = ap.parse_args(argv)
    from encdist.recipes.base_family import FAMILY, verify, weights_path

    bad = set(verify())
    train, test = _photos("train"), _photos("test")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    rows = []
    for stage in sorted(FAMILY, key=lambda s: s.quality):
        if weights_path(stage.quality).name in bad or not weights_path(stage.quality).is_file():
            continue
        t0 = time.time()
        torch.manual_seed(0)
        model = _model(stage.quality)
        _fit(model, train, args.steps)
        per = [_measure(model, x) for x in test]
        tot = {k: sum(r[k] for r in per) for k in per[0]}
        row = {"quality": stage.quality, "images": len(per)}
        for coder in ("paper", "backward"):
            f, i = tot[f"{coder}_float"] + tot["side_bits"], tot[f"{coder}_integer"] + tot["side_bits"]
            row[f"{coder}_bpp_float"] = f / tot["pixels"]
            row[f"{coder}_bpp_integer"] = i / tot["pixels"]
            row[f"{coder}_cost_percent"] = 100 * (i - f) / f
        rows.append(row)
        print(f"q{stage.quality}: paper {row['paper_cost_percent']:+.4f} %, backward from p̂ {row['backward_cost_percent']:+.4f} % "
              f"({time.time() - t0:.0f} s)", flush=True)
    result = {"commit": commit, "command": "python benchmarks/integer_pdf.py " + " ".join(argv or sys.argv[1:]),
              "steps": args.steps, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("| quality | paper, float p̂ (bpp) | paper, integer p̂ | cost | backward from p̂, float | integer | cost |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['quality']} | {r['paper_bpp_float']:.4f} | {r['paper_bpp_integer']:.4f} | {r['paper_cost_percent']:+.3f} % "
              f"| {r['backward_bpp_float']:.4f} | {r['backward_bpp_integer']:.4f} | {r['backward_cost_percent']:+.3f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
