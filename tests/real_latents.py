"""Real latents and a trained distribution codec for the coding tests (golden bytes, determinism, GPU).

Untrained transforms map photographs to all-zero latents (a whole image codes to a few bytes),
which exercise nothing. So coding tests use:

* the committed ``bmshj2018-factorized`` q6 transforms (``weights/``, N=128, M=192), whose
  static bottleneck (tables included, as stored) codes the latent;
* ``tests/data/real_fixture.pt``: the symbols of a 256×256 crop of scikit-image's astronaut
  through that ``g_a`` (stored, so the golden bytes do not depend on a float ``g_a``), and a
  distribution codec (``PdfModel(192)``, float16, its side tables stored) fitted to a few
  crops of it, so that p̂ beats the static tables on most channels but not all: every way
  of coding, the mixed mask and the p̂-started backward adaptation included, is exercised.

``python tests/real_latents.py`` rewrites the fixture (float training: do it only with a new
format version, then regenerate the golden bytes).
"""

from __future__ import annotations

from pathlib import Path

import torch

FIXTURE = Path(__file__).parent / "data" / "real_fixture.pt"
QUALITY = 6
CROP = (slice(128, 384), slice(128, 384))  # rows, columns of skimage's astronaut (512×512)


def _transforms():
    from compressai.models import FactorizedPrior

    from encdist.recipes.base_family import weights_path
    from encdist.training.pretrained import load_state_dict_file

    sd = {k: v.float() if v.is_floating_point() else v for k, v in load_state_dict_file(weights_path(QUALITY)).items()}
    net = FactorizedPrior(128, 192)
    net.load_state_dict(sd)
    return net.eval()


def static_bottleneck():
    """The committed q6 static bottleneck, its stored tables untouched."""
    return _transforms().entropy_bottleneck


def real_codec(**options):
    """``AdaptiveEntropyBottleneckLatentCodec`` on the q6 bottleneck with the fixture's distribution codec."""
    from encdist.latent_codecs import AdaptiveEntropyBottleneckLatentCodec

    data = torch.load(FIXTURE, weights_only=True)
    codec = AdaptiveEntropyBottleneckLatentCodec(entropy_bottleneck=static_bottleneck(), **options)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in data["pdf_model"].items()}
    from compressai.models.utils import update_registered_buffers

    update_registered_buffers(codec.pdf_model.entropy_bottleneck, "entropy_bottleneck",
                              ["_quantized_cdf", "_offset", "_cdf_length"], sd)
    codec.pdf_model.load_state_dict(sd)
    return codec.eval()


def fitted_codec(**options):
    """:func:`real_codec` with its context tables fitted to flipped and shifted copies of the fixture's latent."""
    codec = real_codec(**options)
    y = real_latent(codec)
    codec.fit_contexts([torch.flip(y, dims=[-1]), torch.flip(y, dims=[-2]), torch.roll(y, 5, dims=-1)])
    return codec


def ways_of_coding() -> dict:
    """Every way of coding by name: ``CODING_MODES`` and backward adaptation (without and with contexts)
    started from p̂ without the fallback."""
    from encdist.latent_codecs import CODING_MODES, CodingOptions

    return dict(CODING_MODES, pdf_backward=CodingOptions(fallback_static=False, contexts=False),
                pdf_context=CodingOptions(fallback_static=False))


def _medians(codec) -> torch.Tensor:
    return codec.entropy_bottleneck.quantiles[:, 0, 1].detach().view(1, -1, 1, 1)


def symbols_of(codec, y_hat: torch.Tensor) -> torch.Tensor:
    """The integer symbols ``y_hat - medians`` (CPU, int64) of a latent ``codec`` decoded or coded."""
    return (y_hat - _medians(codec)).round().long().cpu()


def real_symbols() -> torch.Tensor:
    """``(1, 192, 16, 16)`` int symbols of the fixture's latent."""
    return torch.load(FIXTURE, weights_only=True)["symbols"].long().unsqueeze(0)


def real_latent(codec) -> torch.Tensor:
    """The fixture's latent ``y = symbols + medians`` (float32), exactly what ``g_a`` gave once rounded."""
    return real_symbols().float() + _medians(codec)


def real_model(**options):
    """``bmshj2018-factorized-pdf`` with the committed q6 transforms and the fixture's distribution codec."""
    from encdist.models import FactorizedPriorPdf

    model = FactorizedPriorPdf(128, 192, **options)
    model.g_a.load_state_dict(_transforms().g_a.state_dict())
    model.g_s.load_state_dict(_transforms().g_s.state_dict())
    model.adaptive_codec = real_codec(**options)
    return model.eval()


def _make_fixture() -> None:
    import numpy as np
    from skimage import data as skdata

    from encdist.codec.histogram import hard_histogram
    from encdist.codec.pdf_model import PdfModel

    net = _transforms()
    img = torch.from_numpy(np.ascontiguousarray(skdata.astronaut())).permute(2, 0, 1).float().div(255).unsqueeze(0)
    eb = net.entropy_bottleneck
    med = eb.quantiles[:, 0, 1].detach().view(1, -1, 1, 1)
    with torch.no_grad():
        y = net.g_a(img[..., CROP[0], CROP[1]])
        sym = torch.round(y - med).to(torch.int8)
        # A few crops of the same photograph: p̂ fits its statistics, not one latent exactly.
        crops = [net.g_a(img[..., r : r + 128, c : c + 192]) for r in (0, 64, 192, 320) for c in (0, 160, 320)]
    hists = torch.cat([hard_histogram(torch.round(t - med) + 128, 256) for t in crops])
    torch.manual_seed(0)
    pdf = PdfModel(192)
    opt = torch.optim.Adam(pdf.parameters(), lr=1e-3)
    for _ in range(400):
        out = pdf(hists)
        bits_y = -(hists * 96 * torch.log2(out["p_hat"].clamp_min(1e-9))).sum()
        bits_v = -torch.log2(out["likelihoods"]).sum()
        loss = (bits_y + bits_v + pdf.entropy_bottleneck.loss()) / len(hists)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pdf.eval()
    pdf.entropy_bottleneck.update(force=True, update_quantiles=True)
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in pdf.state_dict().items()}
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"symbols": sym[0], "pdf_model": sd,
                "source": f"skimage astronaut rows {CROP[0]}, cols {CROP[1]}; q{QUALITY} transforms"}, FIXTURE)
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    _make_fixture()
