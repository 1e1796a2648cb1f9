"""On a GPU (``make test-gpu``, ``pytest -m gpu``): training, evaluation and coding on CUDA.

Skipped where CUDA is not available, so ``make test`` runs none of these bodies on CPU
machines. ``ENCDIST_TEST_DEVICE=cpu pytest -m gpu`` runs the same bodies on the CPU, to
check the tests themselves without a GPU.

* a few training steps of the adaptive runner (tiny quickstart) with Catalyst's GPU engine;
* ``compressai-eval --device cuda`` on that run, next to the same evaluation on CPU;
* a photograph encoded on CUDA by the committed transforms in every way of coding, and
  decoded on the CPU by a freshly loaded model: bit-exact (the decoder's tables are
  integers from integers, format version 2).
"""

from __future__ import annotations

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


@pytest.mark.parametrize("way", ["default", "paper", "fallback", "static_backward", "pdf_backward", "ideal", "static"])
def test_encode_on_the_device_decode_on_cpu(way):
    """Encoded on the device by the committed transforms, decoded on the CPU by a freshly loaded model: bit-exact.

    Every table the decoder uses is integers from integers (format version 2), so the
    device's float arithmetic in ``g_a`` and p̂'s analysis can change what is coded, never
    what a decoder elsewhere reads from it.
    """
    from skimage import data

    from real_latents import real_model, symbols_of, ways_of_coding

    options = ways_of_coding()[way]
    model = real_model().to(DEVICE)
    x = torch.from_numpy(data.astronaut()[:256, :384].copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    with torch.no_grad():
        enc = model.adaptive_codec.compress(model.g_a(x.to(DEVICE)), options)
        decoder = real_model()  # a fresh model on the CPU, loaded from the files
        y_hat = decoder.adaptive_codec.decompress(enc["strings"], enc["shape"], options)["y_hat"]
    sent = symbols_of(decoder.adaptive_codec, enc["y_hat"].cpu())
    assert torch.equal(symbols_of(decoder.adaptive_codec, y_hat), sent)
    assert int(sent.abs().sum()) > 0, "a real latent, not zeros"
