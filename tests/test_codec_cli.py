"""``encdist-codec``: a photograph through a file and back, with a run folder's model.

The run folder is written here (config + ``runner.last.pth``) from a small
``bmshj2018-factorized-pdf`` whose analysis transform's last layer is scaled up, so a
photograph maps to a spread latent (an untrained ``g_a`` maps it to almost all zeros).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from encdist.cli import codec as cli


def _run_folder(root: Path, seed: int, scale: float = 40.0) -> Path:
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    import encdist  # noqa: F401
    from encdist.training.checkpoint import atomic_save
    from encdist.config.factory import create_model, register_resolvers

    register_resolvers()
    with initialize_config_module("encdist.conf", version_base="1.3"):
        conf = compose("quickstart", ["hp.N=16", "hp.M=32", "model.pretrained=null", f"++paths._common_root={root}",
                                      f"++env.aim.run_hash=run{seed}"])
    torch.manual_seed(seed)
    model = create_model(conf)
    with torch.no_grad():
        model.g_a[-1].weight.mul_(scale)
    model.update(force=True)
    run = root / f"run{seed}"
    (run / "configs").mkdir(parents=True)
    (run / "configs" / "config.yaml").write_text(OmegaConf.to_yaml(conf, resolve=True))
    atomic_save({"model_state_dict": model.state_dict(), "run_hash": f"run{seed}", "epoch": 1}, run / "checkpoints" / "runner.last.pth")
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("codec_runs")
    return _run_folder(root, 0), _run_folder(root, 1)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    from encdist.datasets import skimage_image

    path = tmp_path_factory.mktemp("photo") / "coffee.png"
    Image.fromarray(skimage_image("coffee")[:300, :450]).save(path)  # 450x300: padded to 512x320 inside
    return path


def test_round_trip_through_a_file(runs, photo, tmp_path, capsys):
    run, _ = runs
    binf, out = tmp_path / "coffee.bin", tmp_path / "coffee-decoded.png"
    assert cli.main(["encode", str(photo), "-o", str(binf), "--run", str(run)]) == 0
    printed = capsys.readouterr().out
    data = binf.read_bytes()
    assert data[:4] == b"EDC\x89"
    assert f"{8 * len(data) / (450 * 300):.4f} bpp" in printed
    assert len(data) > 200, "the latent is spread: a real stream, not a few bytes"
    assert cli.main(["decode", str(binf), "-o", str(out), "--run", str(run)]) == 0
    decoded = np.asarray(Image.open(out))
    assert decoded.shape == (300, 450, 3)

    # the same pixels as coding in process, and the same bytes twice
    from encdist.cli.eval import load_run
    from encdist.datasets import load_image

    model, _, _ = load_run(run)
    model.eval().update(force=True)
    x = torch.from_numpy(np.asarray(load_image(photo))).permute(2, 0, 1).float().div(255).unsqueeze(0)
    assert cli.encode_image(model, x) == data
    x_hat = cli.decode_file(model, data)
    assert np.array_equal(decoded, (x_hat[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def test_file_of_another_model_or_version_is_refused(runs, photo, tmp_path, capsys):
    run, other = runs
    binf = tmp_path / "c.bin"
    assert cli.main(["encode", str(photo), "-o", str(binf), "--run", str(run)]) == 0
    capsys.readouterr()
    assert cli.main(["decode", str(binf), "-o", str(tmp_path / "x.png"), "--run", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another model" in err[0]
    data = bytearray(binf.read_bytes())
    data[4] = 99
    binf.write_bytes(bytes(data))
    assert cli.main(["decode", str(binf), "-o", str(tmp_path / "x.png"), "--run", str(run)]) == 2
    assert "format version 99" in capsys.readouterr().err
    assert cli.main(["decode", str(tmp_path / "missing.bin"), "-o", str(tmp_path / "x.png"), "--run", str(run)]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
