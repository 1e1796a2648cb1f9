#!/usr/bin/env python
"""encdist benchmarks: rate gain, training throughput, coding speed, side-model cost.

Everything is measured in this one run, on this machine; nothing is hard-coded.
Timing claims are ratios of runs made side by side (alternating), not absolute
times. This is a benchmark, not a test: it reports each target and whether it
was met, and never fails because a target was missed.

.. code-block:: bash

    make bench                                   # full profile (~25 min on 2 CPU cores)
    .venv/bin/python benchmarks/bench.py --quick # smoke run, tiny epochs (numbers meaningless)
    .venv/bin/python benchmarks/bench.py --sections cost,coding --machine mybox

Sections:

1. **rate**: the quickstart's frozen transforms (``bmshj2018-factorized``,
   N=48, M=96, trained offline on scikit-image photographs) at several λ.
   With frozen transforms λ does not change the distribution codec's training
   (distortion is a constant of its loss), so each RD point needs its own base
   model: ``base_quickstart`` is trained at each λ (``compressai-train``
   multirun, exported to ``<work>/base_<λ>.pth``), then the ``quickstart``
   adaptive model on each, then the held-out infer photographs are coded with
   real bitstreams in ``static``, ``adaptive`` and ``ideal`` modes, and with the
   static fallback switched off. Checkpoints in ``benchmarks/_work/`` are reused
   by later runs with the same settings (``--fresh`` retrains).
2. **throughput**: images/s of the adaptive stage's training step (frozen
   transforms, ``model(x, with_x_hat=False)``) vs a full end-to-end step of the
   same model (everything trainable, ``model(x)``), same batches, alternating.
3. **coding**: compress + decompress of one 768x512 image at batch 1 on CPU,
   adaptive vs static bottleneck, same weights, alternating; median of reps;
   with a breakdown of the adaptive overhead.
4. **cost**: parameters and MACs per input pixel of the distribution codec vs
   a scale hyperprior's ``h_a``/``h_s`` at the paper's two sizes.

Writes ``benchmarks/results/<machine>.md`` and ``.json`` (``<machine>-quick``
with ``--quick``) and prints the Markdown at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Dict, List, Sequence

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)

import torch  # noqa: E402

import _helpers as H  # noqa: E402

SECTIONS = ("rate", "throughput", "coding", "cost")
MODES = ("adaptive", "static", "ideal")
#: Ways of coding the rate section compares (bpp_<arm> in each point).
CODEC_ARMS = ("adaptive", "ideal", "adaptive_forward", "adaptive_nofallback", "adaptive_refined")
QUICKSTART_LAMBDA = 0.0067

# Targets (issue 5). Paper references are computed from results/reference/kodak when present.
TARGET_GAP_SHARE = 90.0  # % of the static -> ideal BD-rate gap closed by the adaptive codec
TARGET_SIDE_SHARE = 1.0  # % of the total rate spent on the side stream (max over RD points)
TARGET_TRAIN_SPEEDUP = 5.0  # adaptive-stage training step vs full step, images/s ratio
TARGET_CODING_RATIO = 1.25  # adaptive enc+dec time / static enc+dec time, at most

PROFILES: Dict[str, Dict[str, Any]] = {
    # None: the config's own value (base_quickstart.yaml / quickstart.yaml).
    "full": dict(
        lambdas=[0.0035, 0.0067, 0.013, 0.025],
        base_epochs=None,
        base_samples=None,
        base_refit_steps=None,
        adaptive_epochs=None,
        adaptive_samples=None,
        tp_steps=8,
        tp_warmup=2,
        tp_batch=8,
        tp_size=256,
        coding_reps=7,
        coding_warmup=1,
    ),
    "quick": dict(
        lambdas=[0.0035, 0.0067, 0.013, 0.025],
        base_epochs=1,
        base_samples=16,
        base_refit_steps=20,
        adaptive_epochs=1,
        adaptive_samples=16,
        tp_steps=2,
        tp_warmup=1,
        tp_batch=8,
        tp_size=256,
        coding_reps=2,
        coding_warmup=0,
    ),
}


@contextlib.contextmanager
def _coding_setup(model, mode: str, fallback: bool, refine_steps: int = 0, backward: bool = True):
    """Code with ``mode``, the static fallback, ``refine_steps`` and backward adaptation as given; restores all afterwards."""
    from encdist.evaluate import coding_mode

    codec = model.adaptive_codec
    saved = codec.fallback_static, codec.refine_steps, codec.backward_adaptation
    codec.fallback_static, codec.refine_steps, codec.backward_adaptation = fallback, refine_steps, backward
    try:
        with coding_mode(model, mode):
            yield
    finally:
        codec.fallback_static, codec.refine_steps, codec.backward_adaptation = saved


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "host"


def _fmt(v, spec=".4f", na="n/a") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return na
    return format(v, spec)


def _met(ok) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


def _rel(path) -> str:
    """``path`` relative to the repository when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _lam_str(lmbda: float) -> str:
    return repr(float(lmbda))  # what OmegaConf's ${criterion.lmbda} interpolation writes


# ============================================================================ environment
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


# ============================================================================ 1. rate gain
def _compose(name: str, overrides: Sequence[str]):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from encdist.config.factory import register_resolvers

    register_resolvers()
    with initialize_config_module("encdist.conf", version_base="1.3"):
        conf = compose(config_name=name, overrides=list(overrides))
    OmegaConf.set_struct(conf, False)
    return conf


def _train_settings(conf) -> Dict[str, Any]:
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
    }


def _budget_overrides(epochs, samples) -> List[str]:
    out = []
    if epochs is not None:
        out.append(f"engine.num_epochs={int(epochs)}")
    if samples is not None:
        out.append(f"dataset.train.config.num_samples={int(samples)}")
    return out


def _source_hash() -> str:
    """Hash of the library, runners and configs: cached checkpoints are reused only for the same code."""
    h = hashlib.sha1()
    files = sorted((ROOT / "src" / "encdist").rglob("*.py")) + sorted((ROOT / "runners").rglob("*.py")) + sorted((ROOT / "conf").rglob("*.yaml"))
    for f in files:
        h.update(str(f.relative_to(ROOT)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:10]


def _train_command() -> List[str]:
    exe = Path(sys.executable).parent / "compressai-train"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "encdist.cli.train"]


def _run_multirun(config: str, lambdas: Sequence[float], overrides: Sequence[str], root: Path, logfile: Path, jobs: int = 1) -> float:
    """``compressai-train --config-name=config -m criterion.lmbda=a,b,... overrides`` with ENCDIST_ROOT=root.

    ``jobs`` > 1 runs that many λ in parallel processes (Hydra's joblib launcher).
    """
    cmd = _train_command() + [f"--config-name={config}", "--multirun", "criterion.lmbda=" + ",".join(_lam_str(l) for l in lambdas)]
    if jobs > 1:
        cmd += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={int(jobs)}"]
    cmd += list(overrides)
    env = dict(os.environ, ENCDIST_ROOT=str(root), PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1")
    root.mkdir(parents=True, exist_ok=True)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    log(f"training {config} at lambda {', '.join(_lam_str(l) for l in lambdas)} (log: {_rel(logfile)})")
    t = time.perf_counter()
    with open(logfile, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    dt = time.perf_counter() - t
    if rc != 0:
        tail = logfile.read_text(errors="replace").replace("\r", "\n").splitlines()[-30:]
        raise RuntimeError(f"{config} training failed (exit {rc}); last lines of {logfile}:\n" + "\n".join(tail))
    log(f"  done in {dt:.0f} s")
    return dt


def _completed_runs(root: Path) -> Dict[float, Path]:
    """λ -> run folder of adaptive runs under ``root`` that finished all their epochs (latest wins)."""
    from omegaconf import OmegaConf

    from encdist.checkpoint import safe_load

    out: Dict[float, Path] = {}
    runs = sorted((root / "runs").glob("*"), key=lambda p: p.stat().st_mtime) if (root / "runs").is_dir() else []
    for d in runs:
        cfg, ckpt = d / "configs" / "config.yaml", d / "checkpoints" / "runner.last.pth"
        if not (cfg.is_file() and ckpt.is_file()):
            continue
        try:
            conf = OmegaConf.load(cfg)
            state = safe_load(ckpt)
            if int(state.get("epoch", 0)) >= int(conf.engine.num_epochs):
                out[float(conf.criterion.lmbda)] = d
        except Exception:
            continue
    return out


def _base_run_settings(root: Path, export_path: Path):
    """Training settings of the base run that exported ``export_path`` (None if not trained here)."""
    from omegaconf import OmegaConf

    for cfg in sorted((root / "runs").glob("*/configs/config.yaml"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            conf = OmegaConf.load(cfg)
            if str((conf.get("export") or {}).get("path")) == str(export_path):
                return _train_settings(conf)
        except Exception:
            continue
    return None


def _find(d: Dict[float, Path], lmbda: float):
    for k, v in d.items():
        if math.isclose(k, lmbda, rel_tol=1e-9):
            return v
    return None


def _infer_images():
    import torchvision.transforms as T

    from encdist.datasets import SkimageSamples

    ds = SkimageSamples(split="infer", transform=T.ToTensor())
    return [(ds.names[i], ds[i].unsqueeze(0)) for i in range(len(ds))]


def _static_channels(codec, pdf_string: bytes):
    """Channels the encoder started from the static tables (mode 0: all, 1: none, 2: the unset flag bits)."""
    from encdist.latent_codecs import MODE_ADAPTIVE, MODE_BACKWARD, MODE_MIXED, MODE_STATIC

    if not pdf_string:
        return None
    mode, payload = pdf_string[0] & ~MODE_BACKWARD, bytes(pdf_string[5:])
    if pdf_string[0] & MODE_BACKWARD:
        payload = payload[1:]  # the symbol radius
    if mode == MODE_STATIC:
        return codec.channels
    if mode == MODE_ADAPTIVE:
        return 0
    if mode == MODE_MIXED:
        return codec.channels - int(codec._unpack_mask(payload).sum())
    return None


@torch.no_grad()
def _evaluate_run(run_dir: Path, images, refine_steps: int = 0) -> Dict[str, Any]:
    from encdist.cli.eval import load_run
    from encdist.datasets import pad_to_multiple
    from encdist.evaluate import coding_mode, evaluate_image

    # The last epoch's weights (the runner's own infer pass uses them too), not runner.best.pth: with one
    # small valid image, "best valid loss" picks an arbitrary epoch of a cosine-decayed run.
    last = Path(run_dir) / "checkpoints" / "runner.last.pth"
    model, conf, _ = load_run(last if last.is_file() else run_dir)
    ckpt_info = {}
    try:
        from encdist.checkpoint import safe_load
        from encdist.cli.eval import _find_checkpoint

        ck = _find_checkpoint(last if last.is_file() else Path(run_dir))
        ckpt_info = {"checkpoint": ck.name, "epoch": int(safe_load(ck).get("epoch", 0)), "num_epochs": int(conf.engine.num_epochs)}
    except Exception:
        pass
    runner_bpp = None
    try:
        from encdist.results import load_results

        runner_bpp = float(load_results(Path(run_dir) / "results" / "infer.json")["results"]["bpp"][-1])
    except Exception:
        pass
    model = model.cpu().eval()
    model.update(force=True)
    codec = model.adaptive_codec
    rows = []
    saved = codec.fallback_static, codec.refine_steps, codec.backward_adaptation
    for name, x in images:
        try:
            # The product's codec: static fallback and backward adaptation on.
            codec.fallback_static, codec.refine_steps, codec.backward_adaptation = True, 0, True
            res = evaluate_image(model, x, modes=MODES)
            x_pad, _ = pad_to_multiple(x, 64)
            with coding_mode(model, "adaptive"):
                enc = model.compress(x_pad)
            pdf_string = enc["strings"][-1][0]
            # Fixed tables per image (no backward adaptation), fallback on.
            codec.backward_adaptation = False
            forward = evaluate_image(model, x, modes=("adaptive",))["adaptive"]
            # The paper's codec: fixed tables, fallback off.
            codec.fallback_static = False
            nofb = evaluate_image(model, x, modes=("adaptive",))["adaptive"]
            # Beyond the paper: encoder-side refinement of the side latent (product codec otherwise).
            codec.fallback_static, codec.refine_steps, codec.backward_adaptation = True, refine_steps, True
            refined = evaluate_image(model, x, modes=("adaptive",))["adaptive"] if refine_steps else res["adaptive"]
        finally:
            codec.fallback_static, codec.refine_steps, codec.backward_adaptation = saved
        rows.append(
            {
                "image": name,
                "size": list(x.shape[-2:]),
                "fallback_default": saved,
                "mode_byte": int(pdf_string[0]) if len(pdf_string) else None,
                "static_channels": _static_channels(codec, pdf_string),
                **{f"{m}": res[m] for m in MODES},
                "adaptive_forward": forward,
                "adaptive_nofallback": nofb,
                "adaptive_refined": refined,
            }
        )
    return {"rows": rows, "runner_infer_bpp": runner_bpp, "checkpoint": ckpt_info, "settings": _train_settings(conf), "model": {"N": int(conf.hp.N), "M": int(conf.hp.M), "C": int(codec.channels),
                                     "pdf_N": int(codec.pdf_model.N), "pdf_M": int(codec.pdf_model.M)}}


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def _point(lmbda: float, ev: Dict[str, Any]) -> Dict[str, Any]:
    rows = ev["rows"]
    m = lambda mode, key: _mean([r[mode][key] for r in rows])  # noqa: E731
    p = {
        "lambda": lmbda,
        "num_images": len(rows),
        "psnr": m("static", "psnr-rgb"),
        "psnr_max_abs_diff_between_modes": max(
            abs(r[a]["psnr-rgb"] - r["static"]["psnr-rgb"]) for r in rows for a in ("adaptive", "ideal", "adaptive_forward", "adaptive_nofallback", "adaptive_refined")
        ),
        "bpp_static": m("static", "bpp"),
        "bpp_adaptive": m("adaptive", "bpp"),
        "bpp_ideal": m("ideal", "bpp"),
        "bpp_adaptive_forward": m("adaptive_forward", "bpp"),
        "bpp_adaptive_nofallback": m("adaptive_nofallback", "bpp"),
        "bpp_adaptive_refined": m("adaptive_refined", "bpp"),
        "bpp_pdf_refined": m("adaptive_refined", "bpp_pdf"),
        "enc_time_adaptive_refined": m("adaptive_refined", "encoding_time"),
        "bpp_pdf": m("adaptive", "bpp_pdf"),
        "bpp_pdf_nofallback": m("adaptive_nofallback", "bpp_pdf"),
        "static_picks": sum(1 for r in rows if r["mode_byte"] is not None and r["mode_byte"] & 0x0F == 0),
        "mixed_picks": sum(1 for r in rows if r["mode_byte"] is not None and r["mode_byte"] & 0x0F == 2),
        "backward_picks": sum(1 for r in rows if r["mode_byte"] is not None and r["mode_byte"] & 0x10),
        "static_channels_mean": _mean([r["static_channels"] for r in rows if r.get("static_channels") is not None]),
        "runner_infer_bpp": ev.get("runner_infer_bpp"),
        "checkpoint": ev.get("checkpoint"),
        "enc_time_static": m("static", "encoding_time"),
        "enc_time_adaptive": m("adaptive", "encoding_time"),
        "dec_time_static": m("static", "decoding_time"),
        "dec_time_adaptive": m("adaptive", "decoding_time"),
    }
    s, a, i, nf = p["bpp_static"], p["bpp_adaptive"], p["bpp_ideal"], p["bpp_adaptive_nofallback"]
    p["side_share_pct"] = 100 * p["bpp_pdf"] / a
    p["side_share_nofallback_pct"] = 100 * p["bpp_pdf_nofallback"] / nf
    p["adaptive_vs_static_pct"] = 100 * (a / s - 1)
    p["ideal_vs_static_pct"] = 100 * (i / s - 1)
    p["nofallback_vs_static_pct"] = 100 * (nf / s - 1)
    p["gap_closed_pct"] = 100 * (s - a) / (s - i) if s != i else float("nan")
    fw = p["bpp_adaptive_forward"]
    p["forward_vs_static_pct"] = 100 * (fw / s - 1)
    p["gap_closed_forward_pct"] = 100 * (s - fw) / (s - i) if s != i else float("nan")
    p["gap_closed_nofallback_pct"] = 100 * (s - nf) / (s - i) if s != i else float("nan")
    rf = p["bpp_adaptive_refined"]
    p["refined_vs_static_pct"] = 100 * (rf / s - 1)
    p["side_share_refined_pct"] = 100 * p["bpp_pdf_refined"] / rf
    p["gap_closed_refined_pct"] = 100 * (s - rf) / (s - i) if s != i else float("nan")
    p["fallback_saving_bpp"] = nf - a
    p["fallback_saving_pct"] = 100 * (nf - a) / nf
    return p


def _bd(points: List[Dict[str, Any]], key: str, method: str):
    from encdist.bd import bd_rate

    try:
        return bd_rate([p["bpp_static"] for p in points], [p["psnr"] for p in points],
                       [p[key] for p in points], [p["psnr"] for p in points], method=method)
    except Exception as e:  # too few points, degenerate curve ...
        return f"{type(e).__name__}: {e}"


def _paper_reference() -> Dict[str, Any]:
    """The paper's Kodak BD-rates, from the published curves in results/reference/kodak (if present)."""
    from encdist.bd import bd_rate
    from encdist.results import load_results

    d = ROOT / "results" / "reference" / "kodak"
    files = {
        "static": "compressai-bmshj2018-factorized_mse_cuda.json",
        "adaptive": "compressai-bmshj2018-factorized-pdf-ulhaq2024_mse_cuda.json",
        "ideal": "compressai-bmshj2018-factorized-pdf-ideal_mse_cuda.json",
    }
    try:
        r = {k: load_results(d / f)["results"] for k, f in files.items()}
        bd = {k: bd_rate(r["static"]["bpp"], r["static"]["psnr-rgb"], r[k]["bpp"], r[k]["psnr-rgb"]) for k in ("adaptive", "ideal")}
        return {"bd_adaptive": bd["adaptive"], "bd_ideal": bd["ideal"], "gap_closed_pct": 100 * bd["adaptive"] / bd["ideal"], "source": _rel(d)}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}


def section_rate(args, prof, work: Path) -> Dict[str, Any]:
    lambdas = [float(l) for l in prof["lambdas"]]
    base_over = _budget_overrides(prof["base_epochs"], prof["base_samples"])
    ad_over = _budget_overrides(prof["adaptive_epochs"], prof["adaptive_samples"])
    if prof.get("base_refit_steps") is not None and _compose("base_quickstart", []).runner.get("refit_bottleneck") is not None:
        base_over.append(f"runner.refit_bottleneck.steps={int(prof['base_refit_steps'])}")
    base_conf = _compose("base_quickstart", base_over)
    ad_conf = _compose("quickstart", ad_over)
    settings = {"lambdas": lambdas, "base": _train_settings(base_conf), "adaptive": _train_settings(ad_conf),
                "target_size": list(ad_conf.criterion.target_size)}
    settings["source_hash"] = _source_hash()
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    if args.rate_dir:  # an earlier run's folder, used as is (whatever its settings or code version)
        wdir = Path(args.rate_dir).resolve()
        if not wdir.is_dir():
            raise FileNotFoundError(f"--rate-dir {wdir} does not exist")
    else:
        wdir = work / f"{'quick' if args.quick else 'full'}-{key}"
        if args.fresh and wdir.exists():
            log(f"--fresh: removing {_rel(wdir)}")
            shutil.rmtree(wdir)
        wdir.mkdir(parents=True, exist_ok=True)
        (wdir / "settings.json").write_text(json.dumps(settings, indent=2))
    out: Dict[str, Any] = {"settings": settings, "work_dir": _rel(wdir), "stages": {}}

    # ---- base models, one per λ
    base_path = {l: wdir / f"base_{_lam_str(l)}.pth" for l in lambdas}
    provenance = {}
    if args.reuse_quickstart_base:
        qs = Path(args.quickstart_base)
        hit = next((l for l in lambdas if math.isclose(l, QUICKSTART_LAMBDA)), None)
        if hit is not None and qs.is_file() and not base_path[hit].is_file():
            shutil.copy2(qs, base_path[hit])
            provenance[hit] = f"copied from {qs}"
            log(f"reusing the quickstart base model {qs} for lambda={hit}")
        elif hit is not None and not qs.is_file():
            log(f"--reuse-quickstart-base: {qs} not found, training it")
    missing = [l for l in lambdas if not base_path[l].is_file()]
    for l in lambdas:
        provenance.setdefault(l, "trained in this run" if l in missing else "reused from an earlier bench run")
    if missing:
        dt = _run_multirun(
            "base_quickstart", missing,
            # The infer loader stays: ImageCompressionRunner refits the bottleneck before the last infer pass.
            ["++export.path=" + str(wdir) + "/base_${criterion.lmbda}.pth"] + base_over,
            wdir / "base_root", wdir / "logs" / "base.log", args.jobs,
        )
        out["stages"]["base_training_s"] = dt
        out["stages"]["base_trained"] = missing
        still = [l for l in missing if not base_path[l].is_file()]
        if still:
            raise RuntimeError(f"base training did not export {[str(base_path[l]) for l in still]}")
    out["base_provenance"] = {_lam_str(l): provenance[l] for l in lambdas}

    # ---- adaptive models, one per base
    ad_root = wdir / "adaptive_root"
    done = _completed_runs(ad_root)
    # A base model trained in this run makes any earlier adaptive run on that λ stale.
    retrained = out["stages"].get("base_trained", [])
    missing = [l for l in lambdas if _find(done, l) is None or l in retrained]
    if missing:
        dt = _run_multirun(
            "quickstart", missing,
            ["paths.pretrained=" + str(wdir) + "/base_${criterion.lmbda}.pth", "model.pretrained.train_if_missing=null",
             # Keep the runner's own infer pass (any pre-infer hook runs as in a normal run), minus its
             # extra baselines and figures: this script evaluates every mode itself.
             "runner.inference.baselines=[]", "runner.inference.figures=false"] + ad_over,
            ad_root, wdir / "logs" / "adaptive.log", args.jobs,
        )
        out["stages"]["adaptive_training_s"] = dt
        out["stages"]["adaptive_trained"] = missing
        done = _completed_runs(ad_root)
    runs = {}
    for l in lambdas:
        r = _find(done, l)
        if r is None:
            raise RuntimeError(f"no completed adaptive run for lambda={l} under {ad_root}")
        runs[l] = r
    out["runs"] = {_lam_str(l): _rel(r) for l, r in runs.items()}

    # ---- evaluation with real bitstreams
    images = _infer_images()
    out["images"] = [{"name": n, "size": list(x.shape[-2:])} for n, x in images]
    t = time.perf_counter()
    points, per_image = [], {}
    for l in lambdas:
        log(f"evaluating lambda={_lam_str(l)} on {len(images)} infer images (static, adaptive, ideal, adaptive without fallback)")
        ev = _evaluate_run(runs[l], images, args.refine_steps)
        per_image[_lam_str(l)] = ev["rows"]
        out.setdefault("actual_settings", {})[_lam_str(l)] = {"adaptive": ev["settings"], "base": _base_run_settings(wdir / "base_root", base_path[l])}
        out["model"] = ev["model"]
        points.append(_point(l, ev))
    out["stages"]["evaluation_s"] = time.perf_counter() - t
    out["points"], out["per_image"] = points, per_image

    # ---- BD-rates and shares
    bd = {f"{k}_{meth}": _bd(points, f"bpp_{k}", meth) for k in CODEC_ARMS for meth in ("cubic", "pchip")}
    out["bd_rate"] = bd
    num = lambda v: isinstance(v, float) and math.isfinite(v)  # noqa: E731
    gap = 100 * bd["adaptive_cubic"] / bd["ideal_cubic"] if num(bd["adaptive_cubic"]) and num(bd["ideal_cubic"]) and bd["ideal_cubic"] != 0 else None
    out["gap_closed_bd_pct"] = gap
    out["gap_closed_mean_point_pct"] = _mean([p["gap_closed_pct"] for p in points if math.isfinite(p["gap_closed_pct"])])
    out["mean_point"] = {k: _mean([p[k] for p in points]) for k in ("adaptive_vs_static_pct", "ideal_vs_static_pct", "nofallback_vs_static_pct")}
    psnrs = [p["psnr"] for p in points]
    rates = [p["bpp_static"] for p in points]
    out["psnr_monotone_in_lambda"] = all(b > a for a, b in zip(psnrs, psnrs[1:]))
    # A BD-rate fits a curve through the points: meaningful only if they form an RD curve
    # (quality and rate both increase with λ).
    out["rd_curve_valid"] = out["psnr_monotone_in_lambda"] and all(b > a for a, b in zip(rates, rates[1:]))
    # Per point, PSNR is identical in every mode, so the rate change at equal quality is exact;
    # their geometric mean is the per-point analogue of a BD-rate (a mean log-rate difference).
    geo = lambda key: 100 * (math.exp(_mean([math.log(p[key] / p["bpp_static"]) for p in points])) - 1)  # noqa: E731
    out["pointwise_rate_change"] = {k: geo(f"bpp_{k}") for k in CODEC_ARMS}
    pw = out["pointwise_rate_change"]
    # The share of the gap closed by each way of coding, both measures.
    out["gap_closed_by_arm"] = {
        k: {"bd_pct": 100 * bd[k + "_cubic"] / bd["ideal_cubic"] if num(bd[k + "_cubic"]) and num(bd["ideal_cubic"]) and bd["ideal_cubic"] != 0 else None,
            "pointwise_pct": 100 * pw[k] / pw["ideal"] if pw["ideal"] != 0 else None}
        for k in CODEC_ARMS if k != "ideal"
    }
    gap_pw = 100 * pw["adaptive"] / pw["ideal"] if pw["ideal"] != 0 else None
    out["gap_closed_pointwise_pct"] = gap_pw
    out["refine_steps"] = int(args.refine_steps)
    gap_bd_rf = (100 * bd["adaptive_refined_cubic"] / bd["ideal_cubic"]
                 if num(bd["adaptive_refined_cubic"]) and num(bd["ideal_cubic"]) and bd["ideal_cubic"] != 0 else None)
    gap_pw_rf = 100 * pw["adaptive_refined"] / pw["ideal"] if pw["ideal"] != 0 else None
    out["gap_closed_refined_bd_pct"], out["gap_closed_refined_pointwise_pct"] = gap_bd_rf, gap_pw_rf
    use_bd = out["rd_curve_valid"] and gap is not None
    out["gap_closed_method"] = "BD-rate (cubic)" if use_bd else "per-point (geometric mean of rate changes at equal PSNR)"
    g = gap if use_bd else gap_pw
    g_rf = gap_bd_rf if use_bd else gap_pw_rf
    max_side = max(p["side_share_pct"] for p in points)
    max_side_rf = max(p["side_share_refined_pct"] for p in points)
    out["targets"] = {
        "gap_closed": {"target": f">= {TARGET_GAP_SHARE:g} % of the static→ideal gap closed ({'BD-rate' if use_bd else 'per-point'})", "value": g,
                       "met": None if g is None else g >= TARGET_GAP_SHARE},
        "side_share": {"target": f"< {TARGET_SIDE_SHARE:g} % of the total rate (max over RD points)", "value": max_side,
                       "met": max_side < TARGET_SIDE_SHARE},
    }
    if args.refine_steps:
        out["targets"]["gap_closed_refined"] = {
            "target": f">= {TARGET_GAP_SHARE:g} % of the gap closed, with encoder-side refinement ({args.refine_steps} steps)",
            "value": g_rf, "met": None if g_rf is None else g_rf >= TARGET_GAP_SHARE}
        out["targets"]["side_share_refined"] = {
            "target": f"< {TARGET_SIDE_SHARE:g} % of the total rate, with refinement", "value": max_side_rf,
            "met": max_side_rf < TARGET_SIDE_SHARE}
    out["paper"] = _paper_reference()
    return out


# ============================================================================ shared model for 2 and 3
def _reference_model(rate: Dict[str, Any] | None, work: Path, args):
    """The trained quickstart model nearest λ=0.0067 (this run's or a cached one), else random init."""
    import encdist  # noqa: F401
    from compressai.registry import MODELS

    from encdist.cli.eval import load_run

    cands: Dict[float, Path] = {}
    if rate and rate.get("runs"):
        cands = {float(k): ROOT / v for k, v in rate["runs"].items()}
    else:
        prefix = "quick-" if args.quick else "full-"
        for d in sorted(work.glob(prefix + "*"), key=lambda p: p.stat().st_mtime):
            cands.update(_completed_runs(d / "adaptive_root"))
    if cands:
        l = min(cands, key=lambda k: abs(math.log(k / QUICKSTART_LAMBDA)))
        model, _, _ = load_run(cands[l])
        return model.cpu(), f"trained quickstart model, lambda={_lam_str(l)} ({_rel(cands[l])})"
    torch.manual_seed(0)
    model = MODELS["bmshj2018-factorized-pdf"](N=48, M=96)
    return model, "untrained bmshj2018-factorized-pdf(N=48, M=96), random init (no trained run available)"


# ============================================================================ 2. training throughput
def _batches(num: int, batch: int, size: int, seed: int = 0) -> List[torch.Tensor]:
    import torchvision.transforms as T

    from encdist.datasets import SkimageSamples

    torch.manual_seed(seed)
    ds = SkimageSamples(split="train", transform=T.Compose([T.RandomCrop(size), T.ToTensor()]), num_samples=num * batch, seed=seed)
    items = [ds[i] for i in range(num * batch)]
    return [torch.stack(items[i * batch:(i + 1) * batch]) for i in range(num)]


class _Arm:
    """One training configuration: model, criterion, optimizers and a timed step."""

    def __init__(self, name, model, frozen: Sequence[str], with_x_hat: bool, device, lmbda, target_size, clip=1.0):
        from encdist.config.factory import trainable_parameter_groups
        from encdist.losses import AdaptiveRateDistortionLoss

        self.name, self.with_x_hat, self.device, self.clip = name, with_x_hat, device, clip
        self.model = model.to(device).train()
        for p in self.model.parameters():
            p.requires_grad_(True)
        if frozen:
            self.model.freeze(list(frozen))
        self.criterion = AdaptiveRateDistortionLoss(lmbda=lmbda, target_size=target_size)
        groups = trainable_parameter_groups(self.model)
        self.net_params = groups["net"]
        self.opt = {"net": torch.optim.Adam(groups["net"], lr=1e-4)}
        if groups["aux"]:
            self.opt["aux"] = torch.optim.Adam(groups["aux"], lr=1e-3)
        self.trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        mods = {k: getattr(self.model, k) for k in ("g_a", "g_s")}
        mods["adaptive_codec"] = self.model.adaptive_codec
        self.fwd_timer = H.ForwardTimer(mods, device)
        self.times: List[float] = []
        self.laps: List[Dict[str, float]] = []

    def step(self, x, record=True, y=None) -> float:
        sw = H.Stopwatch(self.device)
        H.sync(self.device)
        t0 = time.perf_counter()
        with sw("forward"):
            if y is not None:
                out = self.model(x, with_x_hat=False, y=y)
            else:
                out = self.model(x, with_x_hat=False) if not self.with_x_hat else self.model(x)
        with sw("loss"):
            loss = self.criterion(out, x)["loss"]
        with sw("backward"):
            self.opt["net"].zero_grad(set_to_none=True)
            loss.backward()
        with sw("optimizer step"):
            if self.clip > 0:
                torch.nn.utils.clip_grad_norm_(self.net_params, self.clip)
            self.opt["net"].step()
        with sw("aux step"):
            aux = self.model.aux_loss()
            if "aux" in self.opt and aux.requires_grad:
                self.opt["aux"].zero_grad(set_to_none=True)
                aux.backward()
                self.opt["aux"].step()
        H.sync(self.device)
        dt = time.perf_counter() - t0
        fwd = self.fwd_timer.take()
        if record:
            laps = dict(sw.laps)
            inner = {f"forward: {k}": v for k, v in fwd.items()}
            laps["forward: other"] = laps["forward"] - sum(inner.values())
            laps.update(inner)
            self.times.append(dt)
            self.laps.append(laps)
        return dt


def section_throughput(args, prof, base_model, model_desc, device) -> Dict[str, Any]:
    steps, warm, bs, size = prof["tp_steps"], prof["tp_warmup"], prof["tp_batch"], prof["tp_size"]
    batches = [b.to(device) for b in _batches(min(steps + warm, 4), bs, size)]
    common = dict(device=device, lmbda=QUICKSTART_LAMBDA, target_size=(512, 512))
    frozen = ["g_a", "g_s", "entropy_bottleneck"]
    adaptive = _Arm("adaptive stage: model(x, with_x_hat=False), frozen g_a/g_s/EB", copy.deepcopy(base_model), frozen, False, **common)
    full = _Arm("full step: model(x), everything trainable", copy.deepcopy(base_model), [], True, **common)
    arms = [("adaptive", adaptive), ("full", full)]
    # The runner's latent cache (runner.latent_cache): later epochs reuse the first epoch's g_a(x).
    import inspect

    ycache = None
    if "y" in inspect.signature(base_model.forward).parameters:
        cached = _Arm("adaptive stage, cached latents: model(x, with_x_hat=False, y=g_a(x))", copy.deepcopy(base_model), frozen, False, **common)
        arms.append(("adaptive_cached", cached))
        with torch.no_grad():
            ycache = [adaptive.model.g_a(b) for b in batches]
    log(f"throughput: batch {bs} x {size}x{size}, {warm} warm-up + {steps} measured steps per arm, alternating, on {device}")

    def do(key, arm, i, record=True):
        j = i % len(batches)
        return arm.step(batches[j], record=record, y=ycache[j] if key == "adaptive_cached" else None)

    for i in range(warm):
        for key, arm in arms:
            do(key, arm, i, record=False)
    pair_ratios = []
    for i in range(steps):
        k = i % len(arms)
        order = arms[k:] + arms[:k]
        t = {key: do(key, arm, warm + i) for key, arm in order}
        pair_ratios.append(t["full"] / t["adaptive"])
    res: Dict[str, Any] = {"model": model_desc, "device": str(device), "batch": bs, "crop": size, "steps": steps, "warmup": warm,
                           "pair_ratios": pair_ratios, "arms": {}}
    for key, arm in arms:
        total = sum(arm.times)
        res["arms"][key] = {
            "name": arm.name,
            "trainable_params": arm.trainable,
            "images_per_s": bs * len(arm.times) / total,
            "median_step_s": H.median(arm.times),
            "step_times_s": arm.times,
            "breakdown_median_s": H.median_laps(arm.laps),
        }
        arm.fwd_timer.remove()
    ratio = res["arms"]["adaptive"]["images_per_s"] / res["arms"]["full"]["images_per_s"]
    res["speedup"] = ratio
    res["speedup_median_pair"] = H.median(pair_ratios)
    if "adaptive_cached" in res["arms"]:
        res["speedup_cached"] = res["arms"]["adaptive_cached"]["images_per_s"] / res["arms"]["full"]["images_per_s"]
        try:
            E = int(_compose("quickstart", []).engine.num_epochs)
            cache_on = bool(_compose("quickstart", []).runner.get("latent_cache", False))
        except Exception:
            E, cache_on = None, None
        if E:
            ta = 1 / res["arms"]["adaptive"]["images_per_s"]
            tc = 1 / res["arms"]["adaptive_cached"]["images_per_s"]
            eff = (ta + (E - 1) * tc) / E if cache_on else ta
            res["quickstart_schedule"] = {"epochs": E, "latent_cache": cache_on,
                                          "speedup_epoch_average": (1 / res["arms"]["full"]["images_per_s"]) / eff}
    res["target"] = {"target": f">= {TARGET_TRAIN_SPEEDUP:g}x images/s", "value": ratio, "met": ratio >= TARGET_TRAIN_SPEEDUP}
    if ratio < TARGET_TRAIN_SPEEDUP or args.profile:
        res["profile_adaptive_top_ops"] = _profile(adaptive, batches)
    return res


def _profile(arm: _Arm, batches, rows: int = 12) -> List[Dict[str, Any]]:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if arm.device.type == "cuda" else [])
    xs = batches[:2]
    with profile(activities=acts) as prof:
        for x in xs:
            arm.step(x, record=False)
    ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) or 1
    n = len(xs)
    return [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3 / n, "share_pct": 100 * e.self_cpu_time_total / total, "calls": e.count // n}
            for e in ev]


# ============================================================================ 3. coding speed
def _coding_image() -> torch.Tensor:
    """A 768x512 (W x H) photograph: the held-out ``coffee`` (600x400) resized, as Kodak's size."""
    import torchvision.transforms.functional as TF
    from PIL import Image

    from encdist.datasets import skimage_image

    img = Image.fromarray(skimage_image("coffee")).resize((768, 512), Image.BICUBIC)
    return TF.to_tensor(img).unsqueeze(0)


def _call_timer(model, mode: str) -> "H.CallTimer":
    """Timers around the steps of the codec's own compress/decompress (real code path)."""
    import encdist.latent_codecs.adaptive as lc
    import encdist.pdf_model as pm

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
    if mode == "static":
        ct.add(lc, "encode_with_indexes", "y rANS encode")
    else:
        ct.add(lc, "encode_with_indexes", lambda n: "y rANS encode" if n == 0 else "y rANS encode, 2nd table (fallback: both coded)")
    ct.add(lc, "decode_with_indexes", "y rANS decode")
    ct.add(lc, "adapted_tables", "backward: all blocks' tables + exact bits (encoder)")
    ct.add(lc, "encode_lists", lambda n: "y rANS encode, backward tables" if n == 0 else "y rANS encode, backward tables, 2nd mode")
    ct.add(lc, "decode_adapted", "backward: block-by-block tables + rANS decode")
    ct.add(codec, "_header", "header / crc")
    return ct


@torch.no_grad()
def section_coding(args, prof, model, model_desc) -> Dict[str, Any]:

    model = copy.deepcopy(model).cpu().eval()
    model.update(force=True)
    codec = model.adaptive_codec
    x = _coding_image()
    reps, warm = prof["coding_reps"], prof["coding_warmup"]
    # (name, mode, fallback, refine steps, backward adaptation)
    arms = [("static", "static", True, 0, True), ("adaptive", "adaptive", True, 0, True),
            ("adaptive_forward", "adaptive", True, 0, False), ("adaptive_nofallback", "adaptive", False, 0, False)]
    if args.refine_steps:
        arms.append(("adaptive_refined", "adaptive", True, int(args.refine_steps), True))
    times = {a[0]: {"encode": [], "decode": []} for a in arms}
    sizes = {}
    log(f"coding speed: 768x512 image, batch 1, CPU, {warm} warm-up + {reps} reps per mode, alternating")
    for r in range(warm + reps):
        order = arms[r % len(arms):] + arms[: r % len(arms)]
        for name, mode, fb, rs, bw in order:
            with _coding_setup(model, mode, fb, rs, bw):
                t0 = time.perf_counter()
                enc = model.compress(x)
                t1 = time.perf_counter()
                model.decompress(enc["strings"], enc["shape"])
                t2 = time.perf_counter()
            if r >= warm:
                times[name]["encode"].append(t1 - t0)
                times[name]["decode"].append(t2 - t1)
            sizes[name] = {"y_bytes": sum(len(s) for s in enc["strings"][0]), "side_bytes": sum(len(s) for s in enc["strings"][-1]),
                           "mode_byte": enc["strings"][-1][0][0] if enc["strings"][-1][0] else None}
    res: Dict[str, Any] = {"model": model_desc, "image": "skimage coffee resized to 768x512", "reps": reps, "warmup": warm,
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
    res["target"] = {"target": f"adaptive enc+dec <= {TARGET_CODING_RATIO:g}x static", "value": ratio, "met": ratio <= TARGET_CODING_RATIO}
    if "adaptive_refined" in res["modes"]:
        rr = res["modes"]["adaptive_refined"]["ratio_total"]
        res["target_refined"] = {"target": f"adaptive + refinement ({args.refine_steps} steps) enc+dec <= {TARGET_CODING_RATIO:g}x static",
                                 "value": rr, "met": rr <= TARGET_CODING_RATIO}
    # Breakdown: the same compress/decompress calls, with timers around their steps (separate reps).
    try:
        laps: Dict[str, Dict[str, list]] = {}
        for r in range(max(2, reps)):
            for name, mode, fb, rs, bw in (arms[1:2] + arms[:1]) if r % 2 else arms[:2]:
                ct = _call_timer(model, mode)
                try:
                    with _coding_setup(model, mode, fb, rs, bw):
                        t0 = time.perf_counter()
                        enc = model.compress(x)
                        t1 = time.perf_counter()
                        e_laps = ct.take()
                        model.decompress(enc["strings"], enc["shape"])
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


# ============================================================================ 4. side-model cost
def section_cost(args) -> Dict[str, Any]:
    from compressai.models import FactorizedPrior, ScaleHyperprior

    from encdist.pdf_model import PdfModel

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


# ============================================================================ report
def _md_rate(r: Dict[str, Any]) -> List[str]:
    s = r["settings"]
    b, a = s["base"], s["adaptive"]
    act = list((r.get("actual_settings") or {}).values())
    if act:  # what the runs actually used (a config edited during the run shows here)
        a = act[0]["adaptive"] or a
        b = next((x["base"] for x in act if x["base"]), b)
    L = ["## 1. Rate gain (frozen quickstart transforms, real bitstreams)", ""]
    imgs = ", ".join("{} {}x{}".format(i["name"], i["size"][1], i["size"][0]) for i in r["images"])
    L.append(f"Base `bmshj2018-factorized` (N={b['N']}, M={b['M']}) trained per λ with `base_quickstart`: {b['epochs']} epochs x "
             f"{b['num_samples']} crops {b['patch_size'][0]}x{b['patch_size'][1]}, batch {b['batch_size']}, bottleneck refit {b.get('bottleneck_refit_steps', 0)} steps. "
             f"Distribution codec (`quickstart`, C={r.get('model', {}).get('C')}, pdf (N,M)=({r.get('model', {}).get('pdf_N')},{r.get('model', {}).get('pdf_M')})): "
             f"{a['epochs']} epochs x {a['num_samples']} crops {a['patch_size'][0]}x{a['patch_size'][1]}, batch {a['batch_size']}, latent cache {'on' if a.get('latent_cache') else 'off'}, "
             f"side rate amortized over {s['target_size'][0]}x{s['target_size'][1]}. "
             f"Evaluated on the held-out infer photographs ({imgs}); bpp is the mean over images.")
    st = r.get("stages", {})
    parts = [f"{k.replace('_s', '')} {v:.0f} s" for k, v in st.items() if k.endswith("_s")]
    L.append(f"Work dir `{r['work_dir']}`; base models: " + ", ".join(f"λ={k}: {v}" for k, v in r["base_provenance"].items())
             + (f". Stage times: {', '.join(parts)}." if parts else "."))
    L.append("")
    L.append("| λ | PSNR dB | static bpp | adaptive bpp | ideal bpp | bpp_pdf | side share | adaptive vs static | ideal vs static | gap closed |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for p in r["points"]:
        L.append(f"| {p['lambda']:g} | {p['psnr']:.2f} | {p['bpp_static']:.4f} | {p['bpp_adaptive']:.4f} | {p['bpp_ideal']:.4f} | "
                 f"{p['bpp_pdf']:.5f} | {p['side_share_pct']:.2f} % | {p['adaptive_vs_static_pct']:+.2f} % | {p['ideal_vs_static_pct']:+.2f} % | "
                 f"{_fmt(p['gap_closed_pct'], '.1f')} % |")
    pw = r["pointwise_rate_change"]
    gp = r.get("gap_closed_pointwise_pct")
    L.append(f"| per-point mean (geometric) | | | | | | | {pw['adaptive']:+.2f} % | {pw['ideal']:+.2f} % | {_fmt(gp, '.1f')} % |")
    L.append("")
    bd = r["bd_rate"]
    f = lambda v: f"{v:+.2f} %" if isinstance(v, float) else f"error ({v})"  # noqa: E731
    L.append("| rate vs static at equal PSNR | BD-rate, cubic (VCEG-M33) | BD-rate, pchip | per-point, geometric mean |")
    L.append("|---|---|---|---|")
    rs = r.get("refine_steps", 0)
    rows = [("adaptive", "adaptive (default: backward adaptation, static fallback)"), ("ideal", "ideal (exact p, zero side cost)"),
            ("adaptive_forward", "adaptive, fixed tables per image, static fallback"),
            ("adaptive_nofallback", "adaptive, fixed tables, fallback off (paper's codec)")]
    if rs:
        rows.append(("adaptive_refined", f"adaptive (default) + encoder refinement ({rs} steps)"))
    for k, label in rows:
        L.append(f"| {label} | {f(bd[k + '_cubic'])} | {f(bd[k + '_pchip'])} | {pw[k]:+.2f} % |")
    gbd = r.get("gap_closed_bd_pct")
    L.append(f"| share of the static→ideal gap closed by adaptive (default) | {_fmt(gbd, '.1f')} % | | {_fmt(gp, '.1f')} % |")
    for k, label in (("adaptive_forward", "fixed tables, fallback on"), ("adaptive_nofallback", "the paper's codec")):
        g_arm = r.get("gap_closed_by_arm", {}).get(k, {})
        L.append(f"| share closed by {label} | {_fmt(g_arm.get('bd_pct'), '.1f')} % | | {_fmt(g_arm.get('pointwise_pct'), '.1f')} % |")
    if rs:
        L.append(f"| share closed by adaptive + refinement | {_fmt(r.get('gap_closed_refined_bd_pct'), '.1f')} % | | "
                 f"{_fmt(r.get('gap_closed_refined_pointwise_pct'), '.1f')} % |")
    L.append("")
    if not r.get("rd_curve_valid"):
        L.append("**The RD points do not form a curve** (PSNR and rate do not both increase with λ; with a short base training, λ barely "
                 "changes the base models), so a BD-rate, which fits a curve through the points, is unreliable. Each point is an "
                 "exact comparison at equal PSNR (same frozen transforms), so the per-point figures are used for the target.")
        L.append("")
    pp = r.get("paper", {})
    ref = (f"paper (Kodak, computed here from `{pp['source']}`): adaptive {pp['bd_adaptive']:+.2f} %, ideal {pp['bd_ideal']:+.2f} %, "
           f"gap closed {pp['gap_closed_pct']:.1f} %") if "bd_adaptive" in pp else f"paper reference unavailable ({pp.get('error')})"
    t = r["targets"]
    L.append(f"- Share of the static→ideal gap closed by the adaptive codec, by {r.get('gap_closed_method')}: **{_fmt(t['gap_closed']['value'], '.1f')} %**; "
             f"target >= {TARGET_GAP_SHARE:g} %: {_met(t['gap_closed']['met'])}. {ref}.")
    L.append(f"- Side stream share of the total rate, max over λ: **{t['side_share']['value']:.2f} %**; target {t['side_share']['target']}: {_met(t['side_share']['met'])}.")
    if "gap_closed_refined" in t:
        L.append(f"- Beyond the paper, with encoder-side refinement of the side latent ({rs} Adam steps per image, `hp.refine_steps`; decoder "
                 f"unchanged): gap closed **{_fmt(t['gap_closed_refined']['value'], '.1f')} %** ({_met(t['gap_closed_refined']['met'])}), "
                 f"side share max **{t['side_share_refined']['value']:.2f} %**.")
        L.append("")
        L.append("| λ | adaptive bpp | + refinement bpp | bpp_pdf refined | gap closed | gap closed, refined | encode s | encode s, refined |")
        L.append("|---|---|---|---|---|---|---|---|")
        for p in r["points"]:
            L.append(f"| {p['lambda']:g} | {p['bpp_adaptive']:.4f} | {p['bpp_adaptive_refined']:.4f} | {p['bpp_pdf_refined']:.5f} | "
                     f"{_fmt(p['gap_closed_pct'], '.1f')} % | {_fmt(p['gap_closed_refined_pct'], '.1f')} % | "
                     f"{p['enc_time_adaptive']:.3f} | {p['enc_time_adaptive_refined']:.3f} |")
        L.append("")
    dmax = max(p["psnr_max_abs_diff_between_modes"] for p in r["points"])
    L.append(f"- PSNR is the same in every mode at each λ (max difference {dmax:.2g} dB): the whole gain is rate. "
             f"PSNR increases with λ: {'yes' if r['psnr_monotone_in_lambda'] else 'no'}; the points form an RD curve: {'yes' if r.get('rd_curve_valid') else 'no'}.")
    chk = [(p["lambda"], p["bpp_adaptive"], p["runner_infer_bpp"], p.get("checkpoint") or {}) for p in r["points"] if p.get("runner_infer_bpp") is not None]
    if chk:
        desc = []
        for l, a, b, ck in chk:
            last = ck.get("epoch") == ck.get("num_epochs")
            tag = "same" if abs(a - b) < 1e-9 else ("differs" + ("" if last else f": evaluated {ck.get('checkpoint')} of epoch {ck.get('epoch')}/{ck.get('num_epochs')}"))
            desc.append(f"λ={l:g}: {a:.5f} vs {b:.5f} ({tag})")
        L.append("- Cross-check against the training runs' own infer pass (both use the last epoch's weights, `runner.last.pth`; "
                 "the runs' infer pass codes with the codec of the run's own code version): " + "; ".join(desc) + ".")
    L.append("")
    L.append("**Beyond the paper** (per image, the encoder keeps the cheapest way to code: fixed or backward-adapted tables, each starting "
             "from the static tables, from p̂, or from either per channel; mode byte: low bits 0 = static, 1 = p̂, 2 = per-channel flags, "
             "+16 = backward adaptation):")
    L.append("")
    C = r.get("model", {}).get("C")
    L.append(f"| λ | images: static start / per-channel / backward | channels starting static (mean of {C}) | bpp, paper's codec | "
             f"bpp, fixed tables + fallback | bpp, default | default vs paper's codec | side share, paper's codec |")
    L.append("|---|---|---|---|---|---|---|---|")
    for p in r["points"]:
        n = p["num_images"]
        L.append(f"| {p['lambda']:g} | {p['static_picks']}/{n} / {p.get('mixed_picks', 0)}/{n} / {p.get('backward_picks', 0)}/{n} | "
                 f"{_fmt(p.get('static_channels_mean'), '.1f')} | {p['bpp_adaptive_nofallback']:.4f} | {p['bpp_adaptive_forward']:.4f} | {p['bpp_adaptive']:.4f} | "
                 f"{-p['fallback_saving_pct']:+.2f} % | {p['side_share_nofallback_pct']:.2f} % |")
    L.append("")
    return L


def _md_throughput(r: Dict[str, Any]) -> List[str]:
    A, F = r["arms"]["adaptive"], r["arms"]["full"]
    Cc = r["arms"].get("adaptive_cached")
    L = ["## 2. Training throughput (adaptive stage vs full step)", ""]
    L.append(f"Model: {r['model']}; device {r['device']}; batches of {r['batch']} random {r['crop']}x{r['crop']} crops of the train photographs; "
             f"{r['warmup']} warm-up + {r['steps']} measured steps per arm, in rotating order on the same batches. Every step: loss "
             "(`AdaptiveRateDistortionLoss`), backward, grad-norm clip 1.0, Adam step, aux (quantile) step, as the runner does.")
    L.append("")
    L.append("| step | trainable params | images/s | median step s |")
    L.append("|---|---|---|---|")
    arms = [A, F] + ([Cc] if Cc else [])
    for a in arms:
        L.append(f"| {a['name']} | {a['trainable_params']:,} | {a['images_per_s']:.2f} | {a['median_step_s']:.3f} |")
    L.append("")
    t = r["target"]
    L.append(f"- Speed-up of the adaptive stage's step, `model(x, with_x_hat=False)` (images/s ratio): **{r['speedup']:.2f}x** "
             f"(median of per-round ratios {r['speedup_median_pair']:.2f}x); target {t['target']}: {_met(t['met'])}.")
    if Cc:
        L.append(f"- With cached latents (the runner's `latent_cache`, epochs after the first): **{r['speedup_cached']:.2f}x**.")
        q = r.get("quickstart_schedule")
        if q:
            L.append(f"- Averaged over the quickstart's schedule ({q['epochs']} epochs, latent_cache={q['latent_cache']}): {q['speedup_epoch_average']:.2f}x.")
    L.append("")
    keys = list(dict.fromkeys(k for a in arms for k in a["breakdown_median_s"]))
    keys = [k for k in keys if k != "forward"]
    L.append("| median seconds per step | " + " | ".join(("adaptive stage", "full step", "adaptive, cached latents")[: len(arms)]) + " |")
    L.append("|---" * (len(arms) + 1) + "|")
    for k in keys:
        L.append(f"| {k} | " + " | ".join(f"{a['breakdown_median_s'].get(k, 0.0):.4f}" for a in arms) + " |")
    L.append("")
    if r.get("profile_adaptive_top_ops"):
        L.append("Profile of the adaptive step (torch.profiler, top ops by self CPU time, per step):")
        L.append("")
        L.append("| op | self CPU ms | share | calls |")
        L.append("|---|---|---|---|")
        for o in r["profile_adaptive_top_ops"]:
            L.append(f"| `{o['op']}` | {o['self_cpu_ms']:.1f} | {o['share_pct']:.1f} % | {o['calls']} |")
        L.append("")
    return L


def _md_coding(r: Dict[str, Any]) -> List[str]:
    L = ["## 3. Coding speed (768x512, batch 1, CPU)", ""]
    L.append(f"Model: {r['model']}; image: {r['image']}; {r['threads']} torch threads; median of {r['reps']} reps "
             f"(+{r['warmup']} warm-up), modes alternated.")
    L.append("")
    L.append("| mode | encode s | decode s | enc+dec s | enc+dec vs static | y bytes | side bytes |")
    L.append("|---|---|---|---|---|---|---|")
    for name, m in r["modes"].items():
        ratio = f"{m['ratio_total']:.2f}x (enc {m['ratio_encode']:.2f}x, dec {m['ratio_decode']:.2f}x)" if "ratio_total" in m else "1.00x"
        label = {"static": "static", "adaptive": "adaptive (default: backward adaptation, fallback on)",
                 "adaptive_forward": "adaptive, fixed tables, fallback on", "adaptive_nofallback": "adaptive, fixed tables, fallback off (paper)",
                 "adaptive_refined": f"adaptive + refinement ({r.get('refine_steps', '?')} steps, fallback on)"}[name]
        L.append(f"| {label} | {m['encode_s']:.4f} | {m['decode_s']:.4f} | {m['total_s']:.4f} | {ratio} | {m['y_bytes']} | {m['side_bytes']} |")
    L.append("")
    t = r["target"]
    L.append(f"- Adaptive enc+dec / static enc+dec: **{t['value']:.2f}x**; target {t['target']}: {_met(t['met'])}.")
    if "target_refined" in r:
        t = r["target_refined"]
        L.append(f"- With encoder-side refinement: **{t['value']:.2f}x**; target {t['target']}: {_met(t['met'])}.")
    L.append("")
    if "breakdown_median_s" in r:
        b = r["breakdown_median_s"]
        for side in ("encode", "decode"):
            keys = list(dict.fromkeys(list(b["adaptive"][side]) + list(b["static"][side])))
            L.append(f"| {side}: median seconds per step | adaptive | static |")
            L.append("|---|---|---|")
            for k in keys:
                a, s = b["adaptive"][side].get(k), b["static"][side].get(k)
                L.append(f"| {k} | {_fmt(a, '.4f', '-')} | {_fmt(s, '.4f', '-')} |")
            L.append(f"| **sum** | {sum(b['adaptive'][side].values()):.4f} | {sum(b['static'][side].values()):.4f} |")
            L.append("")
        L.append("(Breakdown: separate reps of the same `compress`/`decompress` calls with timers wrapped around the codec's steps; "
                 "\"other\" is the rest of the call. Medians per step, so columns need not add up exactly.)")
        if r.get("breakdown_missing_timers"):
            L.append(f"Timers not installed (library changed?): {', '.join(r['breakdown_missing_timers'])}.")
        L.append("")
    elif "breakdown_error" in r:
        L.append(f"Breakdown unavailable: {r['breakdown_error']}")
        L.append("")
    return L


def _md_cost(r: Dict[str, Any]) -> List[str]:
    L = ["## 4. Side-model cost (parameters, MACs per pixel of a 768x512 image)", ""]
    L.append(f"Method: {r['method']}")
    L.append("")
    L.append("| model | params analysis | params synthesis | params entropy model | MAC/px analysis | MAC/px synthesis | MAC/px total | FlopCounter MAC/px total |")
    L.append("|---|---|---|---|---|---|---|---|")
    for x in r["rows"]:
        L.append(f"| {x['name']} ({x['note']}) | {x['params_analysis']:,} | {x['params_synthesis']:,} | {x['params_entropy_model']:,} | "
                 f"{x['mac_per_px_analysis']:.2f} | {x['mac_per_px_synthesis']:.2f} | {x['mac_per_px_total']:.2f} | {x['flopcounter_mac_per_px_total']:.2f} |")
    L.append("")
    for key, c in r.get("comparison", {}).items():
        L.append(f"- {key}: analysis transform alone: distribution codec {c['analysis_params'][0]:,} params, {c['analysis_mac_per_px'][0]:.1f} MAC/px vs "
                 f"hyperprior h_a {c['analysis_params'][1]:,} params, {c['analysis_mac_per_px'][1]:.0f} MAC/px "
                 f"({c['analysis_params'][1] / c['analysis_params'][0]:.0f}x params, {c['analysis_mac_per_px'][1] / c['analysis_mac_per_px'][0]:.0f}x MACs). "
                 f"Analysis + synthesis + entropy model: {c['all_params'][0]:,} vs {c['all_params'][1]:,} params, "
                 f"{c['all_mac_per_px'][0]:.1f} vs {c['all_mac_per_px'][1]:.0f} MAC/px.")
    L.append("")
    L.append("Paper (METHOD.md): distribution codec about 0.03 M params and ~10 MAC/px vs a scale hyperprior's 1.04 M params and ~1364 MAC/px; "
             "the hyperprior figures are those of h_a alone (equal to h_s's), i.e. one transform. "
             "GDN layers call `F.conv2d` rather than a Conv module, so the hooks skip them and FlopCounterMode counts them (the only difference between the two columns). "
             "The distribution codec's MACs are a fixed cost per image (its input is C x 256 bins, whatever the image size), so its MAC/px falls "
             "as images grow; the hyperprior's scale with the pixel count.")
    L.append("")
    return L


def render_md(res: Dict[str, Any]) -> str:
    e = res["environment"]
    L = [f"# encdist benchmarks: {e['machine']}", ""]
    if e["profile"] == "quick":
        L += ["> **Quick smoke run** (`--quick`, tiny epochs): the numbers only show that the benchmark runs end to end; they are not results.", ""]
    L += [
        f"- machine: `{e['machine']}` ({e['hostname']}, {e['platform']})",
        f"- CPU: {e['cpu_model'] or 'unknown'}, {e['cpu_count']} CPUs (usable {e['affinity_cpus']}), torch threads {e['torch_threads']}, OMP_NUM_THREADS={e['OMP_NUM_THREADS']}",
        f"- GPU: {e['cuda'] or 'none'}; throughput section on `{e['throughput_device']}`",
        f"- torch {e['torch']}, compressai {e['compressai']}, Python {e['python']}, encdist git {e['git']}",
        f"- date: {e['date']}; load average at start: {', '.join(f'{v:.2f}' for v in e['loadavg_start'] or [])}; total wall time {res['wall_s'] / 60:.1f} min",
        "- Timing claims are ratios of runs made side by side in this run; absolute times are shown for context only.",
    ]
    la = (e.get("loadavg_start") or [None])[0]
    ncpu = e.get("affinity_cpus") or e.get("cpu_count") or 1
    if la is not None and la > 0.5 * ncpu:
        la_end = (e.get("loadavg_end") or [float("nan")])[0]
        L.append(f"- **Warning:** the machine was busy before this run started (1-min load average {la:.1f} on {ncpu} CPUs; {la_end:.1f} at the end, this run included). "
                 f"With {e['torch_threads']} torch thread(s) competing with other processes, every parallel op can wait for a descheduled thread: "
                 "small-op workloads (the distribution codec) slow down far more than large convolutions, which distorts the ratios. "
                 "Re-run on an idle machine, or compare with `--threads 1`.")
    L += [
        "",
        "## Summary",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for name, t in res["targets"].items():
        v = t.get("value")
        unit = "x" if name.startswith(("train_speedup", "coding_ratio")) else " %" if name.startswith(("gap_closed", "side_share")) else ""
        L.append(f"| {name}: {t['target']} | {_fmt(v, '.2f')}{unit if v is not None else ''} | {_met(t.get('met'))} |")
    L.append("")
    for sec, fn in (("rate", _md_rate), ("throughput", _md_throughput), ("coding", _md_coding), ("cost", _md_cost)):
        r = res["sections"].get(sec)
        if r is None:
            continue
        if "error" in r:
            L += [f"## {sec}: failed", "", "```", r["error"].rstrip(), "```", ""]
        else:
            L += fn(r)
    return "\n".join(L).rstrip() + "\n"


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


def _clean(o):
    """JSON cannot hold NaN/inf: write null."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


# ============================================================================ main
def parse_args(argv=None):
    default_machine = _sanitize(f"{platform.node() or 'host'}-{os.cpu_count()}cpu")
    root_env = os.environ.get("ENCDIST_ROOT")
    qs_default = Path(root_env) if root_env else ROOT / "encdist_runs"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny epochs, few steps/reps (numbers not meaningful)")
    p.add_argument("--machine", default=None, help=f"machine name for the result files (default {default_machine}, '-quick' appended with --quick)")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    p.add_argument("--out-dir", default=str(BENCH_DIR / "results"))
    p.add_argument("--work-dir", default=str(BENCH_DIR / "_work"), help="trained checkpoints (git-ignored; reused by later runs)")
    p.add_argument("--fresh", action="store_true", help="retrain: delete this profile's cached checkpoints first")
    p.add_argument("--rate-dir", help="re-evaluate the trained models of an earlier run's work folder (benchmarks/_work/<profile>-<key>) "
                                      "as they are, training only what is missing")
    p.add_argument("--lambdas", help="comma-separated λ values (>= 4 for BD-rate)")
    p.add_argument("--base-epochs", type=int)
    p.add_argument("--base-samples", type=int, help="train crops per base epoch")
    p.add_argument("--adaptive-epochs", type=int)
    p.add_argument("--adaptive-samples", type=int, help="train crops per adaptive epoch")
    p.add_argument("--tp-steps", type=int, help="measured throughput steps per arm")
    p.add_argument("--tp-batch", type=int)
    p.add_argument("--coding-reps", type=int)
    p.add_argument("--reuse-quickstart-base", action="store_true",
                   help="use the quickstart's own base model (λ=0.0067) instead of training it, if present")
    p.add_argument("--quickstart-base", default=str(qs_default / "base" / "bmshj2018-factorized-quickstart.pth"))
    p.add_argument("--jobs", type=int, default=1, help="λ trained in parallel processes (Hydra joblib launcher); use with --threads")
    p.add_argument("--refine-steps", type=int, default=30,
                   help="encoder-side refinement steps of the 'adaptive + refinement' columns (beyond the paper; 0 skips them)")
    p.add_argument("--device", default="auto", help="device of the throughput section: auto, cpu, cuda")
    p.add_argument("--threads", type=int, help="torch threads here and OMP_NUM_THREADS of the training runs (default: leave as is)")
    p.add_argument("--profile", action="store_true", help="always profile the adaptive training step (default: only when below target)")
    args = p.parse_args(argv)
    if args.machine is None:
        args.machine = default_machine + ("-quick" if args.quick else "")
    args.machine = _sanitize(args.machine)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    prof = dict(PROFILES["quick" if args.quick else "full"])
    overrides = {"lambdas": args.lambdas and [float(v) for v in args.lambdas.split(",") if v.strip()],
                 "base_epochs": args.base_epochs, "base_samples": args.base_samples,
                 "adaptive_epochs": args.adaptive_epochs, "adaptive_samples": args.adaptive_samples,
                 "tp_steps": args.tp_steps, "tp_batch": args.tp_batch, "coding_reps": args.coding_reps}
    prof.update({k: v for k, v in overrides.items() if v})
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
    res: Dict[str, Any] = {"environment": environment(args, device), "profile": prof, "sections": {}, "targets": {}}
    log(f"machine {args.machine}, profile {'quick' if args.quick else 'full'}, sections {', '.join(sections)}")

    def run(name, fn, *a):
        if name not in sections:
            return None
        t = time.perf_counter()
        try:
            out = fn(*a)
        except Exception:
            out = {"error": traceback.format_exc()}
            log(f"section {name} FAILED:\n{out['error']}")
        out["wall_s"] = time.perf_counter() - t
        res["sections"][name] = out
        log(f"section {name}: {out['wall_s']:.0f} s")
        return out

    rate = run("rate", section_rate, args, prof, work)
    if rate and "targets" in rate:
        res["targets"].update(rate["targets"])
    if "throughput" in sections or "coding" in sections:
        model, desc = _reference_model(rate if rate and "error" not in rate else None, work, args)
        tp = run("throughput", section_throughput, args, prof, model, desc, device)
        if tp and "target" in tp:
            res["targets"]["train_speedup"] = tp["target"]
        cd = run("coding", section_coding, args, prof, model, desc)
        if cd and "target" in cd:
            res["targets"]["coding_ratio"] = cd["target"]
        if cd and "target_refined" in cd:
            res["targets"]["coding_ratio_refined"] = cd["target_refined"]
    run("cost", section_cost, args)

    res["wall_s"] = time.perf_counter() - t_start
    res["environment"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = render_md(res)
    (out_dir / f"{args.machine}.md").write_text(md)
    (out_dir / f"{args.machine}.json").write_text(json.dumps(_clean(res), indent=1, default=_json_default) + "\n")
    print("\n" + md, flush=True)
    log(f"wrote {out_dir / (args.machine + '.md')} and .json in {res['wall_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
