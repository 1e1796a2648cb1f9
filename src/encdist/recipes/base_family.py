"""The RD family of frozen transforms: ``make base-models``.

``bmshj2018-factorized`` with the paper's sizes (N=128, M=192) at several λ of the paper's
table (:data:`encdist.quality.QUALITY_LMBDA`), trained on the offline photo corpus
(``make data``) with ``compressai-train --config-name=base_factorized``. A few thousand
steps fit this project's 2-core budget, so one quality is trained from scratch and the
others are fine-tuned from a neighbour (weights only, ``++paths.model_checkpoint``, new run
and optimizer), the usual CompressAI ladder.

Each stage writes ``weights/bmshj2018-factorized-N128-M192-q<q>.pth.tar`` (float16 state
dict) and its entry in ``weights/MANIFEST.json``: SHA-256, quality, λ, steps, the stage it
started from, the exact command, the code's git version, the training run's test-split RD point and its valid
PSNR after every epoch. A stage whose file is present and matches its checksum is skipped,
so the command retrains only what is missing.

    python -m encdist.recipes.base_family            # all missing stages
    python -m encdist.recipes.base_family --check    # verify the files against the manifest
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from encdist.errors import CheckpointError, EncdistError
from encdist.provenance import code_version
from encdist.quality import QUALITY_LMBDA

__all__ = ["Stage", "FAMILY", "weights_dir", "weights_path", "load_manifest", "verify", "run", "main"]

N, M = 128, 192
#: Overrides that only place this run's files; left out of the manifest's command.
_RUN_LOCAL = ("++env.aim.run_hash=", "++paths._common_root=", "++export.path=")


@dataclass(frozen=True)
class Stage:
    """One member of the family: ``quality`` trained for ``epochs`` from ``init`` (None: scratch)."""

    quality: int
    epochs: int
    lr: float
    init: Optional[int] = None


#: The recipe, in order (a stage's ``init`` comes before it). 250 steps per epoch.
#: q1 widens the family's PSNR span downwards: a step down the ladder from q3, where the
#: rate term moves the PSNR quickly. q8 widens it upwards: the fine-tuned q7 kept most of the
#: under-trained base's distortion, so its stage is a longer one (4,500 steps) at twice the λ.
FAMILY: Sequence[Stage] = (
    Stage(quality=6, epochs=16, lr=1e-3),
    Stage(quality=7, epochs=3, lr=3e-4, init=6),
    Stage(quality=8, epochs=18, lr=3e-4, init=7),
    Stage(quality=5, epochs=3, lr=3e-4, init=6),
    Stage(quality=4, epochs=3, lr=3e-4, init=5),
    Stage(quality=3, epochs=3, lr=3e-4, init=5),
    Stage(quality=1, epochs=3, lr=3e-4, init=3),
)


def weights_dir() -> Path:
    """``$ENCDIST_WEIGHTS`` or the repository's ``weights/`` folder."""
    env = os.environ.get("ENCDIST_WEIGHTS")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "weights"


#: The families this recipe trains: model name -> its config (``conf/<name>.yaml``). The
#: hyperprior is the anchor a user would pick instead, trained with the same recipe.
MODELS = {"bmshj2018-factorized": "base_factorized", "bmshj2018-hyperprior": "base_hyperprior"}
DEFAULT_MODEL = "bmshj2018-factorized"


def weights_path(quality: int, folder: Optional[Path] = None, model: str = DEFAULT_MODEL) -> Path:
    return (folder or weights_dir()) / f"{model}-N{N}-M{M}-q{int(quality)}.pth.tar"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(folder: Optional[Path] = None) -> Dict[str, dict]:
    path = (folder or weights_dir()) / "MANIFEST.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


def verify(folder: Optional[Path] = None) -> List[str]:
    """Names of the manifest's files that are missing or do not match their SHA-256."""
    folder = folder or weights_dir()
    bad = []
    for name, entry in load_manifest(folder).items():
        p = folder / name
        if not p.is_file() or _sha256(p) != entry.get("sha256"):
            bad.append(name)
    return bad


def _half_state_dict(path: Path) -> dict:
    from encdist.training.pretrained import load_state_dict_file

    sd = load_state_dict_file(path)
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def _history(run_root: Path) -> List[dict]:
    path = run_root / "results" / "epochs.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            rows.append({"epoch": r["epoch"], "train_steps": r["train_steps"],
                         "valid_psnr": r.get("valid/psnr"), "valid_bpp_loss": r.get("valid/bpp_loss")})
    return rows


def train_stage(
    stage: Stage, folder: Path, work: Path, threads: int, extra: Sequence[str] = (), model: str = DEFAULT_MODEL
) -> dict:
    from encdist.training.aim_logger import new_run_hash

    run_hash = new_run_hash()
    export = work / "base" / f"{model}-q{stage.quality}.pth"
    args = [
        f"--config-name={MODELS[model]}",
        f"hp.quality={stage.quality}",
        f"engine.num_epochs={stage.epochs}",
        f"optimizer.net.lr={stage.lr}",
        f"++env.aim.run_hash={run_hash}",
        f"++paths._common_root={work}",
        f"++export.path={export}",
        *extra,
    ]
    if stage.init is not None:
        args.append(f"++paths.model_checkpoint={weights_path(stage.init, folder, model)}")
    cmd = [sys.executable, "-m", "encdist.cli.train", *args]
    print(f"[base-models] {model} q{stage.quality}: {' '.join(shlex.quote(a) for a in cmd[1:])}", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.time()
    subprocess.run(cmd, check=True, env=env)
    minutes = (time.time() - t0) / 60
    out = weights_path(stage.quality, folder, model)
    tmp = out.with_name(out.name + ".tmp")
    torch.save({"state_dict": _half_state_dict(export), "model_name": model}, tmp)
    os.replace(tmp, out)
    run_root = work / "runs" / run_hash
    infer = json.loads((run_root / "results" / "infer.json").read_text())["results"]
    history = _history(run_root)
    return {
        "sha256": _sha256(out),
        "model": model,
        "N": N,
        "M": M,
        "quality": stage.quality,
        "lambda": QUALITY_LMBDA[stage.quality],
        "steps": history[-1]["train_steps"] if history else None,
        "epochs": stage.epochs,
        "lr": stage.lr,
        "init": weights_path(stage.init, folder, model).name if stage.init is not None else None,
        "command": "compressai-train " + " ".join(
            shlex.quote(a.replace(str(folder), "weights")) for a in args if not a.startswith(_RUN_LOCAL)
        ),
        "train_minutes": round(minutes, 1),
        "code": code_version(),
        "threads": threads,
        "test_split_float32": {k: infer[k][0] for k in ("bpp", "psnr-rgb", "ms-ssim") if k in infer},
        "valid_history": history,
    }


def run(
    stages: Sequence[Stage] = FAMILY,
    folder: Optional[Path] = None,
    work: Optional[Path] = None,
    threads: int = 2,
    extra: Sequence[str] = (),
    model: str = DEFAULT_MODEL,
) -> Dict[str, dict]:
    """Train every stage whose weights are missing or stale; returns the manifest."""
    folder = folder or weights_dir()
    folder.mkdir(parents=True, exist_ok=True)
    work = work or Path(os.environ.get("ENCDIST_ROOT") or "encdist_runs") / "base_family"
    manifest = load_manifest(folder)
    if model not in MODELS:
        raise EncdistError(f"unknown model {model!r}: the recipe trains {', '.join(MODELS)}")
    for stage in stages:
        out = weights_path(stage.quality, folder, model)
        entry = manifest.get(out.name)
        if entry and out.is_file() and _sha256(out) == entry.get("sha256"):
            print(f"[base-models] {out.name} present and matches the manifest", flush=True)
            continue
        if stage.init is not None and not weights_path(stage.init, folder, model).is_file():
            raise CheckpointError(f"stage {model} q{stage.quality} starts from q{stage.init}, whose weights are missing")
        entry = train_stage(stage, folder, work, threads, extra, model)
        # Re-read: another invocation (--only) may have added its stage meanwhile.
        manifest = load_manifest(folder)
        manifest[out.name] = entry
        tmp = folder / f"MANIFEST.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, folder / "MANIFEST.json")
    return manifest


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m encdist.recipes.base_family", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only verify the weights against the manifest")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or 2))
    parser.add_argument("--only", type=int, nargs="*", help="qualities to train (default: the whole family)")
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(MODELS),
                        help="which family: the factorized transforms or the hyperprior anchor")
    args = parser.parse_args(argv)
    try:
        if args.check:
            bad = verify()
            n = len(load_manifest())
            print(f"{n - len(bad)} of {n} weight files match MANIFEST.json" + (f"; bad: {', '.join(bad)}" if bad else ""))
            return 1 if bad or not n else 0
        stages = [s for s in FAMILY if not args.only or s.quality in args.only]
        run(stages, threads=args.threads, model=args.model)
    except subprocess.CalledProcessError as e:
        print(f"error: training failed (exit {e.returncode})", file=sys.stderr)
        return 2
    except EncdistError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
