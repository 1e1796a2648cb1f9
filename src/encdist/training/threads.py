"""How many CPU threads torch uses: ``env.threads`` of ``compressai-train``, ``--threads`` of ``compressai-eval``.

torch starts one intra-op thread per physical core. On a machine whose cores are
busy (another training, a benchmark), every small op then waits for threads that
cannot run: the tiny convolutions of the distribution codec and the quickstart's
latent-cache epochs can be much slower than on one thread (why the training tests
use one, ``tests/conftest.py``). So the default takes the cores that are idle now,
and the user's choice always wins:

1. an explicit number (``env.threads=4``, ``--threads 4``), per process;
2. else ``OMP_NUM_THREADS`` when set in the environment;
3. else the idle cores: ``os.cpu_count()`` minus the 1-minute load average, rounded,
   shared among ``processes`` (DDP ranks on CPU), at least 1 and at most torch's default.

The choice is also exported as ``OMP_NUM_THREADS``, so that the processes started
from here (DDP ranks, the base model's training) use it from their first op.
Thread counts do not change what is computed beyond float rounding; bitstreams are
decoded with the same model either way.
"""

from __future__ import annotations

import os

import torch

from encdist.errors import ConfigError

__all__ = ["resolve_threads", "apply_threads"]


def _positive_int(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{where} must be a positive integer, got {value!r}")
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"{where} must be a positive integer, got {value!r}") from None
    if n < 1:
        raise ConfigError(f"{where} must be a positive integer, got {value!r}")
    return n


def _idle_cores() -> int | None:
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average (Windows)
        return None
    return round((os.cpu_count() or 1) - load)


def resolve_threads(threads=None, processes: int = 1, where: str = "env.threads") -> int:
    """The threads per process for the setting ``threads`` (None: derived, see the module)."""
    if threads is not None:
        return _positive_int(threads, where)
    if os.environ.get("OMP_NUM_THREADS"):
        return _positive_int(os.environ["OMP_NUM_THREADS"], "OMP_NUM_THREADS")
    ceiling = torch.get_num_threads()
    idle = _idle_cores()
    if idle is None:
        return ceiling
    return max(1, min(ceiling, idle // max(1, processes)))


def apply_threads(threads=None, processes: int = 1, where: str = "env.threads") -> int:
    """Set torch's intra-op threads (and ``OMP_NUM_THREADS`` for child processes); returns the count."""
    n = resolve_threads(threads, processes, where)
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    return n
