"""``compressai-plot``: RD figures and BD-rate tables from CompressAI results files.

Usage::

    compressai-plot [FILE.json ...] [--aim_repo DIR [-q QUERY]] --out rd.png|rd.pdf|rd.svg|rd.html
        [--metric psnr-rgb|ms-ssim-db|ms-ssim|all] [--anchor FILE.json]
        [--bd-method cubic|pchip] [--table-out PREFIX]

Curves come from results files and, as in CompressAI-Trainer, from the runs of an
Aim repository (``--aim_repo``, runs selected by an Aim query ``-q``): one RD point
per run (its last infer pass), one curve per experiment and model, plus the static
and ideal baselines the runs logged. Curves that share a name get their file stem
(or path) or experiment appended in the legend and the table.

``--metric all`` draws PSNR and MS-SSIM (dB) side by side. With ``--anchor``,
every curve is compared against the anchor: BD-rate on PSNR, BD-PSNR and, when
both have MS-SSIM, BD-rate on MS-SSIM in dB. The table is printed to stdout as
Markdown and saved as ``<out stem>_bd.csv`` and ``<out stem>_bd.md`` next to
``--out`` (or ``PREFIX.csv`` / ``PREFIX.md``). A curve that cannot be compared
gets "n/a" and the reason; a bad anchor or input file is an error.

Example (the paper's figure and its −7 % BD-rate)::

    compressai-plot results/reference/kodak/*.json --out rd.html \\
        --anchor results/reference/kodak/compressai-bmshj2018-factorized_mse_cuda.json

Every quickstart run of a λ sweep, over the paper's curves::

    compressai-plot results/reference/kodak/*.json --aim_repo encdist_runs/aim \\
        -q 'run.experiment == "quickstart"' --out rd.html
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from encdist.evaluation.bd import BD_METHODS, bd_psnr, bd_rate, validate_curve
from encdist.errors import ConfigError, EncdistError
from encdist.evaluation.plotting import FIGURE_FORMATS, plot_rd_panels, save_figure
from encdist.evaluation.results import (
    distinct_names,
    load_aim_curves,
    load_results,
    metric_values,
    needs_derived_db,
    write_atomic,
)

PROG = "compressai-plot"

#: Metrics drawn by ``--metric all``.
ALL_METRICS = ("psnr-rgb", "ms-ssim-db")

Curve = Mapping[str, Any]
Table = tuple[list[str], list[list[str]]]


class _ArgumentParser(argparse.ArgumentParser):
    """Raises :class:`ConfigError` instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``compressai-plot``."""
    parser = _ArgumentParser(
        prog=PROG,
        description="Plot rate-distortion curves of CompressAI results JSON files and of "
        "the runs of an Aim repository, and tabulate BD-rates against an anchor.",
    )
    parser.add_argument("files", nargs="*", metavar="FILE.json", help="results files to plot")
    parser.add_argument(
        "--aim_repo", "--aim-repo", metavar="DIR",
        help="also plot the runs of this Aim repository (e.g. encdist_runs/aim)",
    )
    parser.add_argument(
        "-q", "--query", default="",
        help="Aim query selecting the runs of --aim_repo, e.g. 'run.experiment == \"quickstart\"' "
        "(default: every run)",
    )
    parser.add_argument(
        "--out", required=True, metavar="PATH",
        help=f"figure to write ({', '.join(FIGURE_FORMATS)})",
    )
    parser.add_argument(
        "--metric", default="psnr-rgb",
        help="y-axis metric: psnr-rgb (default), ms-ssim-db, ms-ssim, any results key, "
        "or 'all' (PSNR and MS-SSIM in dB side by side)",
    )
    parser.add_argument(
        "--anchor", metavar="FILE.json",
        help="results file to compare every curve against (BD-rate table)",
    )
    parser.add_argument(
        "--bd-method", default="cubic", choices=BD_METHODS,
        help="curve fit of the BD metrics (default: cubic, as in VCEG-M33)",
    )
    parser.add_argument(
        "--table-out", metavar="PREFIX",
        help="write the BD table to PREFIX.csv and PREFIX.md "
        "(default: <out stem>_bd.csv / .md next to --out)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``compressai-plot``; returns the exit status (2 on error)."""
    try:
        args = build_parser().parse_args(argv)
        run(args)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except (EncdistError, OSError) as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace) -> None:
    """Loads the curves, writes the figure and, with an anchor, the BD table."""
    out = Path(args.out)
    if out.suffix.lower() not in FIGURE_FORMATS:
        raise ConfigError(
            f"--out must end in one of {', '.join(FIGURE_FORMATS)}; got {out.name!r}"
        )
    if args.query and not args.aim_repo:
        raise ConfigError("-q/--query selects runs of --aim_repo, which is not given")
    # (curve, sources that tell curves of one name apart, results file or None)
    entries = [(load_results(f), (Path(f).stem, str(f)), f) for f in args.files]
    if args.aim_repo:
        aim_curves = load_aim_curves(args.aim_repo, args.query)
        if not aim_curves:
            _warn(f"no run in {args.aim_repo} has infer metrics" + (f" (query {args.query!r})" if args.query else ""))
        entries += [(c, (c["meta"]["experiment"],), None) for c in aim_curves]
    if not entries:
        raise ConfigError("nothing to plot: give results files and/or --aim_repo")
    anchor = None
    if args.anchor:
        listed = [c for c, _, f in entries if f is not None and _same_file(f, [args.anchor])]
        anchor = _load_anchor(args.anchor, listed[0] if listed else None)
        if not listed:
            entries.insert(0, (anchor, (Path(args.anchor).stem, str(args.anchor)), args.anchor))
    distinct_names([(c, sources) for c, sources, _ in entries])
    plotted = [c for c, _, _ in entries]

    fig = _rd_figure(plotted, args.metric)
    tables = []
    if anchor is not None:
        others = [c for c in plotted if c is not anchor]
        header, rows = bd_table(anchor, others, args.bd_method, on_skip=_warn)
        caption = f"BD metrics against {anchor['name']!r} ({args.bd_method} fit)"
        markdown = f"{caption}\n\n{to_markdown(header, rows)}"
        print(markdown, end="")
        csv_path, md_path = _table_paths(out, args.table_out)
        write_atomic(csv_path, to_csv(header, rows))
        write_atomic(md_path, markdown)
        tables.append((caption, header, rows))
    save_figure(fig, out, tables=tables)


def bd_table(
    anchor: Curve,
    curves: Sequence[Curve],
    method: str = "cubic",
    on_skip: Callable[[str], None] | None = None,
) -> Table:
    """BD metrics of every curve against ``anchor``.

    Columns: name, BD-rate on PSNR (%), BD-PSNR (dB), BD-rate on MS-SSIM in dB
    (%, only when the anchor has MS-SSIM), and a note. A value that cannot be
    computed is ``"n/a"``, its reason goes to the note and to ``on_skip``.

    Returns:
        ``(header, rows)``, all cells strings.
    """
    with_msssim = metric_values(anchor["results"], "ms-ssim-db") is not None
    header = ["name", "BD-rate PSNR [%]", "BD-PSNR [dB]"]
    header += ["BD-rate MS-SSIM-dB [%]"] if with_msssim else []
    rows = []
    for curve in curves:
        cells, reasons = [], []
        for fn, metric, fmt in _bd_columns(with_msssim):
            value, reason = _bd_cell(fn, anchor, curve, metric, method)
            cells.append("n/a" if value is None else fmt.format(value))
            if reason and reason not in reasons:
                reasons.append(reason)
        if reasons and on_skip is not None:
            on_skip(f"{curve['name']}: {'; '.join(reasons)}")
        rows.append([str(curve["name"]), *cells, "; ".join(reasons)])
    return header + ["note"], rows


def to_markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown (GitHub) table; text columns left-aligned, numbers right."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", r"\|") for c in cells) + " |"

    align = [":--" if h in ("name", "note") else "--:" for h in header]
    return "\n".join([line(header), line(align), *map(line, rows)]) + "\n"


def to_csv(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The table as CSV text."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _bd_columns(with_msssim: bool) -> list[tuple[Callable[..., float], str, str]]:
    columns = [(bd_rate, "psnr-rgb", "{:.2f}"), (bd_psnr, "psnr-rgb", "{:.3f}")]
    return columns + ([(bd_rate, "ms-ssim-db", "{:.2f}")] if with_msssim else [])


def _bd_cell(
    fn: Callable[..., float], anchor: Curve, curve: Curve, metric: str, method: str
) -> tuple[float | None, str | None]:
    """``fn`` (bd_rate or bd_psnr) on ``metric``, or ``(None, reason)``."""
    pair = (anchor["results"], curve["results"])
    derive_db = metric == "ms-ssim-db" and needs_derived_db(pair)
    anchor_values, values = (metric_values(r, metric, derive_db=derive_db) for r in pair)
    if anchor_values is None:
        return None, f"anchor has no {metric!r} values"
    if values is None:
        return None, f"no {metric!r} values"
    try:
        value = fn(
            anchor["results"]["bpp"], anchor_values, curve["results"]["bpp"], values,
            method, anchor_name=str(anchor["name"]), test_name=str(curve["name"]),
        )
    except ConfigError as e:
        return None, str(e)
    return value, None


def _load_anchor(path: str, loaded: Curve | None = None) -> Curve:
    """Loads the anchor (unless ``loaded``) and checks that BD metrics can use it."""
    anchor = loaded if loaded is not None else load_results(path)
    psnr = metric_values(anchor["results"], "psnr-rgb")
    if psnr is None:
        raise ConfigError(f"anchor {path} has no 'psnr-rgb' values")
    try:
        validate_curve(anchor["results"]["bpp"], psnr, str(anchor["name"]))
    except ConfigError as e:
        raise ConfigError(f"bad anchor {path}: {e}") from None
    return anchor


def _rd_figure(curves: Sequence[Curve], metric: str):
    """The RD figure; warnings about skipped curves go to stderr."""
    if metric == "all":
        metrics = [m for m in ALL_METRICS if _any_has(curves, m)]
        if len(metrics) < len(ALL_METRICS):
            _warn("no curve has MS-SSIM values; plotting PSNR only")
    else:
        metrics = [metric]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = plot_rd_panels(curves, metrics)
    for w in caught:
        _warn(str(w.message))
    return fig


def _any_has(curves: Sequence[Curve], metric: str) -> bool:
    return any(metric_values(c["results"], metric) is not None for c in curves)


def _table_paths(out: Path, prefix: str | None) -> tuple[Path, Path]:
    """``(csv, md)`` paths of the BD table."""
    if prefix:
        base = Path(prefix)
        if base.suffix.lower() in (".csv", ".md"):
            base = base.with_suffix("")
        return base.with_name(base.name + ".csv"), base.with_name(base.name + ".md")
    return out.with_name(out.stem + "_bd.csv"), out.with_name(out.stem + "_bd.md")


def _same_file(path: str, others: Sequence[str]) -> bool:
    target = Path(path).resolve()
    return any(Path(o).resolve() == target for o in others)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
