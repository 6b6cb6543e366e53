"""The reproduction contract: each LVIS v1 / COCO-LT config against the official recipe it follows.

A record book (a YAML file, ``recipes/recipes.yaml`` in the repository) holds named ``recipes`` (an
official training recipe: its source and the values of :data:`FIELDS`, in the official units) and,
per config file, a record: the recipe it reproduces (plus ``official`` overrides for what the
method itself sets, e.g. its loss), the expected results with their source, whether it was
reproduced on LVIS here, and the documented ``differences`` (field: reason).

:func:`compare_config` derives the same fields from the merged detectron2 config (``get_cfg`` +
``add_lt_config`` + ``merge_from_file``) and compares them field by field. A field that differs
with no reason recorded is *undocumented*; a reason recorded for a field that does not differ is
*stale*; both fail (:attr:`ConfigReport.ok`). Schedules are compared in epochs of the training
split: a config's ``MAX_ITER`` x ``IMS_PER_BATCH`` / images of ``DATASETS.TRAIN[0]`` (the book's
``train_images``); an official recipe in iterations gives its own ``train_images``.
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import yaml

__all__ = [
    "FIELDS",
    "RecipeError",
    "ConfigReport",
    "compare_config",
    "config_values",
    "covered_configs",
    "format_reports",
    "load_book",
    "official_values",
]

# Compared fields, in print order. Units: lr per the whole batch; epochs / steps in epochs of the
# training split; warmup_iters in iterations; clip the whole model's gradient L2-norm bound (None:
# no clipping); sampler random | rfs; epoch_unit: what an epoch counts ("split": the un-expanded
# training split, detectron2's convention; "rfs_expanded": mmdetection's ClassBalancedDataset).
FIELDS = (
    "batch",
    "lr",
    "epochs",
    "steps",
    "decay",
    "warmup_iters",
    "warmup_factor",
    "warmup_method",
    "clip",
    "sampler",
    "repeat_threshold",
    "epoch_unit",
    "loss",
    "classifier",
    "mask_head",
    "score_thresh",
    "detections",
)
_RECORD_KEYS = {"recipe", "official", "expected", "reproduced_on_lvis", "differences", "note"}
_RECIPE_KEYS = set(FIELDS) | {"source", "unit", "train_images", "max_iter", "verified", "note"}
_SAMPLERS = {
    "TrainingSampler": "random",
    "RepeatFactorTrainingSampler": "rfs",
    "ClassAwareSampler": "class_aware",
}
_SCORE_KEYS = {
    "GeneralizedRCNN": "ROI_HEADS",
    "RetinaNet": "RETINANET",
    "LongTailRetinaNet": "RETINANET",
    "FCOS": "FCOS",
    "CenterNet": "CENTERNET",
}


class RecipeError(ValueError):
    """A record book or a config that the contract cannot check (names the file and the fix)."""


def covered_configs(root: str) -> List[str]:
    """The configs the contract covers, relative to ``root``: the leaves (not ``Base-*``) of
    ``configs/lvis_v1`` and ``configs/coco_lt``, and the ``configs/dense`` leaves on LVIS v1 /
    COCO-LT (``*_lvis_v1.yaml``, ``*_coco_lt.yaml``)."""
    pats = ["configs/lvis_v1/*.yaml", "configs/coco_lt/*.yaml"]
    pats += ["configs/dense/*_lvis_v1.yaml", "configs/dense/*_coco_lt.yaml"]
    found = set()
    for p in pats:
        for f in glob.glob(os.path.join(root, p)):
            if not os.path.basename(f).startswith("Base-"):
                found.add(os.path.relpath(f, root).replace(os.sep, "/"))
    return sorted(found)


def load_book(path: str) -> Dict[str, Any]:
    """Read and check a record book: ``train_images``, ``recipes`` and ``configs`` mappings, every
    record naming a known recipe, every key and documented field known."""
    with open(path) as f:
        book = yaml.safe_load(f)
    if not isinstance(book, dict) or not all(
        isinstance(book.get(k), dict) for k in ("train_images", "recipes", "configs")
    ):
        raise RecipeError(
            "%s: a record book needs the mappings train_images, recipes and configs" % path
        )
    for name, recipe in book["recipes"].items():
        bad = set(recipe) - _RECIPE_KEYS
        if bad:
            raise RecipeError(
                "%s: recipe %r has unknown keys %s (known: %s)"
                % (path, name, sorted(bad), sorted(_RECIPE_KEYS))
            )
        if "source" not in recipe:
            raise RecipeError("%s: recipe %r needs a source (repo + path, or paper)" % (path, name))
    for cfg_name, rec in book["configs"].items():
        where = "%s: configs: %s" % (path, cfg_name)
        bad = set(rec) - _RECORD_KEYS
        if bad:
            raise RecipeError(
                "%s has unknown keys %s (known: %s)" % (where, sorted(bad), sorted(_RECORD_KEYS))
            )
        if rec.get("recipe") not in book["recipes"]:
            raise RecipeError(
                "%s: recipe %r is not one of the book's recipes (%s)"
                % (where, rec.get("recipe"), ", ".join(sorted(book["recipes"])))
            )
        for key in list(rec.get("differences") or {}) + list(rec.get("official") or {}):
            if key not in FIELDS:
                raise RecipeError(
                    "%s: %r is not a compared field (%s)" % (where, key, ", ".join(FIELDS))
                )
        for e in rec.get("expected") or []:
            if not (isinstance(e, dict) and e.get("result") and e.get("source")):
                raise RecipeError("%s: each expected entry needs a result and its source" % where)
        if not rec.get("expected") and not rec.get("note"):
            raise RecipeError("%s: no expected result: add a note saying why" % where)
        if str(rec.get("reproduced_on_lvis", "")).lower() not in ("no", "yes", "false", "true"):
            raise RecipeError("%s: reproduced_on_lvis must be yes or no" % where)
    return book


def _epochs(iters: float, batch: int, images: int) -> float:
    return iters * batch / images


def config_values(cfg, train_images: Dict[str, int], name: str = "config") -> Dict[str, Any]:
    """The :data:`FIELDS` of a merged detectron2 config (``train_images``: images per training
    split, for the epochs)."""
    s, d, m = cfg.SOLVER, cfg.DATALOADER, cfg.MODEL
    split = cfg.DATASETS.TRAIN[0]
    if split not in train_images:
        raise RecipeError(
            "%s: DATASETS.TRAIN %r has no image count in the record book's train_images (%s): add it"
            % (name, split, ", ".join(sorted(train_images)))
        )
    n, batch = int(train_images[split]), int(s.IMS_PER_BATCH)
    cosine = s.LR_SCHEDULER_NAME == "WarmupCosineLR"
    sampler = _SAMPLERS.get(d.SAMPLER_TRAIN, d.SAMPLER_TRAIN)
    arch = m.META_ARCHITECTURE
    rcnn = arch == "GeneralizedRCNN"
    clip = None
    if s.CLIP_GRADIENTS.ENABLED:
        clip = float(s.CLIP_GRADIENTS.CLIP_VALUE)
        if s.CLIP_GRADIENTS.CLIP_TYPE != "full_model":
            clip = "%s %g" % (s.CLIP_GRADIENTS.CLIP_TYPE, clip)
    if rcnn:
        head = m.ROI_BOX_HEAD
        loss = "federated" if head.USE_FED_LOSS else "sigmoid" if head.USE_SIGMOID_CE else None
        loss = loss or m.LT.ROI_LOSS
    else:
        loss = m.LT.DENSE_LOSS
    score_node = _SCORE_KEYS.get(arch)
    return {
        "batch": batch,
        "lr": float(s.BASE_LR),
        "epochs": _epochs(s.MAX_ITER, batch, n),
        "steps": [] if cosine else [_epochs(x, batch, n) for x in s.STEPS],
        "decay": "cosine" if cosine else "step",
        "warmup_iters": int(s.WARMUP_ITERS),
        "warmup_factor": float(s.WARMUP_FACTOR),
        "warmup_method": s.WARMUP_METHOD,
        "clip": clip,
        "sampler": sampler,
        "repeat_threshold": float(d.REPEAT_THRESHOLD) if sampler == "rfs" else None,
        "epoch_unit": "split",
        "loss": loss,
        "classifier": m.LT.CLASSIFIER if rcnn else None,
        "mask_head": m.ROI_MASK_HEAD.NAME if rcnn and m.MASK_ON else None,
        "score_thresh": float(m[score_node].SCORE_THRESH_TEST) if score_node else None,
        "detections": int(cfg.TEST.DETECTIONS_PER_IMAGE),
    }


def official_values(book: Dict[str, Any], config_name: str) -> Dict[str, Any]:
    """The official values of a config's record: its recipe, the record's ``official`` overrides,
    iterations turned into epochs of the recipe's own split (``unit: iterations``)."""
    rec = book["configs"][config_name]
    merged = dict(book["recipes"][rec["recipe"]])
    merged.update(rec.get("official") or {})
    out = {k: merged[k] for k in FIELDS if k in merged}
    if merged.get("unit", "epochs") == "iterations":
        n, batch = int(merged["train_images"]), int(merged["batch"])
        out["epochs"] = _epochs(merged["max_iter"], batch, n)
        out["steps"] = [_epochs(x, batch, n) for x in merged.get("steps", [])]
    if out.get("sampler") == "random":
        out.setdefault("repeat_threshold", None)
    return out


def _yes_no(v) -> str:
    if isinstance(v, bool):  # YAML 1.1 reads a bare no / yes as a bool
        return "yes" if v else "no"
    return str(v)


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-3, abs_tol=1e-9)
    return a == b


def _show(v) -> str:
    if isinstance(v, float):
        return "%.4g" % v
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return "none" if v is None else str(v)


@dataclass
class ConfigReport:
    """One config against its record. ``rows``: (field, config value, official value, status,
    reason), status ``same`` | ``documented`` | ``UNDOCUMENTED`` | ``STALE``."""

    config: str
    recipe: str
    source: str
    expected: List[Dict[str, Any]]
    reproduced_on_lvis: str
    note: str = ""
    rows: List[Tuple[str, Any, Any, str, str]] = field(default_factory=list)

    @property
    def problems(self) -> List[str]:
        out = []
        for f, mine, theirs, status, _ in self.rows:
            if status == "UNDOCUMENTED":
                out.append(
                    "%s: %s is %s, the recipe %r has %s, and the record gives no reason: fix the "
                    "config or add `%s: <reason>` under its differences"
                    % (self.config, f, _show(mine), self.recipe, _show(theirs), f)
                )
            elif status == "STALE":
                out.append(
                    "%s: the record documents a difference in %s, but the config matches the recipe "
                    "(%s): remove that entry" % (self.config, f, _show(mine))
                )
        return out

    @property
    def ok(self) -> bool:
        return not self.problems


def compare_config(
    root: str, config_name: str, book: Dict[str, Any], book_path: str = "the record book"
) -> ConfigReport:
    """Compare ``root/config_name`` with its record (field by field, see :data:`FIELDS`)."""
    from detectron2.config import get_cfg

    from .config import add_lt_config

    if config_name not in book["configs"]:
        raise RecipeError(
            "%s has no record in %s: add an entry `%s:` under `configs:` naming its recipe, its "
            "expected results (or none, with why) and its documented differences"
            % (config_name, book_path, config_name)
        )
    rec = book["configs"][config_name]
    recipe = book["recipes"][rec["recipe"]]
    cfg = add_lt_config(get_cfg())
    cfg.merge_from_file(os.path.join(root, config_name))
    mine = config_values(cfg, book["train_images"], config_name)
    theirs = official_values(book, config_name)
    documented = dict(rec.get("differences") or {})
    report = ConfigReport(
        config=config_name,
        recipe=rec["recipe"],
        source=recipe["source"],
        expected=list(rec.get("expected") or []),
        reproduced_on_lvis=_yes_no(rec.get("reproduced_on_lvis", "no")),
        note=str(rec.get("note") or ""),
    )
    for f in FIELDS:
        if f not in theirs:
            continue
        same = _same(mine[f], theirs[f])
        reason = documented.get(f, "")
        status = (
            ("STALE" if reason else "same")
            if same
            else ("documented" if reason else "UNDOCUMENTED")
        )
        report.rows.append((f, mine[f], theirs[f], status, reason))
    return report


def format_reports(reports: List[ConfigReport], all_fields: bool = False) -> str:
    """A plain-text table: per config its recipe, expected results and each differing field with
    its reason (every compared field with ``all_fields``)."""
    lines = []
    for r in reports:
        n_same = sum(1 for row in r.rows if row[3] == "same")
        lines.append("")
        lines.append(
            "== %s  [recipe %s; %d/%d fields match]" % (r.config, r.recipe, n_same, len(r.rows))
        )
        lines.append("   source: %s" % r.source)
        for e in r.expected or [{"result": "none"}]:
            tag = "" if e.get("verified", True) else " (unverified)"
            lines.append(
                "   expected: %s%s%s"
                % (e.get("result"), tag, "; " + e["source"] if e.get("source") else "")
            )
        if r.note:
            lines.append("   note: %s" % r.note)
        lines.append("   reproduced on LVIS here: %s" % r.reproduced_on_lvis)
        rows = [row for row in r.rows if all_fields or row[3] != "same"]
        if rows:
            lines.append(
                "   %-16s %-14s %-14s %-12s %s"
                % ("field", "config", "official", "status", "reason")
            )
        for f, mine, theirs, status, reason in rows:
            lines.append(
                "   %-16s %-14s %-14s %-12s %s" % (f, _show(mine), _show(theirs), status, reason)
            )
    return "\n".join(lines)
