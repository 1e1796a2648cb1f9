#!/usr/bin/env python
"""encdist benchmarks: rate of every way of coding, training throughput, coding speed, side-model cost.

Everything is measured in this one run, on this machine; nothing is hard-coded.
Timing claims are ratios of runs made side by side (alternating), not absolute
times. This is a benchmark, not a test: it reports each target and whether it
was met, and never fails because a target was missed.

.. code-block:: bash

    make bench                                   # full profile
    .venv/bin/python benchmarks/bench.py --quick # smoke run, tiny epochs (numbers meaningless)
    .venv/bin/python benchmarks/bench.py --sections cost,coding --machine mybox

Sections (one module each; :mod:`report` renders them all):

1. **rate** (:mod:`rate`): the committed RD family of frozen transforms (``weights/``), the
   distribution codec trained per quality as the quickstart does, the photo corpus' test split
   coded with real bitstreams in five ways plus the static anchor; per point and BD-rates.
2. **contexts** (:mod:`contexts`): the context coder's rate, ablation and time on the family (no p̂).
3. **anchor** (:mod:`anchor`): ``bmshj2018-hyperprior`` trained with the same recipe; BD-rates against it.
4. **throughput** (:mod:`throughput`): images/s of the adaptive stage's training step vs a full step.
5. **coding** (:mod:`speed`): compress + decompress of a 768x512 photograph in each way, vs static.
6. **cost** (:mod:`cost`): parameters and MACs per pixel of the distribution codec vs a hyperprior.
7. **memory** (:mod:`memory`): peak memory the entropy coding adds at 4K and 8K, M=192 and M=320.

Writes ``benchmarks/results/<machine>.md`` and ``.json`` (``<machine>-quick`` with
``--quick``), the rate section's results JSONs and RD figure in ``<machine>-rd/``, and prints
the Markdown at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402
import torch  # noqa: E402
from anchor import section_anchor  # noqa: E402
from contexts import section_contexts  # noqa: E402
from cost import section_cost  # noqa: E402
from memory import section_memory  # noqa: E402
from rate import reference_model, section_rate  # noqa: E402
from report import render_md  # noqa: E402
from speed import section_coding  # noqa: E402
from throughput import section_throughput  # noqa: E402

SECTIONS = ("rate", "contexts", "anchor", "throughput", "coding", "cost", "memory")

PROFILES: Dict[str, Dict[str, Any]] = {
    # None: the config's own value (quickstart.yaml).
    # paper_*: the distribution codec trained for the paper's coder; adaptive_*: fine-tuned from it for the
    # default coder (benchmarks/rate.py); ablation_*: the corpus-size ablation's shorter budget; capacity_sizes:
    # (N, M) of the paper's codec trained again at the family's lowest and highest λ with the paper_* budget (evidence.py).
    # The paper's codec needs its steps (128 x 512 crops = 8,192 steps; at 48 x 256 its q1 codec coded at twice
    # the static rate); the fine-tuning converges in a few hundred (12 x 256 crops, about 4 min per quality here).
    "full": dict(paper_epochs=128, paper_samples=512, adaptive_epochs=12, adaptive_samples=256, adaptive_lr=5e-4,
                 ablation_images=(4, 8, 16), ablation_epochs=60, ablation_samples=256, capacity_sizes=((64, 32),), rate_images=None,
                 tp_steps=8, tp_warmup=2, tp_batch=8, tp_size=256, coding_reps=7, coding_warmup=1,
                 memory_sizes=((2160, 3840), (4320, 7680)), memory_channels=(192, 320)),
    "quick": dict(paper_epochs=1, paper_samples=16, adaptive_epochs=1, adaptive_samples=16, adaptive_lr=5e-4,
                  ablation_images=(), ablation_epochs=1, ablation_samples=16, capacity_sizes=(), rate_images=2, context_crops=4,
                  tp_steps=2, tp_warmup=1, tp_batch=8, tp_size=256, coding_reps=2, coding_warmup=0,
                  memory_sizes=((512, 768),), memory_channels=(192,)),
}


def parse_args(argv=None):
    default_machine = C.sanitize(f"{platform.node() or 'host'}-{os.cpu_count()}cpu")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny epochs, few steps/reps (numbers not meaningful)")
    p.add_argument("--machine", default=None, help=f"machine name for the result files (default {default_machine}, '-quick' appended with --quick)")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    p.add_argument("--out-dir", default=str(C.BENCH_DIR / "results"))
    p.add_argument("--work-dir", default=str(C.BENCH_DIR / "_work"), help="trained checkpoints (git-ignored; reused by later runs)")
    p.add_argument("--fresh", action="store_true", help="retrain: delete this profile's cached checkpoints first")
    p.add_argument("--rate-dir", help="re-evaluate the trained models of an earlier run's work folder (benchmarks/_work/<profile>-<key>) "
                                      "as they are, whatever code trained them (the report names it), training only what is missing")
    p.add_argument("--paper-epochs", type=int, help="epochs of the paper-objective distribution codec")
    p.add_argument("--paper-samples", type=int, help="train crops per paper-objective epoch")
    p.add_argument("--adaptive-epochs", type=int, help="epochs of the default-objective fine-tuning")
    p.add_argument("--adaptive-samples", type=int, help="train crops per default-objective epoch")
    p.add_argument("--ablation-images", help="comma-separated train-photo counts of the corpus-size ablation ('' skips it)")
    p.add_argument("--capacity-sizes", help="comma-separated NxM sizes of the paper's codec's capacity ablation, e.g. 64x32 ('' skips it)")
    p.add_argument("--tp-steps", type=int, help="measured throughput steps per arm")
    p.add_argument("--tp-batch", type=int)
    p.add_argument("--coding-reps", type=int)
    p.add_argument("--refine-steps", type=int, default=30,
                   help="encoder-side refinement steps of the 'adaptive + refinement' columns (beyond the paper; 0 skips them)")
    p.add_argument("--device", default="auto", help="device of the throughput section: auto, cpu, cuda")
    p.add_argument("--threads", type=int, help="torch threads here and OMP_NUM_THREADS of the training runs (default: leave as is)")
    p.add_argument("--jobs", type=int, default=1,
                   help="distribution codecs trained at a time in the rate section (each a compressai-train process; "
                        "the timed sections run after them)")
    p.add_argument("--profile", action="store_true", help="always profile the adaptive training step (default: only when below target)")
    args = p.parse_args(argv)
    if args.machine is None:
        args.machine = default_machine + ("-quick" if args.quick else "")
    args.machine = C.sanitize(args.machine)
    return args


def _sizes(text: str):
    """``"64x32,48x24"`` as ``((64, 32), (48, 24))``; ``None`` if any item is not ``NxM`` of positive integers."""
    sizes = []
    for item in (v.strip().lower() for v in text.split(",")):
        if item:
            parts = item.split("x")
            if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
                return None
            sizes.append((int(parts[0]), int(parts[1])))
    return tuple(sizes)


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    prof = dict(PROFILES["quick" if args.quick else "full"])
    overrides = {"paper_epochs": args.paper_epochs, "paper_samples": args.paper_samples,
                 "adaptive_epochs": args.adaptive_epochs, "adaptive_samples": args.adaptive_samples,
                 "tp_steps": args.tp_steps, "tp_batch": args.tp_batch, "coding_reps": args.coding_reps}
    prof.update({k: v for k, v in overrides.items() if v})
    if args.ablation_images is not None:
        prof["ablation_images"] = tuple(int(v) for v in args.ablation_images.split(",") if v.strip())
    if args.capacity_sizes is not None:
        prof["capacity_sizes"] = _sizes(args.capacity_sizes)
        if prof["capacity_sizes"] is None:
            print(f"bench.py: --capacity-sizes wants sizes NxM of positive integers, e.g. 64x32; got {args.capacity_sizes!r}", file=sys.stderr)
            return 2
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        print(f"bench.py: unknown section(s) {bad}; known: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)

    import encdist  # noqa: F401  (registers models)

    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    res: Dict[str, Any] = {"environment": C.environment(args, device), "profile": prof, "sections": {}, "targets": {}}
    C.log(f"machine {args.machine}, profile {'quick' if args.quick else 'full'}, sections {', '.join(sections)}")

    def run(name, fn, *a):
        if name not in sections:
            return None
        t = time.perf_counter()
        try:
            out = fn(*a)
        except Exception:
            out = {"error": traceback.format_exc()}
            C.log(f"section {name} FAILED:\n{out['error']}")
        out["wall_s"] = time.perf_counter() - t
        res["sections"][name] = out
        C.log(f"section {name}: {out['wall_s']:.0f} s")
        return out

    rate = run("rate", section_rate, args, prof, work)
    if rate and "targets" in rate:
        res["targets"].update(rate["targets"])
    ctx = run("contexts", section_contexts, args, prof)
    if ctx and "targets" in ctx:
        res["targets"].update(ctx["targets"])
    anc = run("anchor", section_anchor, args, prof, rate if rate and "error" not in rate else None)
    if anc and "targets" in anc:
        res["targets"].update(anc["targets"])
    if "throughput" in sections or "coding" in sections:
        model, desc = reference_model(rate if rate and "error" not in rate else None, work, args)
        tp = run("throughput", section_throughput, args, prof, model, desc, device)
        if tp and "target" in tp:
            res["targets"]["train_speedup"] = tp["target"]
        cd = run("coding", section_coding, args, prof, model, desc)
        if cd and "target" in cd:
            res["targets"]["coding_ratio"] = cd["target"]
        if cd and "target_refined" in cd:
            res["targets"]["coding_ratio_refined"] = cd["target_refined"]
    run("cost", section_cost, args)
    mem = run("memory", section_memory, args, prof)
    if mem and "target" in mem:
        res["targets"]["memory_8k"] = mem["target"]

    res["wall_s"] = time.perf_counter() - t_start
    res["environment"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The measurements first: a report that fails to render loses no measured number (report.py re-renders).
    (out_dir / f"{args.machine}.json").write_text(json.dumps(C.clean(res), indent=1, default=C.json_default) + "\n")
    md = render_md(res)
    (out_dir / f"{args.machine}.md").write_text(md)
    print("\n" + md, flush=True)
    C.log(f"wrote {out_dir / (args.machine + '.md')} and .json in {res['wall_s'] / 60:.1f} min")
    return 0



if __name__ == "__main__":
    sys.exit(main())
