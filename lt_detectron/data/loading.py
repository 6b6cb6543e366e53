"""Load the training datasets once per process and derive everything from the same dicts.

Plain detectron2 parses the training json once (``get_detection_dataset_dicts`` in
``build_detection_train_loader``). lt_detectron needs the class statistics and the epoch
length (RFS-expanded) too, before the model is built. The startup path is::

    dicts = load_train_dicts(cfg)                       # DatasetCatalog.get, once per name
    stats = get_class_stats(cfg.DATASETS.TRAIN, dataset_dicts=dicts)
    train = train_dataset_dicts(cfg, dicts)             # what get_detection_dataset_dicts returns
    cfg = with_iters_per_epoch(cfg, train)              # MODEL.LT.BOFL.ITERS_PER_EPOCH (epochs.py)
    model = build_model(cfg)
    loader = build_detection_train_loader(cfg, dataset=train, mapper=LTDatasetMapper(cfg, True))

``load_train_dicts`` also applies the ``bad_boxes`` check to datasets whose loader
lt_detectron does not own (detectron2's ``register_lvis_instances`` /
``register_coco_instances`` and the builtin LVIS splits), so dropped boxes are never counted,
and checks that every training image exists (from the same dicts: no second parse).
"""

import itertools
import logging
import time
from typing import Dict, List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.build import (
    filter_images_with_few_keypoints,
    filter_images_with_only_crowd_annotations,
    load_proposals_into_dataset,
    print_instances_class_histogram,
)
from detectron2.data.detection_utils import check_metadata_consistency

from detectron2.utils import comm

from .datasets import ensure_dataset_metadata
from .image_files import check_image_files
from .validation import DEFAULT_BAD_BOXES, check_dicts_boxes

__all__ = ["load_dataset_dicts", "load_train_dicts", "train_dataset_dicts"]

logger = logging.getLogger(__name__)


def load_dataset_dicts(name: str) -> List[dict]:
    """``DatasetCatalog.get(name)`` plus the class metadata and the ``bad_boxes`` check.

    The box check is idempotent: on dicts from ``load_lt_json`` (which already applied it with
    annotation ids in its messages) it finds nothing to do.
    """
    meta = MetadataCatalog.get(name)
    ensure_dataset_metadata(name)
    t0 = time.perf_counter()
    try:
        dicts = DatasetCatalog.get(name)
    except ValueError as e:
        if "No built-in metadata for dataset" in str(e):
            raise ValueError(
                "%s. Dataset %r is registered with detectron2's register_lvis_instances, whose loader takes the "
                "class names from its builtin LVIS lists chosen by the dataset's name. Register the json with "
                "lt_detectron.data.register_lt_dataset(name, json_file, image_root) instead."
                % (e, name)
            ) from None
        raise
    t1 = time.perf_counter()
    if not isinstance(dicts, list):
        raise TypeError(
            "dataset %r: DatasetCatalog returned a %s; lt_detectron's trainer needs a list of dataset dicts "
            "(detectron2's standard format) to count class statistics and repeat factors"
            % (name, type(dicts).__name__)
        )
    if len(dicts) and "annotations" in dicts[0]:
        check_dicts_boxes(
            dicts, meta.get("json_file", name), meta.get("bad_boxes", DEFAULT_BAD_BOXES)
        )
    logger.info(
        "dataset %s: %d images loaded in %.2fs (checks %.2fs)",
        name,
        len(dicts),
        t1 - t0,
        time.perf_counter() - t1,
    )
    return dicts


def _first_process_of_machine() -> bool:
    """Local rank 0 under detectron2's ``launch`` (or ``launch_on_device``); every process when the
    processes were started otherwise (no local process group: e.g. a user's own ``mp.spawn``)."""
    if comm.get_world_size() == 1:
        return True
    try:
        return comm.get_local_rank() == 0
    except AssertionError:  # detectron2's "Local process group is not created"
        return True


def load_train_dicts(cfg, check_images: bool = True) -> Dict[str, List[dict]]:
    """``{name: dataset dicts}`` of ``cfg.DATASETS.TRAIN``, each read once (:func:`load_dataset_dicts`).

    With ``check_images``, every image file of these dicts must exist
    (:func:`~lt_detectron.data.image_files.check_image_files`: one ``os.stat`` each, on the
    first process of each machine; the error names the missing files and the ``image_root``).
    """
    out = {}
    for name in cfg.DATASETS.TRAIN:
        if name not in out:
            out[name] = load_dataset_dicts(name)
    if check_images and _first_process_of_machine():
        # the other processes of this machine are stopped by the launcher when this one fails
        check_image_files(out, out)
    return out


def train_dataset_dicts(
    cfg, dicts_by_name: Dict[str, List[dict]], names: Sequence[str] = None
) -> List[dict]:
    """What detectron2's ``get_detection_dataset_dicts(cfg.DATASETS.TRAIN, ...)`` returns, from loaded dicts.

    Same steps and order: emptiness check, proposals (``MODEL.LOAD_PROPOSALS``), concatenation,
    ``filter_images_with_only_crowd_annotations`` (``DATALOADER.FILTER_EMPTY_ANNOTATIONS``),
    ``filter_images_with_few_keypoints`` (keypoint models), metadata consistency and the class
    histogram. The per-name lists are not modified (the filters build new lists).
    """
    names = list(cfg.DATASETS.TRAIN if names is None else names)
    assert len(names), names
    dataset_dicts = [dicts_by_name[n] for n in names]
    for n, d in zip(names, dataset_dicts):
        assert len(d), "Dataset '{}' is empty!".format(n)
    if cfg.MODEL.LOAD_PROPOSALS:
        files = cfg.DATASETS.PROPOSAL_FILES_TRAIN
        assert len(names) == len(files)
        dataset_dicts = [load_proposals_into_dataset(d, f) for d, f in zip(dataset_dicts, files)]
    dataset_dicts = list(itertools.chain.from_iterable(dataset_dicts))
    has_instances = "annotations" in dataset_dicts[0]
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS and has_instances:
        dataset_dicts = filter_images_with_only_crowd_annotations(dataset_dicts)
    min_kp = cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
    if min_kp > 0 and has_instances:
        dataset_dicts = filter_images_with_few_keypoints(dataset_dicts, min_kp)
    if has_instances:
        try:
            class_names = MetadataCatalog.get(names[0]).thing_classes
            check_metadata_consistency("thing_classes", names)
            print_instances_class_histogram(dataset_dicts, class_names)
        except AttributeError:  # class names are not available for this dataset
            pass
    assert len(dataset_dicts), "No valid data found in {}.".format(",".join(names))
    return dataset_dicts
