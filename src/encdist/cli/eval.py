"""``compressai-eval``: RD points of trained runs from real bitstreams.

.. code-block:: bash

    # runs (folders or checkpoints), one RD point per run and mode, baselines included
    compressai-eval encdist_runs/runs/<hash> encdist_runs/runs/<hash2> --out-dir results/quickstart
    # a config plus overrides (static and ideal need no trained distribution codec)
    compressai-eval --config-name example_adaptive hp.quality=1 --modes static,ideal
    # another image folder (flat folder of images, e.g. Kodak's kodim*.png)
    compressai-eval RUN --dataset ~/data/kodak
    # keep what was coded: bitstream files per mode and the decoded images
    compressai-eval RUN --save-bitstreams --save-reconstructions

Writes, per coding mode, a CompressAI-format results JSON
(``<out-dir>/<name>-<mode>.json``: ``results`` lists sorted by ``bpp``, one
entry per run) and the per-image values beside it (``...-per-image.json``).
With ``--save-bitstreams`` / ``--save-reconstructions``, per run (its Aim hash,
``env.aim.run_hash``) and image, as CompressAI-Trainer's ``compressai-eval`` keeps them::

    <out-dir>/<name>/<run>/<mode>/<image stem>.bin   # an encdist-codec file (encdist-codec decode reads it)
    <out-dir>/<name>/<run>/<image stem>.png          # the decoded image (the same in every mode)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from encdist.errors import BitstreamError, CheckpointError, ConfigError, DatasetError, EncdistError

__all__ = ["main", "evaluate_runs", "load_run", "write_bitstream", "read_bitstream", "decode_bitstream"]

PROG = "compressai-eval"



def _find_checkpoint(path: Path) -> Path:
    """The checkpoint that stands for a run (:class:`encdist.training.run_folder.RunFolder`: the last epoch's)."""
    from encdist.training.run_folder import RunFolder

    return RunFolder(path).checkpoint()


def _run_config(ckpt: Path) -> DictConfig:
    from encdist.training.run_folder import RunFolder

    return RunFolder(ckpt).config()


def _build(conf: DictConfig, state_dict: Dict[str, Any] | None):
    from encdist.config.factory import create_model

    conf = conf.copy()
    OmegaConf.set_struct(conf, False)
    if state_dict is not None:
        # The checkpoint holds every weight: neither the frozen transforms' source nor the
        # weights-only initialization of its run (``paths.model_checkpoint``) is read again.
        conf.model.pretrained = None
        if "paths" in conf:
            conf.paths.model_checkpoint = None
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
    from encdist.training.checkpoint import safe_load

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
        from encdist.training.checkpoint import safe_load

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


# ------------------------------------------------------------------ bitstream files
def write_bitstream(path: str | Path, model, strings, shape, image_size, mode: str) -> Path:
    """Writes one image's ``compress`` output to ``path`` as an ``encdist-codec`` file, atomically.

    The format is :mod:`encdist.codec.bitstream`'s file (magic, version, coding, the model's
    fingerprint, the image size, the streams, a checksum): ``encdist-codec decode`` reads it.
    The streams are exactly the bytes counted in ``bpp``.
    """
    from encdist.cli.codec import pack
    from encdist.evaluation.results import write_atomic

    return write_atomic(path, pack(model, strings, shape, image_size, mode))


def read_bitstream(path: str | Path):
    """``(strings, (H, W), latent shape, coding)`` of a saved file; :class:`BitstreamError` if malformed."""
    from encdist.codec.bitstream import unpack_file

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BitstreamError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return unpack_file(data)
    except BitstreamError as e:
        raise BitstreamError(f"{path}: {e}") from None


def decode_bitstream(model, path: str | Path, max_pixels: int | None = None) -> torch.Tensor:
    """The image ``(1, 3, H, W)`` that ``model`` decodes from a saved file (``max_pixels``: :func:`encdist.cli.codec.decode_file`)."""
    from encdist.cli.codec import decode_file

    try:
        return decode_file(model, Path(path).read_bytes(), max_pixels=max_pixels)
    except BitstreamError as e:
        raise BitstreamError(f"{path}: {e}") from None


def _save_png(x: torch.Tensor, path: Path) -> None:
    import io

    from PIL import Image

    from encdist.evaluation.results import write_atomic

    pixels = (x[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    write_atomic(path, buf.getvalue())


def _save_coded(folder: Path, image: str, model, x: torch.Tensor, streams: Dict[str, dict], bitstreams: bool,
                reconstructions: bool) -> None:
    stem = Path(image).stem
    if bitstreams:
        for mode, st in streams.items():
            write_bitstream(folder / mode / f"{stem}.bin", model, st["strings"], st["shape"], x.shape[-2:], mode)
    if reconstructions:  # every mode decodes the same latent: one image
        _save_png(next(iter(streams.values()))["x_hat"], folder / f"{stem}.png")


def _run_folders(runs: List[tuple], root: Path) -> List[Path]:
    """``root/<run hash>`` per run (``-2``, ``-3`` ... when two runs share one)."""
    folders: List[Path] = []
    for _, conf, _ in runs:
        tag = str(conf.env.aim.get("run_hash") or "eval")
        folder, k = root / tag, 1
        while folder in folders:
            k += 1
            folder = root / f"{tag}-{k}"
        folders.append(folder)
    return folders


def evaluate_runs(
    runs: List[tuple],
    modes: Sequence[str],
    dataset: str | None,
    pad_multiple: int = 64,
    *,
    save_dir: str | Path | None = None,
    save_bitstreams: bool = False,
    save_reconstructions: bool = False,
    device: str = "cpu",
):
    """Evaluate ``[(model, conf, desc)]``; returns ``{mode: ([points], [per-image rows])}``.

    With ``save_bitstreams`` / ``save_reconstructions``, what was coded goes to
    ``save_dir/<run hash>/`` (see the module).
    """
    from encdist.evaluation.evaluate import evaluate_image, mean_metrics

    saving = save_bitstreams or save_reconstructions
    if saving and save_dir is None:
        raise ConfigError("saving bitstreams or reconstructions needs a folder (save_dir)")
    folders = _run_folders(runs, Path(save_dir)) if saving else [None] * len(runs)
    out: Dict[str, tuple[list, list]] = {m: ([], []) for m in modes}
    for (model, conf, desc), folder in zip(runs, folders):
        model.to(device)
        model.update(force=True)
        use = [m for m in modes if m == "adaptive" or hasattr(model, "adaptive_codec")]
        rows: Dict[str, list] = {m: [] for m in use}
        for name, x in iter_images(conf, dataset):
            x = x.to(device)
            streams: Dict[str, dict] = {}
            res = evaluate_image(model, x, modes=use, pad_multiple=pad_multiple, streams=streams if saving else None)
            if folder is not None:
                _save_coded(folder, name, model, x, streams, save_bitstreams, save_reconstructions)
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
    p.add_argument("--modes", default="adaptive,static,ideal", help="ways of coding, comma-separated (encdist.latent_codecs.CODING_MODES: adaptive, static, ideal, paper, fallback, static_backward, default)")
    p.add_argument("--out-dir", default="results", help="where results JSONs go")
    p.add_argument("--name", help="curve name (default: the model name)")
    p.add_argument("--pad-multiple", type=int, default=64)
    p.add_argument("--save-bitstreams", action="store_true", help="write each image's bitstream per mode: OUT_DIR/NAME/RUN/MODE/IMAGE.bin")
    p.add_argument("--save-reconstructions", action="store_true", help="write each decoded image: OUT_DIR/NAME/RUN/IMAGE.png")
    p.add_argument("--device", default="cpu", help="torch device that encodes and decodes (e.g. cuda; default cpu)")
    p.add_argument("--threads", type=int, help="CPU threads (default: OMP_NUM_THREADS, else the idle cores; see encdist.training.threads)")
    args = p.parse_args(argv)
    try:
        import encdist  # noqa: F401
        from encdist.latent_codecs import CODING_MODES
        from encdist.evaluation.results import save_results
        from encdist.training.threads import apply_threads

        apply_threads(args.threads, where="--threads")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"--device {args.device}: CUDA is not available here")

        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        bad = [m for m in modes if m not in CODING_MODES]
        if bad or not modes:
            raise ConfigError(f"--modes: unknown mode {', '.join(bad) or '(none)'} (known: {', '.join(CODING_MODES)})")
        if args.config_name:
            runs = [load_config(args.config_name, args.runs, args.config_path)]
        elif args.runs:
            runs = [load_run(r) for r in args.runs]
        else:
            raise ConfigError("give run folders / checkpoints, or --config-name NAME [overrides]")
        name = args.name or str(runs[0][1].model.name)
        out_dir = Path(args.out_dir)
        with torch.no_grad():
            results = evaluate_runs(
                runs, modes, args.dataset, args.pad_multiple, save_dir=out_dir / name, device=args.device,
                save_bitstreams=args.save_bitstreams, save_reconstructions=args.save_reconstructions,
            )
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
