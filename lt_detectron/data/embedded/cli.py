"""``python -m lt_detectron.data.embedded [--root DIR] [--seed 0] [--preview] [--force]``:
generate (or reuse) ``lt_shapes`` and print its summary."""

import argparse
import time
from pathlib import Path

from .cache import default_cache_root, generate_lt_shapes, is_complete
from .preview import render_class_strip, render_preview
from .summary import format_summary, lt_shapes_summary

__all__ = ["main"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Generate / summarise the embedded lt_shapes dataset.")
    ap.add_argument(
        "--root",
        default=None,
        help="dataset folder (default: $LT_DETECTRON_CACHE/lt_shapes_<ver>_seed<seed>)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--preview",
        action="store_true",
        help="also write preview.png and classes.png into the folder",
    )
    ap.add_argument("--force", action="store_true", help="regenerate even if the folder exists")
    args = ap.parse_args(argv)
    root = Path(args.root) if args.root else default_cache_root(args.seed)
    t0 = time.time()
    if args.force or not is_complete(root):
        generate_lt_shapes(root, seed=args.seed, overwrite=True)
        print(f"generated {root} in {time.time() - t0:.1f}s")
    else:
        print(f"using existing {root}")
    if args.preview:
        print("wrote", render_preview(root), "and", render_class_strip(root))
    print(format_summary(lt_shapes_summary(root), root))
    return 0
