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


# ---------------------------------------------------------------------- bounded decoding
def test_max_pixels_limits_the_decoded_image(runs, photo, tmp_path, capsys):
    run, _ = runs
    binf = tmp_path / "c.bin"
    assert cli.main(["encode", str(photo), "-o", str(binf), "--run", str(run)]) == 0
    capsys.readouterr()
    padded = 512 * 320  # 450x300 is decoded at 512x320
    out = tmp_path / "x.png"
    assert cli.main(["decode", str(binf), "-o", str(out), "--run", str(run), "--max-pixels", str(padded - 1)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-pixels" in err[0] and f"limit of {padded - 1} pixels" in err[0], err
    assert not out.exists()
    assert cli.main(["decode", str(binf), "-o", str(out), "--run", str(run), "--max-pixels", str(padded)]) == 0
    assert out.exists()


_MEASURE = """
import json, resource, sys, time
from pathlib import Path
from encdist.cli.codec import _model, decode_file
from encdist.errors import EncdistError
path, run, *limit = sys.argv[1:]
model, data = _model(run, "cpu"), Path(path).read_bytes()
t, error = time.perf_counter(), None
try:
    decode_file(model, data, max_pixels=int(limit[0]) if limit else None)
except EncdistError as e:
    error = str(e)
print(json.dumps({"error": error, "seconds": time.perf_counter() - t,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _decode_in_subprocess(*args):
    """Decode a file in a fresh process: the error (or None), the decode's seconds, the process's peak memory."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(600)
def test_forged_huge_file_is_refused_in_one_line_quickly_and_with_little_memory(runs, photo, tmp_path, capsys):
    """A short file with a valid header, fingerprint and checksum declaring 16384x16384.

    Each decode runs in its own process: the process's peak resident memory and the decode's
    time against a normal decode's (a 450x300 photograph): < 300 MB more, within 2 s. The
    default limit refuses the size; a raised one leaves it to the y stream, too short for it.
    """
    from encdist.cli.eval import load_run
    from encdist.codec import bitstream as bs

    run, _ = runs
    binf = tmp_path / "c.bin"
    assert cli.main(["encode", str(photo), "-o", str(binf), "--run", str(run)]) == 0
    capsys.readouterr()
    model, _, _ = load_run(run)
    (_, pdf), _, _, coding = bs.unpack_file(binf.read_bytes())
    forged = tmp_path / "forged.bin"  # the real side stream, and a y stream of one rANS final state
    forged.write_bytes(bs.pack_file([[bytes(8)], pdf], (16384, 16384), (1024, 1024), bs.model_fingerprint(model), coding))
    assert len(forged.read_bytes()) < 1000

    normal = _decode_in_subprocess(binf, run)
    assert normal["error"] is None
    for limit, why in [((), "--max-pixels"), ((1 << 30,), "y stream")]:
        res = _decode_in_subprocess(forged, run, *limit)
        assert res["error"] is not None and why in res["error"] and "\n" not in res["error"], res
        assert res["peak_mb"] < normal["peak_mb"] + 300, (res, normal)
        assert res["seconds"] < normal["seconds"] + 2, (res, normal)
