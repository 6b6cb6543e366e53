"""Check dataset names and generate the embedded dataset before worker processes start."""
from detectron2.data import DatasetCatalog

__all__ = ["prepare_datasets", "check_dataset_names"]


def check_dataset_names(names):
    known = DatasetCatalog.list()
    for n in names:
        if n not in known:
            hint = sorted(k for k in known if k.split("_")[0] == n.split("_")[0])[:10]
            raise KeyError(
                "unknown dataset %r in the config. Registered datasets%s. Register your own with "
                "lt_detectron.data.register_lt_dataset(name, json_file, image_root)."
                % (n, (" with a similar name: " + ", ".join(hint)) if hint else ": see DatasetCatalog.list()")
            )


def prepare_datasets(config_file=None, opts=(), cfg=None):
    """Validate ``DATASETS.TRAIN/TEST`` names and generate ``lt_shapes_*`` if they are used."""
    if cfg is None:
        from detectron2.config import get_cfg

        from ..config import add_lt_config

        cfg = get_cfg()
        add_lt_config(cfg)
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    check_dataset_names(names)
    if any(n.startswith("lt_shapes_") for n in names):
        from .embedded import get_lt_shapes

        get_lt_shapes()
    return cfg
