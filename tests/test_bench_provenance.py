"""The benchmark reuses only trained runs made by the code that writes its report (issue 20, provenance)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _run(root: Path, name: str, lmbda: float, code: str) -> Path:
    d = root / "runs" / name
    (d / "configs").mkdir(parents=True)
    (d / "checkpoints").mkdir()
    (d / "results").mkdir()
    OmegaConf.save(OmegaConf.create({"engine": {"num_epochs": 1}, "criterion": {"lmbda": lmbda}}), d / "configs" / "config.yaml")
    torch.save({"epoch": 1}, d / "checkpoints" / "runner.last.pth")
    (d / "results" / "infer.json").write_text(json.dumps({"name": "x", "results": {}, "meta": {"code": code}}))
    return d


def test_runs_of_other_code_are_not_reused(tmp_path):
    import common as C

    from encdist.provenance import code_version

    ours = _run(tmp_path, "a", 0.1, code_version())
    _run(tmp_path, "b", 0.2, "0000000-elsewhere")
    found = C.completed_runs(tmp_path)
    if code_version() == "unknown":  # outside a git checkout every completed run counts
        assert set(found) == {0.1, 0.2}
    else:
        assert found == {0.1: ours}


def test_rate_dir_reuses_runs_of_any_code(tmp_path):
    """``--rate-dir`` re-evaluates trained codecs as they are: other code's runs count there (and only there)."""
    import common as C

    other = _run(tmp_path, "b", 0.2, "0000000-elsewhere")
    dirty = _run(tmp_path, "c", 0.3, "0000000-dirty")
    assert C.completed_runs(tmp_path, any_code=True) == {0.2: other, 0.3: dirty}


def test_runs_of_a_commit_with_the_same_training_code_are_reused():
    """A run made at an earlier commit counts when src, runners, conf and pyproject.toml are unchanged since."""
    import subprocess

    import common as C

    from encdist.provenance import code_version

    if code_version() == "unknown":
        return
    git = lambda *a: subprocess.run(["git", *a], cwd=C.ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    last = git("log", "-1", "--format=%h", "--", *C.TRAINING_CODE)  # the last commit that changed the training code
    dirty = git("status", "--porcelain", "--", *C.TRAINING_CODE)
    assert C.same_training_code(last) == (not dirty)
    if code_version() != f"{last}-dirty":  # a dirty tree's runs match only that same tree
        assert not C.same_training_code(f"{last}-dirty")
    parent = git("rev-parse", "--short", f"{last}~1")
    if parent:  # absent in a shallow clone
        assert not C.same_training_code(parent), "the commit before the last change to the training code"


def test_parallel_training_makes_the_sequential_calls(tmp_path, monkeypatch):
    """``bench.py --jobs N`` trains the same runs as the sequential path: the same ``train_one`` calls, any order."""
    import rate

    import evidence as E

    calls = []

    def fake_train_one(root, quality, overrides, logfile, any_code=False):
        calls.append((str(root), quality, tuple(overrides), str(logfile)))
        return Path(root) / f"q{quality}"

    class FakeFolder:
        def __init__(self, path):
            self.path = path

        def checkpoint(self):
            return self.path / "checkpoints" / "runner.last.pth"

    monkeypatch.setattr(rate, "train_one", fake_train_one)
    monkeypatch.setattr(rate, "RunFolder", FakeFolder)
    prof = {"paper_epochs": 3, "paper_samples": 16, "adaptive_epochs": 2, "adaptive_samples": 8, "adaptive_lr": 1e-4,
            "ablation_images": (4, 8), "ablation_epochs": 1, "ablation_samples": 8, "capacity_sizes": ((64, 32),)}
    fam = [{"quality": q, "lambda": lm} for q, lm in ((3, 0.0067), (1, 0.0018), (6, 0.0483))]
    rate._train(prof, fam, tmp_path)
    sequential = set(calls)
    assert len(sequential) == 2 * len(fam)
    calls.clear()
    rate.train_in_parallel(prof, fam, tmp_path, jobs=2, ablation_quality=6)
    parallel = set(calls)
    assert sequential <= parallel
    extra = parallel - sequential
    assert len(extra) == 4
    ablation = {c for c in extra if "_k" in c[0]}
    assert len(ablation) == 2
    for root, quality, over, log in ablation:
        k = int(root.rsplit("_k", 1)[1])
        r, o, lg = E.ablation_run(tmp_path, quality, k, prof)
        assert (root, over, log) == (str(r), (*rate.PAPER_OBJECTIVE, *o), str(lg))
    # The capacity runs: the family's lowest and highest lambda, the paper's budget, the larger size.
    capacity = sorted(extra - ablation, key=lambda c: c[1])
    for (root, quality, over, log), q in zip(capacity, (1, 6), strict=True):
        r, o, lg = E.capacity_run(tmp_path, q, (64, 32), prof)
        assert (root, quality, over, log) == (str(r), q, (*rate.PAPER_OBJECTIVE, *o), str(lg))
        assert "hp.pdf_model.N=64" in over and "engine.num_epochs=3" in over
    # Every run has its own log file (the work folder's layout, common.work_run).
    logs = [c[3] for c in parallel]
    assert len(set(logs)) == len(logs)


def _committed_results():
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    return json.loads((results / "vm-2cpu.json").read_text()), (results / "vm-2cpu.md").read_text()


def test_the_committed_report_is_what_its_measurements_render_to():
    """``vm-2cpu.md`` is ``report.render_md`` of ``vm-2cpu.json``: no number of the report was edited by hand."""
    import report

    res, md = _committed_results()
    assert report.render_md(res) == md


def test_the_capacity_ablation_is_reported_row_by_row():
    """Every row of the capacity ablation (``rate.capacity``) appears in the report with its size and shares."""
    import copy

    import report

    res, _ = _committed_results()
    res = copy.deepcopy(res)
    rows = [{"quality": 1, "N": 32, "M": 16, "params": 45728, "train_gap_closed_pct": 50.61, "test_gap_closed_pct": 53.84,
             "test_bpp_side": 0.00107, "run": "a"},
            {"quality": 1, "N": 64, "M": 32, "params": 123456, "train_gap_closed_pct": 63.61, "test_gap_closed_pct": 56.76,
             "test_bpp_side": 0.00065, "run": "b"}]
    res["sections"]["rate"]["capacity"] = {"epochs": 128, "samples": 512, "rows": rows}
    md = report.render_md(res)
    assert "| q1 | (32, 16) | 45,728 | 50.6 % | 53.8 % | 0.00107 |" in md
    assert "| q1 | (64, 32) | 123,456 | 63.6 % | 56.8 % | 0.00065 |" in md
    del res["sections"]["rate"]["capacity"]
    assert "Codec size" not in report.render_md(res)


def test_the_report_names_the_distribution_codecs_layout():
    """A run that records ``hp.pdf_model`` says in the report which layout trained, against the paper's."""
    import copy

    import report

    res, _ = _committed_results()
    res = copy.deepcopy(res)
    paper = res["sections"]["rate"]["settings"]["paper"]
    paper["pdf_model"] = {"N": None, "M": None, "num_downsample": 1, "logit_prior": True}
    md = report.render_md(res)
    assert "layout (`hp.pdf_model`, both objectives): `logit_prior=True`, `num_downsample=1` (the paper's:" in md
    paper["pdf_model"] = {"N": None, "M": None}
    assert "layout (`hp.pdf_model`, both objectives): the paper's (three strided layers" in report.render_md(res)
    del paper["pdf_model"]  # a report from before the layout was recorded says nothing about it
    assert "hp.pdf_model`, both objectives" not in report.render_md(res)


def test_capacity_sizes_are_parsed_or_refused_in_one_line(capsys):
    import bench

    assert bench._sizes("64x32, 48X24") == ((64, 32), (48, 24)) and bench._sizes("") == ()
    for bad in ("64", "64x0", "64x32x2", "ax32"):
        assert bench._sizes(bad) is None
    assert bench.main(["--quick", "--sections", "memory", "--capacity-sizes", "64x0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--capacity-sizes" in err[0]


def test_issue20_targets_match_the_committed_report_and_fail_below_target():
    """The report's issue-20 targets are what :func:`rate.issue20_targets` makes of its own measurements."""
    import rate

    r = _committed_results()[0]["sections"]["rate"]
    got = rate.issue20_targets([p["psnr"] for p in r["points"]], r["gap_closed"]["paper"])
    assert got == {k: r["targets"][k] for k in got}
    # The BD-rate share alone is not enough: one λ below 80 % fails "every λ".
    t = rate.issue20_targets([28.0, 31.0, 34.0], {"cubic": 85.0, "per_point": [90.0, 79.9, 95.0]})
    assert t["gap_closed_paper"]["met"] and not t["gap_closed_paper_every_lambda"]["met"]
    assert t["gap_closed_paper_every_lambda"]["value"] == 79.9
    # A top below 33 dB, or a PSNR that does not increase with λ, fails.
    assert not rate.issue20_targets([28.0, 32.9], {"cubic": None, "per_point": [None]})["family_psnr_top"]["met"]
    folded = rate.issue20_targets([28.0, 34.0, 33.5], {"cubic": 85.0, "per_point": [85.0]})
    assert folded["family_psnr_top"]["met"] and not folded["family_psnr_span"]["met"]
