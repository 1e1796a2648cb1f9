"""The paper's setup offline: Vimeo-90K and Kodak as published, zoo weights in torch's hub cache.

A researcher with the data and CompressAI's zoo weights on disk, and no network, runs
``compressai-train --config-name=example_adaptive hp.quality=3``. These tests build the
same layouts in miniature:

* Vimeo-90K: ``vimeo90k/vimeo_triplet/{tri_trainlist.txt, tri_testlist.txt,
  sequences/00001/0001/im1.png ...}`` (64x64 frames);
* Kodak: ``kodak/test/kodim01.png ...`` (128x128);
* zoo weights: a random ``FactorizedPrior(N, M)`` of the zoo's architecture for the quality,
  under the file name ``compressai.zoo`` downloads, in ``$TORCH_HOME/hub/checkpoints/``;
  every download fails (a refusing proxy in subprocesses, a patched ``torch.hub`` in this
  process), so only the cached file can supply the weights.

They check the dataset (loading, each error), that ``hp.quality`` alone picks the zoo
weights, their architecture and lambda (in a multirun too), and end to end that the run
trains and writes Kodak's RD point. Finally every top-level config of ``conf/`` must train a
few steps on tiny data somewhere in the suite (:data:`TRAINED_BY`), ``base_factorized`` here.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import time
import urllib.error
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image

from conftest import RATES, aim_series, run_dirs, train_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TESTS_DIR = Path(__file__).resolve().parent
CONF_DIR = TESTS_DIR.parent / "conf"
RUN_HASH = "0123456789abcdef01234567"
ZOO = "bmshj2018-factorized"
#: CompressAI zoo's bmshj2018-factorized: (N, M) per quality (what the configs must pick).
ZOO_ARCH = {q: (128, 192) if q <= 5 else (192, 320) for q in range(1, 9)}
#: Paper's lambda per quality (docs/METHOD.md).
ZOO_LMBDA = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.013, 5: 0.025, 6: 0.0483, 7: 0.0932, 8: 0.18}
TRAIN_SEQUENCES = ("00001/0001", "00001/0002")
TEST_SEQUENCES = ("00002/0001",)
#: A proxy nobody listens on: any download attempt of a subprocess fails at once.
NO_NETWORK = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
              "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}


# ----------------------------------------------------------------------------- layouts
def _photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth colour pattern with some noise: varied content, unlike a flat image."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    phase = rng.uniform(0, 2 * np.pi, 3)
    base = np.stack([np.sin(7 * x + p) * np.cos(5 * y - p) for p in phase], axis=-1)
    return np.clip(127.5 + 90 * base + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)


def make_vimeo(root: Path, train=TRAIN_SEQUENCES, test=TEST_SEQUENCES, size: int = 64, tuplet: int = 3) -> Path:
    """``root`` as Vimeo-90K's archive unpacks (``vimeo_triplet``), with ``size``x``size`` frames."""
    rng = np.random.default_rng(0)
    for seq in (*train, *test):
        folder = root / "sequences" / seq
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(1, tuplet + 1):
            Image.fromarray(_photo(rng, size, size)).save(folder / f"im{i}.png")
    prefix = {3: "tri", 7: "sep"}[tuplet]
    # as published: one sequence per line, and a last empty line
    (root / f"{prefix}_trainlist.txt").write_text("".join(f"{s}\n" for s in train) + "\n")
    (root / f"{prefix}_testlist.txt").write_text("".join(f"{s}\n" for s in test) + "\n")
    return root


def make_kodak(datasets: Path, n: int = 2, size=(128, 128)) -> Path:
    """``datasets/kodak/test/kodim01.png ...`` (CompressAI-Trainer's ``dataset/kodak``)."""
    folder = datasets / "kodak" / "test"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(1, n + 1):
        Image.fromarray(_photo(rng, *size)).save(folder / f"kodim{i:02d}.png")
    return folder


def make_paper_datasets(datasets: Path) -> Path:
    make_vimeo(datasets / "vimeo90k" / "vimeo_triplet")
    make_kodak(datasets)
    return datasets


@pytest.fixture(scope="module")
def zoo_nets():
    """``{(N, M): state dict}``: one random ``FactorizedPrior`` per zoo architecture (built once)."""
    from compressai.models import FactorizedPrior

    nets = {}
    for arch in sorted(set(ZOO_ARCH.values())):
        torch.manual_seed(0)
        net = FactorizedPrior(*arch)
        net.update(force=True)
        nets[arch] = net.state_dict()
    return nets


def zoo_file_name(quality: int) -> str:
    """The file name torch's hub gives the zoo's download: the URL's basename."""
    from compressai.zoo.image import model_urls

    return os.path.basename(urlparse(model_urls[ZOO]["mse"][quality]).path)


def cache_zoo_weights(torch_home: Path, quality: int, zoo_nets, arch=None) -> Path:
    """Put a zoo checkpoint for ``quality`` where ``compressai.zoo`` looks first.

    Its ``g_a.0.bias`` is filled with ``quality``, so a test can tell which file was loaded.
    torch's hub checks no hash here (CompressAI asks for none), so a random placeholder works.
    """
    sd = dict(zoo_nets[arch or ZOO_ARCH[quality]])
    sd["g_a.0.bias"] = torch.full_like(sd["g_a.0.bias"], float(quality))
    path = torch_home / "hub" / "checkpoints" / zoo_file_name(quality)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return path


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """``TORCH_HOME`` in the test's folder, and no download possible in this process."""
    import torch.hub

    def no_download(url, *args, **kwargs):
        raise urllib.error.URLError(OSError(-3, f"offline test: no download of {url}"))

    torch_home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return torch_home


@pytest.fixture(scope="module")
def compose():
    """``compose(name, *overrides)``: Hydra's composition of an installed config, struct off."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    import encdist  # noqa: F401  (registers models, criteria)
    import encdist.datasets  # noqa: F401
    import encdist.runners  # noqa: F401
    from encdist.config.factory import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()

    def _compose(name: str, *overrides: str):
        conf = hydra_compose(config_name=name, overrides=[f"env.aim.run_hash={RUN_HASH}", *overrides])
        OmegaConf.set_struct(conf, False)
        return conf

    with initialize_config_module("encdist.conf", version_base="1.3"):
        yield _compose
    GlobalHydra.instance().clear()


# ----------------------------------------------------------------------------- Vimeo-90K
def test_vimeo_dataset_reads_the_published_layout_like_compressai(tmp_path):
    from compressai.datasets import Vimeo90kDataset
    from compressai.registry import DATASETS

    from encdist.datasets import RobustVimeo90kDataset, build_transforms

    root = make_vimeo(tmp_path / "vimeo_triplet")
    assert DATASETS["RobustVimeo90kDataset"] is RobustVimeo90kDataset
    assert DATASETS["Vimeo90kDataset"] is Vimeo90kDataset  # CompressAI's is untouched
    for split, sequences in (("train", TRAIN_SEQUENCES), ("valid", TEST_SEQUENCES)):
        ds = RobustVimeo90kDataset(root, split=split)
        theirs = Vimeo90kDataset(str(root), split=split)
        assert isinstance(ds, Vimeo90kDataset)
        assert ds.samples == theirs.samples, "the same frames, in the same order, as CompressAI's"
        assert ds.sequences == list(sequences) and len(ds) == 3 * len(sequences)
        img = ds[len(ds) - 1]
        assert img.mode == "RGB" and img.size == (64, 64)
        assert np.array_equal(np.asarray(img), np.asarray(theirs[len(ds) - 1]))
        assert ds.verify() == []
    ds = RobustVimeo90kDataset(root, split="train", transform=build_transforms([{"RandomCrop": {"size": [32, 48]}}, {"ToTensor": {}}]))
    x = ds[0]
    assert x.shape == (3, 32, 48) and x.dtype == torch.float32

    sep = make_vimeo(tmp_path / "vimeo_septuplet", tuplet=7)
    ds = RobustVimeo90kDataset(sep, split="train", tuplet=7)
    assert len(ds) == 7 * len(TRAIN_SEQUENCES) and ds.samples == Vimeo90kDataset(str(sep), split="train", tuplet=7).samples


KEY = "dataset.train.config.root"


@pytest.mark.parametrize("what", ["root", "root_is_a_file", "list_file", "sequences", "first_frame", "empty_list"])
def test_vimeo_layout_errors_are_one_line_naming_path_and_key(tmp_path, what):
    from encdist.datasets import RobustVimeo90kDataset
    from encdist.errors import DatasetError

    root = make_vimeo(tmp_path / "vimeo_triplet")
    split, named = "train", root
    if what == "root":
        root = named = tmp_path / "nowhere" / "vimeo_triplet"
    elif what == "root_is_a_file":
        root = named = tmp_path / "file"
        root.write_text("x")
    elif what == "list_file":
        (root / "tri_testlist.txt").unlink()
        split, named = "valid", root / "tri_testlist.txt"
    elif what == "sequences":
        (root / "sequences").rename(root / "moved")
        named = root / "sequences"
    elif what == "first_frame":
        named = root / "sequences" / TRAIN_SEQUENCES[0] / "im2.png"
        named.unlink()
    elif what == "empty_list":
        (root / "tri_trainlist.txt").write_text("\n")
        named = root / "tri_trainlist.txt"
    with pytest.raises(DatasetError) as info:
        RobustVimeo90kDataset(root, split=split, config_key=KEY)
    msg = str(info.value)
    assert "\n" not in msg and str(named) in msg and f"(set by {KEY})" in msg, msg
    if what == "first_frame":
        assert f"sequence {TRAIN_SEQUENCES[0]!r} of tri_trainlist.txt" in msg


def test_vimeo_missing_or_bad_frame_is_named_when_read(tmp_path):
    from encdist.datasets import RobustVimeo90kDataset
    from encdist.errors import ConfigError, DatasetError

    root = make_vimeo(tmp_path / "vimeo_triplet")
    missing = root / "sequences" / TRAIN_SEQUENCES[1] / "im3.png"
    missing.unlink()
    bad = root / "sequences" / TRAIN_SEQUENCES[1] / "im1.png"
    bad.write_bytes(b"\x89PNG truncated")
    ds = RobustVimeo90kDataset(root, split="train", config_key=KEY)  # only the first sequence is checked up front
    assert ds[0].size == (64, 64)
    with pytest.raises(DatasetError) as info:
        ds[5]
    msg = str(info.value)
    assert "\n" not in msg and str(missing) in msg and TRAIN_SEQUENCES[1] in msg and KEY in msg
    with pytest.raises(DatasetError) as info:
        ds[3]
    msg = str(info.value)
    assert "\n" not in msg and str(bad) in msg and TRAIN_SEQUENCES[1] in msg and KEY in msg
    with pytest.raises(DatasetError) as info:
        ds.verify()
    msg = str(info.value)
    assert "1 of 6 Vimeo-90K frames" in msg and f"{TRAIN_SEQUENCES[1]}/im3.png" in msg and KEY in msg and "\n" not in msg
    assert ds.verify(raise_on_error=False) == [missing]

    for kwargs in ({"split": "test"}, {"tuplet": 5}):
        with pytest.raises(ConfigError, match="split must be 'train' or 'valid'"):
            RobustVimeo90kDataset(root, **kwargs)


def test_example_adaptive_reads_vimeo_and_kodak_as_published(compose, tmp_path, monkeypatch):
    """``dataset/vimeo90k`` and ``dataset/kodak`` on the published layouts under ``paths.datasets``."""
    from encdist.config.factory import create_dataloaders
    from encdist.datasets import RobustImageFolder, RobustVimeo90kDataset
    from encdist.errors import DatasetError

    datasets = make_paper_datasets(tmp_path / "datasets")
    monkeypatch.setenv("ENCDIST_DATASETS", str(datasets))
    conf = compose("example_adaptive", "dataset.train.settings.patch_size=[64,64]", "dataset.valid.settings.patch_size=[48,64]",
                   "dataset.train.loader.num_workers=0", "dataset.valid.loader.num_workers=0", "dataset.infer.loader.num_workers=0")
    loaders = create_dataloaders(conf)
    train, valid, infer = (loaders[k].dataset for k in ("train", "valid", "infer"))
    assert type(train) is type(valid) is RobustVimeo90kDataset and type(infer) is RobustImageFolder
    assert train.root == valid.root == datasets / "vimeo90k" / "vimeo_triplet"
    assert (train.sequences, valid.sequences) == (list(TRAIN_SEQUENCES), list(TEST_SEQUENCES))
    assert next(iter(loaders["train"])).shape == (6, 3, 64, 64)  # 2 sequences x 3 frames (batch 16)
    assert next(iter(loaders["valid"])).shape == (3, 3, 48, 64)
    assert [p.name for p in infer.samples] == ["kodim01.png", "kodim02.png"]
    x = next(iter(loaders["infer"]))
    assert x.shape == (1, 3, 128, 128)
    assert conf.dataset.infer.meta.name == "kodak"  # the runner's RD figure adds the paper's Kodak curves

    (datasets / "vimeo90k" / "vimeo_triplet" / "tri_testlist.txt").unlink()
    with pytest.raises(DatasetError, match=r"tri_testlist\.txt.*\(set by dataset\.valid\.config\.root\)"):
        create_dataloaders(conf)


# ----------------------------------------------------------------------------- zoo weights
def test_zoo_cache_file_is_where_torch_hub_looks(offline_hub):
    from encdist.training.pretrained import zoo_cache_file

    for q in range(1, 9):
        path = zoo_cache_file(ZOO, q)
        assert path == offline_hub / "hub" / "checkpoints" / zoo_file_name(q)
        assert re.fullmatch(rf"bmshj2018-factorized-prior-{q}-[0-9a-f]{{8}}\.pth\.tar", path.name), path.name
    assert zoo_cache_file(ZOO, 3, "ms-ssim").name.startswith("bmshj2018-factorized-ms-ssim-3-")


@pytest.mark.parametrize("quality", range(1, 9))
def test_quality_alone_picks_zoo_weights_architecture_and_lambda(compose, offline_hub, zoo_nets, quality):
    from encdist.config.factory import create_model, validate_config

    conf = compose("example_adaptive", f"hp.quality={quality}")
    validate_config(conf)
    N, M = ZOO_ARCH[quality]
    assert (conf.hp.N, conf.hp.M) == (N, M)
    assert conf.criterion.lmbda == pytest.approx(ZOO_LMBDA[quality])
    assert (conf.model.pretrained.source, conf.model.pretrained.quality) == ("zoo", quality)

    cache_zoo_weights(offline_hub, quality, zoo_nets)
    model = create_model(conf)
    assert model.g_a[0].weight.shape == (N, 3, 5, 5) and model.g_a[6].weight.shape[0] == M
    assert model.adaptive_codec.entropy_bottleneck.channels == M
    assert torch.all(model.g_a[0].bias == quality), "the zoo file of this quality was loaded"
    assert torch.equal(model.g_s[0].weight, zoo_nets[N, M]["g_s.0.weight"])
    assert not any(p.requires_grad for p in model.g_a.parameters())


def test_hp_follows_the_zoo_table_of_the_chosen_model(compose):
    """Other adaptive models follow their own parent's zoo table (mbt2018-mean: M=320 from quality 5)."""
    assert (compose("example_adaptive", "model=mbt2018-mean-pdf", "hp.quality=5").hp.M) == 320
    assert (compose("example_adaptive", "model=bmshj2018-hyperprior-pdf", "hp.quality=5").hp.M) == 192
    conf = compose("example_adaptive", "hp.quality=6", "hp.N=64", "hp.M=96")  # explicit sizes still win
    assert (conf.hp.N, conf.hp.M) == (64, 96)


@pytest.mark.parametrize("quality", ["9", "0", "abc", "null"])
def test_quality_outside_the_zoo_is_one_line_config_error(compose, quality):
    from encdist.config.factory import validate_config
    from encdist.errors import ConfigError

    conf = compose("example_adaptive", f"hp.quality={quality}")
    with pytest.raises(ConfigError) as info:
        validate_config(conf)
    assert "hp.quality" in str(info.value) and "\n" not in str(info.value)


def test_zoo_file_of_another_architecture_is_checkpoint_error(compose, offline_hub, zoo_nets):
    from encdist.config.factory import create_model
    from encdist.errors import CheckpointError

    cache_zoo_weights(offline_hub, 6, zoo_nets, arch=ZOO_ARCH[1])
    with pytest.raises(CheckpointError) as info:
        create_model(compose("example_adaptive", "hp.quality=6"))
    msg = str(info.value)
    assert "\n" not in msg and "zoo bmshj2018-factorized q=6" in msg and "g_a.0.weight" in msg


def test_missing_zoo_file_offline_names_the_cache_file(compose, offline_hub):
    from encdist.config.factory import create_model
    from encdist.errors import PretrainedWeightsError

    with pytest.raises(PretrainedWeightsError) as info:
        create_model(compose("example_adaptive", "hp.quality=2"))
    msg = str(info.value)
    assert "\n" not in msg and str(offline_hub / "hub" / "checkpoints" / zoo_file_name(2)) in msg
    assert "paths.pretrained" in msg


def test_quality_multirun_builds_each_zoo_architecture(compose, offline_hub, zoo_nets):
    """``-m hp.quality=1,6``: each job (as Hydra's basic sweeper splits the sweep) gets its own
    zoo weights, architecture and lambda."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from encdist.config.factory import create_model

    (jobs,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(["hp.quality=1,6"]), None)
    assert jobs == [["hp.quality=1"], ["hp.quality=6"]]
    for overrides in jobs:
        quality = int(overrides[0].split("=")[1])
        cache_zoo_weights(offline_hub, quality, zoo_nets)
        conf = compose("example_adaptive", *overrides)
        model = create_model(conf)
        assert (conf.hp.N, conf.hp.M) == ZOO_ARCH[quality]
        assert model.adaptive_codec.entropy_bottleneck.channels == ZOO_ARCH[quality][1]
        assert torch.all(model.g_a[0].bias == quality)
        assert conf.criterion.lmbda == pytest.approx(ZOO_LMBDA[quality])


# ----------------------------------------------------------------------------- end to end
#: The paper's run made tiny: 64x64 crops, batch 2, one epoch (3 train steps on 6 frames).
PAPER_TINY = [
    "engine.num_epochs=1",
    "dataset.train.loader.batch_size=2",
    "dataset.train.settings.patch_size=[64,64]",
    "dataset.valid.loader.batch_size=2",
    "dataset.valid.settings.patch_size=[64,64]",
]


@pytest.mark.slow
def test_paper_setup_end_to_end_offline(tmp_path, monkeypatch, zoo_nets):
    """``compressai-train --config-name=example_adaptive hp.quality=3`` on hub-cached zoo
    weights, Vimeo-90K and Kodak as published: trains and writes Kodak's RD point."""
    from encdist.training.checkpoint import safe_load
    from encdist.evaluation.results import load_results

    datasets = make_paper_datasets(tmp_path / "datasets")
    torch_home = tmp_path / "torch_home"
    zoo_file = cache_zoo_weights(torch_home, 3, zoo_nets)
    for key, value in {"ENCDIST_DATASETS": str(datasets), "TORCH_HOME": str(torch_home), **NO_NETWORK}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    root = tmp_path / "root"
    start = time.monotonic()
    proc = train_cli(root, "hp.quality=3", *PAPER_TINY, config_name="example_adaptive")
    print(f"example_adaptive hp.quality=3: {time.monotonic() - start:.1f} s")
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in zoo_file.parent.iterdir()) == [zoo_file.name], "nothing downloaded"
    (run,) = run_dirs(root)

    conf = yaml.safe_load((run / "configs" / "config.yaml").read_text())
    assert (conf["hp"]["quality"], conf["hp"]["N"], conf["hp"]["M"]) == (3, 128, 192)
    assert conf["criterion"]["lmbda"] == pytest.approx(0.0067)
    assert conf["model"]["pretrained"]["source"] == "zoo"
    assert conf["dataset"]["train"]["type"] == "RobustVimeo90kDataset"
    assert conf["dataset"]["train"]["config"]["root"] == str(datasets / "vimeo90k" / "vimeo_triplet")
    assert conf["dataset"]["infer"]["config"]["root"] == str(datasets / "kodak")

    state = safe_load(run / "checkpoints" / "runner.last.pth")
    assert state["epoch"] == 1
    assert {int(s["step"]) for s in state["optimizer"]["net"]["state"].values()} == {3}, "6 frames, batch 2"
    weights = state["model_state_dict"]
    assert torch.all(weights["g_a.0.bias"] == 3) and torch.equal(weights["g_s.6.weight"], zoo_nets[128, 192]["g_s.6.weight"])

    res = load_results(run / "results" / "infer.json")
    assert res["meta"]["dataset"] == "kodak" and res["meta"]["num_images"] == 2
    r = res["results"]
    for key in ("bpp", "bpp_y", "bpp_pdf", "psnr-rgb", "bpp_static", "bpp_ideal"):
        assert len(r[key]) == 1 and math.isfinite(r[key][0]), key
    assert r["bpp"][0] == pytest.approx(r["bpp_y"][0] + r["bpp_pdf"][0], rel=1e-6)
    assert r["bpp"][0] > 0 and r["bpp_pdf"][0] >= 0
    assert r["criterion.lmbda"] == [pytest.approx(0.0067)]

    aim_repo = root / "aim"
    for loader in ("train", "valid", "infer"):
        for name in RATES[loader]:
            steps, values = aim_series(aim_repo, run.name, name, loader)
            assert steps == [1] and all(math.isfinite(v) for v in values), (name, loader)
    for name in ("bpp_y", "bpp_pdf"):
        assert aim_series(aim_repo, run.name, name, "infer")[1] == [pytest.approx(r[name][0])]


@pytest.mark.slow
def test_paper_setup_quality_multirun_offline(tmp_path, monkeypatch, zoo_nets):
    """``compressai-train --config-name=example_adaptive -m hp.quality=1,6``: one run per quality,
    each on its own zoo weights and architecture (N=192, M=320 for quality 6) and lambda."""
    from encdist.training.checkpoint import safe_load
    from encdist.evaluation.results import load_results

    datasets = make_paper_datasets(tmp_path / "datasets")
    torch_home = tmp_path / "torch_home"
    for quality in (1, 6):
        cache_zoo_weights(torch_home, quality, zoo_nets)
    for key, value in {"ENCDIST_DATASETS": str(datasets), "TORCH_HOME": str(torch_home), **NO_NETWORK}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    root = tmp_path / "root"
    start = time.monotonic()
    proc = train_cli(root, "-m", "hp.quality=1,6", *PAPER_TINY, "runner.inference.figures=false", config_name="example_adaptive")
    print(f"example_adaptive -m hp.quality=1,6: {time.monotonic() - start:.1f} s")
    assert proc.stdout.count("[compressai-train] run ") == 2
    runs = {yaml.safe_load((r / "configs" / "config.yaml").read_text())["hp"]["quality"]: r for r in run_dirs(root)}
    assert sorted(runs) == [1, 6]
    for quality, run in runs.items():
        N, M = ZOO_ARCH[quality]
        conf = yaml.safe_load((run / "configs" / "config.yaml").read_text())
        assert (conf["hp"]["N"], conf["hp"]["M"]) == (N, M)
        weights = safe_load(run / "checkpoints" / "runner.last.pth")["model_state_dict"]
        assert weights["g_a.0.weight"].shape == (N, 3, 5, 5) and weights["g_a.6.weight"].shape[0] == M
        assert torch.all(weights["g_a.0.bias"] == quality), "the zoo file of this quality was loaded"
        r = load_results(run / "results" / "infer.json")["results"]
        assert r["criterion.lmbda"] == [pytest.approx(ZOO_LMBDA[quality])]
        assert math.isfinite(r["bpp"][0]) and math.isfinite(r["psnr-rgb"][0])


# ----------------------------------------------------------------------------- every config trains
#: Where each top-level config of ``conf/`` trains a few steps on tiny data (file, test or fixture).
TRAINED_BY = {
    "quickstart": ("test_train.py", "trained"),
    "example_adaptive": ("test_paper_setup.py", "test_paper_setup_end_to_end_offline"),
    "base_factorized": ("test_paper_setup.py", "test_base_factorized_trains_on_tiny_data"),
    "base_hyperprior": ("test_paper_setup.py", "test_base_hyperprior_trains_on_tiny_data"),
}


def test_every_top_level_config_trains_on_tiny_data():
    """Not only composed (``test_configs``): each top-level config is run for a few steps."""
    assert sorted(TRAINED_BY) == sorted(p.stem for p in CONF_DIR.glob("*.yaml")), (
        "a new top-level config needs a tiny training run (and an entry here)"
    )
    for config, (file, name) in TRAINED_BY.items():
        text = (TESTS_DIR / file).read_text()
        functions = {n.name: n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.FunctionDef)}
        assert name in functions, f"{config}: {file} has no {name}"
        source = ast.get_source_segment(text, functions[name])
        assert "train_cli(" in source, f"{config}: {file}::{name} does not train"
        if config != "quickstart":  # quickstart is train_cli's default config
            assert f'"{config}"' in source or f"={config}" in source, f"{config}: {file}::{name} trains another config"


@pytest.mark.slow
def test_base_factorized_trains_on_tiny_data(tmp_path, monkeypatch):
    """``base_factorized`` (photo corpus, or scikit-image's photographs without it) for a few steps."""
    from encdist.training.checkpoint import safe_load

    monkeypatch.setenv("ENCDIST_DATASETS", str(tmp_path / "datasets"))  # no corpus: the fallback
    export = tmp_path / "export" / "base.pth"
    root = tmp_path / "root"
    start = time.monotonic()
    proc = train_cli(
        root, "hp.N=16", "hp.M=32", "engine.num_epochs=1", "dataset.train.config.num_samples=16",
        "dataset.train.settings.patch_size=[64,64]", "dataset.valid.settings.patch_size=[64,64]",
        "runner.refit_bottleneck.steps=2", f"++export.path={export}", config_name="base_factorized",
    )
    print(f"base_factorized: {time.monotonic() - start:.1f} s")
    assert "no photo corpus" in proc.stderr and "Traceback" not in proc.stderr
    (run,) = run_dirs(root)
    conf = yaml.safe_load((run / "configs" / "config.yaml").read_text())
    assert conf["exp"]["name"] == "base_factorized" and conf["model"]["name"] == "bmshj2018-factorized"
    assert conf["criterion"]["lmbda"] == pytest.approx(ZOO_LMBDA[conf["hp"]["quality"]])
    assert safe_load(run / "checkpoints" / "runner.last.pth")["epoch"] == 1
    exported = safe_load(export)
    assert exported["model_name"] == "bmshj2018-factorized"
    assert exported["state_dict"]["g_a.0.weight"].shape[0] == 16
    assert (run / "results" / "infer.json").is_file()


@pytest.mark.slow
def test_base_hyperprior_trains_on_tiny_data(tmp_path, monkeypatch):
    """``base_hyperprior``: the anchor, base_factorized's recipe with the model swapped, for a few steps."""
    from encdist.training.checkpoint import safe_load

    monkeypatch.setenv("ENCDIST_DATASETS", str(tmp_path / "datasets"))
    export = tmp_path / "export" / "base.pth"
    root = tmp_path / "root"
    train_cli(
        root, "hp.N=16", "hp.M=32", "engine.num_epochs=1", "dataset.train.config.num_samples=16",
        "dataset.train.settings.patch_size=[64,64]", "dataset.valid.settings.patch_size=[64,64]",
        "runner.refit_bottleneck.steps=2", f"++export.path={export}", config_name="base_hyperprior",
    )
    (run,) = run_dirs(root)
    conf = yaml.safe_load((run / "configs" / "config.yaml").read_text())
    assert conf["exp"]["name"] == "base_hyperprior" and conf["model"]["name"] == "bmshj2018-hyperprior"
    exported = safe_load(export)
    assert exported["model_name"] == "bmshj2018-hyperprior"
    assert exported["state_dict"]["h_a.0.weight"].shape[:2] == (16, 32)
    infer = json.loads((run / "results" / "infer.json").read_text())
    assert infer["results"]["bpp"][0] > 0
