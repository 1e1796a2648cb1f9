"""``compressai-train``: CompressAI-Trainer's command, for encdist's configs.

.. code-block:: bash

    compressai-train --config-name=quickstart                       # offline default
    compressai-train --config-name=example_adaptive hp.quality=3    # the paper's setup
    compressai-train --config-name=quickstart -m criterion.lmbda=0.0035,0.0067
    compressai-train --config-name=quickstart ++paths.checkpoint=RUN/checkpoints/runner.last.pth

Configs are looked up in the installed ``encdist.conf`` package (add your own
with ``--config-path``). Each run gets an Aim run hash; its folder is
``${paths._common_root}/runs/<hash>/`` (``configs/config.yaml``,
``checkpoints/runner.{last,best}.pth``, ``results/infer.json``) and its metrics go
to the Aim repo ``${paths.aim}`` (``aim up --repo ${paths.aim}``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict

import hydra
from omegaconf import DictConfig, OmegaConf

from encdist.config.factory import (
    create_criterion,
    create_dataloaders,
    create_engine,
    create_model,
    create_optimizer,
    create_scheduler,
    register_resolvers,
    to_dict,
    validate_config,
)
from encdist.errors import CheckpointError, ConfigError, EncdistError

__all__ = ["main", "train"]

PROG = "compressai-train"


def _checkpoint_run_hash(path: str) -> str:
    from encdist.training.checkpoint import safe_load

    state = safe_load(path)
    if "run_hash" not in state:
        raise CheckpointError(f"checkpoint {path} is not a compressai-train runner checkpoint (no run_hash)")
    return str(state["run_hash"])


def assign_run_hash(conf: DictConfig) -> str:
    """The run's Aim hash: the resumed checkpoint's, the configured one, or a new one."""
    from encdist.training.aim_logger import new_run_hash

    if conf.paths.get("checkpoint"):
        run_hash = _checkpoint_run_hash(conf.paths.checkpoint)
    else:
        run_hash = conf.env.aim.get("run_hash") or new_run_hash()
    conf.env.aim.run_hash = run_hash
    return run_hash


def ensure_pretrained(conf: DictConfig) -> None:
    """Train the configured base model first when the frozen transforms' checkpoint is missing."""
    pre = conf.model.get("pretrained")
    if not pre or pre.get("source") != "checkpoint":
        return
    path = pre.get("path")
    if not path:
        raise ConfigError("model.pretrained.source=checkpoint needs paths.pretrained=<checkpoint>")
    if Path(path).is_file():
        return
    base = pre.get("train_if_missing")
    if not base:
        raise CheckpointError(f"pretrained checkpoint not found: {path} (set by paths.pretrained)")
    print(f"[{PROG}] no frozen transforms at {path}: training them first with --config-name={base}", flush=True)
    overrides = [f"++paths._common_root={conf.paths._common_root}", f"++export.path={path}"]
    overrides += [o for o in conf.get("base_overrides") or []]
    base_conf = hydra.compose(config_name=base, overrides=overrides)
    train(base_conf)
    if not Path(path).is_file():
        raise CheckpointError(f"training {base} did not produce {path}")


def build_runner(conf: DictConfig, run_hash: str):
    """``RUNNERS[runner.type](**runner, conf=conf, run_hash=run_hash)``; a bad key is a one-line ConfigError."""
    from encdist.config.factory import create

    return create("runner", conf.runner, "runner", conf=conf, run_hash=run_hash)


def train(conf: DictConfig) -> Dict[str, Any]:
    """Train (or resume) one run described by ``conf``; returns the infer summary."""
    import encdist  # noqa: F401  (registers models, criteria)
    import encdist.datasets  # noqa: F401
    import encdist.runners  # noqa: F401

    register_resolvers()
    OmegaConf.set_struct(conf, False)
    run_hash = assign_run_hash(conf)
    validate_config(conf)
    from catalyst.dl import DistributedDataParallelEngine

    from encdist.training.threads import apply_threads

    engine = create_engine(conf)
    spawned = isinstance(engine, DistributedDataParallelEngine)  # ranks run in processes of their own
    # Those processes share this node's cores (Catalyst 22.4 starts _num_local_workers of them).
    threads = apply_threads(conf.env.get("threads"), processes=engine._num_local_workers if spawned else 1)
    ensure_pretrained(conf)

    from encdist.evaluation.results import write_atomic

    import torch

    torch.manual_seed(int(conf.env.get("seed", 42)))
    model = create_model(conf)
    criterion = create_criterion(conf)
    loaders = create_dataloaders(conf)
    optimizer = create_optimizer(conf, model)
    scheduler = create_scheduler(conf, optimizer)
    # Spawned ranks unpickle the runner's config where this process's resolvers are not registered.
    runner = build_runner(OmegaConf.create(to_dict(conf)) if spawned else conf, run_hash)
    # Written once everything is built: a config error leaves no run folder behind.
    write_atomic(Path(conf.paths.configs) / "config.yaml", OmegaConf.to_yaml(conf, resolve=True))
    print(f"[{PROG}] run {run_hash}: {conf.paths._run_root} ({threads} CPU thread{'s' * (threads > 1)})", flush=True)
    try:
        runner.train(
            model=model,
            criterion=criterion,
            optimizer=optimizer,
            scheduler=scheduler or None,
            loaders=loaders,
            engine=engine,
            num_epochs=int(conf.engine.num_epochs),
            hparams=to_dict(conf),
            valid_loader=str(conf.engine.get("valid_loader", "valid")),
            valid_metric=str(conf.engine.get("valid_metric", "loss")),
            minimize_valid_metric=bool(conf.engine.get("minimize_valid_metric", True)),
            verbose=bool(conf.engine.get("verbose", True)),
            seed=int(conf.env.get("seed", 42)),
        )
    finally:
        runner.close_loggers()
    if spawned:
        trained, summary = rank0_results(conf, model)
    else:
        trained, summary = runner.raw_model, getattr(runner, "infer_summary", None) or {}
    export(conf, trained)
    print_summary(conf, run_hash, summary)
    return summary


def rank0_results(conf: DictConfig, model):
    """``(model, infer summary)`` of a run whose ranks were spawned: what rank 0 wrote.

    The processes that trained are gone; their weights are in ``runner.last.pth`` and
    their infer pass in ``results/infer.json``.
    """
    from encdist.training.checkpoint import safe_load
    from encdist.evaluation.results import load_results

    from encdist.training.run_folder import RunFolder

    try:
        ckpt = RunFolder(conf.paths._run_root).checkpoint()
    except CheckpointError as e:
        raise CheckpointError(f"the distributed run wrote no checkpoint: {e}") from None
    model.load_state_dict(safe_load(ckpt)["model_state_dict"])
    infer = Path(conf.paths.results) / "infer.json"
    if not infer.is_file():
        return model, {}
    data = load_results(infer)
    summary = {k: v[0] for k, v in data["results"].items() if v}
    summary["num_images"] = data["meta"].get("num_images", 0)
    return model, summary


def export(conf: DictConfig, model) -> None:
    """Write the trained model's state dict to ``export.path`` (frozen transforms for later runs)."""
    path = (conf.get("export") or {}).get("path")
    if not path:
        return
    from encdist.training.checkpoint import atomic_save

    model.update(force=True, update_quantiles=True)
    atomic_save({"state_dict": model.state_dict(), "model_name": str(conf.model.name)}, path)
    print(f"[{PROG}] exported {conf.model.name} to {path}", flush=True)


def print_summary(conf: DictConfig, run_hash: str, s: Dict[str, Any]) -> None:
    if not s:
        return
    rows = [("adaptive", "")] + [(m, f"_{m}") for m in ("static", "ideal") if f"bpp_{m}" in s]
    lines = [
        f"[{PROG}] {conf.model.name}, lambda={conf.criterion.lmbda}, run {run_hash}: "
        f"real bitstreams on {int(s.get('num_images', 0)) or ''} held-out images".replace(" on  ", " on "),
        f"{'mode':<10}{'bpp_y':>10}{'bpp_pdf':>10}{'bpp':>10}{'PSNR dB':>10}",
    ]
    for mode, sfx in rows:
        lines.append(
            f"{mode:<10}{s.get('bpp_y' + sfx, float('nan')):>10.4f}{s.get('bpp_pdf' + sfx, 0.0):>10.4f}"
            f"{s.get('bpp' + sfx, float('nan')):>10.4f}{s.get('psnr-rgb' + sfx, float('nan')):>10.2f}"
        )
    if "bpp_static" in s and s["bpp_static"] > 0:
        lines.append(f"adaptive vs static: {100 * (s['bpp'] / s['bpp_static'] - 1):+.2f} % rate at equal PSNR")
    if "bpp_y_loss" in s and s.get("bpp_y"):
        lines.append(f"training objective's bpp_y_loss {s['bpp_y_loss']:.4f}: "
                     f"{100 * (s['bpp_y_loss'] / s['bpp_y'] - 1):+.2f} % from the bytes written (bpp_y)")
    lines.append(f"results: {conf.paths.results}/infer.json   dashboard: aim up --repo {conf.env.aim.repo}")
    print("\n".join(lines), flush=True)


@hydra.main(version_base="1.3", config_path="pkg://encdist.conf", config_name=None)
def _hydra_main(conf: DictConfig) -> Any:
    try:
        return train(conf)
    except EncdistError as e:
        _close_progress_bars()  # so that the error starts a line of its own
        print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def _close_progress_bars() -> None:
    """Close the tqdm bars an exception left open (catalyst's verbose progress)."""
    try:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
    except Exception:  # cosmetic only
        pass


def main() -> None:
    register_resolvers()
    _hydra_main()


if __name__ == "__main__":
    main()
