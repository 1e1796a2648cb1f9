"""``python -m encdist.datasets export ROOT`` / ``python -m encdist.datasets list``."""

import sys

from .skimage_samples import main

if __name__ == "__main__":
    sys.exit(main())
