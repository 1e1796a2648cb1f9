"""Small measuring helpers for ``benchmarks/bench.py`` (not part of the library)."""

from __future__ import annotations

import math
import statistics
import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterable, List, Sequence

import torch
import torch.nn as nn

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)


# ---------------------------------------------------------------------------- timing
def sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Stopwatch:
    """Named laps: ``with sw("name"): ...`` adds the elapsed seconds to ``sw.laps["name"]``."""

    def __init__(self, device=None):
        self.device = device
        self.laps: Dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        sync(self.device)
        t = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            self.laps[name] = self.laps.get(name, 0.0) + time.perf_counter() - t


class ForwardTimer:
    """Wall time spent inside the forward of named submodules (pre/post forward hooks)."""

    def __init__(self, modules: Dict[str, nn.Module], device=None):
        self.device = device
        self.laps: Dict[str, float] = {}
        self._start: Dict[str, float] = {}
        self._handles = []
        for name, m in modules.items():
            self._handles.append(m.register_forward_pre_hook(self._pre(name)))
            self._handles.append(m.register_forward_hook(self._post(name)))

    def _pre(self, name):
        def hook(module, args):
            sync(self.device)
            self._start[name] = time.perf_counter()

        return hook

    def _post(self, name):
        def hook(module, args, out):
            sync(self.device)
            self.laps[name] = self.laps.get(name, 0.0) + time.perf_counter() - self._start.pop(name)

        return hook

    def take(self) -> Dict[str, float]:
        laps, self.laps = self.laps, {}
        return laps

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def median_laps(rows: Iterable[Dict[str, float]]) -> Dict[str, float]:
    rows = list(rows)
    keys: List[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    return {k: median([r.get(k, 0.0) for r in rows]) for k in keys}


# ---------------------------------------------------------------------------- cost
def _conv_macs(m: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    k = math.prod(m.kernel_size)
    if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d)):
        # each input element is multiplied into out_channels/groups * kernel outputs
        return inp.numel() * (m.out_channels // m.groups) * k
    return out.numel() * (m.in_channels // m.groups) * k


@torch.no_grad()
def count_macs(fn: Callable[[], object], root: nn.Module) -> int:
    """Multiply-accumulates of every Conv*/ConvTranspose* under ``root`` while ``fn()`` runs.

    Convolution: output elements x in_channels/groups x kernel size. Transposed
    convolution: input elements x out_channels/groups x kernel size (the products
    it actually computes). Biases, activations, GDN, softmax are not counted.
    """
    total = [0]
    handles = [
        m.register_forward_hook(lambda m, a, o: total.__setitem__(0, total[0] + _conv_macs(m, a[0], o)))
        for m in root.modules()
        if isinstance(m, CONV_TYPES)
    ]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return total[0]


@torch.no_grad()
def count_flop_macs(fn: Callable[[], object]) -> float:
    """``torch.utils.flop_counter.FlopCounterMode`` FLOPs / 2 (matmuls and convolutions only)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops() / 2


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------- call timers
class CallTimer:
    """Times calls of functions/methods while active, by temporarily wrapping them.

    ``add(obj, attr, label)`` wraps ``obj.attr`` (a module-level function, or a bound method
    set as an instance attribute); ``label`` may be a callable ``(count) -> str`` to name
    successive calls differently. ``hook(module, label)`` times an ``nn.Module``'s forward.
    Targets that do not exist are skipped and listed in ``missing``.
    """

    def __init__(self):
        self.laps: Dict[str, float] = {}
        self.missing: List[str] = []
        self._undo: List[Callable[[], None]] = []
        self._counts: Dict[str, int] = {}

    def _record(self, label: str, dt: float) -> None:
        self.laps[label] = self.laps.get(label, 0.0) + dt

    def add(self, obj, attr: str, label) -> None:
        if not hasattr(obj, attr):
            self.missing.append(f"{getattr(obj, '__name__', type(obj).__name__)}.{attr}")
            return
        orig = getattr(obj, attr)
        is_instance_attr = not isinstance(obj, type(torch)) and attr not in vars(obj)
        key = f"{id(obj)}.{attr}"

        def wrapper(*a, **k):
            n = self._counts.get(key, 0)
            self._counts[key] = n + 1
            t = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                self._record(label(n) if callable(label) else label, time.perf_counter() - t)

        setattr(obj, attr, wrapper)
        if is_instance_attr:
            self._undo.append(lambda: delattr(obj, attr))
        else:
            self._undo.append(lambda: setattr(obj, attr, orig))

    def hook(self, module: nn.Module, label: str) -> None:
        start = {}
        h1 = module.register_forward_pre_hook(lambda m, a: start.__setitem__("t", time.perf_counter()))
        h2 = module.register_forward_hook(lambda m, a, o: self._record(label, time.perf_counter() - start.pop("t")))
        self._undo += [h1.remove, h2.remove]

    def reset_counts(self) -> None:
        self._counts = {}

    def take(self) -> Dict[str, float]:
        laps, self.laps = self.laps, {}
        self._counts = {}
        return laps

    def close(self) -> None:
        for u in reversed(self._undo):
            u()
        self._undo = []
