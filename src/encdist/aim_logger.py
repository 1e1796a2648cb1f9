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
* Metrics keep the names they are given (``loss``, ``bpp_y``, ``bpp_pdf``,
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

  So ``bpp_y`` of the validation set is the Aim metric ``bpp_y`` with
  ``metric.context.loader == "valid"``.
* ``log_hparams`` stores the fully resolved config as a nested dict in
  ``run["hparams"]``.
* Images and matplotlib figures are tracked as :class:`aim.Image`.

Aim 3.29 specifics handled here
-------------------------------
* ``aim.Run(run_hash=h)`` only opens *existing* runs; creating a run under a
  chosen hash is done by :func:`_open_run`.
* A local Aim repository is read through an *index* which only ``aim up`` (or
  ``aim storage reindex``) updates; :meth:`AimLogger.close_log` therefore
  indexes the closed run itself (:func:`index_run`), so that ``aim.Repo``
  queries (e.g. ``compressai-plot``) see it without a running dashboard.
* System resource tracking and terminal-log capture are off by default (each
  is a background thread); Aim still runs a heartbeat thread per open run,
  which :meth:`AimLogger.close_log` stops.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Dict, Optional

import numpy as np

from catalyst.core.logger import ILogger

from encdist.errors import ConfigError, EncdistError

if TYPE_CHECKING:  # pragma: no cover
    from catalyst.core.runner import IRunner

__all__ = [
    "AimLogger",
    "TrackingError",
    "new_run_hash",
    "index_run",
    "run_exists",
]

_RUN_HASH_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]{0,63}$")
_CREATE_LOCK = threading.Lock()


class TrackingError(EncdistError, RuntimeError):
    """The Aim repository or run cannot be opened, written or indexed."""


def new_run_hash() -> str:
    """Return a fresh Aim-style run hash (24 hex digits).

    Uses Aim's own generator when available, so the hash looks exactly like
    one Aim would have made.
    """
    try:
        from aim.sdk.utils import generate_run_hash
    except ImportError:  # pragma: no cover - aim layout changed
        return uuid.uuid4().hex[:24]
    return generate_run_hash()


def _check_run_hash(run_hash: str) -> str:
    if not isinstance(run_hash, str) or not _RUN_HASH_RE.match(run_hash):
        raise ConfigError(
            f"invalid Aim run hash {run_hash!r}: expected 1-64 letters, digits, '_' or '-'"
        )
    return run_hash


def _aim_dir(repo: str) -> str:
    """The ``.aim`` folder of the Aim repository rooted at ``repo``."""
    return os.path.join(os.path.abspath(os.fspath(repo)), ".aim")


def run_exists(repo: str, run_hash: str) -> bool:
    """Whether the Aim repository at ``repo`` holds a run with this hash.

    Checked on the file system (``.aim/meta/chunks/<hash>``): Aim's own
    ``Repo.run_exists`` caches the listing for 0.5 s.
    """
    return os.path.isdir(os.path.join(_aim_dir(repo), "meta", "chunks", run_hash))


def _open_repo(repo: str):
    """The (process-wide pooled) :class:`aim.Repo` at ``repo``; created if missing.

    Aim creates ``.aim`` before it writes ``.aim/VERSION``; a second process
    looking in between would take the half-made repository for an outdated
    one.  Creation is therefore serialised by the lock file
    ``<repo>/.aim-init.lock``, which every opener waits for while
    ``.aim/VERSION`` does not exist yet.
    """
    from aim.sdk.repo import Repo, RepoStatus
    from filelock import FileLock, Timeout

    def open_existing_or_create():
        status = Repo.check_repo_status(repo)
        if status == RepoStatus.UPDATE_REQUIRED:
            raise TrackingError(
                f"Aim repository {repo} was made by an older Aim; run `aim upgrade --repo {repo}`"
            )
        return Repo.from_path(repo, init=status == RepoStatus.MISSING)

    try:
        os.makedirs(repo, exist_ok=True)
        if os.path.exists(os.path.join(_aim_dir(repo), "VERSION")):
            return open_existing_or_create()
        try:
            with FileLock(os.path.join(repo, ".aim-init.lock"), timeout=120):
                return open_existing_or_create()
        except Timeout as e:
            raise TrackingError(f"cannot open Aim repository {repo}: another process is creating it") from e
    except EncdistError:
        raise
    except Exception as e:  # OSError, sqlite errors, ...
        raise TrackingError(f"cannot open Aim repository {repo}: {_one_line(e)}") from e


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    text = msg[0] if msg else ""
    text = text[:300]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _fix_lock_owner_pid() -> None:
    """Make Aim record this process as the owner of the run locks it takes.

    Aim's ``LockManager.pid`` is a class attribute set when Aim is imported;
    in a process forked after that it still names the parent, so a lock left
    by a killed child would look held by the (alive) parent forever and the
    run could not be resumed.
    """
    try:
        from aim.sdk.lock_manager import LockManager
    except ImportError:  # pragma: no cover
        return
    if getattr(LockManager, "pid", None) != os.getpid():
        LockManager.pid = os.getpid()


def _locked_by_live_process(repo_obj, run_hash: str) -> bool:
    """Whether a live process holds the run's lock (stale locks of dead processes are not counted)."""
    manager = getattr(repo_obj, "_lock_manager", None)
    if manager is None:
        return False
    try:
        info = manager.get_run_lock_info(run_hash)
        if not info.locked:
            return False
        lock_path = manager.locks_path / manager.softlock_fname(run_hash)
        return not (lock_path.exists() and manager.is_stalled_lock(lock_path))
    except Exception:  # unreadable lock file, aim internals changed: let aim decide
        return False


def _open_run(
    repo: str,
    run_hash: Optional[str],
    experiment: Optional[str],
    system_tracking_interval,
    capture_terminal_logs: bool,
):
    """Open (resume) or create an Aim run; returns ``(run, resumed)``.

    Aim 3.29 raises ``MissingRunError`` for ``aim.Run(run_hash=h)`` when ``h``
    does not exist yet.  To create a run under a hash chosen in advance (so the
    run folder can be made first) Aim's hash generator is substituted for the
    duration of the constructor call, under a lock.
    """
    import aim
    from aim.sdk import base_run
    from aim.sdk.repo import Repo

    _fix_lock_owner_pid()
    repo_obj = _open_repo(repo)
    kwargs = dict(
        repo=repo_obj,
        experiment=experiment,
        system_tracking_interval=system_tracking_interval,
        capture_terminal_logs=capture_terminal_logs,
        log_system_params=False,
    )
    resumed = False
    try:
        if run_hash is None:
            run = aim.Run(**kwargs)
        elif run_exists(repo, run_hash):
            resumed = True
            if _locked_by_live_process(repo_obj, run_hash):
                # Fail fast instead of waiting for Aim's 10 s lock timeout.
                raise TrackingError(
                    f"Aim run {run_hash} in {repo} is in use by another process "
                    f"(if that process is gone: `aim runs --repo {repo} close --yes {run_hash}`)"
                )
            Repo._all_run_hashes.cache_clear()  # drop Aim's 0.5 s listing cache
            run = aim.Run(run_hash=run_hash, **kwargs)
        else:
            with _CREATE_LOCK:
                original = base_run.generate_run_hash
                base_run.generate_run_hash = lambda *args, **kw: run_hash
                try:
                    run = aim.Run(**kwargs)
                finally:
                    base_run.generate_run_hash = original
    except EncdistError:
        raise
    except Exception as e:
        name = type(e).__name__
        if name in ("Timeout", "RunLockingError"):
            raise TrackingError(
                f"Aim run {run_hash} in {repo} is in use by another process "
                f"(if that process is gone: `aim runs --repo {repo} close --yes {run_hash}`)"
            ) from e
        raise TrackingError(
            f"cannot open Aim run {run_hash or '(new)'} in {repo}: {_one_line(e)}"
        ) from e
    if run_hash is not None and run.hash != run_hash:  # pragma: no cover - aim changed
        run.close()
        raise TrackingError(f"Aim created run {run.hash} instead of {run_hash} in {repo}")
    return run, resumed


def _release_run_containers(repo_obj, run_hash: str) -> None:
    """Close this process's RocksDB handles on a run's storage.

    ``aim.Run.close()`` releases the run lock but leaves the run's RocksDB
    containers to the garbage collector; until they are collected the
    RocksDB ``LOCK`` files stay held, and reopening the run (here or in
    another process) fails with "lock hold by current process".
    """
    for config, container in list(repo_obj.container_pool.items()):
        if getattr(config, "sub", None) == run_hash:
            repo_obj.container_pool.pop(config, None)
            container.close()


def _run_checksum(aim_dir: str, run_hash: str) -> Optional[str]:
    """The checksum ``aim up``'s indexer stores for an indexed run (so it does not redo it)."""
    try:
        from pathlib import Path
        from types import SimpleNamespace

        from aim.sdk.index_manager import RepoIndexManager

        fake_manager = SimpleNamespace(chunks_dir=Path(aim_dir, "meta", "chunks"))
        return RepoIndexManager._get_run_checksum(fake_manager, run_hash)
    except Exception:  # pragma: no cover - aim internals changed; aim up re-indexes then
        return None


def index_run(repo: str, run_hash: str, timeout: float = 30.0) -> None:
    """Copy a run's metadata into the repository index so queries see it.

    ``aim.Repo(...)`` reads runs through ``.aim/meta/index``, which Aim 3.29
    only updates from ``aim up``'s background indexer (or ``aim storage
    reindex``).  This does what that indexer does (``RepoIndexManager.index``)
    for one run, without starting its file-watcher threads.  The index is a
    RocksDB that one process at a time may open for writing (another process
    closing a run, a running ``aim up``), so opening it is retried until
    ``timeout`` seconds.
    """
    import aimrocks.errors

    repo_obj = _open_repo(repo)
    if not run_exists(repo, run_hash):
        raise TrackingError(f"no Aim run {run_hash} in {repo}")
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            index_container = repo_obj._get_index_container("meta", timeout=0)
            break
        except (aimrocks.errors.RocksIOError, OSError) as e:
            if time.monotonic() > deadline:
                raise TrackingError(
                    f"cannot index Aim run {run_hash} in {repo}: index busy for "
                    f"{timeout:g} s ({_one_line(e)}); `aim up` will index it later"
                ) from e
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    try:
        index = index_container.tree().view(())
        chunk = repo_obj.request_tree("meta", run_hash, read_only=True, skip_read_optimization=True)
        chunk.subtree("meta").subtree("chunks").subtree(run_hash).finalize(index=index)
        checksum = _run_checksum(repo_obj.path, run_hash)
        if checksum is not None:
            index["index_cache", run_hash] = checksum
        del chunk, index
    except (aimrocks.errors.RocksIOError, aimrocks.errors.Corruption) as e:
        raise TrackingError(f"cannot index Aim run {run_hash} in {repo}: {_one_line(e)}") from e
    finally:
        _release_run_containers(repo_obj, run_hash)
        for config, container in list(repo_obj.container_pool.items()):
            if container is index_container:
                repo_obj.container_pool.pop(config, None)
        index_container.close()
        # A pooled read-only handle on the index opened before this would serve stale data.
        for config in list(repo_obj.container_pool.keys()):
            if getattr(config, "sub", 1) is None and getattr(config, "read_only", False):
                repo_obj.container_pool.pop(config, None)


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
