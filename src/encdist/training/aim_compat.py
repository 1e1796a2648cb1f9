"""Aim compatibility: what :class:`~encdist.training.aim_logger.AimLogger` needs from Aim beyond its public API.

Written for, and tested with, the Aim versions ``pyproject.toml`` pins (``aim>=3.29,<3.30``):
these functions use Aim internals that change between releases, and are the only place
that does.

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
from typing import Optional

from encdist.errors import ConfigError, EncdistError

__all__ = ["TrackingError", "new_run_hash", "run_exists", "index_run"]


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


