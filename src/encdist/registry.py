"""Registries: CompressAI's own, plus the ones CompressAI-Trainer adds (runners).

Every ``register_*`` here writes into the *same* dictionaries as
``compressai.registry`` (so ``compressai.registry.MODELS["bmshj2018-factorized-pdf"]``
works), but refuses to silently overwrite a name bound to something else:

>>> @register_model("bmshj2018-factorized")   # already CompressAI's
... class Mine: ...
Traceback (most recent call last):
ValueError: MODELS already has 'bmshj2018-factorized' ...

Re-registering the *same* class (e.g. on module reload) is allowed.
"""

from __future__ import annotations

from typing import Callable, Dict, TypeVar

from encdist.errors import ConfigError
from compressai.registry import (
    CRITERIONS,
    DATASETS,
    MODELS,
    MODULES,
    OPTIMIZERS,
    SCHEDULERS,
    TRANSFORMS,
)

__all__ = [
    "CRITERIONS",
    "DATASETS",
    "MODELS",
    "MODULES",
    "OPTIMIZERS",
    "SCHEDULERS",
    "TRANSFORMS",
    "RUNNERS",
    "REGISTRIES",
    "register_criterion",
    "register_dataset",
    "register_model",
    "register_module",
    "register_optimizer",
    "register_scheduler",
    "register_runner",
    "lookup",
]

T = TypeVar("T")

RUNNERS: Dict[str, Callable] = {}

#: Config group name -> registry, as the factory looks them up.
REGISTRIES: Dict[str, Dict[str, Callable]] = {
    "criterion": CRITERIONS,
    "dataset": DATASETS,
    "model": MODELS,
    "module": MODULES,
    "optimizer": OPTIMIZERS,
    "scheduler": SCHEDULERS,
    "runner": RUNNERS,
    "transform": TRANSFORMS,
}


def _same(a, b) -> bool:
    key = lambda o: (getattr(o, "__module__", None), getattr(o, "__qualname__", repr(o)))  # noqa: E731
    return a is b or key(a) == key(b)


def _registrar(registry: Dict[str, Callable], registry_name: str):
    def register(name: str):
        def decorator(obj: T) -> T:
            if name in registry and not _same(registry[name], obj):
                old = registry[name]
                raise ValueError(
                    f"{registry_name} already has {name!r} "
                    f"({old.__module__}.{old.__qualname__}); pick another name"
                )
            registry[name] = obj
            return obj

        return decorator

    register.__name__ = f"register_{registry_name.lower().rstrip('s')}"
    return register


register_criterion = _registrar(CRITERIONS, "CRITERIONS")
register_dataset = _registrar(DATASETS, "DATASETS")
register_model = _registrar(MODELS, "MODELS")
register_module = _registrar(MODULES, "MODULES")
register_optimizer = _registrar(OPTIMIZERS, "OPTIMIZERS")
register_scheduler = _registrar(SCHEDULERS, "SCHEDULERS")
register_runner = _registrar(RUNNERS, "RUNNERS")


def lookup(group: str, name: str) -> Callable:
    """Find ``name`` in the registry of config group ``group``, or fail with one clear line."""
    registry = REGISTRIES[group]
    if name not in registry:
        import difflib

        close = difflib.get_close_matches(str(name), registry, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"unknown {group} type {name!r}{hint} (known: {', '.join(sorted(registry))})")
    return registry[name]
