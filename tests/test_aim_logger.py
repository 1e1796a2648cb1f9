"""Tests of encdist.training.aim_logger: Aim tracking for catalyst runners."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from aim_http import aim_up, http

LOADERS = ("train", "valid", "infer")


def _value(name: str, loader: str, step: int, offset: float = 0.0) -> float:
    base = {"bpp_y": 0.5, "bpp_pdf": 0.01, "loss": 3.0}[name]
    return base + LOADERS.index(loader) * 0.1 + step * 0.001 + offset


def _epoch_metrics(step: int, offset: float = 0.0) -> dict:
    """Catalyst's epoch-scope dict: one entry per loader plus ``_epoch_``."""
    metrics = {
        loader: {name: _value(name, loader, step, offset) for name in ("bpp_y", "bpp_pdf", "loss")}
        for loader in LOADERS
    }
    metrics["_epoch_"] = {"lr": 1e-4}
    return metrics


def _runner(epoch_step=0, loader_key=None, batch_step=0, sample_step=0):
    return SimpleNamespace(
        epoch_step=epoch_step, loader_key=loader_key, batch_step=batch_step, sample_step=sample_step
    )


def _series(repo_path, run_hash: str, name: str, context: dict):
    """(steps, values) of a metric read back through a fresh ``aim.Repo``."""
    import aim
    from aim.storage.context import Context

    run = aim.Repo(str(repo_path)).get_run(run_hash)
    assert run is not None, f"run {run_hash} not found (not indexed?)"
    metric = run.get_metric(name, Context(context))
    assert metric is not None, f"no metric {name} {context}"
    steps, (values,) = metric.data.view("val").items_list()
    return list(steps), list(values)


def _log_epochs(logger, steps, offset=0.0):
    for step in steps:
        logger.log_metrics(_epoch_metrics(step, offset), scope="epoch", runner=_runner(epoch_step=step))


@pytest.fixture(scope="module")
def _template_repo(tmp_path_factory):
    """An initialised, empty Aim repository (creating one costs ~2 s of migrations)."""
    from aim.sdk.repo import Repo

    path = tmp_path_factory.mktemp("aim_template")
    Repo.from_path(str(path), init=True)
    return path


@pytest.fixture
def repo(tmp_path, _template_repo):
    """Path of a fresh Aim repository (a copy of the template)."""
    path = tmp_path / "aim"
    shutil.copytree(_template_repo, path)
    return str(path)


# --------------------------------------------------------------------------- basics
def test_new_run_hash_is_aim_style():
    from encdist.training.aim_logger import new_run_hash

    a, b = new_run_hash(), new_run_hash()
    assert a != b and len(a) == 24 and int(a, 16) >= 0


def test_epoch_metrics_per_loader_context(tmp_path, repo):
    import aim

    from encdist.training.aim_logger import AimLogger, new_run_hash

    run_hash = new_run_hash()
    (tmp_path / "runs" / run_hash).mkdir(parents=True)  # runner makes the run folder first
    logger = AimLogger(repo, experiment="exp", run_hash=run_hash)
    assert logger.run_hash == run_hash and not logger.resumed
    assert logger.log_epoch_metrics and not logger.log_batch_metrics
    _log_epochs(logger, [1, 2, 3])
    # "loader" scope repeats values catalyst reports again at epoch end: skipped
    logger.log_metrics({"bpp_y": 99.0}, scope="loader", runner=_runner(3, "valid"))
    # batch metrics are off by default
    logger.log_metrics({"bpp_y": 99.0}, scope="batch", runner=_runner(3, "train", 7))
    logger.close_log()
    logger.close_log()  # idempotent

    for loader in LOADERS:
        for name in ("bpp_y", "bpp_pdf", "loss"):
            steps, values = _series(repo, run_hash, name, {"loader": loader, "scope": "epoch"})
            assert steps == [1, 2, 3]
            assert values == pytest.approx([_value(name, loader, s) for s in (1, 2, 3)])
    steps, values = _series(repo, run_hash, "lr", {"loader": "_epoch_", "scope": "epoch"})
    assert steps == [1, 2, 3] and values == pytest.approx([1e-4] * 3)

    repo_obj = aim.Repo(repo)
    names = {(m.name, m.context.to_dict().get("scope")) for m in repo_obj.query_metrics("", report_mode=0).iter()}
    assert ("bpp_y", "batch") not in names and ("bpp_y", "loader") not in names
    query = "metric.name == 'bpp_y' and metric.context.loader == 'valid'"
    found = list(repo_obj.query_metrics(query, report_mode=0).iter())
    assert [m.run.hash for m in found] == [run_hash]
    assert repo_obj.get_run(run_hash).experiment == "exp"


def test_batch_metrics_use_batch_or_sample_step(repo):
    from encdist.training.aim_logger import AimLogger

    with AimLogger(repo, log_batch_metrics=True, log_epoch_metrics=False) as logger:
        for batch_step in (1, 2, 3):
            runner = _runner(1, "train", batch_step, sample_step=batch_step * 8)
            logger.log_metrics({"loss": 10.0 - batch_step, "bpp_y": 0.1 * batch_step}, "batch", runner)
        logger.log_metrics(_epoch_metrics(1), scope="epoch", runner=_runner(1))  # off
        hash_a = logger.run_hash
    with AimLogger(repo, log_batch_metrics=True, batch_step="sample_step") as logger:
        logger.log_metrics({"loss": 1.0}, "batch", _runner(1, "valid", 2, sample_step=16))
        hash_b = logger.run_hash

    steps, values = _series(repo, hash_a, "loss", {"loader": "train", "scope": "batch"})
    assert steps == [1, 2, 3] and values == pytest.approx([9.0, 8.0, 7.0])
    with pytest.raises(AssertionError, match="no metric"):
        _series(repo, hash_a, "bpp_y", {"loader": "train", "scope": "epoch"})
    assert _series(repo, hash_b, "loss", {"loader": "valid", "scope": "batch"}) == ([16], [1.0])


def test_hparams_round_trip_resolves_omegaconf(repo):
    import aim
    from omegaconf import OmegaConf

    from encdist.training.aim_logger import AimLogger

    conf = OmegaConf.create(
        {
            "model": {"name": "bmshj2018-factorized-pdf", "N": 128, "M": "${.N}"},
            "optimizer": {"net": {"type": "Adam", "lr": 1e-4}},
            "paths": {"_common_root": "/tmp/x", "aim": "${._common_root}/aim"},
            "dataset": {"train": {"patch_size": [256, 256]}},
        }
    )
    with AimLogger(repo) as logger:
        logger.log_hparams(conf)
        run_hash = logger.run_hash
    hparams = aim.Repo(repo).get_run(run_hash)["hparams"]
    assert hparams == OmegaConf.to_container(conf, resolve=True)
    assert hparams["model"]["M"] == 128 and hparams["paths"]["aim"] == "/tmp/x/aim"


def test_bad_config_interpolation_is_one_line_error(repo):
    from omegaconf import OmegaConf

    from encdist.training.aim_logger import AimLogger
    from encdist.errors import ConfigError

    with AimLogger(repo) as logger:
        with pytest.raises(ConfigError) as info:
            logger.log_hparams(OmegaConf.create({"a": "${missing.key}"}))
    assert "\n" not in str(info.value)


def test_resume_appends_to_same_run(repo):
    import aim

    from encdist.training.aim_logger import AimLogger, TrackingError
    from encdist.errors import ConfigError

    first = AimLogger(repo, experiment="exp")
    run_hash = first.run_hash
    _log_epochs(first, [1, 2])
    # the run is locked while open: a second writer fails at once, in one line
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match="in use by another process") as info:
        AimLogger(repo, run_hash=run_hash)
    assert time.monotonic() - t0 < 5 and "\n" not in str(info.value)
    first.close_log()

    resumed = AimLogger(repo, experiment="exp", run_hash=run_hash)
    assert resumed.resumed and resumed.run_hash == run_hash
    _log_epochs(resumed, [3, 4])
    resumed.close_log()

    assert aim.Repo(repo).list_all_runs() == [run_hash]
    steps, values = _series(repo, run_hash, "bpp_y", {"loader": "valid", "scope": "epoch"})
    assert steps == [1, 2, 3, 4]
    assert values == pytest.approx([_value("bpp_y", "valid", s) for s in (1, 2, 3, 4)])

    with pytest.raises(ConfigError, match="invalid Aim run hash"):
        AimLogger(repo, run_hash="../escape")


def test_log_figure_and_image(repo):
    import matplotlib

    matplotlib.use("Agg")
    import aim
    import matplotlib.pyplot as plt
    import numpy as np
    from aim.storage.context import Context

    from encdist.training.aim_logger import AimLogger, TrackingError

    fig, ax = plt.subplots(figsize=(3, 2), dpi=50)
    ax.plot([0.1, 0.2, 0.4], [30.0, 32.0, 35.0], "o-")
    ax.set_xlabel("bpp")
    image = np.zeros((8, 12, 3), dtype=np.uint8)
    image[:, :6] = 255
    with AimLogger(repo) as logger:
        logger.log_figure("rd_curve", fig, context={"loader": "infer"}, step=1)
        logger.log_image("reconstruction", image, runner=_runner(2, "valid"), scope="loader")
        logger.log_image("figure_as_image", fig, runner=_runner(2, "valid"), scope="loader")
        with pytest.raises(TypeError, match="matplotlib or plotly figure"):
            logger.log_figure("not_a_figure", object())
        run_hash = logger.run_hash
    plt.close(fig)
    with pytest.raises(TrackingError, match="already closed"):
        logger.log_figure("rd_curve", fig)

    run = aim.Repo(repo).get_run(run_hash)
    seq = run.get_image_sequence("rd_curve", Context({"loader": "infer"}))
    steps, (images,) = seq.data.view("val").items_list()
    assert steps == [1]
    pil = images[0].to_pil_image()
    assert pil.size == (150, 100)
    seq = run.get_image_sequence("reconstruction", Context({"loader": "valid", "scope": "loader"}))
    steps, (images,) = seq.data.view("val").items_list()
    assert steps == [2]
    assert np.array_equal(np.asarray(images[0].to_pil_image().convert("RGB")), image)
    assert run.get_image_sequence("figure_as_image", Context({"loader": "valid", "scope": "loader"}))


def test_two_loggers_in_one_process(repo):
    """Closing (and indexing) one run does not disturb another run open in the same process."""
    import numpy as np

    from encdist.training.aim_logger import AimLogger

    a, b = AimLogger(repo), AimLogger(repo)
    _log_epochs(a, [1])
    _log_epochs(b, [1])
    a.close_log()
    _log_epochs(b, [2])
    b.log_image("img", np.zeros((4, 4), dtype=np.uint8), runner=_runner(2, "valid"))
    b.close_log()
    assert _series(repo, a.run_hash, "loss", {"loader": "train", "scope": "epoch"})[0] == [1]
    assert _series(repo, b.run_hash, "loss", {"loader": "train", "scope": "epoch"})[0] == [1, 2]


def test_no_threads_left_after_close(repo):
    import threading

    from encdist.training.aim_logger import AimLogger

    before = {t.ident for t in threading.enumerate()}
    logger = AimLogger(repo)
    _log_epochs(logger, [1])
    logger.close_log()
    time.sleep(0.1)
    left = [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert left == []


def _crashing_writer(repo: str, run_hash: str) -> None:
    from encdist.training.aim_logger import AimLogger

    logger = AimLogger(repo, run_hash=run_hash)
    _log_epochs(logger, [1, 2])
    os.kill(os.getpid(), signal.SIGKILL)  # dies holding the run lock, run not indexed


def test_resume_after_crash(repo):
    """A run whose process was SIGKILLed can be resumed: its stale lock is detected."""
    from encdist.training.aim_logger import AimLogger, new_run_hash

    run_hash = new_run_hash()
    proc = mp.get_context("fork").Process(target=_crashing_writer, args=(repo, run_hash))
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == -signal.SIGKILL
    assert list((Path(repo) / ".aim" / "locks").glob(f"{run_hash}*"))  # left behind

    logger = AimLogger(repo, run_hash=run_hash)
    assert logger.resumed
    _log_epochs(logger, [3])
    logger.close_log()
    steps, values = _series(repo, run_hash, "bpp_pdf", {"loader": "infer", "scope": "epoch"})
    assert steps == [1, 2, 3]
    assert values == pytest.approx([_value("bpp_pdf", "infer", s) for s in (1, 2, 3)])


def test_catalyst_runner_uses_logger(repo, monkeypatch):
    """End to end with catalyst's SupervisedRunner: hparams, epoch and batch metrics, close."""
    import catalyst.core.engine
    import torch
    from accelerate.utils import DistributedType
    from catalyst import dl
    from torch.utils.data import DataLoader, TensorDataset

    from encdist.training.aim_logger import AimLogger

    if not hasattr(DistributedType, "TPU"):
        # catalyst 22.4's Engine.mean_reduce_ddp_metrics names DistributedType.TPU,
        # which the installed accelerate no longer has (single process: nothing to reduce).
        monkeypatch.setattr(
            catalyst.core.engine.Engine, "mean_reduce_ddp_metrics", lambda self, metrics: metrics
        )
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    loaders = {
        "train": DataLoader(TensorDataset(x, y), batch_size=4),
        "valid": DataLoader(TensorDataset(x, y), batch_size=8),
    }
    model = torch.nn.Linear(4, 1)
    logger = AimLogger(repo, experiment="catalyst", log_batch_metrics=True)
    dl.SupervisedRunner().train(
        model=model, criterion=torch.nn.MSELoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loaders=loaders, num_epochs=2, loggers={"aim": logger},
        hparams={"optimizer": {"lr": 0.1}}, verbose=False,
    )
    assert logger.closed  # catalyst closes its loggers at experiment end
    import aim

    assert aim.Repo(repo).get_run(logger.run_hash)["hparams"] == {"optimizer": {"lr": 0.1}}
    for loader in ("train", "valid"):
        steps, _ = _series(repo, logger.run_hash, "loss", {"loader": loader, "scope": "epoch"})
        assert steps == [1, 2]
    steps, _ = _series(repo, logger.run_hash, "loss", {"loader": "train", "scope": "batch"})
    assert steps == [1, 2, 3, 4, 7, 8, 9, 10]  # runner.batch_step counts valid batches too


# ------------------------------------------------------------------ two processes
def _import_aim_logger_only():
    """Import ``encdist.training.aim_logger`` without running ``encdist/__init__``.

    The package ``__init__`` registers models (imports compressai etc.), which
    would add seconds to each spawned worker's start-up; the logger needs none of it.
    """
    import importlib
    import importlib.util
    import types

    if "encdist" not in sys.modules:
        spec = importlib.util.find_spec("encdist")
        package = types.ModuleType("encdist")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["encdist"] = package
    return importlib.import_module("encdist.training.aim_logger")


def _concurrent_worker(repo: str, worker: int, n: int, barrier) -> None:
    AimLogger = _import_aim_logger_only().AimLogger

    barrier.wait(timeout=120)  # start tracking together (imports take a while)
    logger = AimLogger(repo, experiment=f"worker{worker}")
    for step in range(n):
        runner = _runner(epoch_step=step)
        logger.log_metrics(
            {"train": {"bpp_y": _value("bpp_y", "train", step, offset=worker)}}, "epoch", runner
        )
    logger.log_hparams({"worker": worker})
    logger.close_log()


def test_two_processes_share_one_repo(tmp_path):
    import aim

    repo = str(tmp_path / "aim")
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    n = 50
    procs = [ctx.Process(target=_concurrent_worker, args=(repo, w, n, barrier)) for w in (1, 2)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=180)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    assert [p.exitcode for p in procs] == [0, 0]

    repo_obj = aim.Repo(repo)
    hashes = repo_obj.list_all_runs()
    assert len(hashes) == 2
    seen = set()
    for run_hash in hashes:
        worker = repo_obj.get_run(run_hash)["hparams"]["worker"]
        seen.add(worker)
        steps, values = _series(repo, run_hash, "bpp_y", {"loader": "train", "scope": "epoch"})
        assert steps == list(range(n))
        assert values == pytest.approx([_value("bpp_y", "train", s, offset=worker) for s in range(n)])
    assert seen == {1, 2}


# ---------------------------------------------------------------- aim up dashboard
@pytest.mark.slow
def test_aim_up_dashboard_serves_logged_metrics(tmp_path):
    from encdist.training.aim_logger import AimLogger

    repo = tmp_path / "aim"
    steps = [1, 2, 3]
    with AimLogger(str(repo), experiment="dashboard") as logger:
        _log_epochs(logger, steps)
        logger.log_hparams({"model": {"name": "bmshj2018-factorized-pdf"}})
        run_hash = logger.run_hash

    with aim_up(repo, tmp_path / "aim_up.log", wait_for=f"/runs/{run_hash}/info/") as base:
        status, info = http("GET", f"{base}/runs/{run_hash}/info/", timeout=30)
        assert status == 200
        assert info["params"]["hparams"] == {"model": {"name": "bmshj2018-factorized-pdf"}}
        assert info["props"]["experiment"]["name"] == "dashboard"
        listed = {(t["name"], t["context"].get("loader")) for t in info["traces"]["metric"]}
        for loader in LOADERS:
            assert ("bpp_y", loader) in listed and ("bpp_pdf", loader) in listed

        requested = [
            {"name": name, "context": {"loader": loader, "scope": "epoch"}}
            for name in ("bpp_y", "bpp_pdf")
            for loader in LOADERS
        ]
        status, traces = http("POST", f"{base}/runs/{run_hash}/metric/get-batch/", requested, timeout=30)
        assert status == 200 and len(traces) == len(requested)
        for trace in traces:
            loader = trace["context"]["loader"]
            assert trace["iters"] == steps
            assert trace["values"] == pytest.approx([_value(trace["name"], loader, s) for s in steps])
