"""Figures: rate-distortion curves, encoding distributions and per-channel rates.

Figures are built with :class:`matplotlib.figure.Figure` directly (no
``pyplot``), so they render with the Agg / PDF / SVG backends without a
display and without touching the global backend or pyplot's figure list.

- :func:`plot_rd`: RD curves of CompressAI-format results (see
  :mod:`encdist.evaluation.results`), optionally with a highlighted point ("this run").
- :func:`plot_distributions`: the target distribution ``p`` and the
  reconstructed ``p̂`` side by side, coloured by negative log-likelihood, as
  in Fig. 1 of Ulhaq & Bajić, "Learned Compression of Encoding Distributions"
  (ICIP 2024).
- :func:`plot_channel_rates`: per-channel rate of ``y`` under the static and
  the adaptive distribution.
- :func:`save_figure`: ``.png``, ``.pdf``, ``.svg`` or a self-contained
  ``.html`` page (inline SVG plus tables of the plotted points).
"""

from __future__ import annotations

import html
import io
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from encdist.errors import ConfigError
from encdist.evaluation.results import PathLike, metric_values, needs_derived_db, write_atomic

__all__ = [
    "FIGURE_FORMATS",
    "METRIC_LABELS",
    "reference_results_dir",
    "plot_rd",
    "plot_rd_panels",
    "save_figure",
    "figure_html",
    "plot_distributions",
    "plot_channel_rates",
]

#: File suffixes :func:`save_figure` accepts.
FIGURE_FORMATS = (".png", ".pdf", ".svg", ".html")

#: Axis labels of the usual metrics; other metrics are labelled by their key.
METRIC_LABELS: dict[str, str] = {
    "bpp": "Bit-rate [bpp]",
    "psnr-rgb": "PSNR (RGB) [dB]",
    "ms-ssim": "MS-SSIM (RGB)",
    "ms-ssim-db": "MS-SSIM (RGB) [dB]",
}

_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "h")

HighlightPoint = Mapping[str, Any] | tuple[float, float]


def reference_results_dir() -> Path | None:
    """The repository's folder of reference Kodak results
    (``results/reference/kodak``), or None when it is not there (e.g. in an
    installed wheel)."""
    path = Path(__file__).resolve().parents[3] / "results" / "reference" / "kodak"
    return path if path.is_dir() else None


# --------------------------------------------------------------------------
# RD curves


def plot_rd(
    curves: Sequence[Mapping[str, Any]],
    metric: str = "psnr-rgb",
    ax: Axes | None = None,
    highlight_point: HighlightPoint | None = None,
    *,
    title: str | None = None,
) -> Figure:
    """Plots rate-distortion curves: rate (bpp) on x, ``metric`` on y.

    Args:
        curves: loaded results files (:func:`encdist.evaluation.results.load_results`):
            dicts with ``"name"`` and ``"results"``. A curve without
            ``metric`` is skipped with a warning.
        metric: results key to plot, e.g. ``"psnr-rgb"``, ``"ms-ssim"`` or
            ``"ms-ssim-db"`` (derived from ``"ms-ssim"`` when not stored; see
            :func:`encdist.evaluation.results.metric_values`).
        ax: axes to draw into; a new figure is made when None.
        highlight_point: one RD point to mark (e.g. "this run"): a mapping
            with ``"bpp"`` and ``metric`` (and optionally ``"name"`` for the
            legend), or a ``(bpp, value)`` tuple.
        title: axes title.

    Returns:
        The figure holding ``ax``.

    Raises:
        ConfigError: no curve has ``metric``, or a curve's columns differ in
            length.
    """
    if ax is None:
        fig = Figure(figsize=(6.4, 4.8), layout="constrained")
        ax = fig.add_subplot()
    results = [curve["results"] for curve in curves]
    derive_db = metric == "ms-ssim-db" and needs_derived_db(results)
    drawn = 0
    for i, curve in enumerate(curves):
        name = str(curve.get("name") or f"curve {i}")
        y = metric_values(curve["results"], metric, derive_db=derive_db)
        if y is None:
            warnings.warn(f"{name}: no {metric!r} values; not plotted", stacklevel=2)
            continue
        x = _column(curve["results"], "bpp", name)
        if x.shape != y.shape:
            raise ConfigError(f"{name}: {x.size} bpp values but {y.size} {metric!r} values")
        order = np.argsort(x, kind="stable")
        ax.plot(x[order], y[order], marker=_MARKERS[i % len(_MARKERS)], markersize=4, label=name)
        drawn += 1
    if not drawn:
        raise ConfigError(f"no curve has {metric!r} values to plot")
    if highlight_point is not None:
        _draw_highlight(ax, highlight_point, metric, derive_db)
    ax.set_xlabel(METRIC_LABELS["bpp"])
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return ax.figure


def plot_rd_panels(
    curves: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    highlight_point: HighlightPoint | None = None,
) -> Figure:
    """One figure with an RD plot (:func:`plot_rd`) per metric, side by side."""
    if not metrics:
        raise ConfigError("no metric to plot")
    fig = Figure(figsize=(6.4 * len(metrics), 4.8), layout="constrained")
    for ax, metric in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics):
        plot_rd(curves, metric, ax=ax, highlight_point=highlight_point)
    return fig


def _column(results: Mapping[str, Any], key: str, name: str) -> np.ndarray:
    values = metric_values(results, key)
    if values is None:
        raise ConfigError(f"{name}: no {key!r} values")
    return np.atleast_1d(values)


def _draw_highlight(ax: Axes, point: HighlightPoint, metric: str, derive_db: bool) -> None:
    if isinstance(point, Mapping):
        label = str(point.get("name") or "this run")
        x = metric_values(point, "bpp")
        y = metric_values(point, metric, derive_db=derive_db)
        if x is None or y is None:
            raise ConfigError(f"highlighted point needs 'bpp' and {metric!r} values")
    else:
        label = "this run"
        try:
            x, y = (np.asarray(v, dtype=np.float64) for v in point)
        except (TypeError, ValueError):
            raise ConfigError(
                "highlighted point must be a mapping or a (bpp, value) pair"
            ) from None
    ax.plot(
        np.ravel(x), np.ravel(y), linestyle="none", marker="*", markersize=14,
        color="crimson", markeredgecolor="black", zorder=5, label=label,
    )


# --------------------------------------------------------------------------
# Saving


def save_figure(
    fig: Figure,
    path: PathLike,
    *,
    tables: Sequence[tuple[str, Sequence[str], Sequence[Sequence[Any]]]] = (),
) -> Path:
    """Saves ``fig`` as ``.png``, ``.pdf``, ``.svg`` or ``.html``, atomically.

    The HTML page is self-contained: the figure as inline SVG, then a table of
    the plotted points of every axes (one row per point of every labelled
    line), then any extra ``tables`` given as ``(caption, header, rows)``.

    Returns:
        The path written.

    Raises:
        ConfigError: the suffix is not one of :data:`FIGURE_FORMATS`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FIGURE_FORMATS:
        raise ConfigError(
            f"unsupported figure format {suffix or path.name!r}; "
            f"use one of {', '.join(FIGURE_FORMATS)}"
        )
    if suffix == ".html":
        return write_atomic(path, figure_html(fig, title=path.stem, tables=tables))
    return write_atomic(path, _render(fig, suffix[1:]))


def figure_html(
    fig: Figure,
    title: str = "",
    tables: Sequence[tuple[str, Sequence[str], Sequence[Sequence[Any]]]] = (),
) -> str:
    """A self-contained HTML page: ``fig`` as inline SVG, the tables of its
    plotted points, then the extra ``tables`` (``(caption, header, rows)``)."""
    svg = _render(fig, "svg").decode("utf-8")
    svg = svg[svg.find("<svg"):]  # drop the XML prolog and DOCTYPE
    sections = [_html_table(*t) for t in (*_point_tables(fig), *tables)]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>\n"
        "body{font-family:sans-serif;margin:2em}"
        "table{border-collapse:collapse;margin:1em 0}"
        "th,td{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "th:first-child,td:first-child{text-align:left}"
        "caption{font-weight:bold;text-align:left}\n"
        "</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n<figure>\n{svg}\n</figure>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )


def _render(fig: Figure, fmt: str) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=150)
    return buf.getvalue()


def _point_tables(fig: Figure) -> list[tuple[str, list[str], list[list[Any]]]]:
    """``(caption, header, rows)`` of the labelled lines of every axes."""
    tables = []
    for ax in fig.axes:
        rows = [
            [line.get_label(), f"{x:.6g}", f"{y:.6g}"]
            for line in ax.get_lines()
            if not line.get_label().startswith("_")
            for x, y in zip(np.ravel(line.get_xdata()), np.ravel(line.get_ydata()))
        ]
        if rows:
            header = ["curve", ax.get_xlabel() or "x", ax.get_ylabel() or "y"]
            tables.append((ax.get_title() or f"points: {header[2]}", header, rows))
    return tables


def _html_table(caption: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cells(tag: str, values: Sequence[Any]) -> str:
        return "".join(f"<{tag}>{html.escape(str(v))}</{tag}>" for v in values)

    body = "\n".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return (
        f"<table>\n<caption>{html.escape(caption)}</caption>\n"
        f"<thead><tr>{cells('th', header)}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    )


# --------------------------------------------------------------------------
# Distributions and per-channel rates


def plot_distributions(
    p: Any,
    p_hat: Any,
    channels: Sequence[int] | None = None,
    *,
    only_support: bool = False,
    max_bits: float = 16.0,
) -> Figure:
    """The target ``p`` and reconstructed ``p̂`` side by side as heatmaps.

    Each cell is coloured by the negative log-likelihood ``-log2 p`` of a bin
    (bits), clipped at ``max_bits`` so that empty bins show as the darkest
    colour instead of infinity. Bins are labelled by their centre,
    ``-B/2 … B/2 - 1`` (``-128 … 127`` for ``B = 256``).

    Args:
        p: target distribution, shape ``(C, B)`` (or ``(1, C, B)``); numpy
            array or torch tensor.
        p_hat: reconstructed distribution, same shape.
        channels: indices of the channels to show (all when None), in the
            order given.
        only_support: show only the span of bins where ``p`` or ``p̂`` has
            mass (probability above ``2**-max_bits``).
        max_bits: upper end of the colour scale.

    Raises:
        ConfigError: the arrays are not 2-D, differ in shape, hold negative or
            non-finite values, or ``channels`` is out of range.
    """
    p_ = _as_array(p, "p", ndim=2)
    q_ = _as_array(p_hat, "p_hat", ndim=2)
    if p_.shape != q_.shape:
        raise ConfigError(f"p has shape {p_.shape} but p_hat has shape {q_.shape}")
    rows = _channel_indices(channels, p_.shape[0])
    p_, q_ = p_[rows], q_[rows]
    centers = np.arange(p_.shape[1]) - p_.shape[1] // 2
    if only_support:
        span = _support_span(np.maximum(p_, q_), 2.0 ** -max_bits)
        p_, q_, centers = p_[:, span], q_[:, span], centers[span]

    fig = Figure(figsize=(11, 4.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    extent = (centers[0] - 0.5, centers[-1] + 0.5, len(rows) - 0.5, -0.5)
    for ax, values, title in zip(axes, (p_, q_), ("target $p$", r"reconstructed $\hat{p}$")):
        nll = -np.log2(np.maximum(values, 2.0 ** -max_bits))
        image = ax.imshow(
            nll, aspect="auto", interpolation="nearest", cmap="viridis_r",
            vmin=0.0, vmax=max_bits, extent=extent,
        )
        ax.set_title(title)
        ax.set_xlabel("bin")
    axes[0].set_ylabel("channel")
    if channels is not None and len(rows) <= 32:
        axes[0].set_yticks(range(len(rows)), [str(c) for c in rows])
    fig.colorbar(image, ax=list(axes), label=r"$-\log_2$ probability [bits]")
    return fig


def plot_channel_rates(rate_static: Any, rate_adaptive: Any, *, ax: Axes | None = None) -> Figure:
    """Per-channel rate (bits) of ``y`` under the static and the adaptive
    distribution, channels sorted by decreasing static rate.

    Args:
        rate_static: shape ``(C,)``, bits of each channel with the static
            (factorized) distribution.
        rate_adaptive: shape ``(C,)``, bits with the per-image distribution.
        ax: axes to draw into; a new figure is made when None.

    Raises:
        ConfigError: the arrays are not 1-D, differ in length, or hold
            negative or non-finite values.
    """
    static = _as_array(rate_static, "rate_static", ndim=1)
    adaptive = _as_array(rate_adaptive, "rate_adaptive", ndim=1)
    if static.shape != adaptive.shape:
        raise ConfigError(
            f"rate_static has {static.size} channels but rate_adaptive has {adaptive.size}"
        )
    if ax is None:
        fig = Figure(figsize=(9, 4.8), layout="constrained")
        ax = fig.add_subplot()
    order = np.argsort(-static, kind="stable")
    rank = np.arange(static.size)
    ax.bar(rank, static[order], width=1.0, color="lightgray", edgecolor="gray",
           linewidth=0.3, label="static")
    ax.plot(rank, adaptive[order], color="tab:blue", marker=".", markersize=3,
            linewidth=1.0, label="adaptive")
    total_s, total_a = static.sum(), adaptive.sum()
    saving = f" ({(total_a / total_s - 1) * 100:+.2f} %)" if total_s > 0 else ""
    ax.set_title(f"rate of y per channel: static {total_s:.0f} bits, "
                 f"adaptive {total_a:.0f} bits{saving}")
    ax.set_xlabel("channel (sorted by static rate)")
    ax.set_ylabel("rate [bits]")
    if static.size <= 32:
        ax.set_xticks(rank, [str(c) for c in order])
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    return ax.figure


def _as_array(x: Any, name: str, ndim: int) -> np.ndarray:
    """``x`` (numpy array, torch tensor or nested lists) as a float array of
    ``ndim`` dimensions (leading batch dimensions of size 1 are dropped),
    finite and non-negative."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} is not a numeric array") from None
    while a.ndim > ndim and a.shape[0] == 1:
        a = a[0]
    if a.ndim != ndim or a.size == 0:
        raise ConfigError(f"{name} must be a non-empty {ndim}-D array; got shape {a.shape}")
    if not np.isfinite(a).all() or (a < 0).any():
        raise ConfigError(f"{name} has negative or non-finite values")
    return a


def _channel_indices(channels: Sequence[int] | None, num_channels: int) -> list[int]:
    if channels is None:
        return list(range(num_channels))
    rows = [int(c) for c in channels]
    bad = [c for c in rows if not 0 <= c < num_channels]
    if bad or not rows:
        raise ConfigError(
            f"channels must be a non-empty list of indices in [0, {num_channels}); "
            f"got {bad or rows}"
        )
    return rows


def _support_span(mass: np.ndarray, floor: float) -> slice:
    """The contiguous span of bins where some channel has mass above ``floor``
    (all bins when none has)."""
    (bins,) = np.nonzero((mass > floor).any(axis=0))
    return slice(bins[0], bins[-1] + 1) if bins.size else slice(None)
