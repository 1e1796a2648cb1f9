"""``SkimageSamples``: the offline default dataset, photographs shipped with scikit-image.

Only ``skimage.data`` images that are part of the scikit-image wheel itself are used
(no ``pooch`` download, no network). Checked with scikit-image 0.26: ``brain``,
``cells3d``, ``eagle``, ``human_mitosis``, ``kidney``, ``lily``,
``nickel_solidification``, ``palisades_of_vogt``, ``protein_transport``, ``skin``
and ``vortex`` need a download and are never used; ``cat`` is the same picture as
``chelsea``; ``colorwheel``, ``logo`` (synthetic graphics), ``lfw_subset`` (25x25
faces) and ``cell``/``microaneurysms``/``horse``/``shepp_logan_phantom``/``checkerboard``
(not photographs or not 8-bit) are left out.

Fixed split assignment (:data:`SKIMAGE_SPLITS`; sizes are height x width, all RGB
uint8). No picture is in two splits; the two stereo views of the motorcycle scene
are both in ``train`` so the scene never leaks into ``valid``/``infer``.

========  ============================  ===========
split     image                         size
========  ============================  ===========
train     rocket                        427 x 640
train     stereo_motorcycle_left        500 x 741
train     stereo_motorcycle_right       500 x 741
train     immunohistochemistry          512 x 512
train     hubble_deep_field             872 x 1000
train     retina                        1411 x 1411
valid     chelsea                       300 x 451
infer     astronaut                     512 x 512
infer     coffee                        400 x 600
========  ============================  ===========

With ``include_grayscale=True`` the train split also gets the grayscale photographs
``camera`` (512x512), ``coins`` (303x384), ``moon`` (512x512), ``grass``,
``gravel`` and ``brick`` (512x512 each), replicated to 3 channels.

Split names ``"val"``/``"validation"`` are accepted for ``"valid"`` and ``"test"``
for ``"infer"``.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from encdist.errors import ConfigError, DatasetError
from encdist.registry import register_dataset

from .image_io import PathLike

__all__ = [
    "SKIMAGE_SPLITS",
    "SKIMAGE_GRAYSCALE_TRAIN",
    "SkimageSamples",
    "skimage_image",
    "export",
    "main",
]

#: Fixed, non-overlapping assignment of scikit-image photographs to splits.
SKIMAGE_SPLITS: Dict[str, Tuple[str, ...]] = {
    "train": (
        "rocket",
        "stereo_motorcycle_left",
        "stereo_motorcycle_right",
        "immunohistochemistry",
        "hubble_deep_field",
        "retina",
    ),
    "valid": ("chelsea",),
    "infer": ("astronaut", "coffee"),
}

#: Grayscale photographs added to ``train`` with ``include_grayscale=True``.
SKIMAGE_GRAYSCALE_TRAIN: Tuple[str, ...] = ("camera", "coins", "moon", "grass", "gravel", "brick")

_SPLIT_ALIASES = {"val": "valid", "validation": "valid", "test": "infer"}


def _loader(name: str) -> Callable[[], np.ndarray]:
    import skimage.data as data

    if name == "stereo_motorcycle_left":
        return lambda: data.stereo_motorcycle()[0]
    if name == "stereo_motorcycle_right":
        return lambda: data.stereo_motorcycle()[1]
    fn = getattr(data, name, None)
    if fn is None or not callable(fn):
        raise DatasetError(f"scikit-image has no sample image {name!r}")
    return fn


@functools.lru_cache(maxsize=None)
def _cached(name: str) -> np.ndarray:
    try:
        arr = np.asarray(_loader(name)())
    except DatasetError:
        raise
    except Exception as e:  # e.g. ModuleNotFoundError (pooch) or a download attempt
        import skimage

        msg = " ".join(str(e).split())[:160]
        raise DatasetError(
            f"scikit-image {skimage.__version__} cannot provide sample image {name!r} offline: "
            f"{type(e).__name__}: {msg}"
        ) from None
    if arr.dtype != np.uint8:
        raise DatasetError(f"scikit-image sample image {name!r} is {arr.dtype}, expected uint8")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DatasetError(f"scikit-image sample image {name!r} has unexpected shape {arr.shape}")
    arr = np.ascontiguousarray(arr)
    arr.setflags(write=False)
    return arr


def skimage_image(name: str) -> np.ndarray:
    """The scikit-image photograph ``name`` as a read-only ``(h, w, 3)`` uint8 array.

    ``name`` is a ``skimage.data`` function name, or ``stereo_motorcycle_left`` /
    ``stereo_motorcycle_right``. Raises ``DatasetError`` if it is not available offline.
    """
    return _cached(name)


def sample_order(n: int, num_samples: Optional[int], seed: int, shuffle: bool) -> np.ndarray:
    """Image index of each of ``num_samples`` items (default ``n``).

    Shuffled (``shuffle``, with ``num_samples`` given): every image equally often
    (``num_samples // n`` times or once more) in an order drawn with ``seed``; else item
    ``i`` is image ``i % n``.
    """
    if num_samples is not None and (
        isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1
    ):
        raise ConfigError(f"num_samples must be a positive int or null, got {num_samples!r}")
    length = int(num_samples) if num_samples is not None else n
    if shuffle and num_samples is not None:
        return np.random.default_rng(seed).permutation(np.resize(np.arange(n), length))
    return np.arange(length) % n


def _canonical_split(split: str) -> str:
    s = _SPLIT_ALIASES.get(str(split), str(split))
    if s not in SKIMAGE_SPLITS:
        raise ConfigError(
            f"unknown SkimageSamples split {split!r}; use one of: {', '.join(SKIMAGE_SPLITS)} "
            f"(aliases: {', '.join(f'{k}={v}' for k, v in _SPLIT_ALIASES.items())})"
        )
    return s


def split_names(split: str, include_grayscale: bool = False) -> Tuple[str, ...]:
    """Image names of ``split`` (after aliasing), in dataset order."""
    s = _canonical_split(split)
    names = SKIMAGE_SPLITS[s]
    if include_grayscale and s == "train":
        names = names + SKIMAGE_GRAYSCALE_TRAIN
    return names


class InMemoryPhotos(Dataset):
    """Photographs held as uint8 arrays (``self._arrays``, names in ``self.names``), sampled in
    ``self._order`` (:func:`sample_order`): what :class:`SkimageSamples` and the photo corpus share."""

    names: Tuple[str, ...]
    transform: Optional[Callable]

    def image(self, index: int) -> Image.Image:
        """Image ``index`` (``0 <= index < len(self.names)``) as a new RGB ``PIL.Image``."""
        return Image.fromarray(self._arrays[index], "RGB")

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        img = self.image(int(self._order[index]))
        return self.transform(img) if self.transform is not None else img


@register_dataset("SkimageSamples")
class SkimageSamples(InMemoryPhotos):
    """scikit-image photographs as RGB ``PIL.Image`` (or ``transform(image)``).

    Args:
        split: ``"train"``, ``"valid"`` or ``"infer"`` (see :data:`SKIMAGE_SPLITS`).
        transform: callable applied to each RGB ``PIL.Image`` (e.g. ``RandomCrop``
            + ``ToTensor`` for train, ``CenterCrop`` + ``ToTensor`` for valid,
            ``ToTensor`` for infer).
        num_samples: dataset length. For ``train`` an epoch of ``num_samples`` items
            visits every image equally often (``num_samples // n`` or one more) in
            an order shuffled with ``seed``, and the (random) transform draws a new
            crop each time. For ``valid``/``infer`` item ``i`` is image ``i % n``
            (deterministic). Default: the number of images.
        seed: seed of the train image order (does not seed the random crops, which
            use torch's RNG like any torchvision transform).
        include_grayscale: add :data:`SKIMAGE_GRAYSCALE_TRAIN` to ``train``.

    Attributes:
        SPLITS: the class-wide split assignment (:data:`SKIMAGE_SPLITS`).
        names: image names of this split, in order.
        split: canonical split name.
    """

    SPLITS = SKIMAGE_SPLITS

    def __init__(
        self,
        split: str = "train",
        transform: Optional[Callable] = None,
        num_samples: Optional[int] = None,
        seed: int = 0,
        include_grayscale: bool = False,
    ):
        super().__init__()
        self.split = _canonical_split(split)
        self.transform = transform
        names: List[str] = []
        arrays: List[np.ndarray] = []
        for name in split_names(self.split, include_grayscale):
            try:
                arrays.append(skimage_image(name))
                names.append(name)
            except DatasetError as e:
                # Held-out splits must be exactly as documented; train may lose an image.
                if self.split != "train":
                    raise
                warnings.warn(f"SkimageSamples: skipping train image: {e}", RuntimeWarning, stacklevel=2)
        if not names:
            raise DatasetError(f"SkimageSamples: no {self.split!r} image is available offline")
        self.names: Tuple[str, ...] = tuple(names)
        self._arrays = arrays

        self.seed = seed
        self._order = sample_order(len(names), num_samples, seed, shuffle=self.split == "train")
        self.num_samples = len(self._order)

    @property
    def sizes(self) -> Dict[str, Tuple[int, int]]:
        """``{name: (height, width)}`` of this split's images."""
        return {k: a.shape[:2] for k, a in zip(self.names, self._arrays)}


    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, images={list(self.names)}, n={len(self)})"


def export(
    root: PathLike,
    splits: Optional[Iterable[str]] = None,
    include_grayscale: bool = False,
    compress_level: int = 6,
) -> Dict[str, List[Path]]:
    """Write the photographs as PNG files ``root/<split>/<name>.png``.

    The result is an image folder readable by :class:`RobustImageFolder` (and
    CompressAI's ``ImageFolder``) holding exactly the pixels of
    :class:`SkimageSamples`. Existing files of the same name are overwritten.
    ``compress_level`` (0-9) is the PNG zlib level (lossless either way; 1 is fastest).
    Returns ``{split: [paths]}``.
    """
    root = Path(root)
    out: Dict[str, List[Path]] = {}
    for split in splits if splits is not None else SKIMAGE_SPLITS:
        s = _canonical_split(split)
        folder = root / s
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DatasetError(f"cannot create folder {str(folder)!r}: {e.strerror or e}") from None
        paths = []
        for name in split_names(s, include_grayscale):
            path = folder / f"{name}.png"
            try:
                Image.fromarray(skimage_image(name), "RGB").save(path, format="PNG", compress_level=compress_level)
            except OSError as e:
                raise DatasetError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
            paths.append(path)
        out[s] = paths
    return out

