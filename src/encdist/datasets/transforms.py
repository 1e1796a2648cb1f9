"""Build a ``torchvision.transforms.Compose`` from CompressAI-Trainer style specs.

A spec list looks like (YAML)::

    transforms:
      - RandomCrop: {size: [256, 256]}
      - RandomHorizontalFlip: {}
      - ToTensor            # a bare name means "no arguments"

Each spec is a one-key mapping ``{Name: kwargs}`` (``kwargs`` may be ``{}`` or null)
or a string ``Name``. ``Name`` is looked up in ``torchvision.transforms``, then in
``torchvision.transforms.v2`` (e.g. ``RandomChannelPermutation``) and in
``compressai.transforms`` (e.g. ``RGB2YCbCr``). OmegaConf containers are accepted and
converted to plain Python objects (lists for sizes).

``RandomCrop`` gets ``pad_if_needed=True`` unless the spec sets it: an image smaller
than the crop is zero-padded instead of crashing (``CenterCrop`` pads by itself).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Sequence

from torchvision import transforms as T

from encdist.errors import ConfigError

__all__ = ["build_transforms", "resolve_transform"]


def _plain(obj: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            try:
                return OmegaConf.to_container(obj, resolve=True)
            except Exception as e:  # InterpolationKeyError, ... : keep it to one line
                msg = " ".join(str(e).split())[:300]
                raise ConfigError(f"cannot resolve transforms config: {msg}") from None
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return obj


def _candidates() -> list:
    mods = [T]
    try:
        from torchvision.transforms import v2

        mods.append(v2)
    except ImportError:  # pragma: no cover - torchvision < 0.15
        pass
    try:
        import compressai.transforms as ct

        mods.append(ct)
    except ImportError:  # pragma: no cover
        pass
    return mods


def resolve_transform(name: str) -> Callable:
    """The transform class called ``name`` (torchvision, torchvision v2, then compressai)."""
    if isinstance(name, str) and not name.startswith("_"):
        for mod in _candidates():
            obj = getattr(mod, name, None)
            if isinstance(obj, type) and callable(obj):
                return obj
    import difflib

    known = sorted({n for m in _candidates() for n in dir(m) if isinstance(getattr(m, n), type) and not n.startswith("_")})
    close = difflib.get_close_matches(str(name), known, n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ConfigError(f"unknown transform {name!r} (not in torchvision.transforms, torchvision.transforms.v2 or compressai.transforms){hint}")


def _one(spec: Any, i: int) -> Callable:
    spec = _plain(spec)
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, Mapping):
        if len(spec) != 1:
            raise ConfigError(
                f"transform #{i} must be a one-key mapping {{Name: {{kwargs}}}}, got keys {list(spec)!r}"
            )
        ((name, kwargs),) = spec.items()
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, Mapping):
            raise ConfigError(f"arguments of transform {name!r} must be a mapping, got {type(kwargs).__name__}")
        kwargs = dict(kwargs)
    else:
        raise ConfigError(f"transform #{i} must be a name or a {{Name: {{kwargs}}}} mapping, got {spec!r}")
    cls = resolve_transform(name)
    call = dict(kwargs)
    if cls is T.RandomCrop:
        call.setdefault("pad_if_needed", True)
    try:
        return cls(**call)
    except Exception as e:  # TypeError (bad kwarg), ValueError (bad size), ...
        msg = " ".join(str(e).split())[:200]
        raise ConfigError(f"cannot build transform {name!r} with {kwargs!r}: {msg}") from None


def build_transforms(specs: Sequence[Any] | None) -> T.Compose:
    """``Compose`` of the transforms described by ``specs`` (see the module docstring).

    ``None`` or an empty list gives an empty ``Compose`` (identity). Unknown names and
    bad arguments raise :class:`~encdist.errors.ConfigError` naming the transform.
    """
    specs = _plain(specs)
    if specs is None:
        return T.Compose([])
    if isinstance(specs, (str, Mapping)):
        specs = [specs]
    if not isinstance(specs, (list, tuple)):
        raise ConfigError(f"transforms must be a list of specs, got {type(specs).__name__}")
    return T.Compose([_one(s, i) for i, s in enumerate(specs)])
