"""What code made an artefact: the git version of the checkout encdist runs from.

Trained weights (``weights/MANIFEST.json``) and every run's results (``infer.json``'s meta)
record it next to the command that made them, so a number can be traced to the code that
produced it. An installed copy outside a git checkout says ``"unknown"``.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

__all__ = ["code_version"]


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``git describe --always --dirty`` of the checkout holding this package, or ``"unknown"``."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
