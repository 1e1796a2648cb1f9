"""Catalyst's distributed engine (``engine=ddp``) on two CPU processes (gloo).

Catalyst 22.4's ``DistributedDataParallelEngine`` alone does not run on CPU with
accelerate 1.x (see ``encdist.config.factory._ddp_engine``); this checks that
``engine=ddp engine.world_size=2 engine.cpu=true`` trains a tiny quickstart run in two
processes: the training set is split between the ranks, loader metrics are averaged
over them, rank 0 alone writes the checkpoint, the history and the one Aim run, and
the infer pass codes every image once. Then it resumes the run under DDP.
"""

from __future__ import annotations

import json
import math
import socket

import pytest

from conftest import MODEL_NAME, TINY, aim_run_hashes, aim_series, run_dirs, train_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp(root, pretrained, *overrides):
    return train_cli(
        root, *TINY, f"paths.pretrained={pretrained}", "runner.inference.figures=false",
        "dataset@dataset.infer=skimage/infer",  # two photographs: one per rank
        "engine=ddp", "engine.world_size=2", "engine.cpu=true", f"engine.port={_free_port()}", *overrides,
        timeout=120,
    )


def test_ddp_engine_options():
    """What Catalyst's engine gets: one process per rank, gloo and cpu=True on CPU, unused parameters found."""
    from omegaconf import OmegaConf

    from encdist.config.factory import create_engine
    from encdist.errors import ConfigError

    def engine(**options):
        base = {"type": "DistributedDataParallelEngine", "port": 29555, "find_unused_parameters": True, "cpu": True}
        return create_engine(OmegaConf.create({"engine": {**base, **options}}))

    e = engine(world_size=2)
    assert (e._world_size, e._num_local_workers, e._port) == (2, 2, 29555)
    assert e._process_group_kwargs == {"backend": "gloo"} and e._kwargs["cpu"] is True
    assert e._kwargs["kwargs_handlers"][0].find_unused_parameters is True
    e = engine(world_size=4, num_node_workers=2, workers_dist_rank=2, backend="mpi")
    assert (e._world_size, e._num_local_workers, e._workers_global_rank) == (4, 2, 2)
    assert e._process_group_kwargs == {"backend": "mpi"}
    for bad in (0, -1, "2"):
        with pytest.raises(ConfigError, match="engine.world_size must be a positive integer"):
            engine(world_size=bad)


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path, pretrained):
    from encdist.training.checkpoint import safe_load
    from encdist.evaluation.results import load_results

    root = tmp_path / "root"
    proc = _ddp(root, pretrained)
    assert "Traceback" not in proc.stderr
    (run,) = run_dirs(root)
    assert aim_run_hashes(root / "aim") == [run.name], "one Aim run (rank 0)"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["runner.best.pth", "runner.last.pth"]

    state = safe_load(run / "checkpoints" / "runner.last.pth")
    # 16 training crops, batches of 8, two ranks: one step each (one process would take two)
    assert state["epoch"] == 1 and state["train_steps"] == 1
    assert {int(s["step"]) for s in state["optimizer"]["net"]["state"].values()} == {1}
    assert not any(k.startswith("module.") for k in state["model_state_dict"]), "saved unwrapped"
    assert len((run / "results" / "epochs.jsonl").read_text().splitlines()) == 1, "rank 0 alone writes"

    # the two held-out photos, one per rank, gathered on rank 0
    per_image = load_results(run / "results" / "infer_per_image.json")["results"]
    assert per_image["index"] == [0, 1] and per_image["bpp"][0] != per_image["bpp"][1]
    infer = load_results(run / "results" / "infer.json")
    assert infer["meta"]["num_images"] == 2 == len(per_image["bpp"])
    mean_bpp = sum(per_image["bpp"]) / 2
    assert infer["results"]["bpp"] == [pytest.approx(mean_bpp)]
    # what Aim got is the mean over the ranks, not rank 0's own image
    assert aim_series(root / "aim", run.name, "bpp", "infer") == ([1], [pytest.approx(mean_bpp)])
    for loader in ("train", "valid"):
        assert all(math.isfinite(v) for v in aim_series(root / "aim", run.name, "loss", loader)[1])
    # the parent process reports rank 0's results
    assert f"run {run.name}" in proc.stdout and "adaptive vs static" in proc.stdout

    # resume under DDP: the checkpoint is loaded into the unwrapped model of every rank
    ckpt = run / "checkpoints" / "runner.last.pth"
    _ddp(root, pretrained, f"++paths.checkpoint={ckpt}", "engine.num_epochs=2")
    assert [p.name for p in run_dirs(root)] == [run.name] and aim_run_hashes(root / "aim") == [run.name]
    after = safe_load(ckpt)
    assert after["epoch"] == 2 and after["train_steps"] == 2
    assert aim_series(root / "aim", run.name, "loss", "train")[0] == [1, 2]
    rows = [json.loads(line) for line in (run / "results" / "epochs.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert load_results(run / "results" / "infer.json")["name"] == MODEL_NAME
