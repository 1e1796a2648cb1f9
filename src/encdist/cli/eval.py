"""``compressai-eval``: RD points of trained runs from real bitstreams.

.. code-block:: bash

    # runs (folders or checkpoints), one RD point per run and mode, baselines included
    compressai-eval encdist_runs/runs/<hash> encdist_runs/runs/<hash2> --out-dir results/quickstart
    # a config plus overrides (static and ideal need no trained distribution codec)
    compressai-eval --config-name example_adaptive hp.quality=1 --modes static,ideal
    # another image folder (flat folder of images, e.g. Kodak's kodim*.png)
    compressai-eval RUN --dataset ~/data/kodak

Writes, per coding mode, a CompressAI-format results JSON
(``<out-dir>/<name>-<mode>.json``: ``results`` lists sorted by ``bpp``, one
entry per run) and the per-image values beside it (``...-per-image.json``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from encdist.errors import CheckpointError, ConfigError, DatasetError, EncdistError

__all__ = ["main", "evaluate_runs", "load_run"]

PROG = "compressai-eval"


def _find_checkpoint(path: Path) -> Path:
    if path.is_file():
        return path
    for name in ("runner.best.pth", "runner.last.pth"):
        for cand in (path / "checkpoints" / name, path / name):
            if cand.is_file():
                return cand
    raise CheckpointError(f"no runner checkpoint in {path} (looked for checkpoints/runner.best.pth and runner.last.pth)")


def _run_config(ckpt: Path) -> DictConfig:
    for cand in (ckpt.parent.parent / "configs" / "config.yaml", ckpt.parent / "configs" / "config.yaml"):
        if cand.is_file():
            return OmegaConf.load(cand)
    raise ConfigError(f"no configs/config.yaml beside {ckpt}: cannot tell which model it holds")


def _build(conf: DictConfig, state_dict: Dict[str, Any] | None):
    from encdist.config.factory import create_model

    conf = conf.copy()
    OmegaConf.set_struct(conf, False)
    if state_dict is not None:
        conf.model.pretrained = None  # the checkpoint holds every weight
    conf.model.freeze = []
    model = create_model(conf)
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint does not fit {conf.model.name}: {str(e).splitlines()[0]}") from None
    return model.eval()


def load_run(path: str | Path):
    """``(model, conf, description)`` of a run folder or runner checkpoint."""
    from encdist.checkpoint import safe_load

    ckpt = _find_checkpoint(Path(path))
    conf = _run_config(ckpt)
    state = safe_load(ckpt)
    if "model_state_dict" not in state:
        raise CheckpointError(f"{ckpt} is not a compressai-train runner checkpoint (no model_state_dict)")
    return _build(conf, state["model_state_dict"]), conf, str(ckpt)


def load_config(name: str, overrides: Sequence[str], config_dir: str | None = None):
    """``(model, conf, description)`` from a config name and overrides (``paths.checkpoint`` optional)."""
    from hydra import compose, initialize_config_dir, initialize_config_module

    from encdist.config.factory import register_resolvers

    register_resolvers()
    init = initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3") if config_dir else initialize_config_module("encdist.conf", version_base="1.3")
    with init:
        conf = compose(config_name=name, overrides=list(overrides))
    OmegaConf.set_struct(conf, False)
    conf.env.aim.run_hash = conf.env.aim.get("run_hash") or "eval"
    state = None
    if conf.paths.get("checkpoint"):
        from encdist.checkpoint import safe_load

        state = safe_load(conf.paths.checkpoint).get("model_state_dict")
    return _build(conf, state), conf, f"config {name} {' '.join(overrides)}".strip()


def iter_images(conf: DictConfig, dataset: str | None) -> Iterable[tuple[str, torch.Tensor]]:
    """``(name, (1, 3, H, W) tensor)`` of the infer images: ``dataset`` folder, or the config's infer set."""
    import torchvision.transforms.functional as TF

    from encdist.datasets import is_image_file, load_image

    if dataset:
        root = Path(dataset).expanduser()
        if not root.is_dir():
            raise DatasetError(f"dataset folder not found: {root} (set by --dataset)")
        files = sorted(p for p in root.iterdir() if is_image_file(p))
        if not files:
            raise DatasetError(f"no images in {root} (set by --dataset)")
        for f in files:
            yield f.name, TF.to_tensor(load_image(f)).unsqueeze(0)
        return
    from encdist.config.factory import create_dataloaders

    conf = conf.copy()
    OmegaConf.set_struct(conf, False)
    conf.dataset = {"train": conf.dataset.infer, "valid": conf.dataset.infer}
    loader = create_dataloaders(conf)["valid"]
    names = getattr(loader.dataset, "names", None)
    for i in range(len(loader.dataset)):
        item = loader.dataset[i]
        x = item[0] if isinstance(item, (tuple, list)) else item
        yield (names[i] if names else f"{i:03d}"), x.unsqueeze(0)


def evaluate_runs(runs: List[tuple], modes: Sequence[str], dataset: str | None, pad_multiple: int = 64):
    """Evaluate ``[(model, conf, desc)]``; returns ``{mode: ([points], [per-image rows])}``."""
    from encdist.evaluate import evaluate_image, mean_metrics

    out: Dict[str, tuple[list, list]] = {m: ([], []) for m in modes}
    for model, conf, desc in runs:
        model.update(force=True)
        use = [m for m in modes if m == "adaptive" or hasattr(model, "adaptive_codec")]
        rows: Dict[str, list] = {m: [] for m in use}
        for name, x in iter_images(conf, dataset):
            res = evaluate_image(model, x, modes=use, pad_multiple=pad_multiple)
            for m in use:
                rows[m].append(dict(res[m], image=name))
        for m in use:
            point = mean_metrics([{k: v for k, v in r.items() if k != "image"} for r in rows[m]])
            point["criterion.lmbda"] = float(conf.criterion.lmbda)
            out[m][0].append(point)
            out[m][1].extend(dict(r, run=desc) for r in rows[m])
    return out


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", help="run folders or runner checkpoints")
    p.add_argument("--config-name", help="evaluate a config instead (extra positional args are overrides)")
    p.add_argument("--config-path", help="folder of your own configs (default: encdist's)")
    p.add_argument("--dataset", help="flat folder of images (default: the config's infer dataset)")
    p.add_argument("--modes", default="adaptive,static,ideal", help="coding modes (adaptive, static, ideal)")
    p.add_argument("--out-dir", default="results", help="where results JSONs go")
    p.add_argument("--name", help="curve name (default: the model name)")
    p.add_argument("--pad-multiple", type=int, default=64)
    args = p.parse_args(argv)
    try:
        import encdist  # noqa: F401
        from encdist.evaluate import MODES
        from encdist.results import save_results

        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        bad = [m for m in modes if m not in MODES]
        if bad or not modes:
            raise ConfigError(f"--modes: unknown mode {', '.join(bad) or '(none)'} (known: {', '.join(MODES)})")
        if args.config_name:
            runs = [load_config(args.config_name, args.runs, args.config_path)]
        elif args.runs:
            runs = [load_run(r) for r in args.runs]
        else:
            raise ConfigError("give run folders / checkpoints, or --config-name NAME [overrides]")
        with torch.no_grad():
            results = evaluate_runs(runs, modes, args.dataset, args.pad_multiple)
        name = args.name or str(runs[0][1].model.name)
        out_dir = Path(args.out_dir)
        for mode, (points, rows) in results.items():
            if not points:
                continue
            columns = {k: [pt.get(k) for pt in points] for k in sorted({k for pt in points for k in pt})}
            desc = f"{PROG}: {mode} coding, real bitstreams" + (", bpp excludes the side stream (bound)" if mode == "ideal" else "")
            meta = {"mode": mode, "runs": [d for _, _, d in runs], "dataset": args.dataset or "config infer set"}
            path = save_results(out_dir / f"{name}-{mode}.json", f"{name}-{mode}", columns, description=desc, meta=meta)
            save_results(out_dir / f"{name}-{mode}-per-image.json", f"{name}-{mode}", {k: [r.get(k) for r in rows] for k in rows[0]}, description="per image", meta=meta)
            best = min(points, key=lambda q: q["bpp"])
            print(f"{mode:<9} {len(points)} point(s) -> {path}  (lowest: {best['bpp']:.4f} bpp, {best['psnr-rgb']:.2f} dB)")
        return 0
    except EncdistError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
