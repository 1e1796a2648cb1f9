"""On a GPU (``make test-gpu``, ``pytest -m gpu``): training, evaluation and coding on CUDA.

Skipped where CUDA is not available, so ``make test`` runs none of these bodies on CPU
machines. ``ENCDIST_TEST_DEVICE=cpu pytest -m gpu`` runs the same bodies on the CPU, to
check the tests themselves without a GPU.

* a few training steps of the adaptive runner (tiny quickstart) with Catalyst's GPU engine;
* ``compressai-eval --device cuda`` on that run, next to the same evaluation on CPU;
* an image encoded by the model on CUDA and decoded by a copy of it on the CPU. ``p̂`` is
  rebuilt by float networks on both sides and CUDA may round differently, so this is either
  bit-exact or refused by the codec's checksum (which covers the decoded symbols) with a
  one-line :class:`~encdist.errors.BitstreamError`, never a wrong image. The test accepts
  both, and says which (``-rA`` shows it).
"""

from __future__ import annotations

import copy
import json
import math
import os
from types import SimpleNamespace

import pytest
import torch

from conftest import TINY, run_dirs, train_cli

DEVICE = os.environ.get("ENCDIST_TEST_DEVICE", "cuda")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="needs CUDA"),
]

ENGINE = "GPUEngine" if DEVICE.startswith("cuda") else "CPUEngine"
INFER = "dataset@dataset.infer=skimage/infer"  # two held-out photographs


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory, pretrained):
    root = tmp_path_factory.mktemp("gpu")
    proc = train_cli(root, *TINY, f"paths.pretrained={pretrained}", f"engine.type={ENGINE}", INFER, timeout=240)
    (run,) = run_dirs(root)
    return SimpleNamespace(root=root, run=run, proc=proc)


def test_training_steps_on_the_device(cuda_run):
    state = torch.load(cuda_run.run / "checkpoints" / "runner.last.pth", weights_only=False)
    weights = state["model_state_dict"]
    assert weights["g_a.0.weight"].device.type == torch.device(DEVICE).type, "trained on the device"
    assert state["epoch"] == 1 and state["train_steps"] == 2 and state["nonfinite_steps"] == 0
    infer = json.loads((cuda_run.run / "results" / "infer.json").read_text())["results"]
    for key in ("bpp", "bpp_static", "psnr-rgb"):
        assert math.isfinite(infer[key][0]), key
    assert "adaptive vs static" in cuda_run.proc.stdout


def test_eval_on_the_device(cuda_run, tmp_path, capsys):
    from encdist.cli import eval as eval_cli

    results = {}
    for device in (DEVICE, "cpu"):
        out = tmp_path / device
        assert eval_cli.main([str(cuda_run.run), "--device", device, "--out-dir", str(out), "--save-bitstreams"]) == 0
        (curve,) = out.glob("*-adaptive.json")
        results[device] = json.loads(curve.read_text())["results"]
    capsys.readouterr()
    for key in ("bpp", "psnr-rgb"):
        assert math.isfinite(results[DEVICE][key][0])
        # the same model on two devices: float rounding apart, the same RD point
        assert results[DEVICE][key][0] == pytest.approx(results["cpu"][key][0], rel=0.02), key


def test_encode_on_the_device_decode_on_cpu(cuda_run, record_property):
    from skimage import data

    from encdist.cli.eval import load_run
    from encdist.datasets import pad_to_multiple
    from encdist.errors import BitstreamError
    from encdist.latent_codecs import CODING_MODES

    model = load_run(cuda_run.run)[0].to(DEVICE)
    model.update(force=True)
    cpu_model = copy.deepcopy(model).cpu()  # the same weights and tables
    x = torch.from_numpy(data.astronaut()[:256, :384]).permute(2, 0, 1).float().div(255).unsqueeze(0)
    x, _ = pad_to_multiple(x, 64)
    static = {"options": CODING_MODES["static"]}
    with torch.no_grad():
        enc = model.compress(x.to(DEVICE))
        enc_static = model.compress(x.to(DEVICE), **static)
        # on the encoder's own device, the adaptive and the static streams hold the same latent
        same = model.decompress(enc["strings"], enc["shape"])["x_hat"]
        assert torch.equal(same, model.decompress(enc_static["strings"], enc_static["shape"], **static)["x_hat"])
        # the static tables are integer buffers: their stream decodes exactly anywhere
        reference = cpu_model.decompress(enc_static["strings"], enc_static["shape"], **static)["x_hat"]
        try:
            x_hat = cpu_model.decompress(enc["strings"], enc["shape"])["x_hat"]
        except BitstreamError as e:
            message = str(e)
            assert "\n" not in message and "checksum" in message, message
            outcome = f"refused by the checksum: {message}"
        else:
            assert torch.equal(x_hat, reference), "decoded without error to another image"
            outcome = "bit-exact"
    print(f"{DEVICE} encode -> cpu decode: {outcome}")
    record_property("cross_device_decode", outcome)
