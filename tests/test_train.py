"""End to end: ``compressai-train`` (subprocess), resume, multirun, ``aim up``, ``compressai-eval``/``-plot``.

Every run is a tiny ``quickstart`` (``conftest.TINY``: ``hp.N=16 hp.M=32``, 64x64 patches, one
epoch) on frozen transforms from the session's random ``FactorizedPrior(16, 32)`` checkpoint,
except :func:`test_quickstart_trains_the_base_model_first`, which trains that base model too.
The infer set stays the real one (two ~512x512 photographs, real bitstreams).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from aim_http import aim_up, http
from conftest import (
    LOADERS,
    MODEL_NAME,
    RATES,
    TINY,
    TINY_BASE,
    aim_run_hashes,
    aim_series,
    base_overrides_arg,
    run_dirs,
    train_cli,
)

#: λ of the quickstart (its hp.quality=6: the paper's table).
QUICK_LMBDA = 0.0483

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

RESULT_KEYS = ("bpp", "bpp_y", "bpp_pdf", "psnr-rgb")
MODES = ("static", "ideal")
STEPS_PER_EPOCH = 2  # num_samples=16, batch_size=8


def _load(path):
    from encdist.training.checkpoint import safe_load

    return safe_load(path)


def _adam_steps(state) -> set:
    return {int(s["step"]) for s in state["optimizer"]["net"]["state"].values()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, pretrained):
    """One finished tiny quickstart run (read-only for the tests: copy before writing)."""
    root = tmp_path_factory.mktemp("trained")
    proc = train_cli(root, *TINY, f"paths.pretrained={pretrained}")
    (run,) = run_dirs(root)
    return SimpleNamespace(root=root, run=run, hash=run.name, aim=root / "aim", proc=proc)


# ----------------------------------------------------------------------------- one run
def test_run_folder_layout(trained, pretrained):
    run = trained.run
    assert len(trained.hash) == 24 and int(trained.hash, 16) >= 0
    assert f"run {trained.hash}" in trained.proc.stdout
    assert "Traceback" not in trained.proc.stderr

    conf = yaml.safe_load((run / "configs" / "config.yaml").read_text())
    assert conf["env"]["aim"]["run_hash"] == trained.hash
    assert conf["paths"]["_run_root"] == str(run)
    assert conf["paths"]["aim"] == str(trained.aim)
    assert conf["paths"]["pretrained"] == str(pretrained)
    assert conf["model"]["name"] == MODEL_NAME and (conf["hp"]["N"], conf["hp"]["M"]) == (16, 32)
    assert "${" not in (run / "configs" / "config.yaml").read_text(), "config.yaml must be resolved"

    for name in ("runner.last.pth", "runner.best.pth"):
        state = _load(run / "checkpoints" / name)
        assert state["epoch"] == 1 and state["run_hash"] == trained.hash
        assert state["model_name"] == MODEL_NAME
        assert state["optimizer"]["net"]["state"], "Adam state must be saved"
        assert _adam_steps(state) == {STEPS_PER_EPOCH}
        assert set(state["scheduler"]) == {"net"}
        assert state["nonfinite_steps"] == 0
        assert math.isfinite(state["best_valid"])
    assert not list((run / "checkpoints").glob(".*tmp-*")), "no temporary checkpoint left"


def test_results_json(trained):
    from encdist.evaluation.results import load_results

    res = load_results(trained.run / "results" / "infer.json")
    assert res["name"] == MODEL_NAME
    assert res["meta"]["run_hash"] == trained.hash and res["meta"]["num_images"] == 2
    from encdist.provenance import code_version

    assert res["meta"]["code"] == code_version() and res["meta"]["code"]  # which code made these numbers
    r = res["results"]
    for key in RESULT_KEYS + tuple(f"{k}_{m}" for k in RESULT_KEYS for m in MODES):
        assert key in r, key
        assert len(r[key]) == 1 and math.isfinite(r[key][0]), key
    assert r["criterion.lmbda"] == [pytest.approx(QUICK_LMBDA)]
    assert r["bpp"][0] == pytest.approx(r["bpp_y"][0] + r["bpp_pdf"][0], rel=1e-6)
    assert r["bpp"][0] > 0 and r["bpp_pdf"][0] > 0
    assert r["bpp_pdf_ideal"] == [0.0]  # the bound's side information is free
    assert 0 < r["bpp_pdf_static"][0] < 1e-3  # the static stream's 5-byte checksummed header, counted
    # same frozen transforms: identical reconstructions in every mode
    assert r["psnr-rgb"] == r["psnr-rgb_static"] == r["psnr-rgb_ideal"]
    # the ideal bound (exact p, free) does not cost more than the static bottleneck (coder overhead aside)
    assert r["bpp_y_ideal"][0] <= 1.01 * r["bpp_y_static"][0] + 1e-3
    # the rate the training objective gives the same images, next to the bytes written (a few bytes
    # of coder flush apart: these tiny latents code to few bits)
    assert r["bpp_y_loss"][0] == pytest.approx(r["bpp_y"][0], rel=0.05, abs=2e-3)

    per_image = json.loads((trained.run / "results" / "infer_per_image.json").read_text())["results"]
    assert len(per_image["bpp"]) == 2
    assert sum(per_image["bpp"]) / 2 == pytest.approx(r["bpp"][0])

    out = trained.proc.stdout
    for mode in ("adaptive", "static", "ideal"):
        assert any(line.startswith(mode) for line in out.splitlines()), mode
    assert "training objective's bpp_y_loss" in out


def test_aim_repo_holds_the_rates_per_loader(trained):
    """Estimates (``*_loss``) and real bytes (``bpp``, ``bpp_y``, ``bpp_pdf``) under distinct names."""
    import aim
    from aim.storage.context import Context

    from encdist.evaluation.results import load_results

    assert aim_run_hashes(trained.aim) == [trained.hash]
    for loader in LOADERS:
        for name in RATES[loader] + ("loss" if loader != "infer" else "psnr-rgb",):
            steps, values = aim_series(trained.aim, trained.hash, name, loader)
            assert steps == [1], (name, loader)
            assert all(math.isfinite(v) for v in values), (name, loader)
    r = load_results(trained.run / "results" / "infer.json")["results"]
    for name in ("bpp", "bpp_y", "bpp_pdf", "bpp_y_loss"):
        assert aim_series(trained.aim, trained.hash, name, "infer")[1] == [pytest.approx(r[name][0])]
    repo = aim.Repo(str(trained.aim))
    logged = {(m.name, m.context.to_dict().get("loader")) for m in repo.get_run(trained.hash).metrics()}
    for loader in ("train", "valid"):
        assert ("bpp_loss", loader) in logged and ("bpp_y_loss", loader) in logged, loader
        real = {name for name in ("bpp", "bpp_y", "bpp_pdf") if (name, loader) in logged}
        assert not real, f"{loader} logs estimates under the real rates' names {sorted(real)}"

    run = aim.Repo(str(trained.aim)).get_run(trained.hash)
    assert run.experiment == "quickstart"
    hparams = run["hparams"]
    assert hparams["criterion"]["lmbda"] == pytest.approx(QUICK_LMBDA)
    assert hparams["env"]["aim"]["run_hash"] == trained.hash
    for fig in ("rd", "distributions", "channel_rates"):
        assert run.get_image_sequence(fig, Context({"loader": "infer"})) is not None, fig


# ----------------------------------------------------------------------------- resume
def test_resume_continues_the_same_run(trained, pretrained, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(trained.root, root)
    ckpt = root / "runs" / trained.hash / "checkpoints" / "runner.last.pth"
    before = _load(ckpt)
    assert before["epoch"] == 1

    proc = train_cli(
        root, *TINY, f"paths.pretrained={pretrained}", f"++paths.checkpoint={ckpt}", "engine.num_epochs=2",
        "runner.inference.figures=false",
    )
    assert f"run {trained.hash}" in proc.stdout

    assert [p.name for p in run_dirs(root)] == [trained.hash], "same run folder"
    after = _load(ckpt)
    assert after["epoch"] == 2 and after["run_hash"] == trained.hash
    assert _adam_steps(after) == {2 * STEPS_PER_EPOCH}, "Adam state continues from the checkpoint"
    assert after["scheduler"]["net"]["last_epoch"] == before["scheduler"]["net"]["last_epoch"] + 1
    changed = [
        k for k, v in after["model_state_dict"].items()
        if k.startswith("adaptive_codec.pdf_model.") and v.is_floating_point() and not torch.equal(v, before["model_state_dict"][k])
    ]
    assert changed, "the distribution codec kept training"
    frozen = [k for k in after["model_state_dict"] if k.startswith(("g_a.", "g_s."))]
    assert frozen and all(torch.equal(after["model_state_dict"][k], before["model_state_dict"][k]) for k in frozen)

    assert aim_run_hashes(root / "aim") == [trained.hash], "one Aim run for the hash"
    for loader in LOADERS:
        for name in RATES[loader]:
            steps, values = aim_series(root / "aim", trained.hash, name, loader)
            assert steps == [1, 2], (name, loader)
            first = aim_series(trained.aim, trained.hash, name, loader)[1]
            assert values[0] == pytest.approx(first[0]), "epoch-1 values kept"
    meta = json.loads((root / "runs" / trained.hash / "results" / "infer.json").read_text())["meta"]
    assert meta["epoch"] == 2 and meta["run_hash"] == trained.hash


# ----------------------------------------------------------------------------- multirun
def test_lambda_multirun_gives_one_run_per_lambda(tmp_path, pretrained):
    from encdist.evaluation.results import load_results

    root = tmp_path / "root"
    proc = train_cli(
        root, "-m", *TINY, f"paths.pretrained={pretrained}", "runner.inference.figures=false",
        "criterion.lmbda=0.004,0.008",
    )
    runs = run_dirs(root)
    assert len(runs) == 2 and runs[0].name != runs[1].name
    lmbdas = sorted(load_results(r / "results" / "infer.json")["results"]["criterion.lmbda"][0] for r in runs)
    assert lmbdas == [pytest.approx(0.004), pytest.approx(0.008)]
    for r in runs:
        conf = yaml.safe_load((r / "configs" / "config.yaml").read_text())
        assert conf["env"]["aim"]["run_hash"] == r.name
        assert _load(r / "checkpoints" / "runner.last.pth")["run_hash"] == r.name
    assert aim_run_hashes(root / "aim") == sorted(r.name for r in runs)
    for r in runs:
        for loader in LOADERS:
            assert aim_series(root / "aim", r.name, RATES[loader][0], loader)[0] == [1]
    assert (root / "multirun").is_dir()
    assert proc.stdout.count("[compressai-train] run ") == 2


# ----------------------------------------------------------------------------- aim up
def test_aim_up_serves_the_training_metrics(trained, tmp_path):
    repo = tmp_path / "aim"
    shutil.copytree(trained.aim, repo)  # aim up may write to the repo (index)
    with aim_up(repo, tmp_path / "aim_up.log", wait_for=f"/runs/{trained.hash}/info/") as base:
        status, info = http("GET", f"{base}/runs/{trained.hash}/info/", timeout=30)
        assert status == 200
        assert info["props"]["experiment"]["name"] == "quickstart"
        assert info["params"]["hparams"]["model"]["name"] == MODEL_NAME
        listed = {(t["name"], t["context"].get("loader")) for t in info["traces"]["metric"]}
        for loader in LOADERS:
            assert all((name, loader) in listed for name in RATES[loader]), loader

        requested = [
            {"name": name, "context": {"loader": loader, "scope": "epoch"}}
            for loader in LOADERS
            for name in RATES[loader]
        ]
        status, traces = http("POST", f"{base}/runs/{trained.hash}/metric/get-batch/", requested, timeout=60)
        assert status == 200 and len(traces) == len(requested)
        for trace in traces:
            loader = trace["context"]["loader"]
            steps, values = aim_series(trained.aim, trained.hash, trace["name"], loader)
            assert trace["iters"] == steps
            assert trace["values"] == pytest.approx(values)


# ----------------------------------------------------------------------------- base model first
def test_quickstart_trains_the_base_model_first(tmp_path):
    """Frozen transforms missing: ``model.pretrained.train_if_missing`` (base_factorized) trains them first."""
    root = tmp_path / "root"
    base_ckpt = root / "base" / "bmshj2018-factorized-missing.pth"
    proc = train_cli(root, *TINY, f"paths.pretrained={base_ckpt}", base_overrides_arg(TINY_BASE), "runner.inference.figures=false")
    assert "training them first with --config-name=base_factorized" in proc.stdout
    assert base_ckpt.is_file()
    base = _load(base_ckpt)
    assert base["model_name"] == "bmshj2018-factorized"
    assert base["state_dict"]["g_a.0.weight"].shape[0] == 16

    runs = {yaml.safe_load((r / "configs" / "config.yaml").read_text())["model"]["name"]: r for r in run_dirs(root)}
    assert set(runs) == {"bmshj2018-factorized", MODEL_NAME}
    base_conf = yaml.safe_load((runs["bmshj2018-factorized"] / "configs" / "config.yaml").read_text())
    assert base_conf["export"]["path"] == str(base_ckpt)
    assert base_conf["engine"]["num_epochs"] == 1 and (base_conf["hp"]["N"], base_conf["hp"]["M"]) == (16, 32)
    assert _load(runs["bmshj2018-factorized"] / "checkpoints" / "runner.last.pth")["epoch"] == 1

    # the distribution codec ran on the exported transforms, frozen
    pdf_state = _load(runs[MODEL_NAME] / "checkpoints" / "runner.last.pth")["model_state_dict"]
    for key in ("g_a.0.weight", "g_s.6.weight"):
        assert torch.equal(pdf_state[key], base["state_dict"][key]), key
    assert (runs[MODEL_NAME] / "results" / "infer.json").is_file()

    hashes = aim_run_hashes(root / "aim")
    assert hashes == sorted(r.name for r in runs.values())
    import aim

    experiments = {aim.Repo(str(root / "aim")).get_run(h).experiment for h in hashes}
    assert experiments == {"base_factorized", "quickstart"}


# ----------------------------------------------------------------------------- eval and plot
def test_eval_writes_results_that_plot_reads(trained, tmp_path, capsys):
    from encdist.cli import eval as eval_cli
    from encdist.cli import plot as plot_cli
    from encdist.evaluation.results import load_results

    out = tmp_path / "results"
    assert eval_cli.main([str(trained.run), "--out-dir", str(out)]) == 0
    files = {m: out / f"{MODEL_NAME}-{m}.json" for m in ("adaptive", "static", "ideal")}
    curves = {}
    for mode, path in files.items():
        assert path.is_file(), path
        assert (out / f"{MODEL_NAME}-{mode}-per-image.json").is_file()
        curves[mode] = load_results(path)
        assert curves[mode]["name"] == f"{MODEL_NAME}-{mode}"
        assert len(curves[mode]["results"]["bpp"]) == 1
        assert curves[mode]["results"]["criterion.lmbda"] == [pytest.approx(QUICK_LMBDA)]
    # the same checkpoint and images as the run's own infer pass: the same bitstreams
    infer = load_results(trained.run / "results" / "infer.json")["results"]
    assert curves["adaptive"]["results"]["bpp"][0] == pytest.approx(infer["bpp"][0])
    assert curves["static"]["results"]["bpp"][0] == pytest.approx(infer["bpp_static"][0])
    assert curves["adaptive"]["results"]["psnr-rgb"] == curves["static"]["results"]["psnr-rgb"]

    png = tmp_path / "rd.png"
    capsys.readouterr()
    code = plot_cli.main([*map(str, files.values()), "--out", str(png)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert png.is_file() and png.stat().st_size > 0
    # one RD point per curve: BD metrics against it are refused in one line (exit 2), no traceback
    code = plot_cli.main([*map(str, files.values()), "--out", str(tmp_path / "bd.png"), "--anchor", str(files["static"])])
    err = capsys.readouterr().err
    assert code == 2 and "at least 4" in err and "Traceback" not in err
