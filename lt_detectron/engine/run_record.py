"""What a training run records for inference without its training data (``OUTPUT_DIR/class_stats.json``
and ``MODEL.LT.CLASS_STATS_FILE``; the checkpoints hold the same statistics, ``LTTrainer.state_dict``)."""

import os

from detectron2.utils import comm

from ..class_stats import write_class_stats_file

__all__ = ["record_class_stats"]


def record_class_stats(cfg, stats):
    """What inference needs without the training data: ``stats`` written to
    ``OUTPUT_DIR/class_stats.json`` (main process) and a clone of ``cfg`` whose
    ``MODEL.LT.CLASS_STATS_FILE`` is its absolute path (so the run's config.yaml names it). ``cfg``
    itself without statistics or OUTPUT_DIR."""
    if stats is None or not cfg.OUTPUT_DIR:
        return cfg
    path = os.path.abspath(os.path.join(cfg.OUTPUT_DIR, "class_stats.json"))
    if comm.is_main_process():
        write_class_stats_file(stats, path)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.LT.CLASS_STATS_FILE = path
    cfg.freeze()
    return cfg
