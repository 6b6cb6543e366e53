#!/usr/bin/env python
"""A long-tail audit of a dataset: instances and images per class, LVIS r/c/f bands, instance
groups, the repeat-factor histogram (RFS), and which class statistics each loss reads.

    python tools/audit_dataset.py --dataset lt_shapes_train --output audit/
    python tools/audit_dataset.py --json datasets/lvis/lvis_v1_train.json --repeat-thresh 0.001
    python tools/audit_dataset.py --dataset mydata_train \\
        --register-dataset mydata_train my/train.json my/images

Prints a summary and writes ``<output>/<dataset>_audit.{csv,json,png}`` (one csv row per class; the
json holds everything; the png: counts per class sorted, bands coloured, log scale, and the histogram
of the images' repeat factors with and without the square root). The logic is in
``lt_detectron.class_stats.audit``; docs/user_guide.md explains the numbers.
"""

import argparse
import sys

import lt_detectron  # noqa: F401  (registers the builtin and embedded datasets)
from lt_detectron.class_stats import (
    DEFAULT_GROUP_EDGES,
    ClassStatsError,
    audit_dataset,
    audit_json,
    format_audit,
    write_audit,
)
from lt_detectron.data import add_register_arguments, register_from_args
from lt_detectron.data.validation import DatasetFormatError


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--dataset", metavar="NAME", help="a registered dataset (e.g. lt_shapes_train)"
    )
    src.add_argument("--json", metavar="PATH", help="a COCO- or LVIS-format annotation json")
    p.add_argument(
        "--repeat-thresh",
        type=float,
        default=0.001,
        metavar="T",
        help="repeat-factor threshold t (DATALOADER.REPEAT_THRESHOLD; default 0.001)",
    )
    p.add_argument(
        "--group-edges",
        type=float,
        nargs="+",
        default=list(DEFAULT_GROUP_EDGES),
        metavar="N",
        help="instance-count group edges (MODEL.LT.GROUP_EDGES; default 10 100 1000)",
    )
    p.add_argument(
        "--keep-empty",
        action="store_true",
        help="keep images without annotations (DATALOADER.FILTER_EMPTY_ANNOTATIONS False)",
    )
    p.add_argument("--output", default="audit", metavar="DIR", help="folder for the files")
    p.add_argument("--no-plot", action="store_true", help="write the csv and json only")
    add_register_arguments(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    register_from_args(args)
    kw = dict(
        repeat_thresh=args.repeat_thresh,
        group_edges=args.group_edges,
        filter_empty=not args.keep_empty,
    )
    try:
        audit = audit_json(args.json, **kw) if args.json else audit_dataset(args.dataset, **kw)
    except (ClassStatsError, DatasetFormatError, FileNotFoundError) as e:
        print("audit_dataset: error: %s" % e, file=sys.stderr)
        return 2
    print(format_audit(audit))
    for kind, path in write_audit(audit, args.output, plot=not args.no_plot).items():
        print("%s: %s" % (kind, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
