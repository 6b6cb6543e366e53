#!/usr/bin/env python
"""Train and evaluate methods on the embedded long-tailed dataset (lt_shapes) over several seeds.

Each (method, seed) runs ``tools/train_net.py`` in a subprocess with ``SEED <seed>`` (model
initialisation and data order) and ``OUTPUT_DIR=<output-root>/<method>/seed<seed>``; ``--jobs J``
runs J at a time with ``--threads T`` torch threads each. A run whose folder already has
``lt_benchmark_result.json`` (written here after a successful run) is skipped unless ``--force``,
so an interrupted benchmark resumes where it stopped. With ``--convergence`` (default) the model is
also evaluated at 1/3 and 2/3 of the schedule.

The finished runs are merged into the per-seed csv files of ``--results-dir`` (default: the
output root): ``lt_runs.csv`` (metrics, setting, train time, AP curve) and ``lt_per_class_ap.csv``
(per-class AP), from which the report is written: ``lt_benchmark.md`` (mean ± std over seeds, each
method against its baseline with a verdict, convergence) and ``ap_vs_instances.png`` (ROI and dense
panels, error bars from the seeds, AP per frequency band). ``--report`` only regenerates the report
from the csv files (``benchmarks/results`` when ``--results-dir`` is not given).

    python -m benchmarks.benchmark_lt --methods softmax,ecm --seeds 3 --jobs 2 --results-dir benchmarks/results
    python -m benchmarks.benchmark_lt --report                          # tables + plot from benchmarks/results
    python -m benchmarks.benchmark_lt --methods softmax,fcos_focal --max-iter 5 --output-root /tmp/ltb

Methods: ``<m>`` -> configs/lt_shapes/faster_rcnn_tiny_<m>.yaml, ``fcos_<m>`` -> fcos_tiny_<m>.yaml,
``centernet_<m>``, ``retinanet_<m>`` likewise. A decoupled method (``*_decoupled``:
``bags_decoupled``, ``crt_decoupled``, ``lws_decoupled``) starts from the ``softmax`` run's
``model_final.pth`` of the same seed (softmax is trained first, and added if missing).
``<m>_norcal``, ``<m>_logit_adjustment``, ``<m>_tau_norm`` (e.g. ``softmax_norcal``) train nothing:
``--eval-only`` of the ``<m>`` run of the same seed with that ``TEST.LT.CALIBRATION`` at the
strength of ``--calibration-values`` (compared with ``<m>``). Default: every faster_rcnn_tiny_*
config except the decoupled ones, plus every fcos_tiny_* config.
"""

import argparse
import glob
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.lt_results import (
    calibration_of,
    collect_run,
    read_final_metrics,
    read_per_category_csv,
    read_train_time,
    save_runs,
    write_report,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs" / "lt_shapes"
TRAIN_NET = ROOT / "tools" / "train_net.py"
RESULT_FILE = "lt_benchmark_result.json"
_FAMILIES = {"fcos": "fcos_tiny_", "centernet": "centernet_tiny_", "retinanet": "retinanet_tiny_"}
__all__ = ["collect_run", "read_final_metrics", "read_per_category_csv", "read_train_time"]


# ------------------------------------------------------------------------------------------ methods
def is_decoupled(method: str) -> bool:
    """A decoupled recipe: it starts from the softmax run's final weights."""
    return method.endswith("_decoupled")


def config_for(method: str) -> Path:
    if calibration_of(method):
        return config_for(calibration_of(method)[0])
    fam, _, rest = method.partition("_")
    if fam in _FAMILIES and rest:
        return CONFIG_DIR / (_FAMILIES[fam] + rest + ".yaml")
    return CONFIG_DIR / ("faster_rcnn_tiny_%s.yaml" % method)


def default_methods():
    def stems(prefix):
        return sorted(
            Path(p).stem[len(prefix) :] for p in glob.glob(str(CONFIG_DIR / (prefix + "*.yaml")))
        )

    roi = [m for m in stems("faster_rcnn_tiny_") if not is_decoupled(m)]
    if "softmax" in roi:
        roi = ["softmax"] + [m for m in roi if m != "softmax"]
    fcos = stems("fcos_tiny_")
    fcos = (["focal"] if "focal" in fcos else []) + [m for m in fcos if m != "focal"]
    return roi + ["fcos_" + m for m in fcos]


def order_methods(methods):
    """Deduplicate; a decoupled method needs softmax before it (added if missing), a calibration
    row ``<m>_<calibration>`` its ``<m>``."""
    out = []
    for m in methods:
        base = (calibration_of(m) or (None,))[0]
        if base is not None and base not in out:
            out.append(base)
        if m not in out:
            out.append(m)
    for m in [m for m in out if is_decoupled(m)]:
        if "softmax" not in out:
            out.insert(0, "softmax")
        if out.index(m) < out.index("softmax"):
            out.remove(m)
            out.insert(out.index("softmax") + 1, m)
    return out


# strength of the calibration rows (override with --calibration-values)
CALIBRATION_VALUES = {"norcal": 0.5, "logit_adjustment": 1.0, "tau_norm": 1.0}
_STRENGTH_KEY = {"norcal": "TEST.LT.CALIBRATION_GAMMA"}


def method_opts(method, output_root, max_iter=None, extra_opts=(), seed=0, calibration_values=None):
    """train_net.py overrides of one (method, seed): the same schedule for all."""
    run_dir = run_dir_of(output_root, method, seed)
    opts = ["OUTPUT_DIR", str(run_dir), "MODEL.DEVICE", "cpu", "SEED", str(seed)]
    cal = calibration_of(method)
    if cal:  # eval-only of the trained run of the same seed
        value = dict(CALIBRATION_VALUES, **(calibration_values or {}))[cal[1]]
        weights = run_dir_of(output_root, cal[0], seed) / "model_final.pth"
        key = _STRENGTH_KEY.get(cal[1], "TEST.LT.CALIBRATION_TAU")
        opts += ["MODEL.WEIGHTS", str(weights), "TEST.LT.CALIBRATION", cal[1], key, str(value)]
    if is_decoupled(method):
        softmax = run_dir_of(output_root, "softmax", seed) / "model_final.pth"
        opts += ["MODEL.WEIGHTS", str(softmax)]
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
def run_dir_of(output_root, method, seed) -> Path:
    return Path(output_root) / method / f"seed{seed}"


def is_done(run_dir) -> bool:
    return (Path(run_dir) / RESULT_FILE).is_file()


def config_max_iter(method) -> int:
    """SOLVER.MAX_ITER of a method's config (after _BASE_)."""
    from detectron2.config import get_cfg

    from lt_detectron.config import add_lt_config

    cfg = get_cfg()
    add_lt_config(cfg)
    cfg.merge_from_file(str(config_for(method)))
    return int(cfg.SOLVER.MAX_ITER)


def run_method(
    method,
    output_root,
    max_iter=None,
    extra_opts=(),
    python=sys.executable,
    seed=0,
    threads=None,
    convergence=False,
    calibration_values=None,
):
    """Train + evaluate one (method, seed) in a subprocess (a calibration row: evaluate only);
    writes RESULT_FILE on success. Returns the result dict."""
    run_dir = run_dir_of(output_root, method, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    opts = method_opts(method, output_root, max_iter, extra_opts, seed, calibration_values)
    if calibration_of(method):
        opts = ["--eval-only"] + opts
    elif convergence:
        iters = max_iter or config_max_iter(method)
        opts += ["TEST.EVAL_PERIOD", str(max(1, iters // 3))]
    cmd = [python, str(TRAIN_NET), "--config-file", str(config_for(method))] + opts
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print(
        "[benchmark_lt] %s seed %d: %s" % (method, seed, " ".join(shlex.quote(c) for c in cmd)),
        flush=True,
    )
    t0 = time.time()
    with open(run_dir / "benchmark_stdout.log", "w") as log:
        rc = subprocess.call(cmd, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT, env=env)
    wall = time.time() - t0
    result = collect_run(run_dir)
    if rc != 0:
        if (run_dir / "model_final.pth").is_file() and result["metrics"] and result["per_category"]:
            # training and the final evaluation finished; the failure came after: keep the results
            print(
                "[benchmark_lt] WARNING: %s seed %d exited with %d after training and evaluation "
                "finished; results kept (see %s)"
                % (method, seed, rc, run_dir / "benchmark_stdout.log"),
                flush=True,
            )
        else:
            raise RuntimeError(
                "%s seed %d failed (exit %d); see %s"
                % (method, seed, rc, run_dir / "benchmark_stdout.log")
            )
    result.update(
        method=method,
        seed=seed,
        config=str(config_for(method).relative_to(ROOT)),
        wall_time_s=wall,
        exit_code=rc,
        max_iter=max_iter,
        extra_opts=list(extra_opts),
        threads=threads or os.environ.get("OMP_NUM_THREADS") or "",
    )
    if result.get("train_time_s") is None:
        result["train_time_s"] = wall
    (run_dir / RESULT_FILE).write_text(json.dumps(result, indent=1, default=float))
    print(
        "[benchmark_lt] %s seed %d: AP %.2f APr %.2f in %.0f s"
        % (
            method,
            seed,
            result["metrics"].get("AP", float("nan")),
            result["metrics"].get("APr", float("nan")),
            wall,
        ),
        flush=True,
    )
    return result


def load_result(run_dir):
    """RESULT_FILE of a run, refreshed from the run folder (metrics / csv / curve re-read)."""
    res = json.loads((Path(run_dir) / RESULT_FILE).read_text())
    fresh = collect_run(run_dir)
    for k in ("metrics", "curve", "per_category", "per_category_csv"):
        if fresh.get(k):
            res[k] = fresh[k]
    return res


def parse_seeds(text: str):
    """``"3"`` -> [0, 1, 2]; ``"0,4"`` -> [0, 4]."""
    if "," in text:
        return [int(x) for x in text.split(",") if x.strip()]
    return list(range(int(text)))


def run_all(methods, seeds, root, args, extra, on_result=None):
    """Every (method, seed), ``args.jobs`` at a time, method by method; a decoupled method and the
    calibration rows wait for the trained runs. ``on_result(result)`` is called as each run
    finishes (the csv files are updated then, so an interrupted benchmark keeps every finished
    run). Returns the results in (method, seed) order."""
    import threading

    todo, results = [], {}
    for m in methods:
        for s in seeds:
            run_dir = run_dir_of(root, m, s)
            if is_done(run_dir) and not args.force:
                print(
                    "[benchmark_lt] %s seed %d: results exist, skipped (--force re-runs)" % (m, s)
                )
                results[(m, s)] = load_result(run_dir)
            else:
                todo.append((m, s))
    needs_run = lambda m: is_decoupled(m) or calibration_of(m)  # noqa: E731
    first = [t for t in todo if not needs_run(t[0])]
    later = [t for t in todo if needs_run(t[0])]
    lock = threading.Lock()

    def one(ms):
        m, s = ms
        res = run_method(
            m,
            root,
            args.max_iter,
            extra,
            seed=s,
            threads=args.threads,
            convergence=args.convergence,
            calibration_values=args.calibration_values,
        )
        if on_result is not None and res.get("per_category"):
            with lock:
                on_result(res)
        return ms, res

    for batch in (first, later):
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for ms, res in pool.map(one, batch):
                results[ms] = res
    return [results[(m, s)] for m in methods for s in seeds if (m, s) in results]


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
        "--seeds", default="1", help="N (seeds 0..N-1) or a comma-separated list (default 1)"
    )
    p.add_argument(
        "--max-iter", type=int, default=None, help="override SOLVER.MAX_ITER (steps/warm-up scaled)"
    )
    p.add_argument("--output-root", default=str(ROOT / "output" / "lt_benchmark"))
    p.add_argument(
        "--results-dir",
        default=None,
        help="where the per-seed csv files and the report go (default: the output root; with "
        "--report: benchmarks/results)",
    )
    p.add_argument(
        "--extra-opts",
        default="",
        help='extra config overrides for every run, e.g. "SOLVER.IMS_PER_BATCH 4"',
    )
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per run (OMP_NUM_THREADS; default: cores / jobs when --jobs > 1)",
    )
    p.add_argument(
        "--no-convergence",
        dest="convergence",
        action="store_false",
        help="do not evaluate at 1/3 and 2/3 of the schedule",
    )
    p.add_argument(
        "--calibration-values",
        type=lambda t: {k: float(v) for k, v in (kv.split("=") for kv in t.split(",") if kv)},
        default={},
        help="strengths of the calibration rows, e.g. norcal=0.3,tau_norm=1.5 (default %s)"
        % ",".join("%s=%g" % kv for kv in CALIBRATION_VALUES.items()),
    )
    p.add_argument("--force", action="store_true", help="re-run methods that already have results")
    p.add_argument(
        "--report",
        action="store_true",
        help="no training: regenerate the tables and the plot from the csv files of --results-dir",
    )
    args = p.parse_args(argv)
    if args.report:
        results_dir = Path(args.results_dir or ROOT / "benchmarks" / "results")
        md, paths = write_report(results_dir)
        print(md)
        print("[benchmark_lt] wrote %s" % ", ".join(paths))
        return md
    methods = order_methods(args.methods.split(",") if args.methods else default_methods())
    for m in methods:
        if not config_for(m).is_file():
            p.error("no config for method %r (%s)" % (m, config_for(m)))
    if args.jobs > 1 and args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    seeds = parse_seeds(args.seeds)
    root = Path(args.output_root).resolve()
    results_dir = Path(args.results_dir).resolve() if args.results_dir else root
    results = run_all(
        methods,
        seeds,
        root,
        args,
        shlex.split(args.extra_opts),
        on_result=lambda r: save_runs(results_dir, [r]),
    )
    save_runs(results_dir, [r for r in results if r.get("per_category")])
    md, paths = write_report(results_dir)
    print(md)
    print("[benchmark_lt] wrote %s" % ", ".join(paths))
    return results


if __name__ == "__main__":
    main()
