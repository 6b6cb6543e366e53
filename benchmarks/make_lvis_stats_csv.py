#!/usr/bin/env python
"""Rebuild ``lt_detectron/data/stats/lvis_v1_train.csv`` from LVIS category info.

Usage::

    python -m benchmarks.make_lvis_stats_csv /path/to/lvis_v1_train_cat_info.json [--out CSV]

The input is either a list of category dicts (``*_cat_info.json``, as written by
detectron2's ``prepare_cocofied_lvis`` / Detic's ``get_lvis_cat_info.py``) or a full LVIS
annotation json (its ``categories`` are used; ``image_count``/``instance_count`` are
recomputed from ``annotations`` if missing).
"""

import argparse
import collections
import json

from lt_detectron.data.lvis_stats import shipped_stats_path, write_stats_csv


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("path", help="LVIS cat_info json (list of categories) or LVIS annotation json")
    ap.add_argument("--out", default=str(shipped_stats_path("lvis_v1_train")))
    args = ap.parse_args(argv)
    with open(args.path) as f:
        data = json.load(f)
    if isinstance(data, dict):
        cats = [dict(c) for c in data["categories"]]
        if any("instance_count" not in c or "image_count" not in c for c in cats):
            inst = collections.Counter(a["category_id"] for a in data["annotations"])
            imgs = collections.Counter(
                {k: len(v) for k, v in _images_per_cat(data["annotations"]).items()}
            )
            for c in cats:
                c["instance_count"], c["image_count"] = inst[c["id"]], imgs[c["id"]]
    else:
        cats = data
    n = write_stats_csv(cats, args.out)
    freq = collections.Counter(c["frequency"] for c in cats)
    print(
        f"wrote {args.out}: {n} categories, {sum(int(c['instance_count']) for c in cats)} instances, "
        f"r/c/f = {freq['r']}/{freq['c']}/{freq['f']}"
    )


def _images_per_cat(anns):
    out = collections.defaultdict(set)
    for a in anns:
        out[a["category_id"]].add(a["image_id"])
    return out


if __name__ == "__main__":
    main()
