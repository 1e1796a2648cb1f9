"""Aim experiment tracking for Catalyst 22.4 runners (CompressAI-Trainer style).

Catalyst 22.4 ships no Aim logger, so :class:`AimLogger` implements catalyst's
:class:`~catalyst.core.logger.ILogger` interface on top of :class:`aim.Run`.

Layout (as in CompressAI-Trainer)
---------------------------------
* The Aim repository is the folder ``${paths.aim}`` (Aim keeps its data in
  ``${paths.aim}/.aim``; ``aim up --repo ${paths.aim}`` serves it).
* Each training run owns the folder ``${paths._common_root}/runs/<run_hash>/``
  (checkpoints, configs, artifacts), where ``<run_hash>`` is the hash of the
  Aim run.  A runner that must create that folder *before* the Aim run exists
  calls :func:`new_run_hash` and passes the hash to ``AimLogger(run_hash=...)``;
  the logger then creates the Aim run under exactly that hash.
* Passing the hash of a run that already exists resumes it: same Aim run,
  same hash, new values are appended (a value tracked again at an existing
  step replaces the old one, so re-running a resumed epoch does not duplicate it).

What is tracked
---------------
* Metrics keep the names they are given (``loss``, ``bpp_y_loss``, ``bpp_y``,
  ...) and are told apart by their context
  ``{"loader": <loader key>, "scope": <catalyst scope>}``:

  - ``scope="batch"`` (only if ``log_batch_metrics``): step ``runner.batch_step``
    (or ``runner.sample_step`` with ``batch_step="sample_step"``);
  - ``scope="epoch"`` (only if ``log_epoch_metrics``): catalyst's epoch-end
    dict ``{loader_key: {name: value}}``, step ``runner.epoch_step``; the
    pseudo-loader ``"_epoch_"`` (learning rate etc.) is kept as loader
    ``"_epoch_"``;
  - ``scope="loader"`` is skipped: catalyst reports the same values again in
    the ``epoch`` scope (this mirrors the Aim logger of later catalyst versions).

  So the validation set's estimated ``y`` rate is the Aim metric ``bpp_y_loss`` with
  ``metric.context.loader == "valid"``. The runners name estimates from likelihoods
  ``*_loss`` (CompressAI-Trainer's ``bpp_loss``) and the bytes the infer loader writes
  ``bpp``, ``bpp_y``, ``bpp_pdf``.
* ``log_hparams`` stores the fully resolved config as a nested dict in
  ``run["hparams"]``.
* Images and matplotlib figures are tracked as :class:`aim.Image`.

The code that works around Aim internals (creating a run under a chosen hash,
indexing, releasing locks) is :mod:`encdist.training.aim_compat`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Dict, Optional

import numpy as np

from catalyst.core.logger import ILogger

from encdist.errors import ConfigError
from encdist.training.aim_compat import (
    TrackingError,
    _check_run_hash,
    _one_line,
    _open_run,
    _release_run_containers,
    index_run,
    new_run_hash,
    run_exists,
)

if TYPE_CHECKING:  # pragma: no cover
    from catalyst.core.runner import IRunner

__all__ = [
    "AimLogger",
    "TrackingError",
    "new_run_hash",
    "index_run",
    "run_exists",
]


def _plain(value: Any) -> Any:
    """Convert a config value to plain types Aim can store."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    try:
        import torch

        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return value.item()
    except ImportError:  # pragma: no cover
        pass
    return str(value)


def _to_float(value: Any) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class AimLogger(ILogger):
    """Catalyst 22.4 logger writing to an Aim repository.

    Args:
        repo: Aim repository folder (``${paths.aim}``); created if missing.
        experiment: Aim experiment name of the run.
        run_hash: hash of the run: an existing run is resumed, an unknown
            hash (e.g. from :func:`new_run_hash`) creates a run with that
            hash, ``None`` lets Aim choose.
        log_batch_metrics: track the per-batch metrics (``scope="batch"``).
        log_epoch_metrics: track the per-epoch metrics (``scope="epoch"``).
        system_tracking_interval: seconds between Aim's CPU/GPU/memory
            samples; ``None`` (default) disables that tracking thread.
        capture_terminal_logs: let Aim capture stdout/stderr (a thread).
        batch_step: runner attribute used as step of batch metrics,
            ``"batch_step"`` or ``"sample_step"``.
        index_on_close: index the run when closing (see :func:`index_run`).

    Raises:
        TrackingError: the repository or run cannot be opened (e.g. the run
            is open in another live process).
        ConfigError: ``run_hash`` is malformed.
    """

    def __init__(
        self,
        repo: str,
        experiment: Optional[str] = None,
        run_hash: Optional[str] = None,
        log_batch_metrics: bool = False,
        log_epoch_metrics: bool = True,
        system_tracking_interval: Optional[float] = None,
        *,
        capture_terminal_logs: bool = False,
        batch_step: str = "batch_step",
        index_on_close: bool = True,
    ) -> None:
        super().__init__(log_batch_metrics=log_batch_metrics, log_epoch_metrics=log_epoch_metrics)
        if batch_step not in ("batch_step", "sample_step"):
            raise ConfigError(
                f"batch_step must be 'batch_step' or 'sample_step', not {batch_step!r}"
            )
        if run_hash is not None:
            _check_run_hash(run_hash)
        self.repo = os.path.abspath(os.fspath(repo))
        self.experiment = experiment
        self.batch_step = batch_step
        self.index_on_close = index_on_close
        self.run, self.resumed = _open_run(
            self.repo, run_hash, experiment, system_tracking_interval, capture_terminal_logs
        )
        self._hash = self.run.hash
        self._closed = False

    # ------------------------------------------------------------------ props
    @property
    def logger(self):
        """The underlying :class:`aim.Run`."""
        return self.run

    @property
    def run_hash(self) -> str:
        """Hash of the Aim run (name of the run folder ``runs/<run_hash>``)."""
        return self._hash

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise TrackingError(f"Aim run {self._hash} in {self.repo} is already closed")

    # ---------------------------------------------------------------- metrics
    def track(self, value: Any, name: str, step: Optional[int] = None, context=None) -> None:
        """Track one value (number, ``aim.Image``, ...) under ``name`` and ``context``."""
        self._check_open()
        self.run.track(value, name=name, step=step, context=dict(context or {}))

    def _track_metrics(self, metrics: Mapping, step: Optional[int], loader_key, scope: str):
        context = {"scope": scope}
        if loader_key is not None:
            context["loader"] = str(loader_key)
        for name, value in metrics.items():
            number = _to_float(value)
            if number is None:
                continue  # non-numeric entries are not metrics
            self.run.track(number, name=str(name), step=step, context=context)

    def log_metrics(
        self,
        metrics: Dict[str, float],
        scope: str,
        runner: "IRunner",
    ) -> None:
        """Track batch (``scope="batch"``) or epoch (``scope="epoch"``) metrics."""
        self._check_open()
        if scope == "batch":
            if self.log_batch_metrics:
                step = getattr(runner, self.batch_step, None)
                self._track_metrics(metrics, step, getattr(runner, "loader_key", None), "batch")
        elif scope == "epoch":
            if self.log_epoch_metrics:
                step = getattr(runner, "epoch_step", None)
                for loader_key, per_loader in metrics.items():
                    if isinstance(per_loader, Mapping):
                        self._track_metrics(per_loader, step, loader_key, "epoch")
        elif scope == "loader":
            pass  # repeated by catalyst in the "epoch" scope
        elif self.log_epoch_metrics:  # e.g. "experiment"
            step = getattr(runner, "epoch_step", None)
            self._track_metrics(metrics, step, getattr(runner, "loader_key", None), str(scope))

    # ----------------------------------------------------------------- images
    def _image_context(self, runner, scope) -> dict:
        context = {"scope": str(scope) if scope is not None else "experiment"}
        loader_key = getattr(runner, "loader_key", None)
        if loader_key is not None and scope in ("batch", "loader", None):
            context["loader"] = str(loader_key)
        return context

    def log_image(
        self,
        tag: str,
        image: np.ndarray,
        runner: "IRunner",
        scope: str = None,
    ) -> None:
        """Track an image (HxWxC array, tensor, PIL image or matplotlib figure)."""
        import aim

        self._check_open()
        value = aim.Image(image, format="png")
        self.run.track(
            value,
            name=tag,
            step=getattr(runner, "epoch_step", None),
            context=self._image_context(runner, scope),
        )

    def log_figure(self, name: str, fig, context: Optional[dict] = None, step: Optional[int] = None):
        """Track a figure.

        A matplotlib figure is rendered to PNG and tracked as :class:`aim.Image`;
        a plotly figure (plotly is optional) is tracked as :class:`aim.Figure`.
        """
        import aim

        self._check_open()
        context = dict(context or {})
        if hasattr(fig, "savefig"):
            value = aim.Image(fig, format="png")
        elif type(fig).__module__.startswith("plotly"):
            value = aim.Figure(fig)
        else:
            raise TypeError(f"log_figure expects a matplotlib or plotly figure, not {type(fig).__name__}")
        self.run.track(value, name=name, step=step, context=context)

    # ---------------------------------------------------------- hparams, etc.
    def log_hparams(self, hparams: Dict, runner: "IRunner" = None) -> None:
        """Store the resolved config (nested dict) in ``run["hparams"]``."""
        self._check_open()
        if hparams is None:
            return
        try:
            plain = _plain(hparams)
        except Exception as e:  # e.g. omegaconf interpolation errors
            raise ConfigError(f"cannot resolve the config for Aim: {_one_line(e)}") from e
        self.run["hparams"] = plain

    def log_artifact(
        self,
        tag: str,
        runner: "IRunner",
        artifact: object = None,
        path_to_artifact: str = None,
        scope: str = None,
    ) -> None:
        """Record an artifact in ``run["artifacts"][tag]``.

        Files stay where they are (in CompressAI-Trainer's layout, inside
        ``runs/<run_hash>/``); their absolute path is recorded.  Images and
        figures are tracked as images; other objects are stored as plain values.
        """
        self._check_open()
        if path_to_artifact is not None:
            entry: Any = {"path": os.path.abspath(os.fspath(path_to_artifact))}
        elif hasattr(artifact, "savefig") or isinstance(artifact, np.ndarray):
            self.log_image(tag, artifact, runner=runner, scope=scope)
            return
        else:
            entry = {"value": _plain(artifact)}
        if scope is not None:
            entry["scope"] = str(scope)
        self.run.set(("artifacts", str(tag)), entry, strict=False)

    def flush_log(self) -> None:
        """Nothing to do: Aim writes each value as it is tracked."""

    def close_log(self) -> None:
        """Close the Aim run (releases its lock) and index it; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.run.close()
            _release_run_containers(self.run.repo, self._hash)
        except Exception as e:
            raise TrackingError(f"cannot close Aim run {self._hash} in {self.repo}: {_one_line(e)}") from e
        if self.index_on_close:
            try:
                index_run(self.repo, self._hash)
            except TrackingError as e:
                # The run's data is complete; only queries without ``aim up`` miss it.
                warnings.warn(str(e), RuntimeWarning, stacklevel=2)

    def __enter__(self) -> "AimLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close_log()

    def __repr__(self) -> str:
        return f"AimLogger(repo={self.repo!r}, run_hash={self._hash!r}, experiment={self.experiment!r})"
