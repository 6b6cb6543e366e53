"""Per-category statistics of LVIS shipped with the package (see ``stats/README.md``).

``stats/lvis_v1_train.csv`` holds, for each of the 1203 LVIS v1 categories, its id, name,
official frequency band (``r``/``c``/``f``), and the number of train images / instances.
It is derived from the LVIS v1 train annotations (CC BY 4.0) by
``benchmarks/make_lvis_stats_csv.py``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Dict

import numpy as np

__all__ = ["load_shipped_stats", "shipped_stats_path", "write_stats_csv", "STATS_COLUMNS"]

STATS_COLUMNS = ("id", "name", "frequency", "image_count", "instance_count")
_STATS_DIR = Path(__file__).resolve().parent / "stats"


def shipped_stats_path(name: str = "lvis_v1_train") -> Path:
    return _STATS_DIR / f"{name}.csv"


def _read_text(name: str) -> str:
    try:  # works for installed (possibly zipped) packages
        from importlib.resources import files

        return (files("lt_detectron.data") / "stats" / f"{name}.csv").read_text(encoding="utf-8")
    except (ImportError, FileNotFoundError, ModuleNotFoundError, TypeError):
        return shipped_stats_path(name).read_text(encoding="utf-8")


def load_shipped_stats(name: str = "lvis_v1_train") -> Dict[str, np.ndarray]:
    """Load a shipped statistics csv as a dict of numpy arrays, sorted by id.

    Keys: ``id`` (int64), ``name`` (str), ``frequency`` (str, r/c/f),
    ``image_count`` (int64), ``instance_count`` (int64).
    """
    rows = list(csv.DictReader(io.StringIO(_read_text(name))))
    if not rows or tuple(rows[0].keys()) != STATS_COLUMNS:
        raise ValueError(f"unexpected columns in stats csv {name!r}")
    rows.sort(key=lambda r: int(r["id"]))
    out = {
        "id": np.array([int(r["id"]) for r in rows], dtype=np.int64),
        "name": np.array([r["name"] for r in rows], dtype=object).astype(str),
        "frequency": np.array([r["frequency"] for r in rows]).astype(str),
        "image_count": np.array([int(r["image_count"]) for r in rows], dtype=np.int64),
        "instance_count": np.array([int(r["instance_count"]) for r in rows], dtype=np.int64),
    }
    return out


def write_stats_csv(categories, path) -> int:
    """Write LVIS ``categories`` dicts (e.g. a ``*_cat_info.json``) as a compact csv.

    Returns the number of rows written.
    """
    cats = sorted(categories, key=lambda c: int(c["id"]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(STATS_COLUMNS)
        for c in cats:
            w.writerow(
                [
                    int(c["id"]),
                    c["name"],
                    c["frequency"],
                    int(c["image_count"]),
                    int(c["instance_count"]),
                ]
            )
    return len(cats)
