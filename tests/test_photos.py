"""The offline photo corpus (``make data``): split by file, resized copies, fallback without it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from encdist.datasets import photos as P
from encdist.errors import DatasetError


@pytest.fixture(scope="module")
def fake_sources(tmp_path_factory):
    """A stand-in JPEG for every wallpaper of the split (no download): landscape, one portrait."""
    folder = tmp_path_factory.mktemp("wallpapers")
    rng = np.random.default_rng(0)
    out = {}
    for i, stem in enumerate(s for stems in P.PHOTO_SPLITS.values() for s in stems):
        w, h = (800, 1100) if stem.startswith(("Wine", "friends")) else (1100 + 10 * i, 800 + 7 * i)
        path = folder / f"{stem}.jpg"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, quality=80)
        out[stem] = path
    return out


def test_split_is_fixed_disjoint_and_holds_eight_kodak_size_test_photos(tmp_path, fake_sources):
    stems = [s for v in P.PHOTO_SPLITS.values() for s in v]
    assert len(stems) == len(set(stems)) and not set(stems) & set(P.NOT_PHOTOGRAPHS)
    assert len(P.PHOTO_SPLITS["test"]) >= 8
    root = P.prepare(tmp_path / "photos", sources=fake_sources, log=lambda m: None)
    assert P.is_complete(root)
    for split, files in P.expected_files().items():
        assert sorted(p.name for p in (root / split).glob("*.png")) == sorted(files)
    for f in (root / "test").glob("*.png"):
        assert Image.open(f).size in ((768, 512), (512, 768))
    for f in (root / "train").glob("*.png"):
        if not f.name.startswith("skimage_"):
            assert min(Image.open(f).size) == P.TRAIN_SHORT_SIDE
    rows = [line.split("\t") for line in (root / "SPLITS.tsv").read_text().splitlines()[1:]]
    assert sorted(r[1] for r in rows) == sorted(f for fs in P.expected_files().values() for f in fs)
    assert all(len(r[4]) == 64 for r in rows)  # sha256 of each written file


def test_dataset_reads_the_corpus_and_falls_back_with_one_line(tmp_path, fake_sources, capfd):
    root = P.prepare(tmp_path / "photos", sources=fake_sources, log=lambda m: None)
    ds = P.PhotoCorpus("test", root=root)
    assert len(ds) == 8 and ds.source == str(root / "test") and ds[0].size == (768, 512)
    train = P.PhotoCorpus("train", root=root, num_samples=50, seed=1)
    assert len(train) == 50 and P.PhotoCorpus("infer", root=root).names == ds.names
    capfd.readouterr()
    missing = P.PhotoCorpus("test", root=tmp_path / "none")
    err = capfd.readouterr().err.strip().splitlines()
    assert missing.source == "scikit-image" and missing.names == ("astronaut", "coffee")
    assert len(err) == 1 and "make data" in err[0]
    with pytest.raises(DatasetError, match="make data"):
        P.PhotoCorpus("test", root=tmp_path / "none", fallback=False)
    # corpus-size ablations: the first k photographs of the split, every one visited equally often
    few = P.PhotoCorpus("train", root=root, num_samples=12, max_images=3)
    assert few.names == P.PhotoCorpus("train", root=root).names[:3] and len(few) == 12
    assert sorted(np.bincount(few._order).tolist()) == [4, 4, 4]
    with pytest.raises(DatasetError, match="max_images"):
        P.PhotoCorpus("train", root=root, max_images=0)


def test_without_apt_get_the_command_fails_in_one_line(tmp_path):
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}  # no apt-get, no dpkg-deb
    proc = subprocess.run([sys.executable, "-m", "encdist.datasets", "photos", "--root", str(tmp_path / "photos")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "apt-get" in lines[0] and "Traceback" not in proc.stderr
