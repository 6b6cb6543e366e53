"""The class statistics of a training run as plain data: what inference needs without the training
data.

A run writes them to ``OUTPUT_DIR/class_stats.json`` (a plain json) and into its checkpoints (the
trainer's state, ``checkpoint["trainer"]["class_stats"]``: strings, numbers and lists, loadable with
``torch.load(weights_only=True)``). ``MODEL.LT.CLASS_STATS_FILE`` names either file; the registry
(:func:`~lt_detectron.class_stats.get_class_stats`) reads it when ``DATASETS.TRAIN`` is not
registered in the process or its json is gone.
"""

import json
import os
from typing import Any, Dict

from .stats import ClassStats, ClassStatsError

__all__ = [
    "CLASS_STATS_FORMAT",
    "class_stats_to_dict",
    "class_stats_from_dict",
    "write_class_stats_file",
    "read_class_stats_file",
]

CLASS_STATS_FORMAT = "lt_detectron.class_stats/1"

_FIELDS = (
    "dataset_names",
    "class_names",
    "dataset_ids",
    "instance_counts",
    "image_counts",
    "num_images",
    "frequency",
)


def class_stats_to_dict(stats: ClassStats) -> Dict[str, Any]:
    """``stats`` as plain data (str, int, lists), for a json file or a checkpoint."""
    return {
        "format": CLASS_STATS_FORMAT,
        "dataset_names": [str(n) for n in stats.dataset_names],
        "class_names": [str(n) for n in stats.class_names],
        "dataset_ids": [int(i) for i in stats.dataset_ids],
        "instance_counts": [int(n) for n in stats.instance_counts],
        "image_counts": [int(n) for n in stats.image_counts],
        "num_images": int(stats.num_images),
        "frequency": [str(f) for f in stats.frequency],
        "source": str(stats.source),
    }


def class_stats_from_dict(d, where: str = "class statistics") -> ClassStats:
    """The :class:`ClassStats` of :func:`class_stats_to_dict`'s output; its ``source`` is ``file``.
    ``where`` names the file in the errors."""
    if not isinstance(d, dict) or d.get("format") != CLASS_STATS_FORMAT:
        raise ClassStatsError(
            "%s: not lt_detectron class statistics (expected a mapping with format %r, got %s)"
            % (
                where,
                CLASS_STATS_FORMAT,
                type(d).__name__ if not isinstance(d, dict) else d.get("format"),
            )
        )
    missing = [k for k in _FIELDS if k not in d]
    if missing:
        raise ClassStatsError("%s: missing %s" % (where, ", ".join(missing)))
    try:
        return ClassStats(
            tuple(d["dataset_names"]),
            tuple(d["class_names"]),
            tuple(int(i) for i in d["dataset_ids"]),
            d["instance_counts"],
            d["image_counts"],
            int(d["num_images"]),
            d["frequency"],
            "file",
        )
    except ClassStatsError as e:
        raise ClassStatsError("%s: %s" % (where, e)) from None


def write_class_stats_file(stats: ClassStats, path: str) -> str:
    """Write ``stats`` to the json ``path`` atomically; returns its absolute path."""
    from ..utils.atomic import atomic_write

    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = json.dumps(class_stats_to_dict(stats), indent=1)
    atomic_write(path, lambda f: f.write(text), mode="w")
    return path


def read_class_stats_file(path: str) -> ClassStats:
    """The statistics in ``path``: a json written by :func:`write_class_stats_file`, or a ``.pth``
    checkpoint of an lt_detectron run (read with ``torch.load(weights_only=True)``)."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise ClassStatsError("MODEL.LT.CLASS_STATS_FILE %s does not exist" % path)
    if path.endswith(".json"):
        try:
            with open(path) as f:
                d = json.load(f)
        except ValueError as e:
            raise ClassStatsError("MODEL.LT.CLASS_STATS_FILE %s is not valid json: %s" % (path, e))
    else:
        import torch

        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ClassStatsError(
                "MODEL.LT.CLASS_STATS_FILE %s is neither a .json nor a loadable checkpoint (%s: %s)"
                % (path, type(e).__name__, e)
            ) from None
        trainer = ckpt.get("trainer") if isinstance(ckpt, dict) else None
        d = trainer.get("class_stats") if isinstance(trainer, dict) else None
        if d is None:
            raise ClassStatsError(
                "MODEL.LT.CLASS_STATS_FILE %s is a checkpoint without class statistics (only "
                "checkpoints written by lt_detectron's trainer hold them); give the run's "
                "class_stats.json instead" % path
            )
    return class_stats_from_dict(d, "MODEL.LT.CLASS_STATS_FILE %s" % path)
