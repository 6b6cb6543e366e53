"""Results of ``benchmarks/benchmark_lt.py``: run folders -> per-seed csv files -> tables and plots.

Per-seed raw results live in two csv files of a results folder (``benchmarks/results/`` for the shipped
ones), from which ``python -m benchmarks.benchmark_lt --report`` regenerates every table and plot:

- ``lt_runs.csv``: one row per (method, seed): the setting (threads, max_iter, extra opts, config),
  the train time, the final metrics and ``curve`` (``iteration:AP;...`` of every evaluation);
- ``lt_per_class_ap.csv``: one row per (method, seed, category): training instances and box AP.

Statistics: mean and sample standard deviation (``ddof=1``) over seeds. A method differs from its
baseline (:func:`baseline_of`) only when ``|mean difference|`` exceeds the combined standard
deviation ``sqrt(std_a^2 + std_b^2)``; otherwise the report says "within noise".
"""

import csv
import glob
import json
import math
import re
from pathlib import Path

import numpy as np

RUNS_CSV = "lt_runs.csv"
PER_CLASS_CSV = "lt_per_class_ap.csv"
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR@300")
TABLE_METRICS = ("AP", "AP50", "APr", "APc", "APf")
SETTING = ("threads", "max_iter", "extra_opts", "config")
RUN_COLUMNS = ("method", "seed") + SETTING + ("train_time_s",)
PER_CLASS_COLUMNS = (
    "method",
    "seed",
    "category_id",
    "name",
    "frequency",
    "train_instances",
    "AP",
)
FAMILIES = ("", "fcos", "centernet", "retinanet")  # "": Faster R-CNN (ROI heads)
FAMILY_TITLES = {
    "": "Faster R-CNN",
    "fcos": "FCOS",
    "centernet": "CenterNet",
    "retinanet": "RetinaNet",
}
_GROUP = re.compile(r"AP\[\d+,(\d+|inf)\)")


# ------------------------------------------------------------------------------ methods
def family_of(method: str) -> str:
    """``"fcos"``, ``"centernet"``, ``"retinanet"`` or ``""`` (ROI heads): the plots' own parsing."""
    from lt_detectron.visualization.plots import split_method

    return split_method(method)[0]


# eval-only rows ``<trained method>_<calibration>``: TEST.LT.CALIBRATION on that method's checkpoint
CALIBRATIONS = ("norcal", "logit_adjustment", "tau_norm")


def calibration_of(method: str):
    """``"softmax_norcal"`` -> ``("softmax", "norcal")``: the trained method and the test-time
    calibration of an eval-only row; None for a trained method."""
    for c in CALIBRATIONS:
        if method.endswith("_" + c) and len(method) > len(c) + 1:
            return method[: -len(c) - 1], c
    return None


def baseline_of(method: str):
    """The run a method is compared with: softmax (ROI heads), ``<family>_focal`` (dense heads);
    ``sigmoid_bofl`` with ``sigmoid`` (BOFL reweights the sigmoid classifier); a calibration row
    ``<m>_<calibration>`` with ``<m>``, the same checkpoints uncalibrated; ``None`` for a baseline
    itself."""
    if calibration_of(method):
        return calibration_of(method)[0]
    fam = family_of(method)
    base = {"sigmoid_bofl": "sigmoid"}.get(method, fam + "_focal" if fam else "softmax")
    return None if base == method else base


def method_order(methods):
    """Faster R-CNN first, then FCOS, CenterNet, RetinaNet; the baseline first in each."""
    return sorted(
        set(methods),
        key=lambda m: (FAMILIES.index(family_of(m)), baseline_of(m) is not None, m),
    )


# ------------------------------------------------------------------------------ run folders
def read_evaluations(run_dir, task="bbox"):
    """Every evaluation in ``metrics.json`` (Detectron2's JSONWriter, one json per line), in order:
    ``[(iteration, {metric: value})]``."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return []
    out = []
    prefix = task + "/"
    for line in path.read_text().splitlines():
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue
        m = {k[len(prefix) :]: v for k, v in d.items() if k.startswith(prefix)}
        if m:
            out.append((int(d.get("iteration", -1)), m))
    return out


def read_final_metrics(run_dir, task="bbox"):
    """The last evaluation of ``metrics.json``: ``{metric: value}``."""
    ev = read_evaluations(run_dir, task)
    return ev[-1][1] if ev else {}


def find_per_category_csv(run_dir, task="bbox"):
    hits = sorted(glob.glob(str(Path(run_dir) / "inference" / "*" / f"*_per_category_{task}.csv")))
    return hits[0] if hits else None


def read_per_category_csv(path):
    """The evaluator's per-category csv (read by ``result_plots.read_per_category_csv``) as dicts
    sorted by category_id: category_id, name, frequency, train_instances (-1 unknown), AP (NaN where
    the class has no validation GT)."""
    from lt_detectron.visualization.result_plots import read_per_category_csv as read_columns

    d = read_columns(str(path))
    rows = [
        {
            "category_id": int(d["category_id"][i]),
            "name": d["name"][i],
            "frequency": d["frequency"][i],
            "train_instances": int(d["train_instances"][i]),
            "AP": float(d["AP"][i]),
        }
        for i in range(len(d["name"]))
    ]
    rows.sort(key=lambda r: r["category_id"])
    return rows


_SPEED = re.compile(r"Overall training speed: (\d+) iterations in (\d+):(\d+):(\d+)")


def read_train_time(run_dir):
    """Training time in s from Detectron2's 'Overall training speed' line of log.txt (None if absent)."""
    path = Path(run_dir) / "log.txt"
    if not path.is_file():
        return None
    t = None
    for line in path.read_text(errors="replace").splitlines():
        m = _SPEED.search(line)
        if m:
            h, mi, s = (int(x) for x in m.groups()[1:])
            t = float(h * 3600 + mi * 60 + s)
    return t


def read_evaluator_metrics(run_dir, task="bbox"):
    """``{metric: value}`` of the evaluator's own file (``inference/<dataset>/<protocol>_metrics.json``,
    null read as NaN): what an ``--eval-only`` run leaves, since only training writes ``metrics.json``."""
    hits = sorted(glob.glob(str(Path(run_dir) / "inference" / "*" / "*_metrics.json")))
    if not hits:
        return {}
    with open(hits[0]) as f:
        res = json.load(f).get("results", {}).get(task, {})
    return {k: (math.nan if v is None else float(v)) for k, v in res.items()}


def collect_run(run_dir):
    """``{metrics, curve, per_category, per_category_csv, train_time_s}`` of a finished run folder
    (a training run: its last evaluation in ``metrics.json``; an ``--eval-only`` run, e.g. a
    calibration row: the evaluator's metrics file, and no curve)."""
    csv_path = find_per_category_csv(run_dir)
    ev = read_evaluations(run_dir)
    return {
        "metrics": ev[-1][1] if ev else read_evaluator_metrics(run_dir),
        "curve": [(it, m.get("AP")) for it, m in ev],
        "per_category_csv": csv_path,
        "per_category": read_per_category_csv(csv_path) if csv_path else [],
        "train_time_s": read_train_time(run_dir),
    }


# ------------------------------------------------------------------------------ per-seed csv
def _num(v):
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(float(v))


def _read_csv(path):
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_csv(path, columns, rows):
    tmp = Path(str(path) + ".part")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def save_runs(results_dir, results):
    """Merge finished runs (dicts of :func:`collect_run` + method, seed and the setting) into the two
    csv files of ``results_dir``; a (method, seed) already there is replaced."""
    d = Path(results_dir)
    d.mkdir(parents=True, exist_ok=True)
    keys = {(r["method"], str(r["seed"])) for r in results}
    runs = [r for r in _read_csv(d / RUNS_CSV) if (r["method"], r["seed"]) not in keys]
    per_class = [r for r in _read_csv(d / PER_CLASS_CSV) if (r["method"], r["seed"]) not in keys]
    groups = set()
    for r in results:
        groups.update(k for k in r["metrics"] if _GROUP.fullmatch(k))
    for r in results:
        row = {k: r.get(k, "") for k in RUN_COLUMNS[:-1]}
        row["extra_opts"] = " ".join(r.get("extra_opts") or [])
        row["max_iter"] = r.get("max_iter") or ""
        row["train_time_s"] = _num(r.get("train_time_s"))
        row.update({k: _num(r["metrics"].get(k)) for k in METRICS + tuple(groups)})
        row["curve"] = ";".join(f"{it}:{_num(ap)}" for it, ap in r.get("curve", []))
        runs.append(row)
        for c in r["per_category"]:
            per_class.append(
                dict(
                    method=r["method"],
                    seed=r["seed"],
                    **{k: c[k] for k in PER_CLASS_COLUMNS[2:-1]},
                    AP=_num(c["AP"]),
                )
            )
    all_groups = sorted(
        {k for r in runs for k in r if _GROUP.fullmatch(k)} | groups,
        key=lambda k: int(k[3:].split(",")[0]),
    )
    order = {m: i for i, m in enumerate(method_order([r["method"] for r in runs]))}
    runs.sort(key=lambda r: (order[r["method"]], int(r["seed"])))
    per_class.sort(key=lambda r: (order[r["method"]], int(r["seed"]), int(r["category_id"])))
    columns = RUN_COLUMNS + METRICS + tuple(all_groups) + ("curve",)
    _write_csv(d / RUNS_CSV, columns, [{k: r.get(k, "") for k in columns} for r in runs])
    _write_csv(d / PER_CLASS_CSV, PER_CLASS_COLUMNS, per_class)


def load_runs(results_dir):
    """``{method: [run rows (floats parsed, 'curve' as [(iteration, AP)])]}`` from ``lt_runs.csv``."""
    path = Path(results_dir) / RUNS_CSV
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run python -m benchmarks.benchmark_lt --methods ... --seeds N "
            f"--results-dir {results_dir} first (or point --results-dir at a folder with {RUNS_CSV})"
        )
    out = {}
    for r in _read_csv(path):
        row = {"method": r["method"], "seed": int(r["seed"])}
        for k, v in r.items():
            if k in ("method", "seed", "curve") or k in SETTING:
                row.setdefault(k, v)
            else:
                row[k] = float(v) if v not in ("", None) else float("nan")
        row["curve"] = [
            (int(p.split(":")[0]), float(p.split(":")[1]) if p.split(":")[1] else float("nan"))
            for p in (r.get("curve") or "").split(";")
            if p
        ]
        out.setdefault(r["method"], []).append(row)
    return {m: out[m] for m in method_order(out)}


def load_per_class(results_dir):
    """``({method: (S, C) AP in seed order}, counts (C,))`` from ``lt_per_class_ap.csv`` (categories
    by id; every method must have the same categories)."""
    rows = _read_csv(Path(results_dir) / PER_CLASS_CSV)
    by = {}
    counts = {}
    for r in rows:
        cid = int(r["category_id"])
        by.setdefault(r["method"], {}).setdefault(int(r["seed"]), {})[cid] = (
            float(r["AP"]) if r["AP"] else float("nan")
        )
        counts[cid] = int(float(r["train_instances"]))
    ids = sorted(counts)
    aps = {
        m: np.array([[seeds[s].get(i, np.nan) for i in ids] for s in sorted(seeds)])
        for m, seeds in by.items()
    }
    return aps, np.array([max(counts[i], 0) for i in ids], np.int64)


# ------------------------------------------------------------------------------ statistics
def mean_std(values):
    """``(mean, sample std (ddof=1; nan with one value), n)`` of the finite values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if not len(v):
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan"), len(v)


def verdict(a, b):
    """``(difference of means, combined std, word)`` of two ``mean_std`` triples."""
    diff = a[0] - b[0]
    if a[2] < 2 or b[2] < 2:
        return diff, float("nan"), "one seed: no verdict"
    comb = math.sqrt(a[1] ** 2 + b[1] ** 2)
    if abs(diff) <= comb:
        return diff, comb, "within noise"
    return diff, comb, "gain" if diff > 0 else "loss"


def _pm(ms, digits=2):
    mean, std, n = ms
    if n == 0:
        return "-"
    if n == 1 or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def group_keys(runs):
    keys = {k for rows in runs.values() for r in rows for k in r if _GROUP.fullmatch(k)}
    return sorted(keys, key=lambda k: int(k[3:].split(",")[0]))


def format_seed_table(runs):
    """Markdown: method | seeds | AP | AP50 | APr | APc | APf | groups | train time | x softmax."""
    groups = group_keys(runs)
    head = ["method", "seeds"] + list(TABLE_METRICS) + groups + ["train time", "time x softmax"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]
    t_ref = mean_std([r["train_time_s"] for r in runs.get("softmax", [])])[0]
    for m, rows in runs.items():
        cells = [m, ",".join(str(r["seed"]) for r in rows)]
        cells += [_pm(mean_std([r.get(k) for r in rows])) for k in list(TABLE_METRICS) + groups]
        t = mean_std([r["train_time_s"] for r in rows])[0]
        cells.append(
            "-" if math.isnan(t) else "%d:%02d" % (int(round(t)) // 60, int(round(t)) % 60)
        )
        cells.append("-" if math.isnan(t) or math.isnan(t_ref) else f"{t / t_ref:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_comparison(runs, metrics=("AP", "APr")):
    """Markdown: each method against its baseline, difference ± combined std and the verdict."""
    head = ["method", "baseline"]
    for k in metrics:
        head += [f"Δ{k}", f"{k} verdict"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|---|" * len(metrics)]
    for m, rows in runs.items():
        base = baseline_of(m)
        if base is None or base not in runs:
            continue
        cells = [m, base]
        for k in metrics:
            diff, comb, word = verdict(
                mean_std([r.get(k) for r in rows]), mean_std([r.get(k) for r in runs[base]])
            )
            if math.isnan(diff):
                cells += ["-", "undefined"]
                continue
            cells += [f"{diff:+.2f}" + ("" if math.isnan(comb) else f" (± {comb:.2f})"), word]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def format_convergence(runs):
    """Markdown: AP at each evaluation (e.g. 1/3, 2/3 and the end of the schedule), mean ± std."""
    rows_out = []
    iters = sorted({it for rows in runs.values() for r in rows for it, _ in r["curve"]})
    if len(iters) < 2:
        return ""
    head = ["method"] + [f"AP @ iter {it}" for it in iters]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(iters)]
    for m, rows in runs.items():
        if not any(len(r["curve"]) > 1 for r in rows):
            continue
        cells = [m]
        for it in iters:
            cells.append(_pm(mean_std([dict(r["curve"]).get(it) for r in rows])))
        rows_out.append(m)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if rows_out else ""


def settings_line(runs):
    """The settings of the runs, as one line (several when they differ)."""
    seen = {}
    for rows in runs.values():
        for r in rows:
            key = tuple(r.get(k, "") for k in SETTING[:3])
            seen.setdefault(key, []).append(r["method"])
    parts = []
    for (threads, max_iter, extra), methods in seen.items():
        parts.append(
            "torch threads %s, %s, extra opts: %s"
            % (
                threads or "?",
                f"SOLVER.MAX_ITER {max_iter}" if max_iter else "the configs' schedule",
                extra or "none",
            )
            + ("" if len(seen) == 1 else " (%s)" % ", ".join(sorted(set(methods))))
        )
    return "; ".join(parts)


def _shown(path) -> str:
    """``path`` relative to the repository when inside it (as the commands in the docs are)."""
    p = Path(path).resolve()
    root = Path(__file__).resolve().parent.parent
    return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)


def write_report(results_dir, out_dir=None, title="lt_shapes benchmark"):
    """Tables (``lt_benchmark.md``) and the figure (``ap_vs_instances.png``) from the csv files of
    ``results_dir``, written to ``out_dir`` (default: the same folder). Returns (markdown, paths)."""
    from benchmarks.plots import BAND_METRICS, plot_seed_benchmark

    runs = load_runs(results_dir)
    out = Path(out_dir or results_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [
        f"# {title}",
        "Box AP on lt_shapes_val (LVIS protocol), mean ± sample std over seeds (seed = model "
        "initialisation and data order). Settings: " + settings_line(runs) + ".",
        "Regenerate: `python -m benchmarks.benchmark_lt --report --results-dir %s`."
        % _shown(results_dir),
        format_seed_table(runs),
    ]
    comp = format_comparison(runs)
    if comp:
        parts += [
            "Against the baseline (a gain or loss only where |Δ| exceeds the combined std "
            "sqrt(std_a² + std_b²)):",
            comp,
        ]
    conv = format_convergence(runs)
    if conv:
        parts += ["Convergence (AP at the intermediate evaluations and the end):", conv]
    md = "\n\n".join(parts) + "\n"
    (out / "lt_benchmark.md").write_text(md)
    paths = [str(out / "lt_benchmark.md")]
    aps, counts = load_per_class(results_dir)
    if aps:
        panels = {}  # one row per detector family, in method_order (ROI heads first)
        for m in runs:
            if m in aps:
                fam = family_of(m)
                title = FAMILY_TITLES[fam] if fam else "ROI heads (Faster R-CNN)"
                panels.setdefault(title, {})[m] = aps[m]
        bands = {m: {b: [r.get(b) for r in rows] for b in BAND_METRICS} for m, rows in runs.items()}
        paths.append(
            plot_seed_benchmark(
                panels,
                counts,
                bands,
                str(out / "ap_vs_instances.png"),
                title="lt_shapes: box AP vs training instances (mean ± std over seeds)",
            )
        )
    return md, paths
