"""Frozen pretrained transforms: from ``compressai.zoo`` or from a local checkpoint.

The paper trains only the distribution codec, on top of CompressAI's
pretrained ``bmshj2018-factorized`` (qualities 1-8). Zoo weights come from
torch's hub cache (:func:`zoo_cache_file`) or are downloaded into it; offline,
without them there, pass a local CompressAI checkpoint (a plain state dict, a
``{"state_dict": ...}`` file as CompressAI's example trainer writes, or a
``compressai-train`` run checkpoint with ``"model_state_dict"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from encdist.errors import CheckpointError, PretrainedWeightsError

__all__ = ["BASE_MODELS", "load_state_dict_file", "zoo_cache_file", "zoo_state_dict", "load_pretrained_into"]

#: Adaptive model -> CompressAI parent whose weights it reuses.
BASE_MODELS = {
    "bmshj2018-factorized-pdf": "bmshj2018-factorized",
    "bmshj2018-hyperprior-pdf": "bmshj2018-hyperprior",
    "mbt2018-mean-pdf": "mbt2018-mean",
}

_STATE_KEYS = ("state_dict", "model_state_dict", "model", "network")


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a model state dict from any of the usual CompressAI checkpoint layouts."""
    from encdist.training.checkpoint import safe_load

    ckpt = safe_load(path)
    for key in _STATE_KEYS:
        if isinstance(ckpt.get(key), Mapping):
            ckpt = ckpt[key]
            break
    if not ckpt or not all(isinstance(v, Tensor) for v in ckpt.values()):
        raise CheckpointError(f"checkpoint {path} holds no model state dict (looked for {', '.join(_STATE_KEYS)})")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in ckpt.items()}


def zoo_cache_file(base: str, quality: int, metric: str = "mse") -> Path | None:
    """Where ``compressai.zoo`` keeps (and first looks for) the weights: torch's hub cache.

    ``torch.hub.load_state_dict_from_url`` names the file after the URL's basename, under
    ``$TORCH_HOME/hub/checkpoints/``, and reads it from there without the network (no hash
    check: CompressAI does not ask for one). So copying the published file there is the
    offline way to the zoo weights. ``None`` if the zoo publishes no such weights.
    """
    import os
    from urllib.parse import urlparse

    import torch.hub
    from compressai.zoo.image import model_urls

    url = model_urls.get(base, {}).get(metric, {}).get(int(quality))
    if url is None:
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def zoo_state_dict(base: str, quality: int, metric: str = "mse") -> dict[str, Tensor]:
    """Pretrained weights of a CompressAI zoo model (from torch's hub cache, or downloaded)."""
    from compressai.zoo import image_models

    if base not in image_models:
        raise PretrainedWeightsError(f"compressai.zoo has no model {base!r}")
    if not 1 <= int(quality) <= 8:
        raise PretrainedWeightsError(f"quality must be 1..8, got {quality}")
    try:
        net = image_models[base](quality=int(quality), metric=metric, pretrained=True, progress=False)
    except Exception as e:  # urllib/ssl/http errors differ by platform
        cached = zoo_cache_file(base, quality, metric)
        raise PretrainedWeightsError(
            f"could not fetch pretrained {base} (quality {quality}, {metric}) from the CompressAI zoo "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no network?'}); "
            + (f"offline, copy the zoo's file to {cached} or " if cached else "offline, ")
            + "pass a local checkpoint with paths.pretrained=/path/to/checkpoint.pth.tar"
        ) from None
    return net.state_dict()


def load_pretrained_into(model: torch.nn.Module, source: str | Path | Mapping[str, Tensor], *, quality: int | None = None, metric: str = "mse") -> str:
    """Load frozen-transform weights into an adaptive model; returns a description of the source.

    ``source`` is a state dict, a checkpoint path, or ``"zoo"`` (then ``quality`` is required).
    """
    if isinstance(source, Mapping):
        sd, desc = dict(source), "state dict"
    elif str(source) == "zoo":
        name = next((n for n in _registered_names(model) if n in BASE_MODELS), None)
        if name is None or quality is None:
            raise PretrainedWeightsError("zoo weights need a known adaptive model and a quality (hp.quality)")
        sd, desc = zoo_state_dict(BASE_MODELS[name], quality, metric), f"zoo {BASE_MODELS[name]} q={quality}"
    else:
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"pretrained checkpoint not found: {path}")
        sd, desc = load_state_dict_file(path), str(path)
    model.load_pretrained_transforms(sd, source=desc)
    return desc


def _registered_names(model) -> list[str]:
    from encdist.registry import MODELS

    return [k for k, v in MODELS.items() if v is type(model)]
