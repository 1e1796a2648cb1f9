"""Catalyst runner shared by encdist's runners: steps, meters, inference, checkpoints.

A runner only orchestrates: the model, criterion, optimizers, loaders and
loggers come from the config factory (:mod:`encdist.config`); coding and
metrics come from :mod:`encdist.evaluation.evaluate`. Per loader it tracks the
criterion's outputs and ``aux_loss``; on the infer loader it codes every image
with real bitstreams and writes a CompressAI-format results JSON.

Checkpoints (``${paths.checkpoints}/runner.last.pth`` and ``runner.best.pth``)
are written atomically at the end of every epoch and hold the model,
optimizers, schedulers, epoch and Aim run hash; ``paths.checkpoint=...``
resumes all of them, in the same run folder and Aim run.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence

import torch
from catalyst import dl, metrics
from omegaconf import DictConfig

from encdist.training.checkpoint import atomic_save, safe_load
from encdist.training.run_folder import BEST, LAST
from encdist.errors import CheckpointError, EncdistError
from encdist.datasets import pad_to_multiple
from encdist.evaluation.evaluate import evaluate_image, mean_metrics
from encdist.evaluation.results import save_results
from encdist.provenance import code_version
from encdist.training.losses import split_bpp

__all__ = ["BaseRunner", "InferenceOptions", "NonFiniteLossError"]


class NonFiniteLossError(EncdistError, FloatingPointError):
    """Too many consecutive training steps had a NaN or infinite loss."""


def _gather_rows(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Every rank's infer rows, in rank order (on every rank), renumbered."""
    import torch.distributed as dist

    shards: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(shards, rows)
    merged = [dict(r) for shard in shards for r in shard]
    for i, r in enumerate(merged):
        r["index"] = i
    return merged


def _average_gradients(params) -> None:
    """Average the gradients of ``params`` over the ranks (missing ones count as zero)."""
    import torch.distributed as dist

    world = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(world)


@dataclass(frozen=True)
class InferenceOptions:
    """``runner.inference``: what the infer loader does besides coding in the model's own way.

    Attributes:
        baselines: other ways of coding every infer image (``static``, ``ideal``, ...).
        figures: log the RD / distribution / per-channel-rate figures to Aim.
        every_n_epochs: also run the infer loader every this many epochs (0: only after the last).
    """

    baselines: Sequence[str]
    figures: bool
    every_n_epochs: int = 0


class BaseRunner(dl.Runner):
    """Trains a CompressAI model with a "net" and an "aux" optimizer.

    Built as CompressAI-Trainer builds runners: ``RUNNERS[runner.type](**runner, conf=..., run_hash=...)``.
    The keyword arguments are the ``runner`` config group's keys (their values are written
    once, in ``conf/runner/<type>.yaml``); an unknown key is a one-line config error.

    Args:
        conf: the resolved experiment config (paths, Aim, criterion λ, dataset names).
        run_hash: the Aim run hash; the run folder is ``${paths._run_root}``.
        max_nonfinite_steps: stop after this many consecutive non-finite losses.
        clip_max_norm: clip the net gradient norm (0 disables).
        pad_multiple: pad inference images to a multiple of this.
        inference: :class:`InferenceOptions` keywords.
    """

    def __init__(self, *, conf: DictConfig, run_hash: str, max_nonfinite_steps: int, clip_max_norm: float,
                 pad_multiple: int, inference: Mapping[str, Any]):
        super().__init__()
        self.conf = conf
        self.run_hash = run_hash
        self.max_nonfinite_steps = int(max_nonfinite_steps)
        self.clip_max_norm = float(clip_max_norm or 0)
        self.pad_multiple = int(pad_multiple)
        inf = InferenceOptions(**dict(inference or {}))
        self.baselines = list(inf.baselines or [])
        self.log_figures = bool(inf.figures)
        self.infer_every = int(inf.every_n_epochs)
        self.nonfinite_steps = 0
        self.train_steps = 0  # optimizer steps taken (restored on resume)
        self._consecutive_nonfinite = 0
        self.best_valid = math.inf
        self.resumed_from: str | None = None

    # ------------------------------------------------------------------ setup
    @property
    def aim(self):
        return self.loggers.get("aim")

    def get_loggers(self):
        """The Aim logger, opened in the process that logs (rank 0 under DDP; never pickled)."""
        from encdist.training.aim_logger import AimLogger

        a = self.conf.env.aim
        loggers = super().get_loggers()  # Catalyst's console logger
        loggers["aim"] = AimLogger(
            repo=str(a.repo),
            experiment=str(a.get("experiment") or self.conf.exp.name),
            run_hash=self.run_hash,
            log_batch_metrics=bool(a.get("log_batch_metrics", False)),
        )
        return loggers

    def close_loggers(self) -> None:
        """Close loggers left open (e.g. after an exception)."""
        for logger in (self.loggers or {}).values():
            if not getattr(logger, "closed", False):
                logger.close_log()

    def on_experiment_start(self, runner):
        super().on_experiment_start(runner)
        ckpt = self.conf.paths.get("checkpoint")
        if ckpt:
            self._resume_from_checkpoint(ckpt)

    def _resume_from_checkpoint(self, path: str) -> None:
        # Not "_resume": catalyst's Runner.train() sets an attribute of that name (its own resume path).
        state = safe_load(path)
        for key in ("model_state_dict", "optimizer", "epoch"):
            if key not in state:
                raise CheckpointError(f"checkpoint {path} is not a runner checkpoint (no {key!r})")
        try:
            self.raw_model.load_state_dict(state["model_state_dict"])  # every rank loads the same weights
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {path} does not fit the model: {str(e).splitlines()[0]}") from None
        for key, opt in self.optimizer.items():
            if key in state["optimizer"]:
                opt.load_state_dict(state["optimizer"][key])
        for key, sch in (self.scheduler or {}).items():
            if key in state.get("scheduler", {}):
                t_max = getattr(sch, "T_max", None)
                sch.load_state_dict(state["scheduler"][key])
                if isinstance(sch, torch.optim.lr_scheduler.CosineAnnealingLR) and sch.T_max != t_max:
                    # Resumed with another engine.num_epochs: stretch the cosine to the new length
                    # from where the run is (the recursive update would stay at the old schedule's end).
                    sch.T_max = t_max
                    for group, lr in zip(sch.optimizer.param_groups, sch._get_closed_form_lr()):
                        group["lr"] = lr
                    sch._last_lr = [g["lr"] for g in sch.optimizer.param_groups]
        self.epoch_step = int(state["epoch"])
        self.best_valid = float(state.get("best_valid", math.inf))
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        self.train_steps = int(state.get("train_steps", 0))
        self.resumed_from = str(path)

    # ------------------------------------------------------------------ loaders
    def _run_epoch(self) -> None:
        """Run the loaders of this epoch; ``infer`` only every ``inference.every_n_epochs`` and last."""
        last = self.epoch_step >= self.num_epochs
        periodic = self.infer_every > 0 and self.epoch_step % self.infer_every == 0
        for self.loader_key, self.loader in self.loaders.items():
            if self.loader_key.startswith("infer"):
                if not (last or periodic):
                    continue
                self._before_infer()
            self._run_event("on_loader_start")
            self._run_loader()
            self._run_event("on_loader_end")

    def on_loader_start(self, runner):
        super().on_loader_start(runner)
        self.meters: Dict[str, metrics.AdditiveMetric] = defaultdict(lambda: metrics.AdditiveMetric(compute_on_call=False))
        self.infer_rows: List[Dict[str, Any]] = []

    def _update_meters(self, values: Dict[str, float]) -> None:
        for k, v in values.items():
            v = float(v)
            self.batch_metrics[k] = v
            self.meters[k].update(v, self.batch_size)

    def on_loader_end(self, runner):
        for k, meter in self.meters.items():
            self.loader_metrics[k] = meter.compute()[0]
        if self.engine.is_ddp:
            # Each rank saw its shard: average the loader means over ranks (equal shards,
            # accelerate evens them out) and bring the infer rows to rank 0, which writes.
            self.loader_metrics.update(self.engine.mean_reduce_ddp_metrics(dict(self.loader_metrics)))
            if self.is_infer_loader:
                self.infer_rows = _gather_rows(self.infer_rows)
        if self.is_infer_loader and self.infer_rows and self.engine.is_main_process:
            self._finish_infer()
        super().on_loader_end(runner)

    # ------------------------------------------------------------------ batches
    def handle_batch(self, batch):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        if self.is_train_loader:
            self._train_step(x)
        elif self.is_valid_loader:
            self._valid_step(x)
        else:
            self._infer_step(x)

    def _forward(self, x, training: bool) -> Dict[str, Any]:
        """Model forward pass; subclasses may skip work that cannot change the loss."""
        return self.model(x)

    def _rates(self, out: Dict[str, torch.Tensor]) -> Dict[str, float]:
        """The criterion's outputs as floats, under the criterion's own names.

        Rates estimated from likelihoods keep CompressAI-Trainer's ``*_loss`` names
        (``bpp_loss``, ``bpp_y_loss``, ``bpp_pdf_loss``); ``bpp``, ``bpp_y`` and
        ``bpp_pdf`` are the bytes the infer loader writes, so in Aim and in
        ``infer.json`` an estimate is never taken for a real rate.
        """
        return {k: float(v) for k, v in out.items()}

    def _train_step(self, x) -> None:
        self._optimize(self.criterion(self._forward(x, training=True), x))

    def _optimize(self, out: Dict[str, torch.Tensor]) -> None:
        """One net step on ``out["loss"]`` (skipped if not finite), one aux step, meters."""
        loss = out["loss"]
        net = self.optimizer["net"]
        net.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            self._skip_nonfinite(float(loss))
            return
        loss.backward()
        # A finite loss can still have an infinite gradient (a likelihood at its lower bound);
        # clipping would turn it into NaN weights, so such a step is skipped like a NaN loss.
        params = [p for g in net.param_groups for p in g["params"] if p.grad is not None]
        max_norm = self.clip_max_norm if self.clip_max_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if not torch.isfinite(grad_norm):
            net.zero_grad(set_to_none=True)
            self._skip_nonfinite(float(grad_norm), what="gradient norm")
            return
        self._consecutive_nonfinite = 0
        net.step()
        self.train_steps += 1
        values = self._rates(out)
        values["aux_loss"] = self._aux_step()
        self._update_meters(values)

    def _aux_step(self) -> float:
        aux_loss = self.raw_model.aux_loss()
        if "aux" in self.optimizer and aux_loss.requires_grad:
            aux = self.optimizer["aux"]
            aux.zero_grad(set_to_none=True)
            if not torch.isfinite(aux_loss):  # the quantiles keep their last finite values
                return float(aux_loss)
            aux_loss.backward()
            if self.engine.is_ddp:  # the aux loss runs outside the DDP wrapper: average its gradients here
                _average_gradients([p for g in aux.param_groups for p in g["params"]])
            aux.step()
        return float(aux_loss)

    def _skip_nonfinite(self, value: float, what: str = "loss") -> None:
        self.nonfinite_steps += 1
        self._consecutive_nonfinite += 1
        self.batch_metrics["nonfinite_steps"] = self.nonfinite_steps
        if self._consecutive_nonfinite >= self.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{what} was {value} for {self._consecutive_nonfinite} consecutive steps "
                f"(runner.max_nonfinite_steps={self.max_nonfinite_steps}); weights were not updated by them"
            )

    @property
    def raw_model(self):
        """The model without a data-parallel wrapper."""
        m = self.model
        return m.module if hasattr(m, "module") else m

    @torch.no_grad()
    def _valid_step(self, x) -> None:
        out = self.criterion(self.model(x), x)
        values = self._rates(out)
        if "mse_loss" in values and values["mse_loss"] > 0:  # PSNR of the (unquantized) forward pass
            values["psnr"] = -10 * math.log10(values["mse_loss"])
        values["aux_loss"] = float(self.raw_model.aux_loss())
        self._update_meters(values)

    @torch.no_grad()
    def _infer_step(self, x) -> None:
        model = self.raw_model
        model.update(force=True)
        for i in range(x.shape[0]):
            modes = ["adaptive"] + [m for m in self.baselines if hasattr(model, "adaptive_codec")]
            res = evaluate_image(model, x[i : i + 1], modes=modes, pad_multiple=self.pad_multiple)
            row = dict(res["adaptive"])
            for mode in modes[1:]:
                row.update({f"{k}_{mode}": v for k, v in res[mode].items() if k.startswith(("bpp", "psnr"))})
            if hasattr(model, "adaptive_codec"):
                row["bpp_y_loss"] = self._trained_rate(x[i : i + 1])
            row["index"] = len(self.infer_rows)
            self.infer_rows.append(row)
            self._update_meters({k: v for k, v in row.items() if k != "index"})
        if self.log_figures and len(self.infer_rows) == x.shape[0]:
            self._log_infer_figures(x[:1])

    def _trained_rate(self, x) -> float:
        """The latent rate the training objective gives this image (``bpp_y_loss``), next to the real one.

        ``bpp_y`` of the infer rows counts the bytes ``compress`` wrote; ``bpp_y_loss``
        is the criterion's estimate for the same padded image (per pixel of the image),
        so every run shows how far the rate it trained for is from the rate it codes at.
        """
        x_pad, _ = pad_to_multiple(x, self.pad_multiple)
        bpp = split_bpp(self.raw_model(x_pad, with_x_hat=False)["likelihoods"], x.shape[-2] * x.shape[-1])
        return float(sum(v for k, v in bpp.items() if not k.startswith("pdf")))

    def _before_infer(self) -> None:
        """Hook run before an infer loader."""

    def _log_infer_figures(self, x) -> None:
        """Subclasses log figures of the first infer image."""

    # ------------------------------------------------------------------ results
    @property
    def run_root(self) -> Path:
        return Path(self.conf.paths._run_root)

    def _finish_infer(self) -> None:
        mean = mean_metrics([{k: v for k, v in r.items() if k != "index"} for r in self.infer_rows])
        lmbda = float(self.conf.criterion.lmbda)
        point = dict(mean, **{"criterion.lmbda": lmbda, "epoch": self.epoch_step})
        name = str(self.conf.model.name)
        meta = {
            "run_hash": self.run_hash,
            "dataset": str((self.conf.dataset.infer.get("meta") or {}).get("name", "infer")),
            "num_images": len(self.infer_rows),
            "epoch": self.epoch_step,
            "code": code_version(),  # the git version of the code that made these numbers
        }
        out = Path(self.conf.paths.results)
        save_results(out / "infer.json", name, {k: [v] for k, v in point.items()}, description=f"{name} run {self.run_hash}", meta=meta)
        save_results(out / "infer_per_image.json", name, {k: [r.get(k) for r in self.infer_rows] for k in self.infer_rows[0]}, description="per image", meta=meta)
        self.infer_summary = dict(point, num_images=len(self.infer_rows))

    # ------------------------------------------------------------------ epochs
    def on_epoch_end(self, runner):
        valid = self.epoch_metrics.get(self.conf.engine.get("valid_loader", "valid"), {})
        metric = valid.get(self.conf.engine.get("valid_metric", "loss"))
        for key, sch in (self.scheduler or {}).items():
            if isinstance(sch, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if metric is not None:
                    sch.step(metric)
            else:
                sch.step()
        for key, opt in self.optimizer.items():
            self.epoch_metrics["_epoch_"][f"lr_{key}"] = opt.param_groups[0]["lr"]
        is_best = metric is not None and metric < self.best_valid
        if is_best:
            self.best_valid = metric
        # Log the epoch first, then checkpoint it: a run killed in between resumes from the
        # previous checkpoint and re-logs this epoch (Aim replaces values at the same step);
        # the other order would leave a checkpointed epoch without metrics.
        super().on_epoch_end(runner)
        if self.engine.is_main_process:
            self._append_history()
            self._save_checkpoint(is_best)

    def _append_history(self) -> None:
        """One JSON line per epoch in ``results/epochs.jsonl``: the loaders' metrics against steps."""
        import json

        row = {"epoch": self.epoch_step, "train_steps": self.train_steps}
        for key, values in self.epoch_metrics.items():
            row.update({f"{key}/{k}": float(v) for k, v in values.items() if isinstance(v, (int, float))})
        path = Path(self.conf.paths.results) / "epochs.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def _save_checkpoint(self, is_best: bool) -> None:
        state = {
            "model_state_dict": self.raw_model.state_dict(),
            "optimizer": {k: o.state_dict() for k, o in self.optimizer.items()},
            "scheduler": {k: s.state_dict() for k, s in (self.scheduler or {}).items()},
            "epoch": self.epoch_step,
            "best_valid": self.best_valid,
            "nonfinite_steps": self.nonfinite_steps,
            "train_steps": self.train_steps,
            "run_hash": self.run_hash,
            "model_name": str(self.conf.model.name),
            "epoch_metrics": {k: dict(v) for k, v in self.epoch_metrics.items()},
        }
        ckpt_dir = Path(self.conf.paths.checkpoints)
        atomic_save(state, ckpt_dir / LAST)
        if is_best and self.conf.get("misc", {}).get("save_best", True):
            atomic_save(state, ckpt_dir / BEST)
