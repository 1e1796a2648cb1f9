"""Tests of encdist.datasets: image loading, padding, folders, skimage samples, transforms."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import encdist.datasets as D
from encdist.errors import ConfigError, DatasetError


# ---------------------------------------------------------------- helpers


def _write_png16(path, arr: np.ndarray) -> None:
    """Minimal 16-bit PNG writer (Pillow cannot write 16-bit RGB PNG)."""
    h, w = arr.shape[:2]
    c = 1 if arr.ndim == 2 else arr.shape[2]
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _ramp16(h=4, w=300) -> np.ndarray:
    return np.tile(np.linspace(0, 65535, w).round().astype(np.uint16), (h, 1))


def _check_rgb(img, size_wh):
    assert isinstance(img, Image.Image)
    assert img.mode == "RGB"
    assert img.size == size_wh
    arr = np.asarray(img)
    assert arr.dtype == np.uint8 and arr.shape == (size_wh[1], size_wh[0], 3)
    return arr


def _check_full_ramp(arr):
    row = arr[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert np.all(np.diff(row) >= 0)
    assert len(np.unique(row)) > 200  # uses (nearly) the whole 8-bit range
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])


# ---------------------------------------------------------------- registry


def test_registered_names():
    from compressai.registry import DATASETS

    assert DATASETS["RobustImageFolder"] is D.RobustImageFolder
    assert DATASETS["SkimageSamples"] is D.SkimageSamples
    assert DATASETS["ImageFolder"] is not D.RobustImageFolder  # CompressAI's is untouched


# ---------------------------------------------------------------- image loading


def test_load_grayscale_palette_rgba(tmp_path):
    gray = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (6, 1))
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    arr = _check_rgb(D.load_image(tmp_path / "gray.png"), (25, 6))
    assert np.array_equal(arr[..., 1], gray)

    pal = Image.fromarray(gray, "L").convert("P")
    pal.save(tmp_path / "pal.png")
    _check_rgb(D.load_image(tmp_path / "pal.png"), (25, 6))
    pal.save(tmp_path / "pal.gif")
    _check_rgb(D.load_image(tmp_path / "pal.gif"), (25, 6))

    # palette with a transparent index -> white there
    p = Image.new("P", (4, 3), 0)
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.putpixel((1, 1), 1)
    p.save(tmp_path / "palt.png", transparency=0)
    arr = _check_rgb(D.load_image(tmp_path / "palt.png"), (4, 3))
    assert tuple(arr[0, 0]) == (255, 255, 255) and tuple(arr[1, 1]) == (0, 0, 255)

    rgba = np.zeros((5, 8, 4), np.uint8)
    rgba[..., 0] = 200  # red, hidden under transparent pixels on the left
    rgba[:, 4:, 3] = 255
    rgba[:, :4, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    arr = _check_rgb(D.load_image(tmp_path / "rgba.png"), (8, 5))
    assert np.all(arr[:, :4] == 255)  # composited over white
    assert np.all(arr[:, 4:] == (200, 0, 0))

    la = np.stack([np.full((3, 3), 10, np.uint8), np.full((3, 3), 255, np.uint8)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert np.all(_check_rgb(D.load_image(tmp_path / "la.png"), (3, 3)) == 10)

    Image.new("CMYK", (7, 4), (0, 0, 0, 0)).save(tmp_path / "cmyk.tif")
    assert np.all(_check_rgb(D.load_image(tmp_path / "cmyk.tif"), (7, 4)) == 255)

    Image.new("1", (5, 2), 1).save(tmp_path / "bw.png")
    assert np.all(_check_rgb(D.load_image(tmp_path / "bw.png"), (5, 2)) == 255)


def test_load_16bit_png_and_tiff(tmp_path):
    ramp = _ramp16()
    Image.fromarray(ramp).save(tmp_path / "g16.png")  # Pillow: mode I;16
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")
    _check_full_ramp(_check_rgb(D.load_image(tmp_path / "g16.png"), (300, 4)))

    Image.fromarray(ramp).save(tmp_path / "g16.tif")
    _check_full_ramp(_check_rgb(D.load_image(tmp_path / "g16.tif"), (300, 4)))

    # exact rounding: v -> round(v * 255 / 65535)
    arr = np.asarray(D.load_image(tmp_path / "g16.tif"))[0, :, 0]
    assert np.array_equal(arr, np.round(ramp[0] / 257.0).astype(np.uint8))

    # mode "I" (32-bit int) holding 16-bit samples
    Image.fromarray(ramp.astype(np.int32)).save(tmp_path / "i32.tif")
    _check_full_ramp(_check_rgb(D.load_image(tmp_path / "i32.tif"), (300, 4)))

    # float TIFF in [0, 1]
    Image.fromarray((ramp / 65535.0).astype(np.float32)).save(tmp_path / "f32.tif")
    _check_full_ramp(_check_rgb(D.load_image(tmp_path / "f32.tif"), (300, 4)))

    # 16-bit grayscale and RGB PNG written byte by byte
    _write_png16(tmp_path / "g16raw.png", ramp)
    _check_full_ramp(_check_rgb(D.load_image(tmp_path / "g16raw.png"), (300, 4)))
    rgb16 = np.stack([ramp, ramp // 2, 65535 - ramp], -1)
    _write_png16(tmp_path / "rgb16.png", rgb16)
    arr = _check_rgb(D.load_image(tmp_path / "rgb16.png"), (300, 4)).astype(int)
    assert np.abs(arr - np.round(rgb16 / 257.0)).max() <= 1

    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16, photometric="rgb")
    arr = _check_rgb(D.load_image(tmp_path / "rgb16.tif"), (300, 4)).astype(int)
    assert np.abs(arr - np.round(rgb16 / 257.0)).max() <= 1


def test_unreadable_files_name_the_file(tmp_path):
    bad = tmp_path / "garbage.png"
    bad.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(DatasetError, match="garbage.png"):
        D.load_image(bad)

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="truncated.png") as info:
        D.load_image(tmp_path / "truncated.png")
    assert "\n" not in str(info.value)

    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match="empty.jpg"):
        D.load_image(tmp_path / "empty.jpg")
    with pytest.raises(DatasetError, match="missing.png"):
        D.load_image(tmp_path / "missing.png")
    with pytest.raises(DatasetError, match="not a file"):
        D.load_image(tmp_path)


# ---------------------------------------------------------------- padding


@pytest.mark.parametrize("hw", [(5, 7), (16, 700), (65, 63), (64, 128), (1, 1), (130, 257)])
def test_pad_to_multiple_round_trip(hw):
    from compressai.ops import compute_padding

    h, w = hw
    x = torch.rand(2, 3, h, w) + 0.5  # strictly positive, so zero padding is visible
    y, pad = D.pad_to_multiple(x, 64)
    assert y.shape[-2] % 64 == 0 and y.shape[-1] % 64 == 0
    assert y.shape[-2] >= h and y.shape[-1] >= w and y.shape[-2] - h < 64 and y.shape[-1] - w < 64
    assert pad == compute_padding(h, w, min_div=64)[0]
    left, right, top, bottom = pad
    assert abs(left - right) <= 1 and abs(top - bottom) <= 1
    assert y.shape[-1] == w + left + right and y.shape[-2] == h + top + bottom
    assert float(y.sum()) == pytest.approx(float(x.sum()), rel=1e-6)  # zeros outside
    assert torch.equal(D.crop_padding(y, pad), x)


def test_pad_other_multiples():
    x = torch.rand(1, 3, 17, 33)
    y, pad = D.pad_to_multiple(x, 16)
    assert tuple(y.shape[-2:]) == (32, 48) and torch.equal(D.crop_padding(y, pad), x)
    with pytest.raises(ValueError):
        D.pad_to_multiple(x, 0)


# ---------------------------------------------------------------- skimage samples


def test_skimage_splits_disjoint_and_nonempty():
    splits = D.SKIMAGE_SPLITS
    assert set(splits) == {"train", "valid", "infer"}
    seen = {}
    for split, names in splits.items():
        assert names, split
        assert len(set(names)) == len(names)
        for name in names:
            assert name not in seen, f"{name} in {seen.get(name)} and {split}"
            seen[name] = split
    assert D.SkimageSamples.SPLITS is splits
    for name in D.SKIMAGE_GRAYSCALE_TRAIN:
        assert name not in seen
    # and no two different names are the same picture (cat == chelsea in skimage)
    arrays = {n: D.skimage_image(n) for n in seen}
    keys = {(a.shape, a[::37, ::41].tobytes()) for a in arrays.values()}
    assert len(keys) == len(arrays)


def test_skimage_infer_is_full_colour_photographs():
    ds = D.SkimageSamples("infer")
    assert len(ds) == len(D.SKIMAGE_SPLITS["infer"]) >= 2
    assert ds.names == D.SKIMAGE_SPLITS["infer"]
    assert ds.sizes["astronaut"] == (512, 512)
    for i in range(len(ds)):
        img = ds[i]
        arr = np.asarray(img)
        assert img.mode == "RGB" and min(img.size) >= 256
        assert not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]))
    assert D.SkimageSamples("test").names == ds.names


def test_skimage_train_num_samples_random_crops():
    tf = D.build_transforms([{"RandomCrop": {"size": [64, 48]}}, "ToTensor"])
    n_img = len(D.SKIMAGE_SPLITS["train"])
    ds = D.SkimageSamples(split="train", transform=tf, num_samples=3 * n_img + 1, seed=1)
    assert len(ds) == 3 * n_img + 1
    counts = np.bincount(ds._order, minlength=n_img)
    assert counts.min() >= 3 and counts.max() <= 4  # every image visited equally often
    xs = [ds[i] for i in range(len(ds))]
    for x in xs:
        assert isinstance(x, torch.Tensor) and x.shape == (3, 64, 48) and x.dtype == torch.float32
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    loader = torch.utils.data.DataLoader(ds, batch_size=5, shuffle=True)
    assert next(iter(loader)).shape == (5, 3, 64, 48)
    # order is reproducible from the seed
    again = D.SkimageSamples(split="train", num_samples=3 * n_img + 1, seed=1)
    assert np.array_equal(again._order, ds._order)
    assert len(D.SkimageSamples("train")) == n_img


def test_skimage_valid_deterministic_and_bad_args():
    tf = D.build_transforms([{"CenterCrop": {"size": 128}}, {"ToTensor": None}])
    ds = D.SkimageSamples("valid", transform=tf)
    assert len(ds) == len(D.SKIMAGE_SPLITS["valid"]) >= 1
    assert torch.equal(ds[0], D.SkimageSamples("val", transform=tf)[0])
    assert ds[0].shape == (3, 128, 128)
    with pytest.raises(ConfigError, match="nope"):
        D.SkimageSamples("nope")
    with pytest.raises(ConfigError, match="num_samples"):
        D.SkimageSamples("train", num_samples=0)


def test_export_matches_robust_image_folder(tmp_path):
    written = D.export(tmp_path, compress_level=1)
    for split, names in D.SKIMAGE_SPLITS.items():
        assert [p.name for p in written[split]] == [f"{n}.png" for n in names]
        folder = D.RobustImageFolder(tmp_path, split=split)
        ref = D.SkimageSamples(split)
        assert sorted(p.stem for p in folder.samples) == sorted(names)
        by_name = {p.stem: folder[i] for i, p in enumerate(folder.samples)}
        for i, name in enumerate(ref.names):
            assert np.array_equal(np.asarray(by_name[name]), np.asarray(ref.image(i)))
    # the factory call style: cls(**config, transform=...)
    from compressai.registry import DATASETS

    tf = D.build_transforms([{"RandomCrop": {"size": [32, 32]}}, {"ToTensor": {}}])
    ds = DATASETS["RobustImageFolder"](**{"root": str(tmp_path), "split": "infer"}, transform=tf)
    assert ds[0].shape == (3, 32, 32)


# ---------------------------------------------------------------- RobustImageFolder errors


def test_folder_missing_and_empty_errors(tmp_path):
    key = "dataset.train.config.root"
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=key) as info:
        D.RobustImageFolder(missing, split="train", config_key=key)
    assert str(missing) in str(info.value) and "\n" not in str(info.value)

    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError) as info:
        D.RobustImageFolder(tmp_path, split="valid", config_key=key)
    msg = str(info.value)
    assert str(tmp_path / "valid") in msg and key in msg and "train" in msg  # lists what exists

    (tmp_path / "train" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / ".hidden.png").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="no images") as info:
        D.RobustImageFolder(tmp_path, split="train", config_key=key)
    assert str(tmp_path / "train") in str(info.value) and key in str(info.value)

    # no config key: message still names the path, without "set by"
    with pytest.raises(DatasetError) as info:
        D.RobustImageFolder(tmp_path, split="train")
    assert "set by" not in str(info.value)


def test_folder_sorted_filters_and_reports_bad_images(tmp_path):
    split = tmp_path / "test"
    split.mkdir()
    for name in ["b.png", "a.JPG", "c.tif"]:
        Image.new("L", (9, 5), 100).save(split / name, format={"png": "PNG", "JPG": "JPEG", "tif": "TIFF"}[name.split(".")[1]])
    (split / "readme.md").write_text("x")
    (split / "sub").mkdir()
    (split / "zz_bad.png").write_bytes(b"\x89PNG garbage")
    (split / "yy_bad.jpg").write_bytes(b"nope")

    ds = D.RobustImageFolder(tmp_path, split="test")
    assert [p.name for p in ds.samples] == ["a.JPG", "b.png", "c.tif", "yy_bad.jpg", "zz_bad.png"]
    assert ds[1].size == (9, 5) and ds[1].mode == "RGB"
    with pytest.raises(DatasetError, match="zz_bad.png"):
        ds[4]

    with pytest.raises(DatasetError) as info:
        ds.verify()
    msg = str(info.value)
    assert "yy_bad.jpg" in msg and "zz_bad.png" in msg and "b.png" not in msg and "\n" not in msg
    assert [p.name for p, _ in ds.verify(raise_on_error=False)] == ["yy_bad.jpg", "zz_bad.png"]


# ---------------------------------------------------------------- transforms


def test_build_transforms_errors_and_small_images():
    with pytest.raises(ConfigError, match="RandomCropp"):
        D.build_transforms([{"RandomCropp": {"size": 8}}])
    with pytest.raises(ConfigError, match="NotATransform"):
        D.build_transforms(["NotATransform"])
    with pytest.raises(ConfigError, match="one-key"):
        D.build_transforms([{"RandomCrop": {"size": 8}, "ToTensor": {}}])
    with pytest.raises(ConfigError, match="RandomCrop"):
        D.build_transforms([{"RandomCrop": {"sise": 8}}])

    tf = D.build_transforms([{"RandomCrop": {"size": [16, 16]}}, "RandomHorizontalFlip", "ToTensor"])
    out = tf(Image.new("RGB", (5, 7), (255, 0, 0)))  # smaller than the crop: padded
    assert out.shape == (3, 16, 16)
    assert len(D.build_transforms(None).transforms) == 0


def test_build_transforms_accepts_omegaconf():
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create(
        {
            "settings": {"patch_size": [24, 20]},
            "transforms": [{"RandomCrop": {"size": "${....settings.patch_size}"}}, {"ToTensor": {}}],
            "bad": [{"RandomCrop": {"size": "${nowhere.patch_size}"}}],
        }
    )
    tf = D.build_transforms(cfg.transforms)
    assert tf(Image.new("RGB", (40, 40))).shape == (3, 24, 20)
    with pytest.raises(ConfigError, match="nowhere"):
        D.build_transforms(cfg.bad)
