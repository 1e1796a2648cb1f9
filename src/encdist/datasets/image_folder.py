"""``RobustImageFolder``: CompressAI's ``ImageFolder`` with clear errors.

Same layout as :class:`compressai.datasets.ImageFolder`::

    root/
        train/  img000.png img001.jpg ...
        test/   ...            (or any other ``root/<split>/``)

Differences from CompressAI's class (which it subclasses, so ``isinstance`` checks
against ``compressai.datasets.ImageFolder`` still hold):

* a missing root or split folder, or a split folder with no images, raises a
  one-line :class:`~encdist.errors.DatasetError` naming the path and, if given, the
  config key that set it (``config_key="dataset.train.config.root"``);
* only files with an image extension (:data:`IMG_EXTENSIONS`, case-insensitive)
  are used; hidden files and other files are ignored; files are sorted by name;
* images are read with :func:`load_image` (grayscale, palette, alpha, 16-bit,
  CMYK handled), and an unreadable image raises ``DatasetError`` naming it when
  accessed; :meth:`RobustImageFolder.verify` decodes every file once and reports
  all unreadable ones together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Tuple

from torch.utils.data import Dataset

from compressai.datasets import ImageFolder as _CompressAIImageFolder

from encdist.errors import DatasetError
from encdist.registry import register_dataset

from .image_io import IMG_EXTENSIONS, PathLike, is_image_file, load_image

__all__ = ["RobustImageFolder"]


def _where(config_key: Optional[str]) -> str:
    return f" (set by {config_key})" if config_key else ""


@register_dataset("RobustImageFolder")
class RobustImageFolder(_CompressAIImageFolder):
    """Images of ``root/<split>/`` as RGB ``PIL.Image`` (or ``transform(image)``).

    Args:
        root: dataset root folder.
        transform: callable applied to each RGB ``PIL.Image``.
        split: sub-folder of ``root`` (``"train"``, ``"test"``, ``"valid"``, ...).
        config_key: config key that set ``root`` (e.g. ``"dataset.train.config.root"``),
            quoted in error messages.
        recursive: also take images from sub-folders of ``root/<split>`` (sorted by
            relative path).
    """

    def __init__(
        self,
        root: PathLike,
        transform: Optional[Callable] = None,
        split: str = "train",
        config_key: Optional[str] = None,
        recursive: bool = False,
    ):
        Dataset.__init__(self)
        self.root = Path(root)
        self.split = str(split)
        self.config_key = config_key
        self.transform = transform
        where = _where(config_key)

        if not str(root):
            raise DatasetError(f"dataset root is empty{where}")
        if not self.root.exists():
            raise DatasetError(f"dataset root {str(self.root)!r} does not exist{where}")
        if not self.root.is_dir():
            raise DatasetError(f"dataset root {str(self.root)!r} is not a folder{where}")

        splitdir = self.root / self.split
        self.splitdir = splitdir
        if not splitdir.is_dir():
            subdirs = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
            shown = ", ".join(subdirs[:10]) + (f", ... ({len(subdirs)} in all)" if len(subdirs) > 10 else "")
            have = f"; {str(self.root)!r} has: {shown}" if subdirs else f"; {str(self.root)!r} has no sub-folders"
            what = "is not a folder" if splitdir.exists() else "does not exist"
            raise DatasetError(f"split folder {str(splitdir)!r} (split {self.split!r}) {what}{where}{have}")

        files = splitdir.rglob("*") if recursive else splitdir.iterdir()
        self.samples: List[Path] = sorted(
            (f for f in files if is_image_file(f) and f.is_file()),
            key=lambda f: f.relative_to(splitdir).as_posix(),
        )
        if not self.samples:
            raise DatasetError(
                f"split folder {str(splitdir)!r} contains no images "
                f"({'/'.join(e.lstrip('.') for e in IMG_EXTENSIONS)}){where}"
            )

    def __getitem__(self, index: int):
        img = load_image(self.samples[index])
        if self.transform is not None:
            return self.transform(img)
        return img

    def __len__(self) -> int:
        return len(self.samples)

    def verify(self, raise_on_error: bool = True) -> List[Tuple[Path, str]]:
        """Decode every image once; report every unreadable one.

        Returns the list of ``(path, reason)`` for unreadable files (empty if all are
        fine). With ``raise_on_error`` (default) a non-empty list raises one
        ``DatasetError`` naming all of them instead.
        """
        bad: List[Tuple[Path, str]] = []
        for path in self.samples:
            try:
                load_image(path)
            except DatasetError as e:
                bad.append((path, str(e)))
        if bad and raise_on_error:
            names = ", ".join(p.relative_to(self.splitdir).as_posix() for p, _ in bad)
            raise DatasetError(
                f"{len(bad)} of {len(self.samples)} images in {str(self.splitdir)!r} are unreadable"
                f"{_where(self.config_key)}: {names}"
            )
        return bad

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"
