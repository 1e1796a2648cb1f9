"""The RD family recipe (``make base-models``) and weights-only initialization (``paths.model_checkpoint``)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_factorized_checkpoint

TINY_BASE_RUN = ["hp.N=16", "hp.M=32", "dataset.train.config.num_samples=16", "dataset.train.settings.patch_size=[64,64]",
                 "dataset.valid.settings.patch_size=[64,64]", "runner.refit_bottleneck.steps=2", "dataset.infer.config.split=valid"]


def _compose(*overrides):
    from hydra import compose, initialize_config_module

    from encdist.config.factory import register_resolvers

    register_resolvers()
    with initialize_config_module("encdist.conf", version_base="1.3"):
        return compose("base_factorized", list(overrides))


def test_model_checkpoint_loads_weights_only(tmp_path):
    from encdist.config.factory import create_model, create_optimizer
    from encdist.errors import CheckpointError

    ckpt = make_factorized_checkpoint(tmp_path / "init.pth", 16, 32, seed=3)
    conf = _compose("hp.N=16", "hp.M=32", f"++paths.model_checkpoint={ckpt}")
    model = create_model(conf)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert torch.equal(model.state_dict()["g_a.0.weight"], state["g_a.0.weight"])
    assert all(p.requires_grad for p in model.parameters())  # a new run: everything trains, fresh optimizer
    assert all(not opt.state for opt in create_optimizer(conf, model).values())
    assert conf.paths.checkpoint is None
    # half-precision weights (as committed in weights/) load as float32
    half = tmp_path / "half.pth"
    torch.save({"state_dict": {k: v.half() if v.is_floating_point() else v for k, v in state.items()}}, half)
    model = create_model(_compose("hp.N=16", "hp.M=32", f"++paths.model_checkpoint={half}"))
    assert model.g_a[0].weight.dtype == torch.float32
    with pytest.raises(CheckpointError, match="paths.model_checkpoint") as info:
        create_model(_compose("hp.N=8", "hp.M=32", f"++paths.model_checkpoint={ckpt}"))
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_recipe_trains_what_is_missing_and_writes_a_manifest(tmp_path, monkeypatch):
    from encdist.recipes import base_family as bf

    monkeypatch.setenv("ENCDIST_WEIGHTS", str(tmp_path / "weights"))
    stages = [bf.Stage(quality=6, epochs=1, lr=1e-3), bf.Stage(quality=7, epochs=1, lr=1e-4, init=6)]
    manifest = bf.run(stages, work=tmp_path / "work", threads=1, extra=TINY_BASE_RUN)
    assert set(manifest) == {bf.weights_path(q).name for q in (6, 7)}
    assert bf.verify() == []
    for q in (6, 7):
        entry = manifest[bf.weights_path(q).name]
        assert entry["quality"] == q and entry["lambda"] == {6: 0.0483, 7: 0.0932}[q] and entry["steps"] == 2
        assert entry["command"].startswith("compressai-train --config-name=base_factorized")
        sd = torch.load(bf.weights_path(q), weights_only=True)["state_dict"]
        assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())
    assert manifest[bf.weights_path(7).name]["init"] == bf.weights_path(6).name
    assert "paths.model_checkpoint=weights/" in manifest[bf.weights_path(7).name]["command"]
    assert json.loads((tmp_path / "weights" / "MANIFEST.json").read_text()) == manifest

    # nothing missing: nothing trained
    before = {q: bf.weights_path(q).stat().st_mtime_ns for q in (6, 7)}
    bf.run(stages, work=tmp_path / "work", threads=1, extra=TINY_BASE_RUN)
    assert {q: bf.weights_path(q).stat().st_mtime_ns for q in (6, 7)} == before
    # a file that does not match its checksum is retrained, and only that one
    bf.weights_path(7).write_bytes(b"corrupt")
    assert bf.verify() == [bf.weights_path(7).name]
    bf.run(stages, work=tmp_path / "work", threads=1, extra=TINY_BASE_RUN)
    assert bf.verify() == [] and bf.weights_path(6).stat().st_mtime_ns == before[6]


def test_a_run_started_from_model_checkpoint_loads_from_its_own_checkpoint(tmp_path):
    """Evaluating a fine-tuned run reads its own weights only: its init file (other table sizes) is not reloaded."""
    from encdist.cli.eval import _build
    from encdist.config.factory import create_model

    init = make_factorized_checkpoint(tmp_path / "init.pth", 16, 32, seed=3)
    conf = _compose("hp.N=16", "hp.M=32", f"++paths.model_checkpoint={init}")
    model = create_model(conf)
    with torch.no_grad():  # the fine-tuned run's bottleneck: other quantiles, other table sizes
        model.entropy_bottleneck.quantiles[:, 0, 0] -= 5
    model.update(force=True)
    assert model.state_dict()["entropy_bottleneck._quantized_cdf"].shape != torch.load(init, weights_only=True)["state_dict"][
        "entropy_bottleneck._quantized_cdf"].shape
    loaded = _build(conf, model.state_dict())
    assert torch.equal(loaded.state_dict()["entropy_bottleneck._quantized_cdf"], model.state_dict()["entropy_bottleneck._quantized_cdf"])


@pytest.mark.slow
def test_recipe_trains_the_hyperprior_anchor_with_the_same_stages(tmp_path, monkeypatch):
    """The anchor goes through the same recipe: its own config, file names and manifest entries,
    and the bottleneck refit reads ``z`` (the bottleneck's input), not ``y``."""
    from encdist.recipes import base_family as bf

    monkeypatch.setenv("ENCDIST_WEIGHTS", str(tmp_path / "weights"))
    model = "bmshj2018-hyperprior"
    manifest = bf.run([bf.Stage(quality=6, epochs=1, lr=1e-3)], work=tmp_path / "work", threads=1,
                      extra=TINY_BASE_RUN, model=model)
    name = bf.weights_path(6, model=model).name
    assert set(manifest) == {name} and name.startswith("bmshj2018-hyperprior-N128-M192-q6")
    entry = manifest[name]
    assert entry["model"] == model and entry["command"].startswith("compressai-train --config-name=base_hyperprior")
    sd = torch.load(bf.weights_path(6, model=model), weights_only=True)
    assert sd["model_name"] == model and "h_a.0.weight" in sd["state_dict"]
    with pytest.raises(bf.EncdistError, match="unknown model"):
        bf.run([], model="nope")
