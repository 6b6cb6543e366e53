"""``lt_shapes``: a tiny, synthetic, long-tailed detection dataset in LVIS format.

The dataset is generated on first use (a few seconds) from a seed, so the project's demo,
tests and docs can train and evaluate a long-tailed detector without downloading LVIS.

* Classes are ``texture x shape family`` (e.g. ``striped_disk``): 8 shape families (disk,
  square, triangle, ring, cross, bar, diamond, star), each with up to 4 texture/hue variants
  (solid, striped, checkered, dotted; siblings also differ by a 20 degree hue step), so
  siblings inside a family are confusable while families differ by shape.
* The per-class TRAIN counts follow the real LVIS v1 long tail: the C classes are rank
  aligned with C LVIS v1 categories taken at evenly spaced ranks of the LVIS instance-count
  order (from the shipped ``stats/lvis_v1_train.csv``), and their LVIS instance counts are
  mapped to tiny-dataset image counts by a monotone, piecewise log-linear map whose knots put
  one third of the classes in each LVIS band (by train image count: ``r`` <= 10 images,
  ``c`` 11-100, ``f`` > 100). The instances-per-image ratio of the LVIS class is kept in a
  compressed form (``ratio ** 0.35`` clipped to [1, 2.5]).
* Rank -> (family, variant) is a Latin square, so every family has one class per band and
  every texture occurs in every band: a rare class always has frequent siblings.
* Val is near-balanced (about ``val_instances_per_class`` instances per class), so AP on rare
  classes (APr) is measurable.
* Images are exhaustively annotated: ``neg_category_ids`` lists every category absent from the
  image and ``not_exhaustive_category_ids`` is empty. Objects never overlap (their boxes are
  disjoint), so annotation is unambiguous. Segmentations are polygons (for ``ring`` the outer
  contour; the hole is not encoded).

Layout on disk (``root``)::

    train/000001.jpg ...      val/000001.jpg ...
    lt_shapes_train.json      lt_shapes_val.json      (LVIS format, loadable by lvis-api)
    preview.png, classes.png  (only with ``--preview``)

Modules: :mod:`.spec` (options, class specs, long-tail targets), :mod:`.plan` (counts, layout,
placement, json records; no pixels), :mod:`.render` (pixels, one independent RNG per image),
:mod:`.cache` (cache folder, atomic generation, stale temporary folders), :mod:`.summary`,
:mod:`.preview` and :mod:`.cli`.

CLI::

    python -m lt_detectron.data.embedded [--root DIR] [--seed 0] [--preview] [--force]
"""

from ...utils.cache import CacheDirError, cache_base, ensure_cache_dir
from .cache import (
    cleanup_stale_temp,
    default_cache_root,
    generate_lt_shapes,
    get_lt_shapes,
    lt_shapes_paths,
)
from .plan import plan_lt_shapes
from .preview import render_class_strip, render_preview
from .spec import DEFAULTS, FAMILIES, TEXTURES, VERSION, class_specs, long_tail_targets
from .summary import band_summary, format_summary, lt_shapes_summary

__all__ = [
    "VERSION",
    "DEFAULTS",
    "FAMILIES",
    "TEXTURES",
    "CacheDirError",
    "cache_base",
    "cleanup_stale_temp",
    "default_cache_root",
    "ensure_cache_dir",
    "class_specs",
    "long_tail_targets",
    "plan_lt_shapes",
    "generate_lt_shapes",
    "get_lt_shapes",
    "lt_shapes_paths",
    "lt_shapes_summary",
    "band_summary",
    "format_summary",
    "render_preview",
    "render_class_strip",
]
