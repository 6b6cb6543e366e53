"""The training data at startup, read once before any model is built: the dataset files and class
lists checked, the training dicts parsed, the class statistics counted and checked against the
config's class count (:func:`prepare_training_data`, :func:`check_config_against_data`)."""

from ..class_stats import check_num_classes, get_class_stats
from ..data import load_train_dicts, train_dataset_dicts

__all__ = ["check_config_against_data", "prepare_training_data"]


def prepare_training_data(cfg, check_images: bool = True):
    """Startup checks, then the training data read once: ``(cfg, class_stats, train_dicts)``.

    Every dataset file must exist and the test sets must share the training class list (cheap
    checks, before any json is parsed); then the training json is parsed once per process and the
    class statistics, the epoch length (RFS-expanded, for BOFL) and the data loader all use the
    same dicts. The returned ``cfg`` is a clone with ``MODEL.LT.BOFL.ITERS_PER_EPOCH`` set from them
    when it was 0 and the loss follows BOFL's linear schedule
    (:func:`lt_detectron.data.epochs.with_iters_per_epoch`): build the model from it.
    ``(cfg, None, None)`` without training datasets. ``--eval-only`` calls it too, so that the heads'
    statistics and BOFL schedule come from the same single parse, with ``check_images=False`` (it
    reads no training image).
    """
    from ..data.epochs import with_iters_per_epoch

    from ..data import check_class_lists, check_dataset_files, ensure_embedded_generated

    ensure_embedded_generated(cfg)  # a no-op unless lt_shapes_* is used and not yet generated
    # existence only here: the test jsons' boxes are checked once by prepare_datasets (train_net)
    check_dataset_files(cfg, check_test_boxes=False)
    check_class_lists(cfg)
    if not cfg.DATASETS.TRAIN:
        return cfg, None, None
    by_name = load_train_dicts(cfg, check_images=check_images)
    stats = check_config_against_data(cfg, by_name)
    train_dicts = train_dataset_dicts(cfg, by_name)
    return with_iters_per_epoch(cfg, train_dicts), stats, train_dicts


def check_config_against_data(cfg, dataset_dicts=None):
    """Clear errors for config/dataset disagreements, before any model is built.

    The config's class count must equal the data's. Returns the
    training ``ClassStats`` (``None`` without training datasets). ``dataset_dicts``: the training
    dicts ``{name: dicts}`` already loaded (``load_train_dicts``), counted instead of re-read.
    """
    if not cfg.DATASETS.TRAIN:
        return None
    stats = get_class_stats(
        cfg.DATASETS.TRAIN, dataset_dicts=dataset_dicts, group_edges=cfg.MODEL.LT.GROUP_EDGES
    )
    arch = cfg.MODEL.META_ARCHITECTURE
    key = {"FCOS": "FCOS", "CenterNet": "CENTERNET"}.get(
        arch, "RETINANET" if "RetinaNet" in arch else None
    )
    if key is not None:
        check_num_classes(cfg.MODEL[key].NUM_CLASSES, stats, "MODEL.%s.NUM_CLASSES" % key)
    elif arch == "GeneralizedRCNN":
        check_num_classes(cfg.MODEL.ROI_HEADS.NUM_CLASSES, stats, "MODEL.ROI_HEADS.NUM_CLASSES")
    return stats
