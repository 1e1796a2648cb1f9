"""``RobustVimeo90kDataset``: CompressAI's ``Vimeo90kDataset`` with clear errors.

Vimeo-90K's triplet archive, unpacked as published, is::

    vimeo_triplet/
        tri_trainlist.txt   one sequence per line: 00001/0001 ...
        tri_testlist.txt
        sequences/00001/0001/im1.png im2.png im3.png

CompressAI-Trainer's ``dataset/vimeo90k`` reads it with
:class:`compressai.datasets.Vimeo90kDataset`: every frame of every listed sequence is
one sample, split ``train`` reads ``tri_trainlist.txt`` and ``valid`` reads
``tri_testlist.txt`` (``sep_*`` lists with ``tuplet=7``). This subclass keeps that
constructor (``root, transform, split, tuplet``) and those samples, in the same order,
and adds what a long training run needs before it starts:

* a missing root, list file or ``sequences/`` folder, an empty list, or a missing frame
  of the first listed sequence (the usual sign of a wrong root or an unfinished
  extraction) raises a one-line :class:`~encdist.errors.DatasetError` naming the path
  and the config key that set the root (``config_key="dataset.train.config.root"``);
* frames are read with :func:`load_image`; a frame that is missing or unreadable when
  it is accessed raises ``DatasetError`` naming the file, its sequence and the config
  key. The other frames are not checked up front (the triplet train list has 51,313
  sequences, 153,939 frames); :meth:`RobustVimeo90kDataset.verify` checks them all at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional

from torch.utils.data import Dataset

from compressai.datasets import Vimeo90kDataset as _CompressAIVimeo90k

from encdist.errors import ConfigError, DatasetError
from encdist.registry import register_dataset

from .image_folder import _where
from .image_io import PathLike, load_image

__all__ = ["RobustVimeo90kDataset"]


@register_dataset("RobustVimeo90kDataset")
class RobustVimeo90kDataset(_CompressAIVimeo90k):
    """Frames of the Vimeo-90K sequences listed for ``split``, as RGB ``PIL.Image``.

    Args:
        root: the unpacked ``vimeo_triplet`` (or ``vimeo_septuplet``) folder.
        transform: callable applied to each RGB ``PIL.Image``.
        split: ``"train"`` (``tri_trainlist.txt``) or ``"valid"`` (``tri_testlist.txt``),
            as in CompressAI.
        tuplet: frames per sequence: 3 (``tri_*`` lists) or 7 (``sep_*`` lists).
        config_key: config key that set ``root``, quoted in error messages.
    """

    def __init__(
        self,
        root: PathLike,
        transform: Optional[Callable] = None,
        split: str = "train",
        tuplet: int = 3,
        config_key: Optional[str] = None,
    ):
        Dataset.__init__(self)
        self.root = Path(root)
        self.split = str(split)
        self.tuplet = tuplet
        self.config_key = config_key
        self.transform = transform
        where = _where(config_key)

        try:
            list_name = self._list_filename(self.split, tuplet)
        except KeyError:
            raise ConfigError(
                f"Vimeo-90K split must be 'train' or 'valid' and tuplet 3 or 7, got split={split!r}, tuplet={tuplet!r}"
            ) from None
        if not str(root):
            raise DatasetError(f"dataset root is empty{where}")
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise DatasetError(f"Vimeo-90K root {str(self.root)!r} {what}{where}")
        self.list_path = self.root / list_name
        if not self.list_path.is_file():
            raise DatasetError(
                f"Vimeo-90K list file {str(self.list_path)!r} (split {self.split!r}) does not exist{where}"
            )
        self.sequences_dir = self.root / "sequences"
        if not self.sequences_dir.is_dir():
            raise DatasetError(f"Vimeo-90K frame folder {str(self.sequences_dir)!r} does not exist{where}")

        with open(self.list_path) as f:
            self.sequences: List[str] = [line.strip() for line in f if line.strip()]
        if not self.sequences:
            raise DatasetError(f"Vimeo-90K list file {str(self.list_path)!r} lists no sequences{where}")
        # CompressAI's sample list: every frame of every sequence, in list order.
        self.samples: List[str] = [
            str(self.sequences_dir / seq / f"im{idx}.png") for seq in self.sequences for idx in range(1, tuplet + 1)
        ]
        for index in range(tuplet):
            if not Path(self.samples[index]).is_file():
                raise DatasetError(self._missing(index))

    def _sequence(self, index: int) -> str:
        return self.sequences[index // self.tuplet]

    def _missing(self, index: int) -> str:
        return (
            f"Vimeo-90K frame {self.samples[index]!r} (sequence {self._sequence(index)!r} of "
            f"{self.list_path.name}) does not exist{_where(self.config_key)}"
        )

    def __getitem__(self, index: int):
        path = Path(self.samples[index])
        if not path.is_file():
            raise DatasetError(self._missing(index))
        try:
            img = load_image(path)
        except DatasetError as e:
            raise DatasetError(f"{e} (sequence {self._sequence(index)!r}){_where(self.config_key)}") from None
        if self.transform is not None:
            return self.transform(img)
        return img

    def __len__(self) -> int:
        return len(self.samples)

    def verify(self, raise_on_error: bool = True) -> List[Path]:
        """Check that every frame of every listed sequence exists.

        Returns the missing frames (empty if none); with ``raise_on_error`` (default) a
        non-empty list raises one ``DatasetError`` naming the first few instead.
        """
        missing = [Path(p) for p in self.samples if not Path(p).is_file()]
        if missing and raise_on_error:
            shown = ", ".join(p.relative_to(self.sequences_dir).as_posix() for p in missing[:5])
            more = f", ... ({len(missing)} in all)" if len(missing) > 5 else ""
            raise DatasetError(
                f"{len(missing)} of {len(self.samples)} Vimeo-90K frames listed in {str(self.list_path)!r} "
                f"are missing{_where(self.config_key)}: {shown}{more}"
            )
        return missing

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"sequences={len(self.sequences)}, n={len(self)})"
        )
