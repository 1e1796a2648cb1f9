"""The benchmark reuses only trained runs made by the code that writes its report (issue 20, provenance)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _run(root: Path, name: str, lmbda: float, code: str) -> Path:
    d = root / "runs" / name
    (d / "configs").mkdir(parents=True)
    (d / "checkpoints").mkdir()
    (d / "results").mkdir()
    OmegaConf.save(OmegaConf.create({"engine": {"num_epochs": 1}, "criterion": {"lmbda": lmbda}}), d / "configs" / "config.yaml")
    torch.save({"epoch": 1}, d / "checkpoints" / "runner.last.pth")
    (d / "results" / "infer.json").write_text(json.dumps({"name": "x", "results": {}, "meta": {"code": code}}))
    return d


def test_runs_of_other_code_are_not_reused(tmp_path):
    import common as C

    from encdist.provenance import code_version

    ours = _run(tmp_path, "a", 0.1, code_version())
    _run(tmp_path, "b", 0.2, "0000000-elsewhere")
    found = C.completed_runs(tmp_path)
    if code_version() == "unknown":  # outside a git checkout every completed run counts
        assert set(found) == {0.1, 0.2}
    else:
        assert found == {0.1: ours}
