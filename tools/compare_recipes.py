#!/usr/bin/env python
"""Compare every LVIS v1 / COCO-LT config with the official recipe recorded for it.

    python tools/compare_recipes.py                      # every covered config
    python tools/compare_recipes.py configs/lvis_v1/ecm_mask_rcnn_R_50_FPN_1x.yaml --all-fields

For each config: its recipe and source, the expected results, whether it was reproduced on LVIS
here, and each field where it differs from the recipe with the recorded reason. Exits 1 when a
config has no record, a difference has no reason, or a recorded reason no longer applies. The
contract and the record book (recipes/recipes.yaml): docs/reproduction.md.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def main(argv=None) -> int:
    from lt_detectron.config_recipes import (
        RecipeError,
        compare_config,
        covered_configs,
        format_reports,
        load_book,
    )

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("configs", nargs="*", help="config files (default: every covered config)")
    p.add_argument(
        "--book",
        default=os.path.join("recipes", "recipes.yaml"),
        help="record book, relative to --root",
    )
    p.add_argument("--root", default=ROOT, help="repository root")
    p.add_argument("--all-fields", action="store_true", help="print the fields that match too")
    args = p.parse_args(argv)
    book_path = os.path.join(args.root, args.book)
    root = os.path.realpath(args.root)
    # a config path as given (from the working directory), else relative to the root
    paths = [c if os.path.exists(c) else os.path.join(root, c) for c in args.configs]
    names = [os.path.relpath(os.path.realpath(c), root).replace(os.sep, "/") for c in paths]
    try:
        book = load_book(book_path)
        names = names or covered_configs(root)
        reports = [compare_config(root, n, book, args.book) for n in names]
    except RecipeError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    print(format_reports(reports, all_fields=args.all_fields))
    problems = [msg for r in reports for msg in r.problems]
    documented = sum(1 for r in reports for row in r.rows if row[3] == "documented")
    print(
        "\n%d configs, %d documented differences, %d problems"
        % (len(reports), documented, len(problems))
    )
    for msg in problems:
        print("PROBLEM: %s" % msg)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
