"""The ``--register-*`` command-line flags every tool takes (``tools/train_net.py``, ``demo.py``,
``plot_methods.py``, ``evaluate_results.py``, ``audit_dataset.py``): datasets given as NAME JSON
IMAGE_ROOT, repeatable.

    parser = argparse.ArgumentParser()
    add_register_arguments(parser)
    args = parser.parse_args()
    register_from_args(args)  # before the config's DATASETS.* are used
"""

import os

__all__ = ["add_register_arguments", "register_from_args"]

_FLAGS = (
    (
        "--register-dataset",
        "register a COCO- or LVIS-format dataset under NAME (repeatable); use NAME in DATASETS.*",
    ),
    (
        "--register-lvis",
        "register an LVIS-format dataset with detectron2's register_lvis_instances (repeatable; "
        "IMAGE_ROOT is the folder that holds train2017/ and val2017/)",
    ),
    (
        "--register-coco",
        "register a COCO-format dataset with detectron2's register_coco_instances (repeatable)",
    ),
)


def add_register_arguments(parser):
    """Add ``--register-dataset``, ``--register-lvis`` and ``--register-coco`` (each NAME JSON
    IMAGE_ROOT, repeatable) to the argparse ``parser``; returns it."""
    for flag, help in _FLAGS:
        parser.add_argument(
            flag, nargs=3, action="append", metavar=("NAME", "JSON", "IMAGE_ROOT"), help=help
        )
    return parser


def register_from_args(args):
    """Register the datasets of :func:`add_register_arguments`' flags in ``args``:
    ``--register-dataset`` with :func:`~lt_detectron.data.register_lt_dataset`, ``--register-lvis``
    / ``--register-coco`` with detectron2's ``register_lvis_instances`` / ``register_coco_instances``.
    A name already registered in this process is left as it is (worker processes call it again)."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances, register_lvis_instances

    from .datasets import register_lt_dataset

    def lvis(name, json_file, image_root):
        # detectron2's load_lvis_json builds image_root + "train2017/...": keep a trailing separator
        register_lvis_instances(name, {}, json_file, os.path.join(image_root, ""))

    def coco(name, json_file, image_root):
        register_coco_instances(name, {}, json_file, image_root)

    for attr, register in (
        ("register_dataset", register_lt_dataset),
        ("register_lvis", lvis),
        ("register_coco", coco),
    ):
        for name, json_file, image_root in getattr(args, attr, None) or ():
            if name not in DatasetCatalog.list():
                register(name, json_file, image_root)
