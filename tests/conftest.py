"""Shared helpers of the training tests (``test_configs``, ``test_train``, ``test_reliability_train``).

* ``TINY``: overrides that make a ``quickstart`` run take seconds (tiny model, 64x64 patches,
  one epoch); the frozen transforms come from the ``pretrained`` fixture (a random
  ``FactorizedPrior(16, 32)`` checkpoint) instead of a trained base model.
* :func:`train_cli`: ``compressai-train`` as a subprocess (``python -m encdist.cli.train``),
  with ``ENCDIST_ROOT`` pointing into the test's temporary folder.
* :func:`train_inprocess`: the same command line through ``encdist.cli.train.main`` in this
  process (for the fast config-error tests); returns ``(exit code, stdout, stderr)``.
* :func:`aim_series`: ``(steps, values)`` of an epoch metric of one loader read back with ``aim.Repo``.
* ``RATES``: the rates each loader logs (estimates ``*_loss`` in train / valid, real bytes on infer).
* :func:`fit_pdf_model`: a few dozen Adam steps of a distribution codec on histograms (realistic rates).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import pytest

#: Tiny sizes for every quickstart run of the tests (model, data, one epoch).
TINY_N, TINY_M = 16, 32
TINY: List[str] = [
    "engine.num_epochs=1",
    f"hp.N={TINY_N}",
    f"hp.M={TINY_M}",
    "dataset.train.config.num_samples=16",
    "dataset.train.loader.batch_size=8",
    "dataset.train.settings.patch_size=[64,64]",
    "dataset.valid.loader.batch_size=1",
    "dataset.valid.settings.patch_size=[64,64]",
]
#: The same for the base model trained first (``+base_overrides=[...]``).
TINY_BASE: List[str] = TINY + ["~dataset@dataset.infer", "runner.refit_bottleneck.steps=2"]  # no infer pass needed

LOADERS = ("train", "valid", "infer")
#: The rates each loader logs: the criterion's estimates under CompressAI-Trainer's ``*_loss`` names
#: in training and validation, the bytes written on the infer pass.
RATES = {"train": ("bpp_y_loss", "bpp_pdf_loss"), "valid": ("bpp_y_loss", "bpp_pdf_loss"), "infer": ("bpp_y", "bpp_pdf")}
MODEL_NAME = "bmshj2018-factorized-pdf"


def fit_pdf_model(pm, pool, num_samples: int, steps: int = 60, batch: int | None = None, generator=None) -> None:
    """Fit a distribution codec for ``steps`` Adam steps on histograms ``pool`` (``(k, C, B)``).

    The paper's objective (cross-entropy of ``num_samples`` latent positions under p̂ plus the
    side bits), on the whole pool or on random ``batch``es of it; the side bottleneck's
    quantiles on the aux loss. Leaves ``pm`` in training mode: the caller updates its tables.
    """
    import torch

    params = [q for k, q in pm.named_parameters() if not k.endswith("quantiles")]
    opt = torch.optim.Adam(params, lr=1e-2)
    aux = torch.optim.Adam([pm.entropy_bottleneck.quantiles], lr=0.5)
    pm.train()
    for _ in range(steps):
        p = pool if batch is None else pool[torch.randint(len(pool), (batch,), generator=generator)]
        out = pm(p)
        bits = -(p * torch.log2(out["p_hat"].clamp_min(1e-9))).sum() * num_samples
        bits = bits - torch.log2(out["likelihoods"]).sum()
        opt.zero_grad()
        (bits / (len(p) * num_samples * 256)).backward()
        opt.step()
        aux.zero_grad()
        pm.entropy_bottleneck.loss().backward()
        aux.step()


def base_overrides_arg(overrides: Sequence[str]) -> str:
    """``+base_overrides=["a=1","b=[64,64]"]`` as one command-line argument."""
    return "+base_overrides=[" + ",".join(f'"{o}"' for o in overrides) + "]"


def make_factorized_checkpoint(path: Path, N: int = TINY_N, M: int = TINY_M, seed: int = 0) -> Path:
    """A CompressAI ``bmshj2018-factorized`` checkpoint (``{"state_dict": ...}``) of random weights."""
    import torch
    from compressai.models import FactorizedPrior

    torch.manual_seed(seed)
    net = FactorizedPrior(N, M)
    net.update(force=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": net.state_dict()}, path)
    return path


@pytest.fixture(autouse=True, scope="session")
def _no_photo_corpus(tmp_path_factory):
    """Hermetic datasets: no photo corpus (``make data``) unless a test makes one or sets ENCDIST_DATASETS.

    Session-scoped, so that module-scoped training fixtures see it too; PhotoCorpus then uses
    scikit-image's photographs whatever this machine holds under ~/data/datasets.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENCDIST_DATASETS", str(tmp_path_factory.getbasetemp() / "no-datasets"))
        yield


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory) -> Path:
    """Frozen transforms of the tiny runs: ``FactorizedPrior(16, 32)`` (``hp.N=16 hp.M=32``)."""
    return make_factorized_checkpoint(tmp_path_factory.mktemp("pretrained") / "factorized-16-32.pth")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is many times faster.

    (With two threads and other processes busy, each small op waits for both threads.)
    Restored after the module; only the training-test modules use it.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_env(root: Path) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(
        ENCDIST_ROOT=str(root),
        OMP_NUM_THREADS="1",  # tiny models: threads only cost (see one_torch_thread)
        MKL_NUM_THREADS="1",
        AIM_UI_TELEMETRY_ENABLED="0",
        PYTHONUNBUFFERED="1",
    )
    return env


def train_argv(*overrides: str, config_name: str = "quickstart") -> List[str]:
    return [sys.executable, "-m", "encdist.cli.train", f"--config-name={config_name}", *overrides]


def train_cli(
    root: Path,
    *overrides: str,
    config_name: str = "quickstart",
    check: bool = True,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Run ``compressai-train`` in a subprocess with ``ENCDIST_ROOT=root`` (cwd ``root``)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        train_argv(*overrides, config_name=config_name),
        cwd=root,
        env=train_env(root),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"compressai-train {' '.join(overrides)} exited with {proc.returncode}:\n"
            f"--- stdout (tail)\n{proc.stdout[-3000:]}\n--- stderr (tail)\n{proc.stderr[-5000:]}"
        )
    return proc


def train_inprocess(monkeypatch, capfd, root: Path, *overrides: str, config_name: str = "quickstart") -> Tuple[int, str, str]:
    """``compressai-train`` through ``encdist.cli.train.main()`` in this process."""
    from hydra.core.global_hydra import GlobalHydra

    from encdist.cli import train as cli

    monkeypatch.setenv("ENCDIST_ROOT", str(root))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["compressai-train", f"--config-name={config_name}", *overrides])
    capfd.readouterr()
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        GlobalHydra.instance().clear()
    out, err = capfd.readouterr()
    return code, out, err


def run_dirs(root: Path) -> List[Path]:
    runs = Path(root) / "runs"
    return sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []


def aim_series(repo: Path, run_hash: str, name: str, loader: str, scope: str = "epoch"):
    """``(steps, values)`` of metric ``name`` of ``loader`` (epoch scope) read with a fresh ``aim.Repo``."""
    import aim
    from aim.storage.context import Context

    run = aim.Repo(str(repo)).get_run(run_hash)
    assert run is not None, f"Aim run {run_hash} not found in {repo} (not indexed?)"
    metric = run.get_metric(name, Context({"loader": loader, "scope": scope}))
    assert metric is not None, f"Aim run {run_hash} has no metric {name!r} for loader {loader!r}"
    steps, (values,) = metric.data.view("val").items_list()
    return [int(s) for s in steps], [float(v) for v in values]


def aim_run_hashes(repo: Path) -> List[str]:
    import aim

    return sorted(aim.Repo(str(repo)).list_all_runs())


def error_lines(stderr: str) -> List[str]:
    """Lines of ``compressai-train: error: ...`` on stderr."""
    return [line for line in stderr.splitlines() if line.startswith("compressai-train: error:")]
