"""Results files, figures and the ``compressai-plot`` command."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from encdist.cli.plot import main
from encdist.errors import ConfigError
from encdist.evaluation.plotting import (
    plot_channel_rates,
    plot_distributions,
    plot_rd,
    reference_results_dir,
    save_figure,
)
from encdist.evaluation.results import load_results, merge_points, metric_values, save_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STATIC = "compressai-bmshj2018-factorized_mse_cuda.json"


@pytest.fixture(scope="module")
def reference_dir():
    folder = reference_results_dir()
    if folder is None:
        pytest.skip("reference results not in this checkout")
    return folder


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("compressai-plot: error: ")
    return lines[0]


# ---------------------------------------------------------------- results files


def test_save_load_round_trip(tmp_path):
    path = tmp_path / "sub" / "run.json"
    results = {"bpp": [0.5, 0.1, 0.3], "psnr-rgb": np.array([32.0, 28.0, 30.0])}
    assert save_results(path, "mine", results, "desc", {"dataset": "Kodak"}) == path
    loaded = load_results(path)
    assert loaded["name"] == "mine" and loaded["description"] == "desc"
    assert loaded["meta"] == {"dataset": "Kodak"}
    assert loaded["results"] == {"bpp": [0.1, 0.3, 0.5], "psnr-rgb": [28.0, 30.0, 32.0]}
    save_results(path, "again", {"bpp": [1.0]})  # replaces the file
    assert load_results(path)["name"] == "again"
    assert [p.name for p in path.parent.iterdir()] == ["run.json"]  # no temp files left


def test_save_refuses_uneven_columns(tmp_path):
    with pytest.raises(ConfigError, match="differ in length"):
        save_results(tmp_path / "x.json", "x", {"bpp": [0.1, 0.2], "psnr-rgb": [30.0]})
    assert not list(tmp_path.iterdir())


def test_merge_points():
    points = [{"bpp": 0.4, "psnr-rgb": 31}, {"bpp": 0.1, "psnr-rgb": 27}]
    assert merge_points(points) == {"bpp": [0.1, 0.4], "psnr-rgb": [27, 31]}
    with pytest.raises(ConfigError, match="RD point 1 lacks 'psnr-rgb'"):
        merge_points([{"bpp": 0.4, "psnr-rgb": 31}, {"bpp": 0.1}])


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "results file not found"),
        ("{not json", "not valid JSON"),
        ('{"name": "x"}', 'no "results" object'),
        ('{"results": {"psnr-rgb": [30]}}', 'no "bpp" list'),
    ],
)
def test_load_errors(tmp_path, text, message):
    path = tmp_path / "r.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_results(path)


def test_ms_ssim_db():
    results = {"bpp": [0.1, 0.2], "ms-ssim-rgb": [0.9, 0.99]}
    np.testing.assert_allclose(metric_values(results, "ms-ssim-db"), [10.0, 20.0])
    assert metric_values({"bpp": [0.1]}, "ms-ssim-db") is None


# ---------------------------------------------------------------- figures


def test_plot_rd_and_save_formats(tmp_path, reference_dir):
    curves = [load_results(p) for p in sorted(reference_dir.glob("*.json"))]
    fig = plot_rd(curves, highlight_point={"bpp": 0.5, "psnr-rgb": 32.0})
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == [c["name"] for c in curves] + ["this run"]
    for suffix in (".png", ".svg", ".html"):
        save_figure(fig, tmp_path / f"rd{suffix}")
    assert (tmp_path / "rd.png").read_bytes().startswith(PNG_MAGIC)
    page = (tmp_path / "rd.html").read_text()
    assert "<svg" in page and "<table>" in page and "bmshj2018-factorized-pdf-ulhaq2024" in page
    with pytest.raises(ConfigError, match="unsupported figure format '.jpg'"):
        save_figure(fig, tmp_path / "rd.jpg")


def test_plot_distributions_and_channel_rates(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.random((12, 256)) * (rng.random((12, 256)) < 0.2)  # many empty bins
    p /= p.sum(axis=1, keepdims=True)
    p_hat = rng.dirichlet(np.ones(256), size=12)
    fig = plot_distributions(p, p_hat, only_support=True)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["target $p$", r"reconstructed $\hat{p}$"]
    save_figure(fig, tmp_path / "dist.png")
    save_figure(plot_distributions(p[None], p_hat[None], channels=[3, 1]), tmp_path / "dist2.png")
    rates = plot_channel_rates(rng.random(64) * 100, rng.random(64) * 90)
    save_figure(rates, tmp_path / "rates.png")
    for name in ("dist.png", "dist2.png", "rates.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ConfigError, match="differ|shape"):
        plot_distributions(p, p_hat[:, :128])
    with pytest.raises(ConfigError, match="channels"):
        plot_distributions(p, p_hat, channels=[12])


# ---------------------------------------------------------------- compressai-plot


def test_cli_with_anchor(tmp_path, reference_dir, capsys):
    files = [str(p) for p in sorted(reference_dir.glob("*.json"))]
    anchor = str(reference_dir / STATIC)
    assert main([*files, "--out", str(tmp_path / "rd.png"), "--anchor", anchor]) == 0
    out = capsys.readouterr().out
    assert "| name |" in out and "bmshj2018-factorized-pdf-ulhaq2024" in out
    assert (tmp_path / "rd.png").read_bytes().startswith(PNG_MAGIC)
    with open(tmp_path / "rd_bd.csv", newline="") as f:
        rows = {row["name"]: row for row in csv.DictReader(f)}
    assert set(rows) == {load_results(f)["name"] for f in files} - {"bmshj2018-factorized"}
    assert -7.5 <= float(rows["bmshj2018-factorized-pdf-ulhaq2024"]["BD-rate PSNR [%]"]) <= -6.5
    assert float(rows["bmshj2018-factorized-pdf-ulhaq2024"]["BD-rate MS-SSIM-dB [%]"]) < 0
    assert (tmp_path / "rd_bd.md").read_text().count("\n| ") >= 5

    argv = [*files, "--out", str(tmp_path / "rd.html"), "--anchor", anchor,
            "--metric", "all", "--bd-method", "pchip", "--table-out", str(tmp_path / "t" / "bd")]
    assert main(argv) == 0
    assert "<svg" in (tmp_path / "rd.html").read_text()
    assert (tmp_path / "t" / "bd.csv").is_file() and (tmp_path / "t" / "bd.md").is_file()


def test_cli_curve_that_cannot_be_compared(tmp_path, reference_dir, capsys):
    short = tmp_path / "short.json"
    save_results(short, "short", {"bpp": [0.1, 0.2, 0.4], "psnr-rgb": [28.0, 30.0, 32.0]})
    code = main([str(short), "--out", str(tmp_path / "rd.svg"),
                 "--anchor", str(reference_dir / STATIC)])
    captured = capsys.readouterr()
    assert code == 0
    assert "compressai-plot: warning: short:" in captured.err and "at least 4" in captured.err
    row = (tmp_path / "rd_bd.csv").read_text().splitlines()[1]
    assert row.startswith("short,n/a,n/a,") and "at least 4" in row


def test_cli_errors(tmp_path, reference_dir, capsys):
    out = str(tmp_path / "rd.png")
    assert main([str(tmp_path / "missing.json"), "--out", out]) == 2
    assert "results file not found" in _one_line_error(capsys.readouterr().err)

    bad_anchor = tmp_path / "anchor.json"
    bad_anchor.write_text(json.dumps({"results": {"bpp": [0.1, 0.2], "psnr-rgb": [28, 30]}}))
    assert main([str(reference_dir / STATIC), "--out", out, "--anchor", str(bad_anchor)]) == 2
    assert "bad anchor" in _one_line_error(capsys.readouterr().err)

    assert main([str(reference_dir / STATIC), "--out", str(tmp_path / "rd.gif")]) == 2
    _one_line_error(capsys.readouterr().err)
    assert main([str(reference_dir / STATIC)]) == 2  # --out missing
    assert "--out" in _one_line_error(capsys.readouterr().err)
    assert not list(tmp_path.glob("rd*"))


# ---------------------------------------------------------------- curves of one name, Aim runs


def test_curves_sharing_a_name_are_told_apart(tmp_path, capsys):
    from encdist.evaluation.results import distinct_names

    for folder in ("a", "b"):
        save_results(tmp_path / folder / "mine.json", "mine", {"bpp": [0.1, 0.2], "psnr-rgb": [28.0, 30.0]})
    save_results(tmp_path / "a" / "other.json", "mine", {"bpp": [0.15], "psnr-rgb": [29.0]})
    files = [str(tmp_path / "a" / "mine.json"), str(tmp_path / "b" / "mine.json"), str(tmp_path / "a" / "other.json")]
    curves = [load_results(f) for f in files]
    distinct_names([(c, (Path(f).stem, f)) for c, f in zip(curves, files)])
    # the stems do not tell the two mine.json apart: their paths do
    assert [c["name"] for c in curves] == [f"mine ({files[0]})", f"mine ({files[1]})", f"mine ({files[2]})"]

    a, b = {"name": "x", "results": {}}, {"name": "x", "results": {}}
    distinct_names([(a, ("exp1",)), (b, ("exp2",)), ({"name": "y"}, ("exp1",))])
    assert (a["name"], b["name"]) == ("x (exp1)", "x (exp2)")

    assert main([*files, "--out", str(tmp_path / "rd.svg")]) == 0
    svg = (tmp_path / "rd.svg").read_text()
    for f in files:
        assert f"mine ({f})" in svg


@pytest.fixture(scope="module")
def aim_repo(tmp_path_factory):
    """An Aim repository with runs as ``compressai-train`` logs them (AimLogger, loader "infer").

    Experiment ``sweep``: four λ of ``m-pdf`` with the static and ideal baselines (the
    adaptive rate 8 % below the static one), each with an earlier infer pass at step 1
    that must not count; ``other``: one λ of ``m-pdf``; ``base``: a run without infer
    metrics (skipped).
    """
    from types import SimpleNamespace

    from encdist.training.aim_logger import AimLogger

    repo = tmp_path_factory.mktemp("aim") / "aim"
    lmbdas = [0.0035, 0.0067, 0.013, 0.025]

    def log(experiment, lmbda, infer):
        with AimLogger(str(repo), experiment=experiment) as logger:
            logger.log_hparams({"model": {"name": "m-pdf"}, "criterion": {"lmbda": lmbda}})
            for step, metrics in enumerate(infer, start=1):
                epoch = {"train": {"loss": 1.0 / step}}
                if metrics:
                    epoch["infer"] = metrics
                logger.log_metrics(epoch, scope="epoch", runner=SimpleNamespace(epoch_step=step))

    def point(i, scale=1.0):
        static = 0.2 * (i + 1)
        psnr = 28.0 + 2 * i
        return {
            "bpp": 0.92 * static * scale, "psnr-rgb": psnr, "bpp_y": 0.91 * static, "bpp_pdf": 0.01 * static,
            "bpp_static": static, "psnr-rgb_static": psnr, "bpp_ideal": 0.93 * static, "psnr-rgb_ideal": psnr,
        }

    for i, lmbda in enumerate(lmbdas):
        log("sweep", lmbda, [point(i, scale=3.0), point(i)])
    log("other", 0.0067, [point(1, scale=0.5)])
    log("base", 0.0067, [None])
    return SimpleNamespace(path=repo, lmbdas=lmbdas, point=point)


def test_load_aim_curves(aim_repo):
    from encdist.evaluation.results import load_aim_curves

    curves = {(c["meta"]["experiment"], c["name"]): c for c in load_aim_curves(aim_repo.path)}
    assert set(curves) == {(e, f"m-pdf{s}") for e in ("sweep", "other") for s in ("", "-static", "-ideal")}
    sweep = curves[("sweep", "m-pdf")]["results"]
    assert sweep["criterion.lmbda"] == pytest.approx(aim_repo.lmbdas)
    # the last infer pass of each run, sorted by rate
    assert sweep["bpp"] == pytest.approx([aim_repo.point(i)["bpp"] for i in range(4)])
    assert curves[("sweep", "m-pdf-static")]["results"]["bpp"] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert "bpp_static" not in sweep and "bpp_y" in sweep and "bpp_y" not in curves[("sweep", "m-pdf-static")]["results"]
    assert len(curves[("sweep", "m-pdf")]["meta"]["runs"]) == 4

    only = load_aim_curves(aim_repo.path, 'run.experiment == "other"')
    assert {c["name"] for c in only} == {"m-pdf", "m-pdf-static", "m-pdf-ideal"}
    assert load_aim_curves(aim_repo.path, "run.hparams.criterion.lmbda > 1") == []


def test_cli_aim_repo(tmp_path, aim_repo, capsys):
    from encdist.evaluation.results import load_aim_curves

    out = tmp_path / "rd.html"
    assert main(["--aim_repo", str(aim_repo.path), "--out", str(out)]) == 0
    page = out.read_text()
    for name in ("m-pdf (sweep)", "m-pdf (other)", "m-pdf-static (sweep)", "m-pdf-ideal (other)"):
        assert name in page, name

    # one experiment: no suffix; BD-rate against the static curve written to a file
    static = next(c for c in load_aim_curves(aim_repo.path, 'run.experiment == "sweep"') if c["name"] == "m-pdf-static")
    anchor = tmp_path / "static.json"
    save_results(anchor, "static", static["results"])
    capsys.readouterr()
    code = main(["--aim_repo", str(aim_repo.path), "-q", 'run.experiment == "sweep"', "--out", str(tmp_path / "bd.png"),
                 "--anchor", str(anchor)])
    assert code == 0, capsys.readouterr().err
    with open(tmp_path / "bd_bd.csv", newline="") as f:
        rows = {row["name"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"m-pdf", "m-pdf-static", "m-pdf-ideal"}
    assert float(rows["m-pdf"]["BD-rate PSNR [%]"]) == pytest.approx(-8.0, abs=0.01)
    assert float(rows["m-pdf-ideal"]["BD-rate PSNR [%]"]) == pytest.approx(-7.0, abs=0.01)


def test_cli_aim_errors(tmp_path, aim_repo, capsys):
    out = str(tmp_path / "rd.png")
    assert main(["--aim_repo", str(tmp_path / "nowhere"), "--out", out]) == 2
    assert "no Aim repository" in _one_line_error(capsys.readouterr().err)
    assert main(["--aim_repo", str(aim_repo.path), "-q", "run.experiment ==", "--out", out]) == 2
    assert "Aim query" in _one_line_error(capsys.readouterr().err)
    assert main(["-q", "run.experiment == 'x'", "--out", out]) == 2
    assert "--aim_repo" in _one_line_error(capsys.readouterr().err)
    assert main(["--out", out]) == 2
    assert "nothing to plot" in _one_line_error(capsys.readouterr().err)
    assert not list(tmp_path.glob("rd*"))
