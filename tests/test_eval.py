"""``compressai-eval``: config + overrides, run folders, saved bitstreams and reconstructions.

No training: the model is the quickstart's with the session's random frozen transforms
(``FactorizedPrior(16, 32)``) and an untrained distribution codec, which codes and
decodes like a trained one. Images are two small synthetic PNGs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import MODEL_NAME, TINY_M, TINY_N

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODES = ("adaptive", "static", "ideal")
SIZES = {"gradient": (70, 90), "noise": (64, 50)}  # (h, w): padded to 128x128 / 64x64
RUN_HASH = "0123456789abcdef01234567"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        if name == "gradient":
            yy, xx = np.mgrid[0:h, 0:w]
            pixels = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (h + w)], -1)
        else:
            pixels = rng.integers(0, 256, (h, w, 3))
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def overrides(pretrained):
    return [f"hp.N={TINY_N}", f"hp.M={TINY_M}", f"paths.pretrained={pretrained}"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, overrides):
    """A run folder as ``compressai-train`` leaves it (config + runner checkpoint)."""
    from omegaconf import OmegaConf

    from encdist.cli.eval import load_config

    model, conf, _ = load_config("quickstart", overrides)
    conf.env.aim.run_hash = RUN_HASH
    run = tmp_path_factory.mktemp("runs") / RUN_HASH
    (run / "configs").mkdir(parents=True)
    (run / "configs" / "config.yaml").write_text(OmegaConf.to_yaml(conf, resolve=True))
    (run / "checkpoints").mkdir()
    torch.save({"model_state_dict": model.state_dict()}, run / "checkpoints" / "runner.last.pth")
    return run


def _eval(capsys, *argv):
    from encdist.cli import eval as eval_cli

    capsys.readouterr()
    code = eval_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_config_and_overrides(tmp_path, images, overrides, capsys):
    out_dir = tmp_path / "out"
    out = _eval(capsys, "--config-name", "quickstart", *overrides, "--dataset", images, "--out-dir", out_dir, "--modes", "static,ideal")
    assert "static" in out and "ideal" in out
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        f"{MODEL_NAME}-{m}{s}.json" for m in ("static", "ideal") for s in ("", "-per-image")
    ), "nothing else is written without --save-*"
    meta = json.loads((out_dir / f"{MODEL_NAME}-static.json").read_text())["meta"]
    assert meta["runs"] == [f"config quickstart {' '.join(overrides)}"]


def test_saved_bitstreams_and_reconstructions(tmp_path, images, run_folder, capsys):
    from PIL import Image

    from encdist.cli.eval import decode_bitstream, load_run, read_bitstream
    from encdist.errors import BitstreamError

    out_dir = tmp_path / "out"
    # the same run twice: two folders, RUN_HASH and RUN_HASH-2
    _eval(capsys, run_folder, run_folder, "--dataset", images, "--out-dir", out_dir, "--save-bitstreams", "--save-reconstructions")
    root = out_dir / MODEL_NAME
    assert sorted(p.name for p in root.iterdir()) == [RUN_HASH, f"{RUN_HASH}-2"]
    per_image = {m: json.loads((out_dir / f"{MODEL_NAME}-{m}-per-image.json").read_text())["results"] for m in MODES}
    model = load_run(run_folder)[0]
    model.update(force=True)
    for name, (h, w) in SIZES.items():
        png = np.asarray(Image.open(root / RUN_HASH / f"{name}.png"))
        assert png.shape == (h, w, 3)
        for mode in MODES:
            path = root / RUN_HASH / mode / f"{name}.bin"
            strings, size, _, coding = read_bitstream(path)
            assert size == (h, w) and coding == ("static" if mode == "static" else "ideal" if mode == "ideal" else "adaptive")
            # the file holds exactly the bytes that were counted
            row = per_image[mode]["image"].index(f"{name}.png")
            bits = 8 * sum(len(s) for ss in strings for s in ss) / (h * w)
            assert bits == pytest.approx(per_image[mode]["bpp_y"][row] + per_image[mode]["bpp_side_sent"][row])
            # and decodes to the saved reconstruction
            with torch.no_grad():
                x_hat = decode_bitstream(model, path)
            decoded = (x_hat[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            np.testing.assert_array_equal(decoded, png, err_msg=f"{mode} {name}")
    assert (root / f"{RUN_HASH}-2" / "static" / "noise.bin").read_bytes() == (root / RUN_HASH / "static" / "noise.bin").read_bytes()

    data = (root / RUN_HASH / "adaptive" / "noise.bin").read_bytes()
    bad = tmp_path / "bad.bin"
    for cut, message in [(data[:-3], "checksum"), (data[:6], "truncated"), (b"GIF89a" + data, "not an encdist-codec file")]:
        bad.write_bytes(cut)
        with pytest.raises(BitstreamError, match=message):
            read_bitstream(bad)


def test_bad_device_is_one_line(tmp_path, run_folder, capsys):
    from encdist.cli import eval as eval_cli

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert eval_cli.main([str(run_folder), "--device", "cuda", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("compressai-eval: error: --device cuda")

