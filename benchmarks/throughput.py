"""Section 2: images/s of the adaptive stage's training step vs a full end-to-end step, side by side."""

from __future__ import annotations

import copy
import time
from typing import Any, Dict, List, Sequence

import torch

import _helpers as H
import common as C


def _batches(num: int, batch: int, size: int, seed: int = 0) -> List[torch.Tensor]:
    import torchvision.transforms as T

    from encdist.datasets import PhotoCorpus

    torch.manual_seed(seed)
    crop = T.RandomCrop(size, pad_if_needed=True, padding_mode="reflect")
    ds = PhotoCorpus(split="train", transform=T.Compose([crop, T.ToTensor()]), num_samples=num * batch, seed=seed)
    items = [ds[i] for i in range(num * batch)]
    return [torch.stack(items[i * batch:(i + 1) * batch]) for i in range(num)]


class _Arm:
    """One training configuration: model, criterion, optimizers and a timed step."""

    def __init__(self, name, model, frozen: Sequence[str], with_x_hat: bool, device, lmbda, target_size, clip=1.0):
        from encdist.config.factory import trainable_parameter_groups
        from encdist.training.losses import AdaptiveRateDistortionLoss

        self.name, self.with_x_hat, self.device, self.clip = name, with_x_hat, device, clip
        self.model = model.to(device).train()
        for p in self.model.parameters():
            p.requires_grad_(True)
        if frozen:
            self.model.freeze(list(frozen))
        self.criterion = AdaptiveRateDistortionLoss(lmbda=lmbda, target_size=target_size)
        groups = trainable_parameter_groups(self.model)
        self.net_params = groups["net"]
        self.opt = {"net": torch.optim.Adam(groups["net"], lr=1e-4)}
        if groups["aux"]:
            self.opt["aux"] = torch.optim.Adam(groups["aux"], lr=1e-3)
        self.trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        mods = {k: getattr(self.model, k) for k in ("g_a", "g_s")}
        mods["adaptive_codec"] = self.model.adaptive_codec
        self.fwd_timer = H.ForwardTimer(mods, device)
        self.times: List[float] = []
        self.laps: List[Dict[str, float]] = []

    def step(self, x, record=True, y=None) -> float:
        sw = H.Stopwatch(self.device)
        H.sync(self.device)
        t0 = time.perf_counter()
        with sw("forward"):
            if y is not None:
                out = self.model(x, with_x_hat=False, y=y)
            else:
                out = self.model(x, with_x_hat=False) if not self.with_x_hat else self.model(x)
        with sw("loss"):
            loss = self.criterion(out, x)["loss"]
        with sw("backward"):
            self.opt["net"].zero_grad(set_to_none=True)
            loss.backward()
        with sw("optimizer step"):
            if self.clip > 0:
                torch.nn.utils.clip_grad_norm_(self.net_params, self.clip)
            self.opt["net"].step()
        with sw("aux step"):
            aux = self.model.aux_loss()
            if "aux" in self.opt and aux.requires_grad:
                self.opt["aux"].zero_grad(set_to_none=True)
                aux.backward()
                self.opt["aux"].step()
        H.sync(self.device)
        dt = time.perf_counter() - t0
        fwd = self.fwd_timer.take()
        if record:
            laps = dict(sw.laps)
            inner = {f"forward: {k}": v for k, v in fwd.items()}
            laps["forward: other"] = laps["forward"] - sum(inner.values())
            laps.update(inner)
            self.times.append(dt)
            self.laps.append(laps)
        return dt


def section_throughput(args, prof, base_model, model_desc, device) -> Dict[str, Any]:
    steps, warm, bs, size = prof["tp_steps"], prof["tp_warmup"], prof["tp_batch"], prof["tp_size"]
    batches = [b.to(device) for b in _batches(min(steps + warm, 4), bs, size)]
    qs = C.quickstart()
    common = dict(device=device, lmbda=float(qs.criterion.lmbda), target_size=tuple(qs.criterion.target_size))
    frozen = ["g_a", "g_s", "entropy_bottleneck"]
    adaptive = _Arm("adaptive stage: model(x, with_x_hat=False), frozen g_a/g_s/EB", copy.deepcopy(base_model), frozen, False, **common)
    full = _Arm("full step: model(x), everything trainable", copy.deepcopy(base_model), [], True, **common)
    arms = [("adaptive", adaptive), ("full", full)]
    # The runner's latent cache (runner.latent_cache): later epochs reuse the first epoch's g_a(x).
    import inspect

    ycache = None
    if "y" in inspect.signature(base_model.forward).parameters:
        cached = _Arm("adaptive stage, cached latents: model(x, with_x_hat=False, y=g_a(x))", copy.deepcopy(base_model), frozen, False, **common)
        arms.append(("adaptive_cached", cached))
        with torch.no_grad():
            ycache = [adaptive.model.g_a(b) for b in batches]
    C.log(f"throughput: batch {bs} x {size}x{size}, {warm} warm-up + {steps} measured steps per arm, alternating, on {device}")

    def do(key, arm, i, record=True):
        j = i % len(batches)
        return arm.step(batches[j], record=record, y=ycache[j] if key == "adaptive_cached" else None)

    for i in range(warm):
        for key, arm in arms:
            do(key, arm, i, record=False)
    pair_ratios = []
    for i in range(steps):
        k = i % len(arms)
        order = arms[k:] + arms[:k]
        t = {key: do(key, arm, warm + i) for key, arm in order}
        pair_ratios.append(t["full"] / t["adaptive"])
    res: Dict[str, Any] = {"model": model_desc, "device": str(device), "batch": bs, "crop": size, "steps": steps, "warmup": warm,
                           "pair_ratios": pair_ratios, "arms": {}}
    for key, arm in arms:
        total = sum(arm.times)
        res["arms"][key] = {
            "name": arm.name,
            "trainable_params": arm.trainable,
            "images_per_s": bs * len(arm.times) / total,
            "median_step_s": H.median(arm.times),
            "step_times_s": arm.times,
            "breakdown_median_s": H.median_laps(arm.laps),
        }
        arm.fwd_timer.remove()
    ratio = res["arms"]["adaptive"]["images_per_s"] / res["arms"]["full"]["images_per_s"]
    res["speedup"] = ratio
    res["speedup_median_pair"] = H.median(pair_ratios)
    if "adaptive_cached" in res["arms"]:
        res["speedup_cached"] = res["arms"]["adaptive_cached"]["images_per_s"] / res["arms"]["full"]["images_per_s"]
        try:
            E = int(C.quickstart().engine.num_epochs)
            cache_on = bool(C.quickstart().runner.get("latent_cache", False))
        except Exception:
            E, cache_on = None, None
        if E:
            ta = 1 / res["arms"]["adaptive"]["images_per_s"]
            tc = 1 / res["arms"]["adaptive_cached"]["images_per_s"]
            eff = (ta + (E - 1) * tc) / E if cache_on else ta
            res["quickstart_schedule"] = {"epochs": E, "latent_cache": cache_on,
                                          "speedup_epoch_average": (1 / res["arms"]["full"]["images_per_s"]) / eff}
    res["target"] = {"target": f">= {C.TARGET_TRAIN_SPEEDUP:g}x images/s", "value": ratio, "met": ratio >= C.TARGET_TRAIN_SPEEDUP}
    if ratio < C.TARGET_TRAIN_SPEEDUP or args.profile:
        res["profile_adaptive_top_ops"] = _profile(adaptive, batches)
    return res


def _profile(arm: _Arm, batches, rows: int = 12) -> List[Dict[str, Any]]:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if arm.device.type == "cuda" else [])
    xs = batches[:2]
    with profile(activities=acts) as prof:
        for x in xs:
            arm.step(x, record=False)
    ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) or 1
    n = len(xs)
    return [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3 / n, "share_pct": 100 * e.self_cpu_time_total / total, "calls": e.count // n}
            for e in ev]

