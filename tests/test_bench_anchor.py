"""The anchor section's comparison at equal PSNR (benchmarks/anchor.py): dominated anchor points are left out."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

ANCHOR = [{"bpp": 0.45, "psnr": 30.9}, {"bpp": 0.61, "psnr": 30.75}, {"bpp": 0.78, "psnr": 31.1}, {"bpp": 0.92, "psnr": 31.4}]


def test_pareto_drops_the_dominated_point():
    from anchor import _pareto

    assert _pareto(ANCHOR) == [ANCHOR[0], ANCHOR[2], ANCHOR[3]]


def test_equal_psnr_interpolates_log_rate_between_non_dominated_points():
    from anchor import _at_equal_psnr

    same = _at_equal_psnr(ANCHOR, [ANCHOR[2]])
    assert len(same) == 1 and abs(same[0]["diff_pct"]) < 1e-9, "an anchor point against itself"
    mid = _at_equal_psnr(ANCHOR, [{"bpp": 0.5, "psnr": 31.0}])[0]
    assert math.isclose(mid["anchor_bpp"], math.sqrt(0.45 * 0.78), rel_tol=1e-9), "the geometric mean halfway in PSNR"
    # the dominated q5-like point (0.61 bpp at 30.75 dB) is not used: 30.75 dB is below the front's range
    assert _at_equal_psnr(ANCHOR, [{"bpp": 0.5, "psnr": 30.8}, {"bpp": 1.0, "psnr": 31.5}]) == []
