"""The paper's codec trained past the benchmark's budget: its share of the gap against steps.

Continues the rate section's paper-objective run of one quality (``--rate-dir``'s
``paper_root``): each round starts from the previous round's last checkpoint (weights only,
a fresh schedule) and trains the full profile's budget again (128 epochs of 512 crops, 8,192
steps here). After each round it writes the shares of the static→ideal gap on the train and test
splits, in estimated bits (:func:`evidence.share_estimates`, the same estimate the report's
evidence uses), to ``--out``/``shares.json``. Not part of ``bench.py`` (hours per quality
on a CPU); an experiment for issue 20's question, does the paper's codec need more steps::

    python benchmarks/longer_paper.py --rate-dir benchmarks/_work/full-b418a84d --quality 1 --rounds 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import common as C
import evidence as E
import rate
from bench import PROFILES


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate-dir", required=True, help="a full benchmark work folder holding paper_root/")
    p.add_argument("--quality", type=int, required=True)
    p.add_argument("--rounds", type=int, default=1, help="rounds of 8,192 more steps each")
    p.add_argument("--out", help="output folder (default: <rate-dir>/longer_paper/q<quality>)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    import encdist  # noqa: F401  (registers models)
    from encdist.training.run_folder import RunFolder

    work = Path(args.rate_dir).resolve()
    out = Path(args.out) if args.out else work / "longer_paper" / f"q{args.quality}"
    paper_root, _ = C.work_run(work, "paper", args.quality)
    run = rate.completed_run(paper_root, args.quality, any_code=True)
    if run is None:
        print(f"longer_paper.py: no completed paper-objective run of quality {args.quality} under {paper_root}")
        return 2
    full = PROFILES["full"]
    rows = []

    def record(run: Path) -> None:
        log = [json.loads(line) for line in (run / "results" / "epochs.jsonl").read_text().splitlines() if line.strip()]
        steps = (rows[-1]["steps"] if rows else 0) + int(log[-1]["train_steps"])
        model, _, _ = C.load_model(run)
        shares = {k: v["gap_closed_pct"] for k, v in E.share_estimates(model, top=0).items()}
        rows.append({"steps": steps, "run": C.rel(run), "shares_pct": shares})
        C.log(f"q{args.quality}, {steps} steps: share of the gap {shares}")
        out.mkdir(parents=True, exist_ok=True)
        (out / "shares.json").write_text(json.dumps(rows, indent=1))

    record(run)
    for r in range(1, args.rounds + 1):
        init = RunFolder(run).checkpoint()
        budget = C.budget_overrides(full["paper_epochs"], full["paper_samples"])
        run = rate.train_paper(args.quality, out / f"round{r}", [*budget, f"++paths.model_checkpoint={init}"],
                               out / f"round{r}.log", any_code=True)
        record(run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
