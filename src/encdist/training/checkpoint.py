"""Crash-safe checkpoint writing, checked loading and architecture checks.

* :func:`atomic_save` never leaves a half-written checkpoint behind: the data
  goes to a temporary file in the target's folder, is flushed to disk
  (``fsync``) and only then renamed onto the target (``os.replace`` is atomic
  on POSIX file systems), after which the folder entry is synced too.  A
  process killed at any moment (even ``SIGKILL``) leaves either the previous
  complete checkpoint or the new complete one.  Temporary files of killed
  writers are removed by the next :func:`atomic_save` to the same path.
* :func:`safe_load` turns every way a checkpoint can be unreadable into a
  one-line :class:`~encdist.errors.CheckpointError` naming the file.
* :func:`check_compatible` tells whether a state dict fits a model before
  ``load_state_dict`` fails with a long shape-mismatch traceback.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import socket
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterable, Union

import torch

from encdist.errors import CheckpointError

__all__ = [
    "atomic_save",
    "safe_load",
    "check_compatible",
    "DYNAMIC_BUFFERS",
]

PathLike = Union[str, os.PathLike]

#: Buffers of CompressAI entropy models whose shapes depend on the data they
#: were last updated with (``model.update()``), not on the architecture;
#: CompressAI's ``load_state_dict`` resizes them to the checkpoint's shapes.
DYNAMIC_BUFFERS = frozenset({"_quantized_cdf", "_offset", "_cdf_length", "scale_table"})
#: Buffers a checkpoint may lack: made before they existed (the adaptive codec's context tables,
#: which such a model fits from its training latents); present, they must fit.
OPTIONAL_BUFFERS = frozenset({"context_weights"})

_TMP_TAG = ".tmp-"


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _host_tag() -> str:
    host = re.sub(r"[^0-9A-Za-z_-]", "_", socket.gethostname())[:32] or "host"
    return f"{_TMP_TAG}{host}-"


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}{_host_tag()}"


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries left in ``path``'s folder by writers (on this host) that no longer run.

    Those of every checkpoint there, not only ``path``'s: a writer killed while saving
    ``runner.best.pth`` leaves a temporary that a resumed run, which may never improve on
    "best", would otherwise keep forever.
    """
    tag = _host_tag()
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        at = name.find(tag)
        if not name.startswith(".") or at < 0:
            continue
        pid_text = name[at + len(tag):].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if pid == os.getpid():
            continue  # ours (another thread may be writing it)
        try:
            os.kill(pid, 0)
            continue  # alive (or pid reused): leave it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # exists, owned by someone else
        try:
            os.unlink(path.parent / name)
        except OSError:
            pass


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. not supported on this platform
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj, path)`` such that ``path`` is never left partially written.

    The parent folder is created if needed.  The new file gets the permissions
    a plain ``open(path, "w")`` would give it.

    Raises:
        CheckpointError: the file cannot be written (permissions, disk full, ...).
    """
    path = Path(path)
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {e.strerror or e}") from e
    _remove_stale_temporaries(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f"{_tmp_prefix(path)}{os.getpid()}-", dir=directory)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {e.strerror or e}") from e
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
            try:
                os.fchmod(f.fileno(), 0o666 & ~_umask())
            except (AttributeError, OSError):  # pragma: no cover - non-POSIX
                pass
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, OSError):
            raise CheckpointError(f"cannot write checkpoint {path}: {e.strerror or e}") from e
        raise
    _fsync_dir(directory)


def _first_line(e: BaseException) -> str:
    """``Type: first sentence of the message`` (library messages can be long)."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else ""
    if ". " in text:
        text = text[: text.index(". ") + 1]
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def safe_load(path: PathLike, map_location="cpu", *, weights_only: bool = False) -> dict:
    """Load a checkpoint written with ``torch.save``; it must hold a dict.

    ``weights_only=False`` is the default because training checkpoints hold
    more than tensors: optimizer/scheduler/criterion states and runner
    bookkeeping may contain arbitrary picklable Python objects (numpy scalars,
    OmegaConf configs, ``pathlib`` paths, custom classes) that torch's
    restricted ``weights_only`` unpickler (the default since torch 2.6)
    rejects.  Full unpickling can execute code: only load checkpoints you
    trust.  Pass ``weights_only=True`` for files from elsewhere.

    Raises:
        CheckpointError: the file is missing, unreadable, truncated or corrupt,
            or does not contain a dict.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from e
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=weights_only)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or _first_line(e)}") from e
    except (
        RuntimeError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        IndexError,
        KeyError,
        UnicodeDecodeError,
        MemoryError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        io.UnsupportedOperation,
    ) as e:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({_first_line(e)})"
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"checkpoint {path} does not contain a dict (found {type(obj).__name__})"
        )
    return obj


def _shape(value) -> str:
    return "x".join(str(d) for d in value.shape) if value.dim() else "scalar"


def _summary(items: list, what: str, limit: int) -> str:
    shown = ", ".join(items[:limit])
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"{what} {shown}{more}"


def check_compatible(
    model: torch.nn.Module,
    state_dict: Mapping,
    path: PathLike = "<state dict>",
    *,
    ignore_shape_of: Iterable[str] = DYNAMIC_BUFFERS,
    limit: int = 3,
) -> None:
    """Check that ``state_dict`` has the keys and tensor shapes of ``model``.

    ``state_dict`` may also be a whole training checkpoint with the model's
    state under ``"state_dict"``.  Buffers named in ``ignore_shape_of``
    (CompressAI's data-dependent entropy-coder tables, :data:`DYNAMIC_BUFFERS`)
    may differ in shape and may be missing or extra.

    Raises:
        CheckpointError: one line naming ``path`` and the first ``limit``
            missing keys, unexpected keys and shape mismatches.
    """
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"checkpoint {path} holds no state dict (found {type(state_dict).__name__})")
    inner = state_dict.get("state_dict")
    if isinstance(inner, Mapping):
        state_dict = inner
    ignored = frozenset(ignore_shape_of)

    def dynamic(key: str) -> bool:
        return key.rsplit(".", 1)[-1] in ignored

    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not dynamic(k) and k.rsplit(".", 1)[-1] not in OPTIONAL_BUFFERS]
    unexpected = [k for k in state_dict if k not in expected and not dynamic(k)]
    mismatched = []
    for key, value in expected.items():
        if key not in state_dict or dynamic(key):
            continue
        other = state_dict[key]
        if not isinstance(value, torch.Tensor):
            continue
        if not isinstance(other, torch.Tensor):
            mismatched.append(f"{key} is a {type(other).__name__}, not a tensor")
        elif other.shape != value.shape:
            mismatched.append(f"shape of {key} {_shape(other)} vs {_shape(value)}")
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(_summary(missing, "missing", limit))
    if unexpected:
        parts.append(_summary(unexpected, "unexpected", limit))
    if mismatched:
        parts.append(_summary(mismatched, "", limit).lstrip())
    raise CheckpointError(
        f"checkpoint {path} was made for another architecture "
        f"(checkpoint vs model): {'; '.join(parts)}"
    )
