"""``python -m encdist.datasets export ROOT`` / ``list`` / ``photos``.

The command line sits above both dataset modules (scikit-image's photographs and the photo
corpus built on them), so neither has to import the other's way back.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from encdist.errors import EncdistError

from .photos import prepare
from .skimage_samples import SKIMAGE_SPLITS, export, skimage_image


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m encdist.datasets export ROOT [--splits ...] [--include-grayscale]``."""
    parser = argparse.ArgumentParser(
        prog="python -m encdist.datasets",
        description="Dataset helpers. 'export' writes the scikit-image sample photographs "
        "as ROOT/{train,valid,infer}/<name>.png.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export", help="write the SkimageSamples splits as PNG files")
    p.add_argument("root", help="output folder")
    p.add_argument("--splits", nargs="+", default=list(SKIMAGE_SPLITS), help="splits to write")
    p.add_argument("--include-grayscale", action="store_true", help="add grayscale photos to train")
    sub.add_parser("list", help="print the split assignment")
    p = sub.add_parser("photos", help="fetch and prepare the larger photo corpus (make data)")
    p.add_argument("--root", default=None, help="corpus folder (default: ${ENCDIST_DATASETS:-~/data/datasets}/photos)")
    args = parser.parse_args(argv)
    try:
        if args.command == "photos":
            prepare(args.root)
            return 0
        if args.command == "list":
            for s, names in SKIMAGE_SPLITS.items():
                for name in names:
                    h, w = skimage_image(name).shape[:2]
                    print(f"{s}\t{name}\t{h}x{w}")
            return 0
        written = export(args.root, args.splits, args.include_grayscale)
    except EncdistError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for s, paths in written.items():
        print(f"{s}: {len(paths)} image(s) in {paths[0].parent if paths else args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
