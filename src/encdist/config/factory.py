"""Build everything a config names, through one generic factory.

Every config group file names its registry entry with ``type:``; the rest of
the file is keyword arguments. :func:`create` turns ``(group, conf)`` into an
object; the ``create_*`` helpers only add what a group needs around it
(parameter groups for optimizers, transforms and loaders for datasets,
pretrained weights and freezing for models).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from encdist.errors import ConfigError
from encdist.quality import QUALITY_LMBDA
from encdist.registry import lookup

__all__ = [
    "QUALITY_LMBDA",
    "zoo_architecture",
    "register_resolvers",
    "to_dict",
    "create",
    "create_model",
    "create_criterion",
    "create_optimizer",
    "create_scheduler",
    "create_dataloaders",
    "create_engine",
    "validate_config",
    "trainable_parameter_groups",
    "load_model_weights",
]


def _lmbda_for_quality(quality) -> float:
    try:
        return QUALITY_LMBDA[int(quality)]
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"hp.quality must be one of 1..8 to pick lambda, got {quality!r}") from None


def zoo_architecture(model: str, quality) -> tuple:
    """``(N, M)`` of CompressAI's pretrained ``model`` of ``quality`` (an adaptive model: its parent's).

    The zoo changes the architecture with the quality (bmshj2018-factorized: N=128, M=192
    for 1-5, N=192, M=320 for 6-8), so ``hp.quality`` alone must pick it or the zoo weights
    do not fit. The table is CompressAI's own (``compressai.zoo.image.cfgs``), the one its
    zoo builds the models from, rather than a copy that could drift from it.
    """
    from compressai.zoo.image import cfgs

    from encdist.training.pretrained import BASE_MODELS

    base = BASE_MODELS.get(str(model), str(model))
    if base not in cfgs or any(len(arch) < 2 for arch in cfgs[base].values()):
        raise ConfigError(f"compressai.zoo has no (N, M) table for model {model!r} (model.name): set hp.N and hp.M")
    try:
        return tuple(cfgs[base][int(quality)])
    except (KeyError, TypeError, ValueError):
        known = sorted(cfgs[base])
        raise ConfigError(
            f"hp.quality must be one of {known[0]}..{known[-1]} to pick hp.N and hp.M of the zoo's {base}, got {quality!r}"
        ) from None


def _committed_weights(quality) -> str:
    """Path of the committed frozen transforms of ``quality`` (``make base-models``, ``weights/``)."""
    from encdist.recipes.base_family import FAMILY, weights_path

    known = sorted(s.quality for s in FAMILY)
    if quality is None or isinstance(quality, bool) or int(quality) not in known:
        raise ConfigError(f"hp.quality must be one of {known} (the committed RD family, weights/MANIFEST.json), got {quality!r}")
    return str(weights_path(int(quality)))


def register_resolvers() -> None:
    """OmegaConf resolvers used by ``conf/``.

    ``${encdist.lmbda:${hp.quality}}``: λ of the zoo model of that quality;
    ``${encdist.zoo_N:${model.name},${hp.quality}}`` and ``${encdist.zoo_M:...}``: its architecture
    (:func:`zoo_architecture`); ``${encdist.weights:${hp.quality}}``: the committed frozen
    transforms of that quality (:mod:`encdist.recipes.base_family`).
    """
    resolvers = {
        "encdist.lmbda": _lmbda_for_quality,
        "encdist.zoo_N": lambda model, quality: zoo_architecture(model, quality)[0],
        "encdist.zoo_M": lambda model, quality: zoo_architecture(model, quality)[1],
        "encdist.weights": _committed_weights,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def to_dict(conf: Any) -> Any:
    return OmegaConf.to_container(conf, resolve=True) if isinstance(conf, DictConfig) else conf


def _require(conf: Mapping, key: str, where: str):
    if conf is None or key not in conf or conf[key] is None:
        raise ConfigError(f"missing required config key {where}.{key}")
    return conf[key]


def _lookup_at(group: str, name, key: str):
    """``lookup(group, name)``; the error names the config key that holds ``name``."""
    try:
        return lookup(group, name)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None


def create(group: str, group_conf: Mapping[str, Any], where: str | None = None, /, **extra) -> Any:
    """Instantiate the registry entry ``group_conf["type"]`` of ``group`` with the other keys as arguments."""
    where = where or group
    group_conf = to_dict(group_conf) or {}
    kind = _require(group_conf, "type", where)
    cls = _lookup_at(group, kind, f"{where}.type")
    kwargs = {k: v for k, v in group_conf.items() if k != "type"}
    try:
        return cls(**kwargs, **extra)
    except (TypeError, ValueError) as e:  # bad / out-of-range arguments, e.g. Adam(lr=-1)
        raise ConfigError(f"{where} ({kind}): {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


# ---------------------------------------------------------------------- model
def create_model(conf: DictConfig) -> torch.nn.Module:
    """``MODELS[model.name](**hp)``, then pretrained transforms and freezing as configured."""
    from encdist.training.pretrained import load_pretrained_into

    name = _require(conf.model, "name", "model")
    cls = _lookup_at("model", name, "model.name")
    hp = {k: v for k, v in (to_dict(conf.get("hp")) or {}).items() if k != "quality"}
    try:
        model = cls(**hp)
    except TypeError as e:
        raise ConfigError(f"hp does not fit model {name!r}: {e}") from None
    except ValueError as e:  # a value the model refuses (e.g. hp.adapt_phases=0)
        raise ConfigError(f"invalid hp for model {name!r}: {e}") from None
    pre = to_dict(conf.model.get("pretrained"))
    if pre:
        source = pre.get("source")
        if source == "zoo":
            load_pretrained_into(model, "zoo", quality=pre.get("quality"), metric=pre.get("metric", "mse"))
        elif source == "checkpoint":
            path = pre.get("path")
            if not path:
                raise ConfigError("model.pretrained.source=checkpoint needs paths.pretrained=<checkpoint>")
            load_pretrained_into(model, path)
        else:
            raise ConfigError(f"model.pretrained.source must be 'zoo' or 'checkpoint', got {source!r}")
    init = conf.paths.get("model_checkpoint") if "paths" in conf else None
    if init:
        load_model_weights(model, init)
    freeze = list(to_dict(conf.model.get("freeze")) or [])
    if freeze:
        if not hasattr(model, "freeze"):
            raise ConfigError(f"model.freeze: {name} does not support freezing")
        try:
            model.freeze(freeze)
        except ValueError as e:
            raise ConfigError(f"model.freeze: {e}") from None
    return model


def load_model_weights(model: torch.nn.Module, path: str) -> None:
    """Weights-only initialization (``paths.model_checkpoint``), as in CompressAI-Trainer.

    Loads the model's state dict from any checkpoint layout (a run checkpoint, an exported
    model, a CompressAI ``state_dict`` file); optimizer, scheduler, epoch and run hash are
    not taken: the run is a new run that starts from these weights (e.g. fine-tuning a
    trained base model to another lambda). ``paths.checkpoint`` resumes a run instead.
    """
    from encdist.training.checkpoint import check_compatible
    from encdist.training.pretrained import load_state_dict_file

    sd = load_state_dict_file(path)
    check_compatible(model, sd, f"{path} (paths.model_checkpoint)")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})


def create_criterion(conf: DictConfig) -> torch.nn.Module:
    return create("criterion", conf.criterion, "criterion")


# ---------------------------------------------------------------------- optimization
def trainable_parameter_groups(model: torch.nn.Module) -> Dict[str, list]:
    """``net``: trainable parameters but quantiles; ``aux``: trainable ``quantiles``."""
    groups: Dict[str, list] = {"net": [], "aux": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups["aux" if name.endswith("quantiles") else "net"].append(p)
    return groups


def create_optimizer(conf: DictConfig, model: torch.nn.Module) -> Dict[str, torch.optim.Optimizer]:
    """One optimizer per group of ``optimizer`` that has trainable parameters."""
    groups = trainable_parameter_groups(model)
    if not groups["net"]:
        raise ConfigError("nothing to train: every parameter is frozen (check model.freeze)")
    out = {}
    for key, opt_conf in (to_dict(conf.optimizer) or {}).items():
        if key not in groups:
            raise ConfigError(f"optimizer.{key}: unknown parameter group (use 'net' and 'aux')")
        if groups[key]:
            out[key] = create("optimizer", opt_conf, f"optimizer.{key}", params=groups[key])
    if "net" not in out:
        raise ConfigError("missing required config key optimizer.net")
    return out


def create_scheduler(conf: DictConfig, optimizers: Dict[str, torch.optim.Optimizer]) -> Dict[str, Any]:
    out = {}
    for key, sch_conf in (to_dict(conf.get("scheduler")) or {}).items():
        if key not in optimizers:
            raise ConfigError(f"scheduler.{key}: no optimizer {key!r}")
        out[key] = create("scheduler", sch_conf, f"scheduler.{key}", optimizer=optimizers[key])
    return out


# ---------------------------------------------------------------------- data
def create_dataloaders(conf: DictConfig) -> Dict[str, DataLoader]:
    """``dataset.<loader>`` -> ``DataLoader(cls(**config, transform=...), **loader)``."""
    from encdist.datasets import build_transforms

    loaders = {}
    for key, ds_conf in (to_dict(conf.dataset) or {}).items():
        where = f"dataset.{key}"
        kind = _require(ds_conf, "type", where)
        cls = _lookup_at("dataset", kind, f"{where}.type")
        transform = build_transforms(ds_conf.get("transforms"))
        kwargs = dict(ds_conf.get("config") or {})
        try:
            dataset = cls(**kwargs, transform=transform)
        except TypeError as e:
            raise ConfigError(f"{where}.config ({kind}): {e}") from None
        loader_kwargs = dict(ds_conf.get("loader") or {})
        loaders[key] = DataLoader(dataset, **loader_kwargs)
    for key in ("train", "valid"):
        if key not in loaders:
            raise ConfigError(f"missing required config key dataset.{key}")
    return loaders


# ---------------------------------------------------------------------- engine
def create_engine(conf: DictConfig):
    """A Catalyst engine: ``type: auto`` picks CPU or one GPU."""
    from catalyst import dl

    e = to_dict(conf.engine) or {}
    kind = e.get("type", "auto")
    if kind == "auto":
        return dl.GPUEngine() if torch.cuda.is_available() else dl.CPUEngine()
    engines = {k: getattr(dl, k) for k in ("CPUEngine", "GPUEngine", "DataParallelEngine", "DistributedDataParallelEngine")}
    if kind not in engines:
        raise ConfigError(f"unknown engine type {kind!r} (known: auto, {', '.join(engines)})")
    if kind == "DistributedDataParallelEngine":
        return _ddp_engine(e)
    return engines[kind]()


def _ddp_engine(e: Mapping[str, Any]):
    """Catalyst's ``DistributedDataParallelEngine``, made to work on CPU processes too.

    Catalyst 22.4 alone spawns one process per *GPU* (whatever ``world_size`` says),
    initializes ``nccl``, and creates its ``accelerate.Accelerator`` with ``cpu=False``:
    on a machine without CUDA, accelerate 1.x then sees no distributed setup at all
    (every rank is "main", the model is not wrapped, gradients and metrics are not
    averaged). So: one process per rank on this node (``engine.num_node_workers``,
    default ``engine.world_size``), ``gloo`` and ``cpu=True`` when there is no GPU or
    ``engine.cpu`` is set, and ``find_unused_parameters`` for parameters the loss does
    not reach (the bottlenecks' quantiles, trained by the aux loss alone). Its ranks tear
    the process group down together (:class:`~encdist.training.engines.BarrierDDPEngine`).
    """
    from accelerate.utils import DistributedDataParallelKwargs

    from encdist.training.engines import BarrierDDPEngine

    cpu = bool(e.get("cpu")) or not torch.cuda.is_available()
    world_size = e.get("world_size")
    if world_size is None:
        world_size = 1 if cpu else torch.cuda.device_count()
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"engine.world_size must be a positive integer, got {world_size!r}")
    ddp_kwargs = DistributedDataParallelKwargs(find_unused_parameters=bool(e.get("find_unused_parameters")))
    where = {k: e[k] for k in ("address", "port", "workers_dist_rank") if e.get(k) is not None}
    return BarrierDDPEngine(
        **where,
        world_size=world_size,
        num_node_workers=e.get("num_node_workers") or world_size,
        process_group_kwargs={"backend": e.get("backend") or ("gloo" if cpu else "nccl")},
        cpu=cpu,
        kwargs_handlers=[ddp_kwargs],
    )


# ---------------------------------------------------------------------- validation
def validate_config(conf: DictConfig) -> None:
    """Fail fast, with one line naming the key, before anything is built or trained."""
    for key in ("model", "criterion", "optimizer", "dataset", "engine", "runner", "paths"):
        if key not in conf or conf[key] is None:
            raise ConfigError(f"missing required config key {key}")
    try:
        OmegaConf.to_container(conf, resolve=True)
    except Exception as e:  # interpolation errors name the key themselves
        raise ConfigError(f"config does not resolve: {str(e).splitlines()[0]}") from None
    _lookup_at("model", _require(conf.model, "name", "model"), "model.name")
    _lookup_at("criterion", _require(conf.criterion, "type", "criterion"), "criterion.type")
    _lookup_at("runner", _require(conf.runner, "type", "runner"), "runner.type")
    for key in ("train", "valid"):
        _require(conf.dataset, key, "dataset")
    for key, ds in conf.dataset.items():
        _lookup_at("dataset", _require(ds, "type", f"dataset.{key}"), f"dataset.{key}.type")
    for key, opt in conf.optimizer.items():
        _lookup_at("optimizer", _require(opt, "type", f"optimizer.{key}"), f"optimizer.{key}.type")
    for key, sch in (conf.get("scheduler") or {}).items():
        _lookup_at("scheduler", _require(sch, "type", f"scheduler.{key}"), f"scheduler.{key}.type")
    lmbda = conf.criterion.get("lmbda")
    if isinstance(lmbda, bool) or not isinstance(lmbda, (int, float)) or not math.isfinite(lmbda) or lmbda <= 0:
        raise ConfigError(f"criterion.lmbda must be a positive number, got {lmbda!r}")
    epochs = conf.engine.get("num_epochs")
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"engine.num_epochs must be a positive integer, got {epochs!r}")
