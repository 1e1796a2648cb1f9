"""λ sweeps through Hydra's submitit launcher (``pip install -e '.[slurm]'``; the ``test`` extra has it too).

``hydra/launcher=submitit_local`` runs each job as SLURM would, minus the scheduler: the
launcher pickles the job into ``<sweep dir>/.submitit/<job id>/<job id>_submitted.pkl`` and a
fresh process runs ``python -u -m submitit.core._submit <folder>``, which writes
``<job id>_0_result.pkl``. Under ``hydra/launcher=submitit_slurm`` the same pickles are written and
the same module runs them, from an sbatch script built from ``hydra.launcher.*``; the second
test renders that script for the keys the README names (no cluster needed).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from conftest import TINY, run_dirs, train_cli

pytest.importorskip(
    "hydra_plugins.hydra_submitit_launcher",
    reason="hydra-submitit-launcher is not installed (pip install -e '.[slurm]' or '.[test]')",
)

LMBDAS = (0.004, 0.008)
#: The SLURM launcher keys the README shows, and the sbatch lines they must become.
SLURM_KEYS = {"partition": "gpu", "gpus_per_node": 1, "timeout_min": 600, "cpus_per_task": 4}
SBATCH_LINES = ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=600", "#SBATCH --cpus-per-task=4")
#: A setup line, in the README's quoting.
SETUP = 'hydra.launcher.setup=["source .venv/bin/activate"]'


@pytest.mark.slow
def test_submitit_local_lambda_sweep(tmp_path, pretrained):
    from hydra.core.utils import JobStatus

    from encdist.evaluation.results import load_results

    root = tmp_path / "root"
    proc = train_cli(
        root, "-m", *TINY, f"paths.pretrained={pretrained}", "runner.inference.figures=false",
        "runner.inference.baselines=[]", "criterion.lmbda=" + ",".join(map(str, LMBDAS)), "hydra/launcher=submitit_local", timeout=300,
    )
    assert "Submitit 'local' sweep output dir" in proc.stdout + proc.stderr
    runs = run_dirs(root)
    assert len(runs) == len(LMBDAS), "one run per λ"
    lmbdas = sorted(load_results(r / "results" / "infer.json")["results"]["criterion.lmbda"][0] for r in runs)
    assert lmbdas == [pytest.approx(v) for v in LMBDAS]

    # The job files: what the launcher submitted, and what the job process returned.
    jobs = sorted(p for p in root.glob("multirun/*/*/.submitit/*") if p.is_dir() and p.name != "%j")
    assert len(jobs) == len(LMBDAS), [p.name for p in jobs]
    for job in jobs:
        assert (job / f"{job.name}_submitted.pkl").is_file(), f"no pickled submission in {job}"
        with open(job / f"{job.name}_0_result.pkl", "rb") as f:
            outcome, result = pickle.load(f)
        assert outcome == "success", result
        assert result.status == JobStatus.COMPLETED
        assert result.return_value["bpp"] > 0  # the run's infer summary, from real bitstreams


def test_submitit_slurm_launcher_renders_the_readme_keys(tmp_path, monkeypatch):
    """``hydra/launcher=submitit_slurm`` with the README's keys composes, and becomes this sbatch script."""
    import submitit
    from hydra import compose, initialize_config_module
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from encdist.config.factory import register_resolvers

    register_resolvers()
    overrides = ["hydra/launcher=submitit_slurm", *(f"hydra.launcher.{k}={v}" for k, v in SLURM_KEYS.items()),
                 SETUP, f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    with initialize_config_module("encdist.conf", version_base="1.3"):
        conf = compose(config_name="quickstart", overrides=overrides, return_hydra_config=True)
    launcher = OmegaConf.to_container(conf.hydra.launcher, resolve=False)
    assert launcher.pop("_target_").endswith("SlurmLauncher")
    assert {k: launcher[k] for k in SLURM_KEYS} == SLURM_KEYS

    # As the launcher hands them to submitit (shared keys as they are, the others prefixed "slurm_").
    # submitit only checks that srun exists before it builds a SLURM executor: a stub stands in for it.
    stub = tmp_path / "bin" / "srun"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 1\n")
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub.parent}{os.pathsep}{os.environ['PATH']}")
    folder = tmp_path / "sweep" / ".submitit" / "%j"
    executor = submitit.AutoExecutor(cluster="slurm", folder=folder, slurm_max_num_timeout=launcher.pop("max_num_timeout"))
    launcher.pop("submitit_folder")
    launcher["name"] = "compressai-train"  # ${hydra.job.name} resolves only inside a job
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in launcher.items()})
    slurm = executor._executor  # submitit's own renderer of the sbatch file (what sbatch would be given)
    script = slurm._make_submission_file_text(slurm._submitit_command_str, "uid")
    for line in SBATCH_LINES + ("source .venv/bin/activate",):
        assert line in script.splitlines(), line
    # the same entry point that ran the local jobs above, on the same folder layout
    assert f"-m submitit.core._submit {Path(folder)}" in script
