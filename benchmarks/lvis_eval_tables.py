"""The tables of ``benchmark_lvis_eval`` (:class:`benchmarks.report.Table`) from its measurements.

Every measurement is a dict ``{"time", "process", "read_masks", "peak_gib", "metrics"}`` of one
worker run; a row holds the median run of each kind (``None``: not run) and every run's time.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from .report import Table

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR@300")
POOLED_METRICS = ("APpool", "APpool-r", "APpool-c", "APpool-f")

MAIN_COLUMNS = (
    "images x 300 dets",
    "task",
    "protocol",
    "inference pause (not timed)",
    "lvis-api",
    "lvis-api peak",
    "ours",
    "ours peak",
    "speed-up",
    "ours: process()",
    "evaluate() after the last image",
    "speed-up without process()",
    "ours without results json",
    "speed-up",
    "raw hotcoco",
    "ours / raw hotcoco",
    "max metric diff vs lvis-api",
)
POOLED_COLUMNS = (
    "images x 300 dets",
    "ours with pooled AP",
    "ours with pooled AP: peak",
    "pooled AP adds",
    "raw hotcoco",
    "added / raw hotcoco",
    "ours without pooled AP: peak",
    "authors' (lvis-api)",
    "authors' peak",
    "max APpool diff vs authors'",
)
BOUNDARY_COLUMNS = (
    "images x 300 masks",
    "Boundary AP (faster-coco-eval)",
    "its peak",
    "mask AP (raw hotcoco)",
    "boundary / mask",
    "boundary AP",
)


def median_run(runs: List[dict]) -> Optional[dict]:
    """The lower median run by time (``None`` for no runs)."""
    return sorted(runs, key=lambda r: r["time"])[(len(runs) - 1) // 2] if runs else None


def max_diff(a: dict, b: dict, keys) -> float:
    """Largest |difference| of the metrics ``keys`` of two runs (nan when either lacks one)."""
    try:
        return max(abs(a["metrics"][k] - b["metrics"][k]) for k in keys)
    except KeyError:
        return float("nan")


def _s(r: Optional[dict], key="time", fmt="{:.2f} s") -> str:
    return fmt.format(r[key]) if r else "-"


def _gib(r: Optional[dict]) -> str:
    return f"{r['peak_gib']:.2f} GiB" if r else "-"


def _x(num: float, den: float, fmt="{:.0f}x") -> str:
    return fmt.format(num / den) if den and den > 0 else "-"


def main_table(rows: List[Dict], repeats: int) -> Table:
    """One row per (images, task, protocol): ``row = {"n", "task", "protocol", "med", "runs"}``."""
    out, notes = [], []
    for row in rows:
        med, n, task, protocol = row["med"], row["n"], row["task"], row["protocol"]
        ref, ours, nojson, hot = med["lvis"], med["ours"], med["ours_nojson"], med["hotcoco"]
        pt = ours["process"]
        out.append(
            (
                n,
                task,
                protocol,
                f"{row.get('inference_ms', 0):g} ms",
                _s(ref, fmt="{:.1f} s"),
                _gib(ref),
                _s(ours),
                _gib(ours),
                _x(ref["time"], ours["time"]) if ref else "-",
                f"{pt:.2f} s",
                f"{ours['time'] - pt:.2f} s",
                _x(ref["time"], ours["time"] - pt) if ref else "-",
                _s(nojson),
                _x(ref["time"], nojson["time"]) if ref and nojson else "-",
                _s(hot),
                _x(ours["time"], hot["time"], "{:.2f}x"),
                f"{max_diff(ours, ref, METRICS):.1e}" if ref else "-",
            )
        )
        if task == "segm" and ours.get("read_masks"):
            rm = ours["read_masks"]
            notes.append(
                f"{n} segm: one pass over the full-image pred_masks (NumPy any) takes {rm:.2f} s, "
                f"so no evaluator from these Instances beats "
                f"{_x(ref['time'], rm) if ref else '-'} lvis-api"
            )
        if repeats > 1:
            times = {k: [round(r["time"], 2) for r in v] for k, v in row["runs"].items() if v}
            ms = row.get("inference_ms", 0)
            notes.append(f"{n} {task} {protocol} {ms:g} ms, every run (s): {times}")
    notes.append(
        "inference pause: ours sleeps that long before each process() call, standing for the "
        "model's forward (not timed; the results json streams out meanwhile); ours = process() + "
        "evaluate() after the last image"
    )
    return Table("LVIS evaluation: time, peak memory, metric parity", MAIN_COLUMNS, out, notes)


def pooled_table(rows: List[Dict]) -> Optional[Table]:
    """Rows of ``--pooled`` (box, standard protocol): ours with and without pooled AP, the raw
    matching and the authors' procedure."""
    out = []
    for row in rows:
        med = row["med"]
        ours, pooled, hot, auth = med["ours"], med["ours_pooled"], med["hotcoco"], med["authors"]
        if not pooled:
            continue
        added = pooled["time"] - ours["time"]
        out.append(
            (
                row["n"],
                _s(pooled),
                _gib(pooled),
                f"{added:.2f} s",
                _s(hot),
                _x(added, hot["time"], "{:.2f}x"),
                _gib(ours),
                _s(auth, fmt="{:.1f} s"),
                _gib(auth),
                f"{max_diff(pooled, auth, POOLED_METRICS):.1e}" if auth else "-",
            )
        )
    if not out:
        return None
    return Table(
        "Pooled AP (TEST.LT.POOLED_AP, boxes, standard protocol)",
        POOLED_COLUMNS,
        out,
        [
            "pooled AP adds = ours with pooled AP - ours without (medians); the authors' procedure "
            "is lvis-api's matching (area all) and their per-pool accumulation, timed from result "
            "dicts (benchmarks/lvis_eval_pooled.py)"
        ],
    )


def boundary_table(rows: List[Dict]) -> Optional[Table]:
    out = []
    for row in rows:
        b, h = row["med"]["boundary"], row["med"]["hotcoco"]
        if not b:
            continue
        out.append(
            (
                row["n"],
                _s(b),
                _gib(b),
                _s(h),
                _x(b["time"], h["time"], "{:.1f}x"),
                f"{100 * b['metrics'].get('AP', float('nan')):.2f}",
            )
        )
    return Table("Boundary AP", BOUNDARY_COLUMNS, out) if out else None
