"""The run folder: where ``compressai-train`` puts a run, and which weights stand for it.

.. code-block:: none

    ${paths._common_root}/runs/<aim run hash>/
        configs/config.yaml           the resolved config (written once everything is built)
        checkpoints/runner.last.pth   model, optimizers, schedulers, epoch (every epoch)
        checkpoints/runner.best.pth   the same at the lowest valid metric (misc.save_best)
        results/infer.json            CompressAI-format RD point of the infer pass
        results/infer_per_image.json  per image
        results/epochs.jsonl          every epoch's loader metrics against optimizer steps

**Which weights stand for a run: the last epoch's** (``runner.last.pth``), everywhere: the
runner's own infer pass, ``compressai-eval``, ``encdist-codec`` and the benchmark. The
schedules here decay the learning rate to the end of the run, so the last epoch is the
trained model; "best" is chosen on a valid set of a few images, which picks an arbitrary
epoch once the loss is flat. ``runner.best.pth`` is still written, and
:meth:`RunFolder.checkpoint` returns it when asked by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from encdist.errors import CheckpointError, ConfigError

__all__ = ["RunFolder", "LAST", "BEST"]

LAST, BEST = "runner.last.pth", "runner.best.pth"


class RunFolder:
    """A run folder, or a runner checkpoint inside one (``path``)."""

    def __init__(self, path: Union[str, Path]):
        path = Path(path)
        self.given_checkpoint = path if path.is_file() else None
        self.root = path.parent.parent if path.is_file() and path.parent.name == "checkpoints" else (path.parent if path.is_file() else path)

    @property
    def config_path(self) -> Path:
        return self.root / "configs" / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def results(self) -> Path:
        return self.root / "results"

    def checkpoint(self, which: str = LAST) -> Path:
        """The runner checkpoint given, or ``which`` of this folder (default: the last epoch's)."""
        if self.given_checkpoint is not None:
            return self.given_checkpoint
        for cand in (self.checkpoints / which, self.root / which):
            if cand.is_file():
                return cand
        raise CheckpointError(f"no runner checkpoint in {self.root} (looked for checkpoints/{which})")

    def config(self):
        from omegaconf import OmegaConf

        if not self.config_path.is_file():
            raise ConfigError(f"no configs/config.yaml in {self.root}: cannot tell which model it holds")
        return OmegaConf.load(self.config_path)
