"""Tests of encdist.training.checkpoint: crash-safe saving, checked loading, architecture checks."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import struct
import time

import pytest
import torch

from encdist.training.checkpoint import DYNAMIC_BUFFERS, atomic_save, check_compatible, safe_load
from encdist.errors import CheckpointError, EncdistError

N_FLOATS = 12_500_000  # 50 MB of float32


def _version(v: int) -> dict:
    # Built without torch kernels (no OpenMP in the forked writer): bytes -> tensor.
    payload = bytearray(struct.pack("<f", float(v))) * N_FLOATS
    return {"version": v, "state_dict": {"w": torch.frombuffer(payload, dtype=torch.float32)}, "epoch": v}


def _writer_loop(path: str, first_version: int) -> None:
    """Write ever newer versions until killed."""
    v = first_version
    while True:
        atomic_save(_version(v), path)
        v += 1


def _temporaries(directory) -> list:
    return [p.name for p in directory.iterdir() if ".tmp-" in p.name]


def _check_complete(path, max_version: int) -> int:
    ckpt = safe_load(path)
    v = ckpt["version"]
    assert 0 <= v <= max_version and ckpt["epoch"] == v
    w = ckpt["state_dict"]["w"]
    assert w.shape == (N_FLOATS,) and bool((w == float(v)).all())
    return v


# ------------------------------------------------------------------- atomic_save
def test_atomic_save_survives_sigkill(tmp_path):
    path = tmp_path / "ckpt" / "checkpoint_best_loss.pth"
    atomic_save(_version(0), path)  # a complete old version exists before the first kill
    ctx = mp.get_context("fork")  # torch is already imported: no start-up cost
    rng = random.Random(1234)
    next_version = 1
    seen = set()
    for round_ in range(4):
        proc = ctx.Process(target=_writer_loop, args=(str(path), next_version))
        proc.start()
        time.sleep(rng.uniform(0.05, 1.2))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=30)
        assert proc.exitcode == -signal.SIGKILL
        # far more versions than could have been written: the bound only checks sanity
        seen.add(_check_complete(path, max_version=next_version + 1000))
        next_version += 1000
    # the next save removes the temporaries the killed writers left behind
    atomic_save({"version": -1}, path)
    assert safe_load(path) == {"version": -1}
    assert _temporaries(path.parent) == []
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_atomic_save_replaces_and_keeps_permissions(tmp_path):
    path = tmp_path / "a.pth"
    atomic_save({"a": 1}, path)
    atomic_save({"a": 2}, str(path))
    assert safe_load(path) == {"a": 2}
    umask = os.umask(0o022)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)
    assert _temporaries(tmp_path) == []


def test_atomic_save_failure_keeps_old_file_and_cleans_up(tmp_path):
    path = tmp_path / "a.pth"
    atomic_save({"a": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise TypeError("cannot pickle this")

    with pytest.raises(TypeError):
        atomic_save({"bad": Unpicklable()}, path)
    assert safe_load(path) == {"a": 1}
    assert _temporaries(tmp_path) == []


def test_atomic_save_removes_dead_writers_temporaries_of_every_checkpoint(tmp_path):
    """A writer killed while saving "best" leaves a temporary; saving "last" removes it (a resumed run
    may never save "best" again). A live writer's temporary is kept."""
    import subprocess
    import sys

    from encdist.training.checkpoint import _tmp_prefix

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    best, last = tmp_path / "runner.best.pth", tmp_path / "runner.last.pth"
    stale = tmp_path / f"{_tmp_prefix(best)}{dead.pid}-abc123"
    alive = tmp_path / f"{_tmp_prefix(best)}{os.getppid()}-def456"
    stale.write_bytes(b"partial")
    alive.write_bytes(b"being written")
    atomic_save(_version(1), last)
    assert not stale.exists(), "a dead writer's temporary of another checkpoint is removed"
    assert alive.exists(), "a live writer's temporary is left alone"
    assert _check_complete(last, 1) == 1


def test_atomic_save_unwritable_location_is_checkpoint_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError) as info:
        atomic_save({"a": 1}, blocker / "sub" / "a.pth")
    assert str(blocker) in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------- safe_load
def _assert_one_line_error(path, match: str):
    with pytest.raises(CheckpointError, match=match) as info:
        safe_load(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and len(message) < 400
    assert isinstance(info.value, EncdistError)


def test_safe_load_missing_empty_directory(tmp_path):
    _assert_one_line_error(tmp_path / "nope.pth", "does not exist")
    (tmp_path / "empty.pth").write_bytes(b"")
    _assert_one_line_error(tmp_path / "empty.pth", "empty")
    _assert_one_line_error(tmp_path, "is a directory")


@pytest.mark.parametrize("zipfile_format", [True, False])
def test_safe_load_truncated(tmp_path, zipfile_format):
    full = tmp_path / "full.pth"
    state = {"state_dict": {"w": torch.randn(1000, 100)}, "epoch": 3}
    torch.save(state, full, _use_new_zipfile_serialization=zipfile_format)
    data = full.read_bytes()
    for fraction in (0.01, 0.5, 0.99):
        cut = tmp_path / f"cut_{fraction}.pth"
        cut.write_bytes(data[: int(len(data) * fraction)])
        _assert_one_line_error(cut, "truncated or corrupt")
    assert torch.equal(safe_load(full)["state_dict"]["w"], state["state_dict"]["w"])


def test_safe_load_garbage_and_non_dict(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(4096))
    _assert_one_line_error(garbage, "truncated or corrupt")
    text = tmp_path / "text.pth"
    text.write_text("this is not a checkpoint\n" * 10)
    _assert_one_line_error(text, "truncated or corrupt")
    listed = tmp_path / "list.pth"
    torch.save([1, 2, 3], listed)
    _assert_one_line_error(listed, "does not contain a dict")


def test_safe_load_keeps_optimizer_and_scheduler_state(tmp_path):
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=2)
    scheduler.step(1.0)
    path = tmp_path / "train.pth"
    atomic_save(
        {"state_dict": net.state_dict(), "optimizer": optimizer.state_dict(),
         "scheduler": scheduler.state_dict(), "paths": tmp_path},
        path,
    )
    ckpt = safe_load(path)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    assert ckpt["paths"] == tmp_path


# -------------------------------------------------------------- check_compatible
@pytest.fixture(scope="module")
def factorized():
    from compressai.models import FactorizedPrior

    torch.manual_seed(0)
    return FactorizedPrior(N=128, M=192)


def test_check_compatible_same_architecture(factorized, tmp_path):
    from compressai.models import FactorizedPrior

    other = FactorizedPrior(N=128, M=192)
    other.update(force=True)  # fills the entropy coder tables (data-dependent shapes)
    assert other.entropy_bottleneck._quantized_cdf.numel() > 0
    path = tmp_path / "ok.pth"
    atomic_save({"state_dict": other.state_dict(), "epoch": 1}, path)
    ckpt = safe_load(path)
    check_compatible(factorized, ckpt["state_dict"], path)
    check_compatible(factorized, ckpt, path)  # whole checkpoint: uses ckpt["state_dict"]
    # without the dynamic buffers at all
    trimmed = {k: v for k, v in ckpt["state_dict"].items() if k.rsplit(".", 1)[-1] not in DYNAMIC_BUFFERS}
    check_compatible(factorized, trimmed, path)


def test_check_compatible_other_width(factorized, tmp_path):
    from compressai.models import FactorizedPrior

    path = tmp_path / "n64.pth"
    with pytest.raises(CheckpointError) as info:
        check_compatible(factorized, FactorizedPrior(N=64, M=192).state_dict(), path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "another architecture" in message
    assert "shape of g_a.0.weight 64x3x5x5 vs 128x3x5x5" in message
    assert "more)" in message  # only the first few are listed

    with pytest.raises(CheckpointError, match=r"shape of entropy_bottleneck\.quantiles 128x1x3 vs 192x1x3"):
        check_compatible(factorized, FactorizedPrior(N=128, M=128).state_dict(), path)


def test_check_compatible_other_model(factorized, tmp_path):
    from compressai.models import ScaleHyperprior

    path = tmp_path / "hyper.pth"
    with pytest.raises(CheckpointError) as info:
        check_compatible(ScaleHyperprior(N=128, M=192), factorized.state_dict(), path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "missing h_a.0.weight" in message
    assert "unexpected" not in message  # FactorizedPrior's keys are a subset
    with pytest.raises(CheckpointError, match="unexpected h_a.0.weight"):
        check_compatible(factorized, ScaleHyperprior(N=128, M=192).state_dict(), path)
    with pytest.raises(CheckpointError, match="holds no state dict"):
        check_compatible(factorized, [1, 2], path)
