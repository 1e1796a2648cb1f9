"""Reading and writing rate-distortion results in the CompressAI JSON format.

A results file (as written by ``compressai.utils.eval_model`` and by
CompressAI-Trainer) looks like::

    {
      "name": "bmshj2018-factorized-pdf",
      "description": "Inference (ans)",
      "meta": {"dataset": "Kodak", ...},
      "results": {"bpp": [...], "psnr-rgb": [...], "ms-ssim": [...], ...}
    }

with one list entry per RD point (e.g. per quality level). Files written here
are sorted by ``bpp`` and replaced atomically, so a reader never sees a
half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from encdist.errors import ConfigError

__all__ = [
    "load_results",
    "save_results",
    "merge_points",
    "sort_by_bpp",
    "metric_values",
    "ms_ssim_db",
    "needs_derived_db",
    "write_atomic",
    "load_aim_curves",
    "distinct_names",
]

#: Other keys under which a metric may be stored (CompressAI's ``eval_model``
#: writes ``ms-ssim-rgb``, CompressAI-Trainer writes ``ms-ssim``).
METRIC_ALIASES: dict[str, tuple[str, ...]] = {
    "psnr-rgb": ("psnr-rgb", "psnr"),
    "ms-ssim": ("ms-ssim", "ms-ssim-rgb"),
}

PathLike = str | os.PathLike


def load_results(path: PathLike) -> dict[str, Any]:
    """Loads a CompressAI-format results JSON file.

    The returned dict always has ``"name"`` (the file's stem when the file has
    none), ``"description"``, ``"meta"`` and ``"results"`` (with a ``"bpp"``
    list).

    Raises:
        ConfigError: the file is missing or unreadable, is not valid JSON, or
            lacks a ``"results"`` object with a non-empty ``"bpp"`` list.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"results file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read results file {path}: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ConfigError(f"{path} has no \"results\" object; not a CompressAI results file")
    bpp = data["results"].get("bpp")
    if not isinstance(bpp, list) or not bpp:
        raise ConfigError(f"{path} has no \"bpp\" list under \"results\"")
    data.setdefault("name", path.stem)
    data.setdefault("description", "")
    data.setdefault("meta", {})
    return data


def save_results(
    path: PathLike,
    name: str,
    results: Mapping[str, Sequence[Any]],
    description: str = "",
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Writes ``results`` as a CompressAI-format JSON file, atomically.

    Every column is sorted by ``bpp``; numpy and torch scalars are converted to
    plain numbers.

    Args:
        path: the output file; missing parent folders are created.
        name: the curve's name (legend label in plots).
        results: columns of equal length, one of them ``"bpp"``.
        description: free text.
        meta: extra information (dataset, model, ...).

    Returns:
        The path written.

    Raises:
        ConfigError: ``"bpp"`` is missing or the columns differ in length.
    """
    data = {
        "name": name,
        "description": description,
        "meta": dict(meta or {}),
        "results": sort_by_bpp(results),
    }
    text = json.dumps(data, indent=2, default=_json_default) + "\n"
    return write_atomic(path, text)


def merge_points(points: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    """Turns per-RD-point dicts into column lists sorted by ``bpp``.

    >>> merge_points([{"bpp": 0.5, "psnr-rgb": 30}, {"bpp": 0.2, "psnr-rgb": 27}])
    {'bpp': [0.2, 0.5], 'psnr-rgb': [27, 30]}

    Raises:
        ConfigError: there are no points, or some point lacks a key that
            another one has.
    """
    if not points:
        raise ConfigError("no RD points to merge")
    keys = list(dict.fromkeys(k for point in points for k in point))
    for i, point in enumerate(points):
        missing = [k for k in keys if k not in point]
        if missing:
            raise ConfigError(f"RD point {i} lacks {', '.join(map(repr, missing))}")
    return sort_by_bpp({k: [point[k] for point in points] for k in keys})


def sort_by_bpp(results: Mapping[str, Sequence[Any]]) -> dict[str, list]:
    """Returns the columns of ``results`` as lists, all sorted by ``bpp``.

    Raises:
        ConfigError: ``"bpp"`` is missing or the columns differ in length.
    """
    if "bpp" not in results:
        raise ConfigError('results have no "bpp" column')
    columns = {k: _as_list(k, v) for k, v in results.items()}
    n = len(columns["bpp"])
    uneven = [k for k, v in columns.items() if len(v) != n]
    if uneven:
        raise ConfigError(
            f"results columns differ in length: bpp has {n} values, "
            + ", ".join(f"{k} has {len(columns[k])}" for k in uneven)
        )
    order = sorted(range(n), key=lambda i: float(columns["bpp"][i]))
    return {k: [v[i] for i in order] for k, v in columns.items()}


def ms_ssim_db(ms_ssim: Any) -> np.ndarray:
    """MS-SSIM in decibels: ``-10 log10(1 - ms_ssim)`` (inf for a perfect 1)."""
    value = np.asarray(ms_ssim, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return -10.0 * np.log10(1.0 - value)


def metric_values(
    results: Mapping[str, Any], metric: str, *, derive_db: bool = False
) -> np.ndarray | None:
    """Values of ``metric`` in a ``"results"`` mapping, or None when absent.

    Works on column lists (a results file) and on scalars (one RD point).
    ``psnr-rgb`` and ``ms-ssim`` are also looked up under their aliases (see
    :data:`METRIC_ALIASES`). ``ms-ssim-db`` is taken as stored or, when absent
    or when ``derive_db`` is set, computed from the mean MS-SSIM with
    :func:`ms_ssim_db`.

    Note: CompressAI-Trainer's stored ``ms-ssim-db`` is the mean of per-image dB
    values, which is higher than the dB of the mean MS-SSIM. When curves of
    both kinds are compared, pass ``derive_db=True`` for all of them (see
    :func:`needs_derived_db`).
    """
    if metric == "ms-ssim-db":
        stored = None if derive_db else _lookup(results, ("ms-ssim-db",))
        if stored is not None:
            return stored
        mean = metric_values(results, "ms-ssim")
        return None if mean is None else ms_ssim_db(mean)
    return _lookup(results, METRIC_ALIASES.get(metric, (metric,)))


def needs_derived_db(results: Sequence[Mapping[str, Any]]) -> bool:
    """Whether MS-SSIM in dB should be derived from the mean MS-SSIM for all
    of ``results`` so that they are comparable: true when some lack a stored
    ``ms-ssim-db`` and all have the mean MS-SSIM."""
    stored = [r.get("ms-ssim-db") is not None for r in results]
    have_mean = [metric_values(r, "ms-ssim") is not None for r in results]
    return not all(stored) and all(have_mean)


def write_atomic(path: PathLike, data: str | bytes) -> Path:
    """Writes ``data`` (text as UTF-8, or bytes) to ``path`` through a
    temporary file in the same folder and :func:`os.replace`, creating missing
    parent folders. Readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # mkstemp makes the file private (0600)
            f.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


#: Coding modes whose values the runner logs beside the model's own as ``<metric>_<mode>``.
AIM_BASELINES = ("static", "ideal")


def load_aim_curves(repo: PathLike, query: str = "", loader: str = "infer") -> list[dict[str, Any]]:
    """RD curves of the runs in an Aim repository, in the format of :func:`load_results`.

    Every run with metrics of the ``loader`` pass (epoch scope; the last step counts,
    i.e. the final model) is one RD point, with ``criterion.lmbda`` from its
    hyper-parameters. Points are grouped into curves by Aim experiment and model
    name (``hparams.model.name``); the static / ideal values the runner logs beside
    the adaptive ones (``bpp_static``, ``psnr-rgb_static``, ...) make the curves
    ``<model>-static`` and ``<model>-ideal``. Columns are the metrics every point has.

    Args:
        repo: the Aim repository folder (``${paths.aim}``, the one ``aim up --repo`` takes).
        query: an Aim query selecting runs, e.g. ``run.experiment == "quickstart"``
            or ``run.hparams.criterion.lmbda < 0.01``; empty: every run. Runs appear
            once indexed (``compressai-train`` indexes each run it closes).

    Raises:
        ConfigError: no repository there, or the query is not valid.
    """
    from aim import Repo
    from aim.sdk.types import QueryReportMode

    if not Path(repo, ".aim").is_dir():
        raise ConfigError(f"no Aim repository at {repo} (no .aim folder)")
    groups: dict[tuple[str, str], list[tuple[str, dict]]] = {}
    try:
        found = Repo(str(repo)).query_runs(query, report_mode=QueryReportMode.DISABLED)
        items = list(found.iter_runs())
    except Exception as e:  # Aim reports a bad query as SyntaxError, NameError, ...
        raise ConfigError(f"Aim query {query!r} failed: {_first_line(e)}") from None
    for item in items:
        run = item.run
        values = _last_values(run, loader)
        if "bpp" not in values:
            continue  # no finished pass of that loader (e.g. a base model without infer set)
        hparams = _get(run, "hparams") or {}
        model = str((hparams.get("model") or {}).get("name") or "model")
        lmbda = (hparams.get("criterion") or {}).get("lmbda")
        experiment = str(run.experiment or "")
        suffixes = {f"_{m}" for m in AIM_BASELINES}
        own = {k: v for k, v in values.items() if not k.endswith(tuple(suffixes))}
        points = {model: own}
        for mode in AIM_BASELINES:
            base = {k[: -len(mode) - 1]: v for k, v in values.items() if k.endswith(f"_{mode}")}
            if "bpp" in base:
                points[f"{model}-{mode}"] = base
        for name, point in points.items():
            if lmbda is not None:
                point["criterion.lmbda"] = float(lmbda)
            groups.setdefault((experiment, name), []).append((run.hash, point))
    curves = []
    for (experiment, name), members in sorted(groups.items()):
        keys = set.intersection(*(set(p) for _, p in members))
        columns = {k: [p[k] for _, p in members] for k in sorted(keys)}
        meta = {"aim_repo": str(repo), "experiment": experiment, "runs": [h for h, _ in members], "query": query}
        curves.append({"name": name, "description": f"Aim runs of {experiment!r}", "meta": meta, "results": sort_by_bpp(columns)})
    return curves


def distinct_names(entries: Sequence[tuple[dict[str, Any], Sequence[str]]]) -> None:
    """Renames curves that share a name, so that legends and BD tables tell them apart.

    ``entries`` are ``(curve, sources)``, sources from short to long (a results
    file's stem, then its path; an Aim curve's experiment). Each curve whose name
    another one has too becomes ``"name (source)"``, with the first source level
    at which those labels all differ (the longest when none does).
    """
    from collections import Counter

    names = [str(curve["name"]) for curve, _ in entries]
    shared = {n for n, k in Counter(names).items() if k > 1}
    if not shared:
        return
    depth = max(len(s) for (_, s), n in zip(entries, names) if n in shared)
    for level in range(max(depth, 1)):
        labels = [
            f"{n} ({s[min(level, len(s) - 1)]})" if n in shared and len(s) else n
            for (_, s), n in zip(entries, names)
        ]
        if len(set(labels)) == len(labels):
            break
    for (curve, _), label in zip(entries, labels):
        curve["name"] = label


def _get(run, key: str):
    try:
        return run[key]
    except KeyError:
        return None


def _last_values(run, loader: str) -> dict[str, float]:
    """``{metric: value at the last step}`` of the run's ``loader`` metrics (epoch scope)."""
    out = {}
    for metric in run.metrics():
        if metric.context.to_dict() != {"loader": loader, "scope": "epoch"}:
            continue
        steps, (values,) = metric.data.view("val").items_list()
        if len(steps):
            out[metric.name] = float(values[int(np.argmax(steps))])
    return out


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _lookup(results: Mapping[str, Any], keys: Sequence[str]) -> np.ndarray | None:
    for key in keys:
        if results.get(key) is not None:
            try:
                return np.asarray(results[key], dtype=np.float64)
            except (TypeError, ValueError):
                raise ConfigError(f"results column {key!r} has non-numeric values") from None
    return None


def _as_list(key: str, value: Any) -> list:
    """A column as a list (numpy arrays and torch tensors included)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"results column {key!r} is not a list")
    return list(value)


def _json_default(value: Any) -> Any:
    """Makes numpy / torch scalars and arrays JSON-serializable."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
