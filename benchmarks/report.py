"""Markdown report of a benchmark run (every section's tables in one place)."""

from __future__ import annotations

from typing import Any, Dict, List

import common as C
from anchor import md_anchor
from contexts import md_contexts
from rate import ARM_LABELS, ARMS


def render_md(res: Dict[str, Any]) -> str:
    e = res["environment"]
    L = [f"# encdist benchmarks: {e['machine']}", ""]
    if e["profile"] == "quick":
        L += ["> **Quick smoke run** (`--quick`, tiny epochs): the numbers only show that the benchmark runs end to end; they are not results.", ""]
    L += [
        f"- machine: `{e['machine']}` ({e['hostname']}, {e['platform']})",
        f"- CPU: {e['cpu_model'] or 'unknown'}, {e['cpu_count']} CPUs (usable {e['affinity_cpus']}), torch threads {e['torch_threads']}, OMP_NUM_THREADS={e['OMP_NUM_THREADS']}",
        f"- GPU: {e['cuda'] or 'none'}; throughput section on `{e['throughput_device']}`",
        f"- torch {e['torch']}, compressai {e['compressai']}, Python {e['python']}, encdist git {e['git']}",
        f"- date: {e['date']}; load average at start: {', '.join(f'{v:.2f}' for v in e['loadavg_start'] or [])}; total wall time {res['wall_s'] / 60:.1f} min",
        "- Timing claims are ratios of runs made side by side in this run; absolute times are shown for context only.",
    ]
    la = (e.get("loadavg_start") or [None])[0]
    ncpu = e.get("affinity_cpus") or e.get("cpu_count") or 1
    if la is not None and la > 0.5 * ncpu:
        la_end = (e.get("loadavg_end") or [float("nan")])[0]
        L.append(f"- **Warning:** the machine was busy before this run started (1-min load average {la:.1f} on {ncpu} CPUs; {la_end:.1f} at the end, this run included). "
                 f"With {e['torch_threads']} torch thread(s) competing with other processes, every parallel op can wait for a descheduled thread: "
                 "small-op workloads (the distribution codec) slow down far more than large convolutions, which distorts the ratios. "
                 "Re-run on an idle machine, or compare with `--threads 1`.")
    L += [
        "",
        "## Summary",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for name, t in res["targets"].items():
        v = t.get("value")
        unit = ("x" if name.startswith(("train_speedup", "coding_ratio", "context_time", "default_never_above")) else " %" if name.startswith(("gap_closed", "side_share", "phat", "training_rate", "context_gain", "context_default_gain", "anchor"))
                else " MB" if name.startswith("memory") else " dB" if name.startswith("family") else "")
        L.append(f"| {name}: {t['target']} | {C.fmt(v, '.2f')}{unit if v is not None else ''} | {C.met(t.get('met'))} |")
    L.append("")
    for sec, fn in (("rate", _md_rate), ("contexts", md_contexts), ("anchor", md_anchor), ("throughput", _md_throughput), ("coding", _md_coding), ("cost", _md_cost),
                    ("memory", _md_memory)):
        r = res["sections"].get(sec)
        if r is None:
            continue
        if "error" in r:
            L += [f"## {sec}: failed", "", "```", r["error"].rstrip(), "```", ""]
        else:
            L += fn(r)
    return "\n".join(L).rstrip() + "\n"


def _md_throughput(r: Dict[str, Any]) -> List[str]:
    A, F = r["arms"]["adaptive"], r["arms"]["full"]
    Cc = r["arms"].get("adaptive_cached")
    L = ["## 2. Training throughput (adaptive stage vs full step)", ""]
    L.append(f"Model: {r['model']}; device {r['device']}; batches of {r['batch']} random {r['crop']}x{r['crop']} crops of the train photographs; "
             f"{r['warmup']} warm-up + {r['steps']} measured steps per arm, in rotating order on the same batches. Every step: loss "
             "(`AdaptiveRateDistortionLoss`), backward, grad-norm clip 1.0, Adam step, aux (quantile) step, as the runner does.")
    L.append("")
    L.append("| step | trainable params | images/s | median step s |")
    L.append("|---|---|---|---|")
    arms = [A, F] + ([Cc] if Cc else [])
    for a in arms:
        L.append(f"| {a['name']} | {a['trainable_params']:,} | {a['images_per_s']:.2f} | {a['median_step_s']:.3f} |")
    L.append("")
    t = r["target"]
    L.append(f"- Speed-up of the adaptive stage's step, `model(x, with_x_hat=False)` (images/s ratio): **{r['speedup']:.2f}x** "
             f"(median of per-round ratios {r['speedup_median_pair']:.2f}x); target {t['target']}: {C.met(t['met'])}.")
    if Cc:
        L.append(f"- With cached latents (the runner's `latent_cache`, epochs after the first): **{r['speedup_cached']:.2f}x**.")
        q = r.get("quickstart_schedule")
        if q:
            L.append(f"- Averaged over the quickstart's schedule ({q['epochs']} epochs, latent_cache={q['latent_cache']}): {q['speedup_epoch_average']:.2f}x.")
    L.append("")
    keys = list(dict.fromkeys(k for a in arms for k in a["breakdown_median_s"]))
    keys = [k for k in keys if k != "forward"]
    L.append("| median seconds per step | " + " | ".join(("adaptive stage", "full step", "adaptive, cached latents")[: len(arms)]) + " |")
    L.append("|---" * (len(arms) + 1) + "|")
    for k in keys:
        L.append(f"| {k} | " + " | ".join(f"{a['breakdown_median_s'].get(k, 0.0):.4f}" for a in arms) + " |")
    L.append("")
    if r.get("profile_adaptive_top_ops"):
        L.append("Profile of the adaptive step (torch.profiler, top ops by self CPU time, per step):")
        L.append("")
        L.append("| op | self CPU ms | share | calls |")
        L.append("|---|---|---|---|")
        for o in r["profile_adaptive_top_ops"]:
            L.append(f"| `{o['op']}` | {o['self_cpu_ms']:.1f} | {o['share_pct']:.1f} % | {o['calls']} |")
        L.append("")
    return L


def _md_coding(r: Dict[str, Any]) -> List[str]:
    L = ["## 3. Coding speed (768x512, batch 1, CPU)", ""]
    L.append(f"Model: {r['model']}; image: {r['image']}; {r['threads']} torch threads; median of {r['reps']} reps "
             f"(+{r['warmup']} warm-up), modes alternated.")
    L.append("")
    L.append("| mode | encode s | decode s | enc+dec s | enc+dec vs static | y bytes | side bytes |")
    L.append("|---|---|---|---|---|---|---|")
    for name, m in r["modes"].items():
        ratio = f"{m['ratio_total']:.2f}x (enc {m['ratio_encode']:.2f}x, dec {m['ratio_decode']:.2f}x)" if "ratio_total" in m else "1.00x"
        label = {**ARM_LABELS, "static": "static bottleneck",
                 "adaptive_refined": f"(d) + refinement ({r.get('refine_steps', '?')} steps)"}.get(name, name)
        L.append(f"| {label} | {m['encode_s']:.4f} | {m['decode_s']:.4f} | {m['total_s']:.4f} | {ratio} | {m['y_bytes']} | {m['side_bytes']} |")
    L.append("")
    t = r["target"]
    L.append(f"- Adaptive enc+dec / static enc+dec: **{t['value']:.2f}x**; target {t['target']}: {C.met(t['met'])}.")
    if "target_refined" in r:
        t = r["target_refined"]
        L.append(f"- With encoder-side refinement: **{t['value']:.2f}x**; target {t['target']}: {C.met(t['met'])}.")
    L.append("")
    if "breakdown_median_s" in r:
        b = r["breakdown_median_s"]
        for side in ("encode", "decode"):
            keys = list(dict.fromkeys(list(b["adaptive"][side]) + list(b["static"][side])))
            L.append(f"| {side}: median seconds per step | adaptive | static |")
            L.append("|---|---|---|")
            for k in keys:
                a, s = b["adaptive"][side].get(k), b["static"][side].get(k)
                L.append(f"| {k} | {C.fmt(a, '.4f', '-')} | {C.fmt(s, '.4f', '-')} |")
            L.append(f"| **sum** | {sum(b['adaptive'][side].values()):.4f} | {sum(b['static'][side].values()):.4f} |")
            L.append("")
        L.append("(Breakdown: separate reps of the same `compress`/`decompress` calls with timers wrapped around the codec's steps; "
                 "\"other\" is the rest of the call. Medians per step, so columns need not add up exactly.)")
        if r.get("breakdown_missing_timers"):
            L.append(f"Timers not installed (library changed?): {', '.join(r['breakdown_missing_timers'])}.")
        L.append("")
    elif "breakdown_error" in r:
        L.append(f"Breakdown unavailable: {r['breakdown_error']}")
        L.append("")
    return L


def _md_cost(r: Dict[str, Any]) -> List[str]:
    L = ["## 4. Side-model cost (parameters, MACs per pixel of a 768x512 image)", ""]
    L.append(f"Method: {r['method']}")
    L.append("")
    L.append("| model | params analysis | params synthesis | params entropy model | MAC/px analysis | MAC/px synthesis | MAC/px total | FlopCounter MAC/px total |")
    L.append("|---|---|---|---|---|---|---|---|")
    for x in r["rows"]:
        L.append(f"| {x['name']} ({x['note']}) | {x['params_analysis']:,} | {x['params_synthesis']:,} | {x['params_entropy_model']:,} | "
                 f"{x['mac_per_px_analysis']:.2f} | {x['mac_per_px_synthesis']:.2f} | {x['mac_per_px_total']:.2f} | {x['flopcounter_mac_per_px_total']:.2f} |")
    L.append("")
    for key, c in r.get("comparison", {}).items():
        L.append(f"- {key}: analysis transform alone: distribution codec {c['analysis_params'][0]:,} params, {c['analysis_mac_per_px'][0]:.1f} MAC/px vs "
                 f"hyperprior h_a {c['analysis_params'][1]:,} params, {c['analysis_mac_per_px'][1]:.0f} MAC/px "
                 f"({c['analysis_params'][1] / c['analysis_params'][0]:.0f}x params, {c['analysis_mac_per_px'][1] / c['analysis_mac_per_px'][0]:.0f}x MACs). "
                 f"Analysis + synthesis + entropy model: {c['all_params'][0]:,} vs {c['all_params'][1]:,} params, "
                 f"{c['all_mac_per_px'][0]:.1f} vs {c['all_mac_per_px'][1]:.0f} MAC/px.")
    L.append("")
    L.append("Paper (docs/METHOD.md): distribution codec about 0.03 M params and ~10 MAC/px vs a scale hyperprior's 1.04 M params and ~1364 MAC/px; "
             "the hyperprior figures are those of h_a alone (equal to h_s's), i.e. one transform. "
             "GDN layers call `F.conv2d` rather than a Conv module, so the hooks skip them and FlopCounterMode counts them (the only difference between the two columns). "
             "The distribution codec's MACs are a fixed cost per image (its input is C x 256 bins, whatever the image size), so its MAC/px falls "
             "as images grow; the hyperprior's scale with the pixel count.")
    L.append("")
    return L



def _pct(v, spec="+.2f") -> str:
    return C.fmt(v, spec) + " %" if isinstance(v, (int, float)) else "n/a"


def _pdf_layout(kw: Dict[str, Any]) -> str:
    """``hp.pdf_model``'s settings in words, against the paper's layout (``PdfModel``'s defaults)."""
    import inspect

    from encdist.codec.pdf_model import PdfModel

    kw = {k: v for k, v in kw.items() if v is not None}
    if not kw:
        return "the paper's (three strided layers, (N, M) by the latent's channels)"
    paper = {k: q.default for k, q in inspect.signature(PdfModel).parameters.items() if k in kw}
    return (", ".join(f"`{k}={v}`" for k, v in sorted(kw.items()))
            + " (the paper's: " + ", ".join(f"`{k}={v}`" for k, v in sorted(paper.items())) + ")")


def _md_rate(r: Dict[str, Any]) -> List[str]:
    pts = r["points"]
    L = ["## 1. Rate: every way of coding on the committed RD family (test split, real bitstreams)", ""]
    fam = ", ".join(f"q{f['quality']} (λ={f['lambda']}, {f['steps']} steps)" for f in r["family"])
    im = r["images"]
    st = r["settings"]
    pa, ad = st.get("paper", {}), st["adaptive"]
    L.append(f"Frozen transforms: `bmshj2018-factorized` N=128, M=192 from `weights/` ({fam}). Two distribution codecs per quality, "
             "each trained for the coder it serves: for (a) and (b), the paper's objective (`compressai-train --config-name=quickstart "
             f"hp.quality=q hp.backward_adaptation=false hp.fallback_static=false`, {pa.get('epochs')} epochs of {pa.get('num_samples')} "
             f"crops of {pa.get('patch_size')}, lr {pa.get('lr_net')}); for (d), the default objective (the backward-adapted coder with "
             f"the fallback, `compressai-train --config-name=quickstart hp.quality=q`), fine-tuned from the former for {ad['epochs']} "
             f"epochs of {ad['num_samples']} crops, lr {ad['lr_net']}. (c) and (e) use no p̂. "
             + (f"The distribution codec's layout (`hp.pdf_model`, both objectives): {_pdf_layout(pa['pdf_model'])}. "
                if "pdf_model" in pa else "") +
             f"Test images: {len(im['names'])} from `{im['source']}` ({', '.join(im['names'])}). Every rate counts every byte written "
             "(side stream and header included); every way of coding decodes to the same PSNR (same transforms).")
    if r.get("runs_made_by") and r.get("reused_as_they_are"):
        L.append(f"The distribution codecs were trained by code version {', '.join(f'`{c}`' for c in r['runs_made_by'])} (`infer.json`'s "
                 f"`meta.code`) and reused as they are (`--rate-dir {r['work_dir']}`): everything else, coding included, ran at "
                 f"`{r.get('evaluated_by', '?')}`.")
    elif r.get("runs_made_by"):
        L.append(f"The distribution codecs were trained by code version {', '.join(f'`{c}`' for c in r['runs_made_by'])} (`infer.json`'s "
                 "`meta.code`; a run is reused only if `src/`, `runners/`, `conf/` and `pyproject.toml` are unchanged since).")
    L.append("")
    L.append("The frozen transforms (`weights/MANIFEST.json`; PSNR and rate of the static bottleneck on the test split, "
             "measured here from the committed float16 weights; valid PSNR of the training run's forward pass after each epoch):")
    L.append("")
    L.append("| quality | λ | started from | steps | train min | test PSNR dB | test bpp (static) | valid PSNR dB against steps |")
    L.append("|---|---|---|---|---|---|---|---|")
    by_q = {p["quality"]: p for p in pts}
    for f in r["family"]:
        hist = ", ".join(f"{h['train_steps']}: {h['valid_psnr']:.2f}" for h in f.get("valid_history", []) if h.get("valid_psnr") is not None)
        p = by_q.get(f["quality"], {})
        L.append(f"| {f['quality']} | {f['lambda']} | {f.get('init') or 'scratch'} | {f['steps']} | {C.fmt(f.get('train_minutes'), '.1f')} | "
                 f"{C.fmt(p.get('psnr'), '.2f')} | {C.fmt(p.get('bpp_static'), '.4f')} | {hist} |")
    L.append("")
    L.append("| way of coding |" + "".join(f" q{p['quality']} |" for p in pts) + " BD-rate cubic | BD-rate PCHIP | gap closed (cubic) |")
    L.append("|---|" + "---|" * (len(pts) + 3))
    L.append("| PSNR (dB) |" + "".join(f" {p['psnr']:.2f} |" for p in pts) + " | | |")
    L.append("| static bottleneck (bpp, the anchor) |" + "".join(f" {p['bpp_static']:.4f} |" for p in pts) + " 0 | 0 | 0 % |")
    for a in ARMS:
        bd = r["bd_rate"][a]
        gap = r["gap_closed"].get(a, {}).get("cubic") if a != "ideal" else 100.0
        L.append(f"| {ARM_LABELS[a]} |" + "".join(f" {p['bpp_' + a]:.4f} ({p[a + '_vs_static_pct']:+.2f} %) |" for p in pts)
                 + f" {_pct(bd['cubic'])} | {_pct(bd['pchip'])} | {C.fmt(gap, '.1f')} % |")
    L.append("")
    errors = sorted({v for b in r["bd_rate"].values() for v in b.values() if isinstance(v, str)})
    if errors:
        L += [f"BD-rates n/a: {'; '.join(errors)}.", ""]
    L.append("Share of the static→ideal gap closed at each RD point (rate change at equal PSNR / the ideal bound's):")
    L.append("")
    L.append("| way of coding |" + "".join(f" q{p['quality']} |" for p in pts))
    L.append("|---|" + "---|" * len(pts))
    for a in ARMS[:-1]:
        L.append(f"| {ARM_LABELS[a]} |" + "".join(f" {C.fmt(p['gap_closed_' + a + '_pct'], '.1f')} % |" for p in pts))
    L.append("| (d') vs (c'): what p̂ adds inside the context coder |" + "".join(f" {C.fmt(p.get('adaptive_vs_static_context_pct'), '+.2f')} % |" for p in pts))
    L.append("| (d') vs (d): what contexts add to the default |" + "".join(f" {C.fmt(p.get('adaptive_vs_backward_pct'), '+.2f')} % |" for p in pts))
    L.append("| side stream share of (d') / of (a) |" + "".join(f" {p['side_share_adaptive_pct']:.2f} / {p['side_share_paper_pct']:.2f} % |" for p in pts))
    L.append("| (d'): images coded from the static start / with mixed tables / backward-adapted (of which with contexts) |"
             + "".join(f" {p['static_picks']} / {p['mixed_picks']} / {p['backward_picks']} ({p.get('context_picks', 'n/a')}) of {p['num_images']} |"
                       for p in pts))
    L.append("")
    ref = r.get("paper", {})
    if "gap_closed_pct" in ref:
        L.append(f"The paper on Kodak (its published curves, `{ref['source']}`, recomputed here): BD-rate {ref['bd_paper']:+.2f} %, ideal "
                 f"{ref['bd_ideal']:+.2f} %: {ref['gap_closed_pct']:.1f} % of the gap.")
    L.append(f"RD curve: PSNR span {r['psnr_span_db']:.2f} dB, PSNR and rate increase with λ: {r['rd_curve_valid']}. "
             f"Results JSONs and figure: {', '.join(f'`{v}`' for v in r['results_files'].values())}.")
    L.append("")
    for name, t in r["targets"].items():
        L.append(f"- {name}: {t['target']}: **{C.fmt(t['value'], '.2f')}** ({C.met(t['met'])})")
    L.append("")
    L += _md_evidence(r)
    return L


def _md_evidence(r: Dict[str, Any]) -> List[str]:
    pts = [p for p in r["points"] if "evidence" in p]
    if not pts:
        return []
    ev = [p["evidence"] for p in pts]
    qs = "".join(f" q{p['quality']} |" for p in pts)
    sep = "|---|" + "---|" * len(pts)
    L = ["### Evidence: what the rate the codecs train for is, and what limits the targets", ""]
    L.append("**Training rate against real bytes.** `bpp_y_loss` as the criterion logs it (the codec's `forward` in the coder it "
             "deploys) against the y bytes `compress` writes, all images of a split, relative error:")
    L += ["", "| objective, split |" + qs, sep]
    for obj, split in (("adaptive", "valid"), ("adaptive", "test"), ("paper", "valid"), ("paper", "test")):
        L.append(f"| {obj}, {split} |" + "".join(f" {e['training_rate'][obj][split]['rel_error_pct']:+.2f} % |" for e in ev))
    L.append("")
    L.append("**An oracle start inside the adaptive coder.** Exact bits (integer tables) of the backward-adapted y stream on "
             "the test split, started from an oracle start (each image's exact histogram, free), from the trained p̂, "
             "and per channel the better of either and the static start; rate against the static start ((c) without the fallback):")
    L += ["", "| start of the adapted tables |" + qs, sep]
    for k, label in (("exact_histogram", "oracle start (the image's exact histogram, free)"),
                     ("exact_or_static", "oracle start or static, per channel"),
                     ("p_hat", "trained p̂ (side bits not counted)"), ("p_hat_or_static", "trained p̂ or static, per channel")):
        L.append(f"| {label} |" + "".join(f" {-e['oracle_start']['pct_below_static_start'][k]:+.2f} % |" for e in ev))
    L.append("")
    L.append("The oracle start is not an upper bound on what p̂ can add: the adapted tables mix the start with decayed counts, "
             "and the best start for that update is not the image's histogram (a flatter start, histogram^0.85, beat it on 20 "
             "of 20 non-stationary test channels by 0.15–0.37 % of their y bits in a replica of the coder's table update).")
    L.append("")
    L.append("**The paper's codec on the photographs it was trained on and on the test split** (estimated bits: cross-entropy "
             "under p̂ plus the side latent's bits, against the static tables and the exact histogram):")
    L += ["", "| split: share of the gap closed |" + qs, sep]
    for split in ("train", "test"):
        L.append(f"| {split} |" + "".join(f" {C.fmt(e['paper_shares'][split]['gap_closed_pct'], '.1f')} % |" for e in ev))
    L.append("| test: side bits' part of the loss |" + "".join(f" {C.fmt(e['paper_shares']['test']['side_share_of_loss_pct'], '.1f')} % |" for e in ev))
    L.append("| test: loss held by the worst 10 % of channels |"
             + "".join(f" {C.fmt(e['paper_shares']['test']['loss_share_top10pct_channels_pct'], '.1f')} % |" for e in ev))
    L.append("| test: channels that keep over half their gap |"
             + "".join(f" {e['paper_shares']['test']['channels_keeping_half_their_gap']} of {e['paper_shares']['test']['channels']} |" for e in ev))
    L.append("")
    steps = [e.get("paper_share_by_steps") for e in ev]
    if all(steps):
        cols = sorted({int(n) for st in steps for n in st["pct_at_steps"]})
        L.append("**Against training steps.** The paper's codec's share of the gap on the valid photograph after n steps "
                 "(batch 8), from each run's own per-epoch estimate (`results/epochs.jsonl`, `valid/bpp_loss`) against the "
                 "static tables and the exact histogram on that photograph. The row \"trained model, recomputed\" computes "
                 "the trained model's share directly: it should match the last logged one.")
        L += ["", "| steps |" + qs, sep]
        for n in cols:
            L.append(f"| {n:,} |" + "".join(f" {C.fmt(st['pct_at_steps'].get(str(n)), '.1f')} % |" for st in steps))
        L.append("| trained model, recomputed |" + "".join(f" {C.fmt(st['final_pct'], '.1f')} % |" for st in steps))
        L.append("| the photograph's gap: ideal vs static |"
                 + "".join(f" {C.fmt(100 * (st['bpp_ideal'] / st['bpp_static'] - 1), '+.1f')} % |" for st in steps))
        L.append("")
        L.append("One photograph, and one whose static rate is already close to its ideal one, so these shares are lower and "
                 "noisier than the test split's; what they show is the trend with steps.")
        L.append("")
    ab = r.get("ablation")
    if ab:
        L.append(f"**Corpus size.** The paper's codec at q{ab['quality']}, trained on the first k train photographs with one shorter "
                 f"budget ({ab['epochs']} epochs of {ab['samples']} crops), share of the gap closed (estimated bits):")
        L += ["", "| train photographs | all train photographs | test |", "|---|---|---|"]
        for row in ab["rows"]:
            L.append(f"| {row['train_images']} | {C.fmt(row['train_gap_closed_pct'], '.1f')} % | {C.fmt(row['test_gap_closed_pct'], '.1f')} % |")
        L.append("")
    cap = r.get("capacity")
    if cap:
        L.append("**Codec size.** The paper's codec at the family's lowest and highest λ, trained with the rate section's budget "
                 f"({cap['epochs']} epochs of {cap['samples']} crops) at the paper's size (the rate section's run) and larger; share of "
                 "the gap closed (estimated bits) on the photographs it trains on and on the test split:")
        L += ["", "| quality | (N, M) | parameters | train photographs | test | test: side bpp |", "|---|---|---|---|---|---|"]
        for row in cap["rows"]:
            L.append(f"| q{row['quality']} | ({row['N']}, {row['M']}) | {row['params']:,} | {C.fmt(row['train_gap_closed_pct'], '.1f')} % "
                     f"| {C.fmt(row['test_gap_closed_pct'], '.1f')} % | {C.fmt(row['test_bpp_side'], '.5f')} |")
        L.append("")
    return L


def _md_memory(r: Dict[str, Any]) -> List[str]:
    L = ["## 5. Memory the entropy coding adds (peak RSS, fresh process)", "", r["method"], ""]
    L.append("| image | latent (C x h x w) | encode: added MB | encode s | decode: added MB | decode s |")
    L.append("|---|---|---|---|---|---|")
    for row in r["rows"]:
        e, d = row["encode"], row["decode"]
        cell = lambda x, k, spec: C.fmt(x.get(k), spec) if "error" not in x else x["error"]  # noqa: E731
        L.append(f"| {row['image']} | {row['latent']} | {cell(e, 'added_mb', '.0f')} | {cell(e, 'seconds', '.1f')} | "
                 f"{cell(d, 'added_mb', '.0f')} | {cell(d, 'seconds', '.1f')} |")
    L.append("")
    if "target" in r:
        t = r["target"]
        L.append(f"- {t['target']}: **{t['value']:.0f} MB** ({C.met(t['met'])})")
        L.append("")
    L.append("Where it goes: the encoder holds the symbols (int32, turned into the output `y_hat` in place), 4 bytes "
             "per latent element, plus bounded work: backward-adapted tables in bands of rows (`TABLE_BUDGET`, 64 MB), "
             "range coding in chunks of 2^20 symbols and substreams of 2^21 (`SUBSTREAM_SYMBOLS`: CompressAI's coder "
             "buffers every symbol until its flush), per-channel counts 16 channels at a time. The decoder holds the "
             "decoded symbols (int32, turned into `y_hat` in place) and one substream's bounds-safe rANS buffer: "
             "CompressAI's decoder reads 32-bit words without bounds checks, so each substream is padded with zeros "
             "for the most a corrupt one could make it read (8 bytes per symbol plus 16 per stream byte), and "
             "`RansDecoder.set_stream` copies that buffer twice more. The declared size is bounded by "
             "`MAX_DECODE_PIXELS` and checked against the stream's length before decoding.")
    L.append("")
    return L


if __name__ == "__main__":  # re-render a saved run: python benchmarks/report.py benchmarks/results/NAME.json
    import json
    import sys
    from pathlib import Path

    for arg in sys.argv[1:]:
        src = Path(arg)
        src.with_suffix(".md").write_text(render_md(json.loads(src.read_text())))
        print(f"wrote {src.with_suffix('.md')}")
