"""Bits that decode anywhere: a file decodes to the same symbols whatever the decoder's float arithmetic.

The decoder's tables come from integers only (stored static tables, integer p̂ synthesis,
integer adaptation; :mod:`encdist.codec.fixed_point`), so perturbing everything a float
computation depends on (thread count, oneDNN, memory format, float64) changes nothing in
the decoded symbols. The float path it replaced is shown to change under the same
perturbations, so these tests would fail if a float computation crept back into the tables.
Also: any corrupted byte, in any way of coding, is refused (never a wrong image).
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import pytest
import torch

from encdist.errors import BitstreamError
from real_latents import real_latent, real_model, real_symbols, symbols_of, ways_of_coding

OPTIONS = ways_of_coding()
ADAPTIVE_WAYS = ("default", "paper", "fallback", "static_backward", "pdf_backward", "ideal")


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _perturbed(model, how: str):
    """A copy of ``model`` and the context its decoder runs in, perturbed as ``how`` says."""
    m = copy.deepcopy(model)
    if how == "float64":
        m = m.double()
    if how == "channels_last":
        m = m.to(memory_format=torch.channels_last)
    ctx = {
        "two_threads": _threads(2),
        "onednn_off": torch.backends.mkldnn.flags(enabled=False),
    }.get(how, contextlib.nullcontext())
    return m, ctx


PERTURBATIONS = ("none", "two_threads", "onednn_off", "channels_last", "float64")


@pytest.fixture(scope="module")
def model():
    return real_model()


@pytest.fixture(scope="module")
def encoded(model):
    """The fixture's latent coded in every way (strings, shape) by the unperturbed model."""
    y = real_latent(model.adaptive_codec)
    with torch.no_grad():
        return {w: model.adaptive_codec.compress(y, OPTIONS[w]) for w in ADAPTIVE_WAYS + ("static",)}


def _symbols(model, enc, way) -> torch.Tensor:
    codec = model.adaptive_codec
    with torch.no_grad():
        y_hat = codec.decompress(enc["strings"], enc["shape"], OPTIONS[way])["y_hat"]
    return symbols_of(codec, y_hat)


@pytest.mark.parametrize("how", PERTURBATIONS)
@pytest.mark.parametrize("way", ["default", "pdf_backward", "paper", "ideal"])
def test_decodes_the_same_symbols_under_every_perturbation(model, encoded, way, how):
    m, ctx = _perturbed(model, how)
    with ctx:
        assert torch.equal(_symbols(m, encoded[way], way), real_symbols())


@pytest.mark.parametrize("how", PERTURBATIONS[1:])
def test_integer_p_hat_tables_are_identical_under_each_perturbation(model, encoded, how):
    payload = encoded["paper"]["strings"][1][0][5:]  # paper mode: the header, then p̂'s side strings
    ref = model.adaptive_codec.side_tables(payload, ideal=False)
    m, ctx = _perturbed(model, how)
    with ctx, torch.no_grad():
        now = m.adaptive_codec.side_tables(payload, ideal=False)
    assert all(torch.equal(a, b) for a, b in zip(ref, now))


def test_the_float_path_would_have_differed(model, encoded):
    """What makes the tests above meaningful: p̂ in float, turned into tables by the same code, changes."""
    payload = encoded["paper"]["strings"][1][0][5:]

    def float_tables(m, ctx):
        with ctx, torch.no_grad():
            return m.adaptive_codec.adaptive_tables(m.adaptive_codec.pdf_model.decompress([payload]))[0]

    ref = float_tables(model, contextlib.nullcontext())
    differs = {how: not torch.equal(ref, float_tables(*_perturbed(model, how))) for how in PERTURBATIONS[1:]}
    assert any(differs.values()), f"the float tables never changed: {differs}"


# ---------------------------------------------------------------------- corruption
def _flip_positions(n: int, k: int, seed: int):
    rng = np.random.default_rng(seed)
    return sorted(set(rng.choice(n, size=min(k, n), replace=False).tolist()) | {0, n - 1})


@pytest.mark.parametrize("way", ADAPTIVE_WAYS + ("static",))
def test_any_corrupted_byte_is_refused_never_a_wrong_image(model, encoded, way):
    enc = encoded[way]
    y_string, pdf_string = enc["strings"][0][0], enc["strings"][1][0]
    truth = real_symbols()
    outcomes = {"refused": 0, "same symbols": 0}
    for which, s in (("y", y_string), ("pdf", pdf_string)):
        for pos in _flip_positions(len(s), 12, seed=len(s)):
            for bit in (0, 7):
                bad = bytearray(s)
                bad[pos] ^= 1 << bit
                strings = [[bytes(bad)], [pdf_string]] if which == "y" else [[y_string], [bytes(bad)]]
                try:
                    got = _symbols(model, {"strings": strings, "shape": enc["shape"]}, way)
                except BitstreamError:
                    outcomes["refused"] += 1
                    continue
                assert torch.equal(got, truth), f"{way}: flipping bit {bit} of {which} byte {pos} decoded a wrong latent"
                outcomes["same symbols"] += 1
    assert outcomes["refused"] > 0, outcomes


@pytest.mark.parametrize("way", ["default", "static"])
def test_truncated_or_extended_streams_are_refused(model, encoded, way):
    enc = encoded[way]
    y_string, pdf_string = enc["strings"][0][0], enc["strings"][1][0]
    for strings in ([[y_string[:-1]], [pdf_string]], [[y_string + b"\0"], [pdf_string]],
                    [[y_string], [pdf_string[:-1]]], [[y_string], [pdf_string + b"\0"]], [[y_string], [b""]]):
        with pytest.raises(BitstreamError):
            _symbols(model, {"strings": strings, "shape": enc["shape"]}, way)
