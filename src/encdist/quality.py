"""The quality scale of CompressAI's pretrained models, which the paper follows: λ per quality.

A leaf module: the config factory (``hp.quality`` picks λ) and the RD family's recipe
(:mod:`encdist.recipes.base_family`, whose weights the factory resolves) both read it, and
neither has to import the other for it.
"""

from __future__ import annotations

__all__ = ["QUALITY_LMBDA"]

#: λ of CompressAI's pretrained bmshj2018-factorized per quality (docs/METHOD.md).
QUALITY_LMBDA = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.013, 5: 0.025, 6: 0.0483, 7: 0.0932, 8: 0.18}
