"""CPU threads (``env.threads``, ``encdist.training.threads``): the user's choice, else the idle cores."""

from __future__ import annotations

import os

import pytest
import torch

from conftest import error_lines, train_inprocess
from encdist.errors import ConfigError
from encdist.training.threads import apply_threads, resolve_threads


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


@pytest.mark.parametrize("value", [0, -1, "two", True, 1.5])
def test_bad_setting_is_a_config_error(value):
    with pytest.raises(ConfigError, match=r"^env.threads must be a positive integer, got "):
        resolve_threads(value)


def test_explicit_then_environment_then_idle_cores(monkeypatch, torch_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert resolve_threads(2) == 2  # explicit wins, per process
    assert resolve_threads(None, processes=2) == 3  # OMP_NUM_THREADS is per process already
    monkeypatch.setenv("OMP_NUM_THREADS", "zero")
    with pytest.raises(ConfigError, match="^OMP_NUM_THREADS must be"):
        resolve_threads(None)

    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    torch.set_num_threads(4)  # torch's default (physical cores) is the ceiling
    for load, processes, expected in [(0.0, 1, 4), (6.4, 1, 2), (9.0, 1, 1), (2.0, 2, 3), (7.0, 2, 1)]:
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert resolve_threads(None, processes=processes) == expected, (load, processes)

def test_apply_sets_torch_and_child_processes(monkeypatch, torch_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert apply_threads(1) == 1
    assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"


def test_train_refuses_bad_threads_in_one_line(monkeypatch, capfd, tmp_path):
    code, out, err = train_inprocess(monkeypatch, capfd, tmp_path, "env.threads=0")
    assert code == 2
    assert error_lines(err) == ["compressai-train: error: env.threads must be a positive integer, got 0"]
    assert not (tmp_path / "runs").exists()
