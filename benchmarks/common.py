"""Shared pieces of the benchmark sections: paths, logging, formatting, configs, training runs."""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)

import torch  # noqa: E402

# Targets of the coding-speed and throughput sections (issue 5), reported, never asserted.
TARGET_TRAIN_SPEEDUP = 5.0  # adaptive-stage training step vs full step, images/s ratio
TARGET_CODING_RATIO = 1.25  # adaptive enc+dec time / static enc+dec time, at most


_LOG_LOCK = threading.Lock()


def log(msg: str) -> None:
    """One line per message, whole, even from ``--jobs`` threads."""
    with _LOG_LOCK:
        sys.stdout.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
        sys.stdout.flush()


def sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "host"


def fmt(v, spec=".4f", na="n/a") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return na
    return format(v, spec)


def met(ok) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


def rel(path) -> str:
    """``path`` relative to the repository when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def lam_str(lmbda: float) -> str:
    return repr(float(lmbda))  # what OmegaConf's ${criterion.lmbda} interpolation writes


def environment(args, device: torch.device) -> Dict[str, Any]:
    import compressai

    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        git = rev.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")
    except Exception:
        git = "unknown"
    env = {
        "machine": args.machine,
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "compressai": compressai.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "throughput_device": str(device),
        "git": git,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "profile": "quick" if args.quick else "full",
    }
    return env


def compose(name: str, overrides: Sequence[str]):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from encdist.config.factory import register_resolvers

    register_resolvers()
    with initialize_config_module("encdist.conf", version_base="1.3"):
        conf = compose(config_name=name, overrides=list(overrides))
    OmegaConf.set_struct(conf, False)
    return conf


@functools.lru_cache(maxsize=None)
def quickstart():
    """The quickstart config without overrides, composed once per process (read-only: shared by the sections)."""
    from omegaconf import OmegaConf

    conf = compose("quickstart", [])
    OmegaConf.set_readonly(conf, True)
    return conf


def work_run(wdir: Path, kind: str, quality: int, variant: str = "") -> Tuple[Path, Path]:
    """``(root, log file)`` of one trained run in a benchmark work folder: the folder's layout, named once.

    ``kind``: ``paper`` or ``adaptive`` (the rate section's two codecs per quality), ``ablation``
    (``variant`` ``k<photographs>``), ``capacity`` (``variant`` ``<N>x<M>``). Roots are
    ``<kind>_root[_<variant>]``, logs ``logs/<kind>-q<quality>[-<variant>].log``.
    """
    root = wdir / (f"{kind}_root_{variant}" if variant else f"{kind}_root")
    return root, wdir / "logs" / (f"{kind}-q{quality}-{variant}.log" if variant else f"{kind}-q{quality}.log")


def load_model(run: Path):
    """``(model, config, checkpoint)`` of a trained run, on the CPU, in eval mode, its coding tables built."""
    from encdist.cli.eval import load_run

    model, conf, ckpt = load_run(run)
    model = model.cpu().eval()
    model.update()
    return model, conf, ckpt


def train_settings(conf) -> Dict[str, Any]:
    from omegaconf import OmegaConf

    tr = conf.dataset.train
    return {
        "epochs": int(conf.engine.num_epochs),
        "num_samples": int(tr.config.num_samples),
        "batch_size": int(tr.loader.batch_size),
        "patch_size": list(tr.settings.patch_size),
        "lr_net": float(conf.optimizer.net.lr),
        "bottleneck_refit_steps": int((conf.runner.get("refit_bottleneck") or {}).get("steps", 0) or 0),
        "latent_cache": bool(conf.runner.get("latent_cache", False)),
        "N": int(conf.hp.N),
        "M": int(conf.hp.M),
        "pdf_model": OmegaConf.to_container(pdf, resolve=True) if (pdf := conf.hp.get("pdf_model")) is not None else {},
    }


def budget_overrides(epochs, samples) -> List[str]:
    out = []
    if epochs is not None:
        out.append(f"engine.num_epochs={int(epochs)}")
    if samples is not None:
        out.append(f"dataset.train.config.num_samples={int(samples)}")
    return out


def source_hash() -> str:
    """Hash of the library, runners and configs: cached checkpoints are reused only for the same code."""
    h = hashlib.sha1()
    files = sorted((ROOT / "src" / "encdist").rglob("*.py")) + sorted((ROOT / "runners").rglob("*.py")) + sorted((ROOT / "conf").rglob("*.yaml"))
    for f in files:
        h.update(str(f.relative_to(ROOT)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:10]


def train_command() -> List[str]:
    exe = Path(sys.executable).parent / "compressai-train"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "encdist.cli.train"]


#: What a trained run depends on: a run made at another commit is reused only if these are the same.
TRAINING_CODE = ("src", "runners", "conf", "pyproject.toml")


def same_training_code(made_by: str | None) -> bool:
    """Whether a run recorded as made by ``made_by`` (``git describe --always --dirty``) ran this code.

    True for this checkout's own version, and for a clean commit whose :data:`TRAINING_CODE` is
    identical to this checkout's, committed and in the working tree (``git diff --quiet``): a
    commit that changed only the README or a report trained nothing differently. A dirty or
    unknown version matches only itself.
    """
    from encdist.provenance import code_version

    here = code_version()
    if here == "unknown" or made_by == here:
        return True
    if not made_by or made_by.endswith("-dirty") or made_by == "unknown":
        return False
    commit = made_by.rsplit("-g", 1)[-1]
    try:
        r = subprocess.run(["git", "diff", "--quiet", commit, "--", *TRAINING_CODE], cwd=ROOT, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def completed_runs(root: Path, any_code: bool = False) -> Dict[float, Path]:
    """λ -> run folder of adaptive runs under ``root`` that finished all their epochs with this code (latest wins).

    A run made by other code (``infer.json``'s ``meta.code``, see :func:`same_training_code`) is
    not reused: the benchmark retrains it, so that every number of a report comes from the code
    that wrote the report. ``any_code``: reuse them all (``bench.py --rate-dir``: re-evaluating
    trained codecs as they are; the report names the code that trained them).
    """
    from omegaconf import OmegaConf

    from encdist.training.checkpoint import safe_load
    from encdist.training.run_folder import LAST, RunFolder

    out: Dict[float, Path] = {}
    runs = sorted((root / "runs").glob("*"), key=lambda p: p.stat().st_mtime) if (root / "runs").is_dir() else []
    for d in runs:
        folder = RunFolder(d)
        cfg, ckpt = folder.config_path, folder.checkpoints / LAST
        if not (cfg.is_file() and ckpt.is_file()):
            continue
        try:
            conf = OmegaConf.load(cfg)
            state = safe_load(ckpt)
            infer = folder.root / "results" / "infer.json"
            made_by = json.loads(infer.read_text()).get("meta", {}).get("code") if infer.is_file() else None
            if not any_code and not same_training_code(made_by):
                continue
            if int(state.get("epoch", 0)) >= int(conf.engine.num_epochs):
                out[float(conf.criterion.lmbda)] = d
        except Exception:
            continue
    return out


def find_lambda(d: Dict[float, Path], lmbda: float):
    for k, v in d.items():
        if math.isclose(k, lmbda, rel_tol=1e-9):
            return v
    return None


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


def clean(o):
    """JSON cannot hold NaN/inf: write null."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [clean(v) for v in o]
    return o



def run_training(config: str, overrides: Sequence[str], root: Path, logfile: Path) -> float:
    """``compressai-train --config-name=config overrides`` with ENCDIST_ROOT=root; returns the wall time (s)."""
    cmd = train_command() + [f"--config-name={config}", *overrides]
    env = dict(os.environ, ENCDIST_ROOT=str(root), PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1")
    root.mkdir(parents=True, exist_ok=True)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    log(f"training {config} {' '.join(overrides)} (log: {rel(logfile)})")
    t = time.perf_counter()
    with open(logfile, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    dt = time.perf_counter() - t
    if rc != 0:
        last = logfile.read_text(errors="replace").replace("\r", "\n").splitlines()[-30:]
        raise RuntimeError(f"{config} training failed (exit {rc}); last lines of {logfile}:\n" + "\n".join(last))
    log(f"  done in {dt:.0f} s")
    return dt
