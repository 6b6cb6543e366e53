#!/usr/bin/env python
"""Run every shipped config for a few iterations plus evaluation, through ``tools/train_net.py``, on
the real-format fixtures (``lt_detectron/utils/testing/real_formats.py``), registered both ways.

    python -m dev.check_configs                       # every config under configs/{lvis_v1,coco_lt,dense}
    python -m dev.check_configs --families -j 2       # one config per (architecture x loss) family (CI)
    python -m dev.check_configs --configs 'configs/dense/*fcos*' --registration detectron2

Each run is one ``python tools/train_net.py --config-file C --smoke ...`` subprocess (what a user
launches to smoke-test a config: ``lt_detectron/config_smoke.py`` shrinks input size, batch and
learning rate, warm-up, detections per image and BOFL's deferral together) with
``SOLVER.MAX_ITER 3`` (``--iters``), ``MODEL.DEVICE cpu`` and ``OUTPUT_DIR`` in a temporary folder.
A config that asks for detectron2's ImageNet weights
(``detectron2://ImageNetPretrained/...``) gets the fixture's random-weight ``R-50.pkl``
instead; a BAGS decoupled config gets ``model_final.pth`` of the softmax config named by its
``MODEL.WEIGHTS`` path (run first).

Registration:
- ``builtin``: the config's own dataset names (``lvis_v1_train``, ``coco_lt_train``,
  ``coco_2017_val`` ...) with ``DETECTRON2_DATASETS`` pointing at the fixtures;
- ``detectron2``: the same files registered under other names (``my_lvis_v1_train`` ...) with
  detectron2's ``register_lvis_instances`` / ``register_coco_instances``, inside the
  train_net process (``--register-lvis`` / ``--register-coco``).

Reported per run: rc, s/iter (``time`` of the last ``metrics.json`` record: detectron2's
median iteration time, which skips the first 2 iterations), peak RSS of the process (``os.wait4``),
wall time; printed and
written to ``OUTPUT/check_configs.{csv,md}``. A failure prints the tail of its log.
Exit status 1 if any run failed.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import glob
import os
import re
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional

from dev.check_configs_run import (  # noqa: F401  (re-exported: one run lives there)
    FIXTURE_DATASETS,
    ROOT,
    CHECK_OPTS,
    TRAIN_NET,
    build_command,
    read_metrics,
    run_one,
    tail,
)

CONFIG_DIRS = ("lvis_v1", "coco_lt", "dense")


def load_cfg(config_file: str):
    from detectron2.config import get_cfg

    from lt_detectron import add_lt_config
    from lt_detectron.config import validate_lt_config

    cfg = get_cfg()
    add_lt_config(cfg)
    cfg.merge_from_file(config_file)
    return validate_lt_config(cfg, config_file)


def _match(rel, pat):
    return (
        fnmatch.fnmatch(rel, pat)
        or fnmatch.fnmatch(rel, "configs/" + pat)
        or fnmatch.fnmatch(os.path.basename(rel), pat)
    )


def list_configs(
    patterns: Optional[List[str]] = None,
    exclude: Optional[List[str]] = None,
    root: str = ROOT,
) -> List[str]:
    """Configs under ``root``/configs/{lvis_v1,coco_lt,dense} (paths relative to ``root``, the
    repository by default: the shipped configs), ``Base-*`` fragments excluded; ``patterns`` select
    and ``exclude`` drop (fnmatch on the path, the path under configs/, or the file name). Every
    yaml there is found: a new method's configs need no list."""
    out = []
    for d in CONFIG_DIRS:
        for p in sorted(glob.glob(os.path.join(root, "configs", d, "*.yaml"))):
            rel = os.path.relpath(p, root)
            if os.path.basename(p).startswith("Base-"):
                continue
            if patterns and not any(_match(rel, pat) for pat in patterns):
                continue
            if exclude and any(_match(rel, pat) for pat in exclude):
                continue
            out.append(rel)
    return out


def family(config: str):
    """(architecture, loss[, variant]) of a config from its name: ``eqlv2_mask_rcnn_R_50_FPN_1x`` ->
    ``("mask_rcnn", "eqlv2")``; other name parts after the depth/schedule (e.g. ``scratch``, ``gn``)
    make their own family."""
    stem = os.path.splitext(os.path.basename(config))[0]
    loss, rest = stem.split("_", 1)
    m = re.match(r"(.*?)_R_\d+(_FPN)?_?(.*)$", rest)
    arch, tail = (m.group(1), m.group(3)) if m else (rest, "")
    variant = "_".join(t for t in tail.lower().split("_") if t in ("scratch", "gn", "syncbn", "bn"))
    return (arch, loss, variant) if variant else (arch, loss)


def pick_families(configs: List[str]) -> List[str]:
    """One config per family: the first in (lvis_v1, coco_lt, dense) order, then by name."""
    seen, out = set(), []
    for c in configs:
        f = family(c)
        if f not in seen:
            seen.add(f)
            out.append(c)
    return out


def softmax_dependency(config: str, cfg) -> Optional[str]:
    """The config whose ``model_final.pth`` a decoupled config starts from (by its MODEL.WEIGHTS path)."""
    w = cfg.MODEL.WEIGHTS
    if not w.endswith("model_final.pth") or os.path.isabs(w) or "://" in w:
        return None
    name = os.path.basename(os.path.dirname(w))
    cand = os.path.join(os.path.dirname(config), name + ".yaml")
    if not os.path.isfile(os.path.join(ROOT, cand)):
        raise FileNotFoundError(
            "%s: MODEL.WEIGHTS %s names no config %s to train first" % (config, w, cand)
        )
    return cand


def check(configs, fixtures, registrations, work, jobs=1, timeout=900, iters=3, log=print):
    """Run each (config, registration); returns the result rows."""
    cfgs = {c: load_cfg(os.path.join(ROOT, c)) for c in configs}
    deps = {c: softmax_dependency(c, cfgs[c]) for c in configs}
    for d in set(deps.values()) - {None}:
        if d not in cfgs:
            cfgs[d] = load_cfg(os.path.join(ROOT, d))
    rows: List[Dict] = []
    lock = threading.Lock()
    done_events = {}

    def task(config, reg):
        # the event is set whatever happens, so that a dependent run never waits forever
        try:
            return _task(config, reg)
        except Exception as e:
            row = {
                "config": config,
                "registration": reg,
                "rc": -1,
                "s_per_iter": None,
                "peak_rss_mib": None,
                "wall_s": None,
                "evaluated": False,
                "note": "checker error: %s: %s" % (type(e).__name__, e),
                "output_dir": "",
            }
            with lock:
                rows.append(row)
                log("[FAILED (checker error)] %s %s: %s" % (reg, config, row["note"]))
            return row
        finally:
            done_events[(config, reg)].set()

    def _task(config, reg):
        tag = "%s__%s" % (os.path.splitext(config.replace("/", "__"))[0], reg)
        out_dir = os.path.join(work, tag)
        weights = None
        dep = deps.get(config)
        row = {
            "config": config,
            "registration": reg,
            "rc": None,
            "s_per_iter": None,
            "peak_rss_mib": None,
            "wall_s": None,
            "evaluated": False,
            "note": "",
            "output_dir": out_dir,
        }
        if dep is not None:
            done_events[(dep, reg)].wait()
            with lock:
                dep_row = next(
                    (r for r in rows if r["config"] == dep and r["registration"] == reg), None
                )
            weights = os.path.join(dep_row["output_dir"], "model_final.pth") if dep_row else ""
            if dep_row is None or dep_row["rc"] != 0 or not os.path.isfile(weights):
                row.update(rc=-1, note="skipped: %s failed" % dep)
                with lock:
                    rows.append(row)
                return row
            row["note"] = "weights: %s" % os.path.relpath(weights, work)
        argv, env = build_command(config, cfgs[config], fixtures, reg, out_dir, weights, iters)
        log_path = out_dir + ".log"
        rc, wall, rss = run_one(argv, env, log_path, timeout)
        s_iter, it, evaluated = read_metrics(out_dir)
        row.update(
            rc=rc,
            s_per_iter=s_iter,
            peak_rss_mib=round(rss, 1),
            wall_s=round(wall, 1),
            evaluated=evaluated,
            log=log_path,
        )
        if rc == 0 and not evaluated:
            row["rc"] = rc = 2
            row["note"] = (
                row["note"] + "; " if row["note"] else ""
            ) + "no evaluation results in metrics.json"
        if rc == 0 and iters >= 3 and it != iters - 1:
            row["rc"] = rc = 2
            row["note"] = (
                row["note"] + "; " if row["note"] else ""
            ) + "last timed iteration %r, expected %d" % (it, iters - 1)
        with lock:
            rows.append(row)
            status = "ok" if rc == 0 else "FAILED (rc %s)" % rc
            log(
                "[%s] %s %s  %.1fs  %s s/iter  %.0f MiB"
                % (status, reg, config, wall, _fmt(s_iter), rss)
            )
            if rc != 0:
                log("---- tail of %s ----\n%s" % (log_path, tail(log_path)))
        return row

    todo = []
    order = [d for d in dict.fromkeys(deps.values()) if d is not None] + list(configs)
    for reg in registrations:
        for c in dict.fromkeys(order):
            todo.append((c, reg))
            done_events[(c, reg)] = threading.Event()
    # dependencies are submitted first; a dependent waits for its dependency's event
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
        futures = [ex.submit(task, c, r) for c, r in todo]
        for f in futures:
            f.result()
    index = {k: i for i, k in enumerate(todo)}
    rows.sort(key=lambda r: index[(r["config"], r["registration"])])
    return rows


def _fmt(v, nd=3):
    return "-" if v is None else ("%.*f" % (nd, v))


COLUMNS = ["config", "registration", "rc", "s_per_iter", "peak_rss_mib", "wall_s", "note"]


def write_reports(rows, out_prefix):
    with open(out_prefix + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = [
        "| config | registration | rc | s/iter | peak RSS (MiB) | wall (s) | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            "| %s | %s | %s | %s | %s | %s | %s |"
            % (
                r["config"],
                r["registration"],
                r["rc"],
                _fmt(r["s_per_iter"]),
                _fmt(r["peak_rss_mib"], 0),
                _fmt(r["wall_s"], 1),
                r["note"],
            )
        )
    md = "\n".join(lines) + "\n"
    with open(out_prefix + ".md", "w") as f:
        f.write(md)
    return md


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--configs", nargs="+", metavar="GLOB", help="only configs matching (path or file name)"
    )
    ap.add_argument("--exclude", nargs="+", metavar="GLOB", help="drop configs matching")
    ap.add_argument(
        "--families", action="store_true", help="one config per (architecture x loss) family"
    )
    ap.add_argument("--registration", choices=("builtin", "detectron2", "both"), default="both")
    ap.add_argument("-j", "--jobs", type=int, default=1, help="runs in parallel")
    ap.add_argument("--fixtures", help="fixture root (default: generated into the work folder)")
    ap.add_argument(
        "--output", help="work folder for runs and reports (default: a temporary folder)"
    )
    ap.add_argument("--timeout", type=float, default=900, help="seconds per run")
    ap.add_argument(
        "--iters",
        type=int,
        default=3,
        help="SOLVER.MAX_ITER (default 3: detectron2's IterationTimer skips the first 2 iterations, "
        "so s/iter is the time of the 3rd; with 2 no s/iter is measured)",
    )
    ap.add_argument("--list", action="store_true", help="print the selected configs and exit")
    args = ap.parse_args(argv)

    configs = list_configs(args.configs, args.exclude)
    if args.families:
        configs = pick_families(configs)
    if not configs:
        print("no config matches %s" % args.configs, file=sys.stderr)
        return 2
    if args.list:
        print("\n".join("%s  %s" % (c, family(c)) for c in configs))
        return 0
    work = os.path.abspath(args.output or tempfile.mkdtemp(prefix="lt_check_configs_"))
    os.makedirs(work, exist_ok=True)
    fixtures = args.fixtures
    if fixtures is None:
        from lt_detectron.utils.testing import make_fixtures

        fixtures = os.path.join(work, "fixtures")
        make_fixtures(fixtures)
    fixtures = os.path.abspath(fixtures)
    regs = ["builtin", "detectron2"] if args.registration == "both" else [args.registration]
    print(
        "%d configs x %s, fixtures %s, work %s" % (len(configs), "/".join(regs), fixtures, work),
        flush=True,
    )
    t0 = time.perf_counter()
    rows = check(
        configs,
        fixtures,
        regs,
        work,
        jobs=args.jobs,
        timeout=args.timeout,
        iters=args.iters,
        log=lambda s: print(s, flush=True),
    )
    md = write_reports(rows, os.path.join(work, "check_configs"))
    failed = [r for r in rows if r["rc"] != 0]
    print("\n" + md)
    print(
        "%d runs, %d failed, %.0f s; %s/check_configs.{csv,md}"
        % (len(rows), len(failed), time.perf_counter() - t0, work)
    )
    print(
        "command: python -m dev.check_configs "
        + " ".join(argv if argv is not None else sys.argv[1:])
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
