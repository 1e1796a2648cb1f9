"""Datasets and image helpers.

Importing this package registers in ``compressai.registry.DATASETS``:

* ``"RobustImageFolder"``: :class:`RobustImageFolder`, CompressAI's ``ImageFolder``
  layout (``root/<split>/*``) with one-line errors naming paths / config keys.
* ``"PhotoCorpus"``: :class:`PhotoCorpus`, the larger offline corpus (``make data``:
  scikit-image's photographs plus two Debian wallpaper packages, fixed train / valid /
  test split by file), falling back to scikit-image's photographs without it.
* ``"RobustVimeo90kDataset"``: :class:`RobustVimeo90kDataset`, CompressAI's
  ``Vimeo90kDataset`` (Vimeo-90K as published: list files and ``sequences/``) with
  one-line errors naming paths / config keys.
* ``"SkimageSamples"``: :class:`SkimageSamples`, the offline default dataset of
  photographs shipped with scikit-image (fixed train / valid / infer split).

CompressAI-Trainer style configs call ``cls(**config, transform=build_transforms(...))``.
"""

from .image_io import IMG_EXTENSIONS, crop_padding, is_image_file, load_image, pad_to_multiple, to_rgb
from .image_folder import RobustImageFolder
from .photos import PhotoCorpus
from .skimage_samples import (
    SKIMAGE_GRAYSCALE_TRAIN,
    SKIMAGE_SPLITS,
    SkimageSamples,
    export,
    skimage_image,
)
from .transforms import build_transforms, resolve_transform
from .vimeo import RobustVimeo90kDataset

__all__ = [
    "IMG_EXTENSIONS",
    "is_image_file",
    "load_image",
    "to_rgb",
    "pad_to_multiple",
    "crop_padding",
    "RobustImageFolder",
    "RobustVimeo90kDataset",
    "PhotoCorpus",
    "SKIMAGE_SPLITS",
    "SKIMAGE_GRAYSCALE_TRAIN",
    "SkimageSamples",
    "skimage_image",
    "export",
    "build_transforms",
    "resolve_transform",
]
