"""``PhotoCorpus``: the larger offline photo corpus (``make data``), split by file.

scikit-image ships a dozen photographs: too few to train the paper's transforms or to
measure a codec on. ``make data`` (``python -m encdist.datasets photos``) adds the
photographs of two Debian packages of wallpapers, fetched with ``apt-get download``
and unpacked with ``dpkg-deb -x`` (no root needed), and writes resized copies once::

    ${paths.datasets}/photos/
        train/  <name>.png   short side 768 px (wallpapers), scikit-image's colour photos as they are
        valid/  <name>.png   768x512 (or 512x768), like Kodak
        test/   <name>.png   768x512 (or 512x768), like Kodak
        SPLITS.tsv           split, file, source, original size, SHA-256 of the written PNG

The assignment of files to splits is fixed here (:data:`PHOTO_SPLITS`), by file, so no
photograph is in two splits. The wallpapers are 2-6k pixels wide; they are downscaled
(Lanczos) so that one pixel covers about as much of the scene as in Kodak's 768x512
images, and the test and valid photographs are centre-cropped to Kodak's 3:2 shape.
Three wallpapers are drawings, not photographs (:data:`NOT_PHOTOGRAPHS`): never used.
Other image packages are kept for independent evaluation: nothing here trains, tunes or
selects on them.

Without the corpus, :class:`PhotoCorpus` falls back to :class:`SkimageSamples` (train,
valid, infer for test) and says so in one line.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from encdist.errors import ConfigError, DatasetError
from encdist.registry import register_dataset

from .image_io import PathLike, load_image
from .skimage_samples import SKIMAGE_SPLITS, InMemoryPhotos, SkimageSamples, sample_order, skimage_image

__all__ = [
    "PHOTO_PACKAGES",
    "PHOTO_SPLITS",
    "NOT_PHOTOGRAPHS",
    "KODAK_SIZE",
    "default_root",
    "prepare",
    "is_complete",
    "expected_files",
    "PhotoCorpus",
]

#: Debian packages whose photographs make the corpus (``/usr/share/backgrounds``).
PHOTO_PACKAGES: Tuple[str, ...] = ("lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04")

#: Fixed assignment of the wallpaper photographs (file stems) to splits.
PHOTO_SPLITS: Dict[str, Tuple[str, ...]] = {
    "train": (
        "Dragonfly_by_Bolly",
        "Infinite-Sea_by_Aury88",
        "Picture_1A_by_freespace",
        "Wine_by_Jakkub_Mede",
        "analogpattern_by_Peter_Nerlich",
        "free_by_Peter_Nerlich",
        "friends_by_Aitzol_Berasategi",
    ),
    "valid": ("picosdeeuropa_by_Aitzol_Berasategi",),
    "test": (
        "Bridge_by_Sander_Klootwijk",
        "Kleiber_by_Lukas_Baubkus",
        "Picture_0B_by_freespace",
        "aitzgorri_by_Aitzol_Berasategi",
        "greentock_by_Peter_Nerlich",
        "life_by_Aitzol_Berasategi",
        "seeding_by_Clements_Engelhardt",
        "sunset_by_Aitzol_Berasategi",
    ),
}

#: Wallpapers of those packages that are drawings, not photographs: left out.
NOT_PHOTOGRAPHS: Tuple[str, ...] = (
    "Fossa_by_Jasper_Roks",
    "Painting-Colors_by__herobrine7gamer",
    "umang_by_Abhishek_Mudgal",
)

#: (height, width) of a landscape test / valid photograph; portrait ones are transposed.
KODAK_SIZE: Tuple[int, int] = (512, 768)
#: Short side of the resized train wallpapers (pixels).
TRAIN_SHORT_SIDE = 768
#: scikit-image's colour photographs, added to ``train`` as ``skimage_<name>.png``.
SKIMAGE_TRAIN: Tuple[str, ...] = SKIMAGE_SPLITS["train"] + SKIMAGE_SPLITS["valid"] + SKIMAGE_SPLITS["infer"]

_SPLIT_ALIASES = {"val": "valid", "validation": "valid", "infer": "test"}
_SKIMAGE_FALLBACK = {"train": "train", "valid": "valid", "test": "infer"}
_HOW = "run 'make data' (python -m encdist.datasets photos) for the full corpus"


def default_root() -> Path:
    """``$ENCDIST_DATASETS/photos`` or ``~/data/datasets/photos`` (as ``paths.datasets``)."""
    base = os.environ.get("ENCDIST_DATASETS") or os.path.join(os.environ.get("HOME", "."), "data", "datasets")
    return Path(base) / "photos"


def _canonical(split: str) -> str:
    s = _SPLIT_ALIASES.get(str(split), str(split))
    if s not in PHOTO_SPLITS:
        raise ConfigError(f"unknown PhotoCorpus split {split!r}; use one of: {', '.join(PHOTO_SPLITS)}")
    return s


# ---------------------------------------------------------------------- preparing
def _run(cmd: List[str], cwd: Path) -> None:
    try:
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise DatasetError(f"{cmd[0]} is not installed: the photo corpus needs Debian's apt-get and dpkg-deb") from None
    except subprocess.CalledProcessError as e:
        last = (e.stderr or e.stdout or "").strip().splitlines()
        raise DatasetError(f"{' '.join(cmd)} failed: {last[-1] if last else f'exit {e.returncode}'}") from None


def fetch_sources(cache: Path) -> Dict[str, Path]:
    """Download and unpack :data:`PHOTO_PACKAGES` into ``cache``; ``{stem: jpeg path}``."""
    found: Dict[str, Path] = {}
    for pkg in PHOTO_PACKAGES:
        dest = cache / pkg
        if not (dest / ".complete").is_file():
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                _run(["apt-get", "download", pkg], Path(tmp))
                debs = sorted(Path(tmp).glob("*.deb"))
                if not debs:
                    raise DatasetError(f"apt-get download {pkg} wrote no .deb file")
                _run(["dpkg-deb", "-x", str(debs[0]), str(dest)], Path(tmp))
            (dest / ".complete").write_text(debs[0].name + "\n")
        for f in sorted((dest / "usr" / "share" / "backgrounds").glob("*.jpg")):
            found[f.stem] = f
    return found


def _resize_short_side(img: Image.Image, short: int) -> Image.Image:
    w, h = img.size
    s = short / min(w, h)
    if s >= 1:
        return img
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)


def _kodak_crop(img: Image.Image) -> Image.Image:
    """Scale to cover 768x512 (512x768 if portrait), then crop the centre."""
    h, w = KODAK_SIZE if img.width >= img.height else KODAK_SIZE[::-1]
    s = max(w / img.width, h / img.height)
    img = img.resize((max(w, round(img.width * s)), max(h, round(img.height * s))), Image.LANCZOS)
    left, top = (img.width - w) // 2, (img.height - h) // 2
    return img.crop((left, top, left + w, top + h))


def _save_png(img: Image.Image, path: Path) -> str:
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG", compress_level=6)
    os.replace(tmp, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expected_files() -> Dict[str, List[str]]:
    """``{split: [file names]}`` of the corpus."""
    out = {split: [f"{stem}.png" for stem in stems] for split, stems in PHOTO_SPLITS.items()}
    out["train"] += [f"skimage_{name}.png" for name in SKIMAGE_TRAIN]
    return out


def is_complete(root: PathLike) -> bool:
    root = Path(root)
    return (root / "SPLITS.tsv").is_file() and all((root / s / f).is_file() for s, fs in expected_files().items() for f in fs)


def prepare(root: Optional[PathLike] = None, *, sources: Optional[Dict[str, Path]] = None,
            log: Callable[[str], None] = print) -> Path:
    """Build the corpus under ``root`` (default :func:`default_root`), unless it is complete.

    ``sources`` (``{file stem: image path}``) replaces the download (tests). Returns ``root``.
    Raises :class:`DatasetError` (one line) when the packages cannot be fetched (no
    ``apt-get``, no network) or a photograph of :data:`PHOTO_SPLITS` is missing.
    """
    root = Path(root) if root is not None else default_root()
    if sources is None and is_complete(root):
        log(f"photo corpus in {root}: complete (SPLITS.tsv)")
        return root
    if sources is None:
        cache = root / ".sources"
        cache.mkdir(parents=True, exist_ok=True)
        sources = fetch_sources(cache)
    missing = [s for names in PHOTO_SPLITS.values() for s in names if s not in sources]
    if missing:
        raise DatasetError(f"the packages {', '.join(PHOTO_PACKAGES)} lack the photographs: {', '.join(missing)}")
    rows = []
    for split, stems in PHOTO_SPLITS.items():
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for stem in stems:
            src = sources[stem]
            img = load_image(src)
            out = _resize_short_side(img, TRAIN_SHORT_SIDE) if split == "train" else _kodak_crop(img)
            package = next((p for p in PHOTO_PACKAGES if p in src.parts), src.parent.name)
            rows.append((split, f"{stem}.png", package, f"{img.width}x{img.height}",
                         _save_png(out, folder / f"{stem}.png")))
    for name in SKIMAGE_TRAIN:
        arr = skimage_image(name)
        rows.append(("train", f"skimage_{name}.png", "scikit-image", f"{arr.shape[1]}x{arr.shape[0]}",
                     _save_png(Image.fromarray(arr, "RGB"), root / "train" / f"skimage_{name}.png")))
    lines = ["split\tfile\tsource\toriginal_size\tsha256"] + ["\t".join(r) for r in rows]
    (root / "SPLITS.tsv").write_text("\n".join(lines) + "\n")
    counts = {s: sum(r[0] == s for r in rows) for s in PHOTO_SPLITS}
    log(f"photo corpus in {root}: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + " (SPLITS.tsv)")
    return root


# ---------------------------------------------------------------------- dataset
_warned: set = set()


@register_dataset("PhotoCorpus")
class PhotoCorpus(InMemoryPhotos):
    """Photographs of the offline corpus as RGB ``PIL.Image`` (or ``transform(image)``).

    Args:
        split: ``"train"``, ``"valid"`` or ``"test"`` (``"infer"`` is an alias of ``"test"``).
        root: the corpus folder (``${paths.datasets}/photos``); default :func:`default_root`.
        transform: callable applied to each RGB image.
        num_samples: dataset length; for ``train`` every image is visited equally often
            in an order drawn with ``seed`` (random transforms draw new crops each time).
        seed: seed of the train order.
        fallback: without the corpus, use scikit-image's photographs (one warning line);
            ``False`` raises :class:`DatasetError` instead.
        max_images: keep only the split's first ``max_images`` photographs (by name):
            corpus-size ablations (``++dataset.train.config.max_images=4``).

    Images are decoded once and kept in memory (the corpus is small).
    """

    def __init__(
        self,
        split: str = "train",
        root: Optional[PathLike] = None,
        transform: Optional[Callable] = None,
        num_samples: Optional[int] = None,
        seed: int = 0,
        fallback: bool = True,
        max_images: Optional[int] = None,
    ):
        super().__init__()
        if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1):
            raise DatasetError(f"dataset config max_images must be a positive integer, got {max_images!r}")
        self.split = _canonical(split)
        self.root = Path(root) if root else default_root()
        self.transform = transform
        folder = self.root / self.split
        files = sorted(folder.glob("*.png")) if (self.root / "SPLITS.tsv").is_file() else []
        if files:
            self.names: Tuple[str, ...] = tuple(f.stem for f in files)
            self._arrays = [np.asarray(load_image(f)) for f in files]
            self.source = str(folder)
        else:
            if not fallback:
                raise DatasetError(f"no photo corpus at {str(self.root)!r}: {_HOW}")
            if str(self.root) not in _warned:
                _warned.add(str(self.root))
                print(f"[encdist] no photo corpus at {self.root}: using scikit-image's photographs; {_HOW}",
                      file=sys.stderr, flush=True)
            sk = SkimageSamples(_SKIMAGE_FALLBACK[self.split])
            self.names = sk.names
            self._arrays = [np.asarray(sk.image(i)) for i in range(len(sk.names))]
            self.source = "scikit-image"
        if max_images is not None:
            self.names, self._arrays = self.names[:max_images], self._arrays[:max_images]
        self._order = sample_order(len(self.names), num_samples, seed, shuffle=self.split == "train")
        self.num_samples = len(self._order)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, source={self.source!r}, n={len(self)})"
