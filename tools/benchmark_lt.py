#!/usr/bin/env python
"""Train and evaluate every method on the embedded long-tailed dataset (lt_shapes) with one schedule and seed.

Each method runs ``tools/train_net.py`` in a subprocess with ``OUTPUT_DIR=<output-root>/<method>``, one after
the other. A method whose folder already has ``lt_benchmark_result.json`` (written here after a successful
run) is skipped unless ``--force``, so an interrupted benchmark resumes where it stopped. Then the final
metrics (``metrics.json``) and per-category AP (``inference/<dataset>/lvis_per_category_bbox.csv``) of every
run are read and written as ONE markdown table to ``<output-root>/lt_benchmark.md`` (also printed), with the
per-class AP vs training-instance plot in ``<output-root>/ap_vs_instances.png``.

    python tools/benchmark_lt.py                                   # all methods, the configs' schedule
    python tools/benchmark_lt.py --methods softmax,fcos_focal --max-iter 5 --output-root /tmp/ltb
    python tools/benchmark_lt.py --extra-opts "SOLVER.IMS_PER_BATCH 4"

Methods: ``<m>`` -> configs/lt_shapes/faster_rcnn_tiny_<m>.yaml, ``fcos_<m>`` -> fcos_tiny_<m>.yaml,
``centernet_<m>``, ``retinanet_<m>`` likewise. ``bags_decoupled`` starts from the ``softmax`` run's
``model_final.pth`` (softmax is trained first, and added if missing). Default: every faster_rcnn_tiny_*
config except bags_decoupled, plus every fcos_tiny_* config.
"""

import argparse
import csv
import glob
import json
import math
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs" / "lt_shapes"
TRAIN_NET = ROOT / "tools" / "train_net.py"
RESULT_FILE = "lt_benchmark_result.json"
_FAMILIES = {"fcos": "fcos_tiny_", "centernet": "centernet_tiny_", "retinanet": "retinanet_tiny_"}
METRIC_COLUMNS = ("AP", "AP50", "APr", "APc", "APf")


# ------------------------------------------------------------------------------------------ methods
def config_for(method: str) -> Path:
    fam, _, rest = method.partition("_")
    if fam in _FAMILIES and rest:
        return CONFIG_DIR / (_FAMILIES[fam] + rest + ".yaml")
    return CONFIG_DIR / ("faster_rcnn_tiny_%s.yaml" % method)


def default_methods():
    def stems(prefix):
        return sorted(
            Path(p).stem[len(prefix) :] for p in glob.glob(str(CONFIG_DIR / (prefix + "*.yaml")))
        )

    roi = [m for m in stems("faster_rcnn_tiny_") if m != "bags_decoupled"]
    if "softmax" in roi:
        roi = ["softmax"] + [m for m in roi if m != "softmax"]
    fcos = stems("fcos_tiny_")
    fcos = (["focal"] if "focal" in fcos else []) + [m for m in fcos if m != "focal"]
    return roi + ["fcos_" + m for m in fcos]


def order_methods(methods):
    """Deduplicate; bags_decoupled needs softmax before it (added if missing)."""
    out = []
    for m in methods:
        if m not in out:
            out.append(m)
    if "bags_decoupled" in out:
        if "softmax" not in out:
            out.insert(0, "softmax")
        i, j = out.index("softmax"), out.index("bags_decoupled")
        if j < i:
            out.remove("bags_decoupled")
            out.insert(out.index("softmax") + 1, "bags_decoupled")
    return out


def method_opts(method, output_root, max_iter=None, extra_opts=()):
    """train_net.py overrides of one method (same schedule and seed for all)."""
    opts = ["OUTPUT_DIR", str(Path(output_root) / method), "MODEL.DEVICE", "cpu", "SEED", "0"]
    if method == "bags_decoupled":
        opts += ["MODEL.WEIGHTS", str(Path(output_root) / "softmax" / "model_final.pth")]
    if max_iter:
        # a short run keeps the schedule's shape: warm-up and LR steps scaled into [0, max_iter)
        opts += [
            "SOLVER.MAX_ITER",
            str(max_iter),
            "SOLVER.WARMUP_ITERS",
            str(min(100, max(1, max_iter // 10))),
            "SOLVER.STEPS",
            "(%d, %d)" % (int(max_iter * 0.73), int(max_iter * 0.9)),
            "SOLVER.CHECKPOINT_PERIOD",
            str(max_iter),
        ]
    return opts + list(extra_opts)


# ------------------------------------------------------------------------------------------ running
def is_done(run_dir) -> bool:
    return (Path(run_dir) / RESULT_FILE).is_file()


def run_method(method, output_root, max_iter=None, extra_opts=(), python=sys.executable):
    """Train + evaluate one method in a subprocess; writes RESULT_FILE on success. Returns the result dict."""
    run_dir = Path(output_root) / method
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [python, str(TRAIN_NET), "--config-file", str(config_for(method))] + method_opts(
        method, output_root, max_iter, extra_opts
    )
    print("[benchmark_lt] %s: %s" % (method, " ".join(shlex.quote(c) for c in cmd)), flush=True)
    t0 = time.time()
    with open(run_dir / "benchmark_stdout.log", "w") as log:
        rc = subprocess.call(cmd, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - t0
    result = collect_run(run_dir)
    if rc != 0:
        if (run_dir / "model_final.pth").is_file() and result["metrics"] and result["per_category"]:
            # training and the final evaluation finished; the failure came after (e.g. train_net's result
            # printing): keep the results and say so
            print(
                "[benchmark_lt] WARNING: %s exited with %d after training and evaluation finished; results "
                "kept (see %s)" % (method, rc, run_dir / "benchmark_stdout.log"),
                flush=True,
            )
        else:
            raise RuntimeError(
                "%s failed (exit %d); see %s" % (method, rc, run_dir / "benchmark_stdout.log")
            )
    result.update(
        method=method,
        config=str(config_for(method).relative_to(ROOT)),
        wall_time_s=wall,
        exit_code=rc,
        max_iter=max_iter,
        extra_opts=list(extra_opts),
    )
    if result.get("train_time_s") is None:
        result["train_time_s"] = wall
    (run_dir / RESULT_FILE).write_text(json.dumps(result, indent=1, default=float))
    return result


# ------------------------------------------------------------------------------------------ parsing
def read_final_metrics(run_dir, task="bbox"):
    """Last evaluation of ``metrics.json`` (Detectron2's JSONWriter: one json per line): {metric: value}."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return {}
    last = {}
    prefix = task + "/"
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue
        m = {k[len(prefix) :]: v for k, v in d.items() if k.startswith(prefix)}
        if m:
            last = m
    return last


def find_per_category_csv(run_dir, task="bbox"):
    hits = sorted(
        glob.glob(str(Path(run_dir) / "inference" / "*" / ("*_per_category_%s.csv" % task)))
    )
    return hits[0] if hits else None


def read_per_category_csv(path):
    """Rows of the evaluator's per-category csv: dicts with category_id (int), name, frequency,
    train_instances (int), AP (float, NaN where the class has no validation GT)."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            ap = r.get("AP", "nan")
            rows.append(
                {
                    "category_id": int(r["category_id"]),
                    "name": r.get("name", ""),
                    "frequency": r.get("frequency", ""),
                    "train_instances": int(float(r.get("train_instances") or -1)),
                    "AP": float(ap) if ap not in ("", None) else float("nan"),
                }
            )
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


def collect_run(run_dir):
    """{metrics, per_category (rows), per_category_csv, train_time_s} of one finished run folder."""
    csv_path = find_per_category_csv(run_dir)
    return {
        "metrics": read_final_metrics(run_dir),
        "per_category_csv": csv_path,
        "per_category": read_per_category_csv(csv_path) if csv_path else [],
        "train_time_s": read_train_time(run_dir),
    }


def load_result(run_dir):
    """RESULT_FILE of a run, refreshed from the run folder (metrics / csv re-read)."""
    res = json.loads((Path(run_dir) / RESULT_FILE).read_text())
    fresh = collect_run(run_dir)
    for k in ("metrics", "per_category", "per_category_csv"):
        if fresh.get(k):
            res[k] = fresh[k]
    return res


# ------------------------------------------------------------------------------------------ table, plot
def _group_keys(results):
    """Instance-group AP keys (e.g. 'AP[0,10)') present in any run, sorted by their lower bound."""
    keys = set()
    for r in results.values():
        keys.update(k for k in r.get("metrics", {}) if re.fullmatch(r"AP\[\d+,(\d+|inf)\)", k))
    return sorted(keys, key=lambda k: int(k[3:].split(",")[0]))


def _fmt(v):
    if v is None:
        return "-"
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "nan" if math.isnan(v) else "%.2f" % v


def _fmt_time(s):
    if s is None:
        return "-"
    s = int(round(float(s)))
    return "%d:%02d" % (s // 60, s % 60)


def format_table(results):
    """One markdown table: method | AP | AP50 | APr | APc | APf | AP per instance group | train time."""
    groups = _group_keys(results)
    head = ["method"] + list(METRIC_COLUMNS) + groups + ["train time"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for method, r in results.items():
        m = r.get("metrics", {})
        cells = (
            [method] + [_fmt(m.get(k)) for k in METRIC_COLUMNS] + [_fmt(m.get(k)) for k in groups]
        )
        cells.append(_fmt_time(r.get("train_time_s")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_class_ap_arrays(results):
    """(per_class_ap {method: (C,) AP}, instance_counts (C,)) over the categories of the first run with a csv.

    Categories are matched by id; a category missing from a run gets NaN.
    """
    import numpy as np

    ref = next((r["per_category"] for r in results.values() if r.get("per_category")), None)
    if ref is None:
        return {}, np.zeros(0)
    ids = [row["category_id"] for row in ref]
    counts = np.array([max(row["train_instances"], 0) for row in ref], dtype=np.int64)
    aps = {}
    for method, r in results.items():
        if not r.get("per_category"):
            continue
        by_id = {row["category_id"]: row["AP"] for row in r["per_category"]}
        aps[method] = np.array([by_id.get(i, float("nan")) for i in ids], dtype=np.float64)
    return aps, counts


def write_report(results, output_root, header=""):
    """Write <output-root>/lt_benchmark.md and ap_vs_instances.png; returns (table, md path, png path or None)."""
    output_root = Path(output_root)
    output_root.mkdir(parents=True, exist_ok=True)
    table = format_table(results)
    md = output_root / "lt_benchmark.md"
    md.write_text((header + "\n\n" if header else "") + table + "\n")
    png = None
    aps, counts = per_class_ap_arrays(results)
    if aps:
        from lt_detectron.engine.plots import plot_ap_vs_instances

        png = plot_ap_vs_instances(
            aps,
            counts,
            str(output_root / "ap_vs_instances.png"),
            title="lt_shapes: per-class box AP vs training instances",
        )
    return table, str(md), png


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated (default: %s)" % ",".join(default_methods()),
    )
    p.add_argument(
        "--max-iter", type=int, default=None, help="override SOLVER.MAX_ITER (steps/warm-up scaled)"
    )
    p.add_argument("--output-root", default=str(ROOT / "output" / "lt_benchmark"))
    p.add_argument(
        "--extra-opts",
        default="",
        help='extra config overrides for every run, e.g. "SOLVER.IMS_PER_BATCH 4"',
    )
    p.add_argument("--force", action="store_true", help="re-run methods that already have results")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="only (re)write the table/plot from finished runs",
    )
    args = p.parse_args(argv)
    methods = order_methods(args.methods.split(",") if args.methods else default_methods())
    for m in methods:
        if not config_for(m).is_file():
            p.error("no config for method %r (%s)" % (m, config_for(m)))
    extra = shlex.split(args.extra_opts)
    root = Path(args.output_root).resolve()
    results = {}
    for m in methods:
        run_dir = root / m
        if is_done(run_dir) and not args.force:
            print("[benchmark_lt] %s: results exist, skipped (--force re-runs)" % m, flush=True)
            results[m] = load_result(run_dir)
        elif args.report_only:
            print("[benchmark_lt] %s: no results yet" % m)
        else:
            results[m] = run_method(m, root, args.max_iter, extra)
    iters = {r.get("max_iter") for r in results.values()}
    header = (
        "# lt_shapes benchmark (embedded long-tailed dataset, seed 0, box AP on lt_shapes_val)\n\n"
        "Schedule: %s; extra opts: %s."
        % (
            "the configs' SOLVER.MAX_ITER"
            if iters <= {None}
            else "SOLVER.MAX_ITER %s" % sorted(str(i) for i in iters),
            args.extra_opts or "none",
        )
    )
    table, md, png = write_report(results, root, header)
    print(table)
    print("[benchmark_lt] wrote %s%s" % (md, (" and " + png) if png else ""))
    return results


if __name__ == "__main__":
    main()
