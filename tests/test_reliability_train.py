"""``compressai-train`` under bad configs, crashes, non-finite losses and concurrent runs.

* Config errors stop the command before training starts: exit code 2, one line
  ``compressai-train: error: ...`` naming the key, no traceback, no run folder, no Aim run.
* A training process SIGKILLed (while it writes a checkpoint, if the poll catches it)
  leaves a complete ``runner.last.pth``; resuming from it continues the epoch count,
  the optimizer / scheduler state and the Aim run.
* Non-finite losses are skipped and counted; ``runner.max_nonfinite_steps`` consecutive
  ones stop training with a one-line ``NonFiniteLossError``.
* Two runs writing one Aim repository at once (joblib multirun) both finish intact.
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import (
    RATES,
    TINY,
    TINY_M,
    aim_run_hashes,
    aim_series,
    error_lines,
    make_factorized_checkpoint,
    run_dirs,
    train_argv,
    train_cli,
    train_env,
    train_inprocess,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS_PER_EPOCH = 2  # TINY: num_samples=16, batch_size=8
NO_INFER = ["~dataset@dataset.infer", "runner.inference.figures=false"]


def _adam_steps(state) -> set:
    return {int(s["step"]) for s in state["optimizer"]["net"]["state"].values()}


def _assert_nothing_started(root: Path) -> None:
    assert not list(Path(root).glob("runs/*/checkpoints")), "no training may have started"
    assert not list(Path(root).glob("runs/*/configs")), "no run folder for a config error"
    assert not (Path(root) / "aim").exists(), "no Aim run for a config error"


def _assert_one_line_error(code: int, err: str, *fragments: str) -> str:
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = error_lines(err)
    assert len(lines) == 1, err[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------- config errors
@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (["model.name=nope"], ["model.name", "unknown model type 'nope'"]),
        (["runner.type=NoRunner"], ["runner.type", "unknown runner type 'NoRunner'"]),
        (["criterion.type=NoLoss"], ["criterion.type", "unknown criterion type 'NoLoss'"]),
        (["dataset.train.type=NoData"], ["dataset.train.type", "unknown dataset type 'NoData'"]),
        (["~criterion.lmbda"], ["criterion.lmbda", "positive number"]),
        (["~dataset@dataset.train"], ["dataset.train", "missing required config key"]),
        (["criterion.lmbda=-1"], ["criterion.lmbda", "-1"]),
        (["criterion.lmbda=abc"], ["criterion.lmbda", "'abc'"]),
        (["engine.num_epochs=0"], ["engine.num_epochs"]),
        (["optimizer.net.lr=-1"], ["optimizer.net", "learning rate"]),
    ],
    ids=lambda v: v[0] if isinstance(v, list) and v and ("=" in v[0] or v[0].startswith("~")) else "",
)
def test_config_errors_stop_before_training(tmp_path, monkeypatch, capfd, pretrained, overrides, fragments):
    root = tmp_path / "root"
    code, _, err = train_inprocess(monkeypatch, capfd, root, *TINY, f"paths.pretrained={pretrained}", *overrides)
    _assert_one_line_error(code, err, *fragments)
    _assert_nothing_started(root)


def test_checkpoint_of_another_architecture_is_one_line_error(tmp_path, monkeypatch, capfd):
    root = tmp_path / "root"
    other = make_factorized_checkpoint(tmp_path / "n32.pth", N=32, M=TINY_M)  # vs hp.N=16
    code, _, err = train_inprocess(monkeypatch, capfd, root, *TINY, f"paths.pretrained={other}")
    line = _assert_one_line_error(code, err, str(other), "does not fit")
    assert "g_a.0.weight" in line
    _assert_nothing_started(root)


def test_missing_pretrained_checkpoint_without_train_if_missing(tmp_path, monkeypatch, capfd):
    root = tmp_path / "root"
    missing = tmp_path / "nowhere" / "base.pth"
    code, _, err = train_inprocess(
        monkeypatch, capfd, root, *TINY, f"paths.pretrained={missing}", "model.pretrained.train_if_missing=null"
    )
    _assert_one_line_error(code, err, "pretrained checkpoint not found", str(missing), "paths.pretrained")
    _assert_nothing_started(root)
    assert not missing.exists()


@pytest.mark.parametrize("what", ["missing", "not_a_runner_checkpoint", "truncated"])
def test_bad_resume_checkpoint_is_one_line_error(tmp_path, monkeypatch, capfd, pretrained, what):
    root = tmp_path / "root"
    path = {"missing": tmp_path / "missing.pth", "not_a_runner_checkpoint": pretrained, "truncated": tmp_path / "trunc.pth"}[what]
    if what == "truncated":
        path.write_bytes(pretrained.read_bytes()[:1000])
    code, _, err = train_inprocess(monkeypatch, capfd, root, *TINY, f"paths.pretrained={pretrained}", f"++paths.checkpoint={path}")
    _assert_one_line_error(code, err, str(path))
    _assert_nothing_started(root)


@pytest.mark.slow
def test_config_error_in_a_real_process(tmp_path):
    """The installed command line: exit code 2, one error line, no traceback."""
    root = tmp_path / "root"
    proc = train_cli(root, *TINY, "model.name=nope", check=False, timeout=180)
    _assert_one_line_error(proc.returncode, proc.stderr, "model.name", "unknown model type 'nope'")
    _assert_nothing_started(root)


# ----------------------------------------------------------------------------- crash and resume
def _tmp_checkpoints(ckpt_dir: Path):
    try:
        return [n for n in os.listdir(ckpt_dir) if n.startswith((".runner.last.pth.tmp-", ".runner.best.pth.tmp-"))]
    except FileNotFoundError:
        return []


def _start_and_kill(root: Path, overrides, log: Path, deadline_s: float = 240):
    """Start training, wait for a complete epoch, SIGKILL it (during a checkpoint write if caught).

    Returns ``(run folder, killed while writing?)``.
    """
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            train_argv(*overrides), cwd=root, env=train_env(root), stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + deadline_s
        last = None
        while last is None:
            if proc.poll() is not None:
                pytest.fail(f"training exited early ({proc.returncode}):\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no runner.last.pth within {deadline_s:g} s:\n{log.read_text()[-3000:]}")
            found = list(root.glob("runs/*/checkpoints/runner.last.pth"))
            last = found[0] if found else None
            time.sleep(0.05)
        ckpt_dir = last.parent
        # kill while a checkpoint is being written (poll for its temporary file), else at a random time
        in_write = False
        poll_until = time.monotonic() + 30
        while time.monotonic() < poll_until and proc.poll() is None:
            if _tmp_checkpoints(ckpt_dir):
                in_write = True
                break
            time.sleep(0.0005)
        if not in_write:
            time.sleep(random.uniform(0, 0.5))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, f"training ended by itself:\n{log.read_text()[-3000:]}"
        return ckpt_dir.parent, in_write
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.mark.slow
def test_sigkill_leaves_a_complete_checkpoint_and_resume_continues(tmp_path, pretrained):
    from encdist.training.checkpoint import safe_load

    root = tmp_path / "root"
    root.mkdir()
    base = [*TINY, f"paths.pretrained={pretrained}", *NO_INFER]
    run, in_write = _start_and_kill(root, [*base, "engine.num_epochs=500"], tmp_path / "killed.log")
    run_hash = run.name
    last = run / "checkpoints" / "runner.last.pth"

    state = safe_load(last)  # complete, whatever the moment of the kill
    epoch = state["epoch"]
    assert epoch >= 1 and state["run_hash"] == run_hash
    assert set(state) >= {"model_state_dict", "optimizer", "scheduler", "epoch", "run_hash"}
    assert state["optimizer"]["net"]["state"], "optimizer state saved"
    assert _adam_steps(state) == {STEPS_PER_EPOCH * epoch}, "a whole number of epochs"
    assert state["scheduler"]["net"]["last_epoch"] == epoch
    best = run / "checkpoints" / "runner.best.pth"
    if best.exists():
        assert safe_load(best)["epoch"] <= epoch + 1
    stale = _tmp_checkpoints(last.parent)
    print(f"killed at epoch {epoch} checkpoint, during a checkpoint write: {in_write}, temporaries left: {stale}")

    proc = train_cli(root, *base, f"++paths.checkpoint={last}", f"engine.num_epochs={epoch + 1}")
    assert f"run {run_hash}" in proc.stdout
    resumed = safe_load(last)
    assert resumed["epoch"] == epoch + 1 and resumed["run_hash"] == run_hash
    assert _adam_steps(resumed) == {STEPS_PER_EPOCH * (epoch + 1)}, "optimizer state was resumed"
    assert resumed["scheduler"]["net"]["last_epoch"] == epoch + 1, "scheduler state was resumed"
    assert not _tmp_checkpoints(last.parent), "temporaries of the killed writer are cleaned up"

    assert [p.name for p in run_dirs(root)] == [run_hash]
    assert aim_run_hashes(root / "aim") == [run_hash], "the same Aim run continues"
    for loader in ("train", "valid"):
        for name in RATES[loader]:
            steps, values = aim_series(root / "aim", run_hash, name, loader)
            assert steps == list(range(1, epoch + 2)), (name, loader, steps)


# ----------------------------------------------------------------------------- non-finite losses
class _NaNInjector(torch.nn.Module):
    """Wraps the criterion: training calls whose index is in ``nan_calls`` get a NaN loss.

    With ``grad=True`` the loss stays finite and its gradient is NaN instead (``sqrt`` at 0
    times 0), the case of a likelihood at its lower bound. Records the model's state before
    every training call (``snapshots``).
    """

    def __init__(self, inner, nan_calls, holder, grad=False):
        super().__init__()
        self.inner = inner
        self.nan_calls = nan_calls
        self.grad = grad
        self.holder = holder
        self.calls = 0
        self.snapshots = []

    def forward(self, out, x):
        res = self.inner(out, x)
        if torch.is_grad_enabled():  # training step (valid / infer run under no_grad)
            model = self.holder["model"]
            self.snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            if self.nan_calls == "all" or self.calls in self.nan_calls:
                loss = res["loss"]
                res = dict(res, loss=loss + torch.sqrt(loss * 0) if self.grad else loss * float("nan"))
            self.calls += 1
        return res


def _inject(monkeypatch, nan_calls, grad=False):
    from encdist.cli import train as cli

    holder = {}
    real_model, real_criterion = cli.create_model, cli.create_criterion

    def create_model(conf):
        holder["model"] = real_model(conf)
        return holder["model"]

    def create_criterion(conf):
        holder["criterion"] = _NaNInjector(real_criterion(conf), nan_calls, holder, grad)
        return holder["criterion"]

    monkeypatch.setattr(cli, "create_model", create_model)
    monkeypatch.setattr(cli, "create_criterion", create_criterion)
    return holder


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # trains a few steps (in this process)
@pytest.mark.parametrize("grad", [False, True], ids=["nan-loss", "nan-gradient"])
def test_nonfinite_steps_are_skipped_and_counted(tmp_path, monkeypatch, capfd, pretrained, grad):
    from encdist.training.checkpoint import safe_load

    root = tmp_path / "root"
    holder = _inject(monkeypatch, {0, 2}, grad)  # never two in a row
    code, out, err = train_inprocess(
        monkeypatch, capfd, root, *TINY, f"paths.pretrained={pretrained}", *NO_INFER,
        "dataset.train.config.num_samples=40", "runner.max_nonfinite_steps=2",
    )
    assert code == 0, err[-3000:]
    snaps = holder["criterion"].snapshots
    assert len(snaps) == 5
    assert _same(snaps[0], snaps[1]), "the NaN step 0 changed no weight"
    assert not _same(snaps[1], snaps[2]), "the finite step 1 trained"
    assert _same(snaps[2], snaps[3]), "the NaN step 2 changed no weight"
    (run,) = run_dirs(root)
    state = safe_load(run / "checkpoints" / "runner.last.pth")
    assert state["nonfinite_steps"] == 2
    assert _adam_steps(state) == {3}, "only the 3 finite steps reached the optimizer"
    steps, values = aim_series(root / "aim", run.name, "bpp_y_loss", "train")
    assert steps == [1] and all(v == v for v in values)


@pytest.mark.slow  # trains a few steps (in this process)
def test_consecutive_nonfinite_losses_stop_training(tmp_path, monkeypatch, capfd, pretrained):
    root = tmp_path / "root"
    holder = _inject(monkeypatch, "all")
    code, out, err = train_inprocess(
        monkeypatch, capfd, root, *TINY, f"paths.pretrained={pretrained}", *NO_INFER,
        "dataset.train.config.num_samples=40", "runner.max_nonfinite_steps=3",
    )
    line = _assert_one_line_error(code, err, "runner.max_nonfinite_steps=3", "3 consecutive", "nan")
    crit = holder["criterion"]
    assert crit.calls == 3, "stopped at the third consecutive non-finite loss"
    assert all(_same(crit.snapshots[0], s) for s in crit.snapshots), "no weight was updated"
    assert _same(crit.snapshots[0], holder["model"].state_dict())
    (run,) = run_dirs(root)
    assert not (run / "checkpoints" / "runner.last.pth").exists(), "no epoch was completed"
    assert aim_run_hashes(root / "aim") == [run.name], "the Aim run was closed and indexed"
    print(line)


@pytest.mark.slow  # trains a few steps (in this process)
def test_nonfinite_loss_error_type(tmp_path, monkeypatch, pretrained):
    """Library use: ``train()`` raises ``NonFiniteLossError`` (an ``EncdistError`` and ``FloatingPointError``)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from encdist.cli import train as cli
    from encdist.config.factory import register_resolvers
    from encdist.errors import EncdistError
    from encdist.runners import NonFiniteLossError

    monkeypatch.setenv("ENCDIST_ROOT", str(tmp_path / "root"))
    _inject(monkeypatch, "all")
    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("encdist.conf", version_base="1.3"):
            conf = compose(
                "quickstart",
                overrides=[*TINY, f"paths.pretrained={pretrained}", *NO_INFER, "runner.max_nonfinite_steps=1"],
            )
            with pytest.raises(NonFiniteLossError, match=r"runner\.max_nonfinite_steps=1") as info:
                cli.train(conf)
    finally:
        GlobalHydra.instance().clear()
        cli._close_progress_bars()
    assert isinstance(info.value, EncdistError) and isinstance(info.value, FloatingPointError)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- concurrent runs
@pytest.mark.slow
def test_two_runs_write_one_aim_repo_at_once(tmp_path, pretrained):
    """joblib launcher, two jobs in parallel processes, one Aim repository (created by the race)."""
    import aim

    root = tmp_path / "root"
    train_cli(
        root, "-m", *TINY, f"paths.pretrained={pretrained}", *NO_INFER,
        "criterion.lmbda=0.004,0.008", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
    )
    runs = run_dirs(root)
    assert len(runs) == 2
    lmbdas = sorted(yaml.safe_load((r / "configs" / "config.yaml").read_text())["criterion"]["lmbda"] for r in runs)
    assert lmbdas == [pytest.approx(0.004), pytest.approx(0.008)]
    assert aim_run_hashes(root / "aim") == sorted(r.name for r in runs)
    repo = aim.Repo(str(root / "aim"))
    for r in runs:
        assert repo.get_run(r.name)["hparams"]["env"]["aim"]["run_hash"] == r.name
        for loader in ("train", "valid"):
            for name in RATES[loader] + ("loss",):
                steps, values = aim_series(root / "aim", r.name, name, loader)
                assert steps == [1] and all(math.isfinite(v) for v in values), (r.name, loader, name)
