"""Checkpointing that works with torch >= 2.6 and explains class-count mismatches.

- torch >= 2.6 loads with ``weights_only=True`` by default, which rejects the non-tensor
  objects Detectron2 stores next to the weights (trainer and scheduler state, numpy arrays).
  ``.pth`` files are loaded with ``weights_only=False``: load only checkpoints you trust (your
  own runs), as with any pickle.
- A checkpoint whose classifier was trained for another number of classes is a clear error
  naming both counts, unless ``MODEL.LT.REINIT_CLS`` is set (BAGS' decoupled recipe, where the
  classifier shape changes on purpose); then the classifier keys are dropped and logged.
"""
import logging

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["LTCheckpointer", "CheckpointClassMismatch"]

logger = logging.getLogger(__name__)

class CheckpointClassMismatch(RuntimeError):
    pass


class LTCheckpointer(DetectionCheckpointer):
    def __init__(self, model, save_dir="", *, reinit_cls=False, **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.reinit_cls = reinit_cls

    def _load_file(self, filename):
        if filename.endswith(".pth") or filename.endswith(".pt"):
            with open(filename, "rb") as f:
                data = torch.load(f, map_location=torch.device("cpu"), weights_only=False)
            if "model" not in data:
                data = {"model": data}
            return data
        return super()._load_file(filename)

    def _load_model(self, checkpoint):
        model_sd = self.model.state_dict()
        ckpt = checkpoint["model"]
        mismatched = []
        for k in list(ckpt.keys()):
            if "cls_score" not in k or k not in model_sd:
                continue
            v = ckpt[k]
            shape = tuple(v.shape) if hasattr(v, "shape") else None
            if shape is not None and shape != tuple(model_sd[k].shape):
                mismatched.append((k, shape, tuple(model_sd[k].shape)))
        if self.reinit_cls:
            dropped = [k for k in list(ckpt.keys()) if "cls_score" in k]
            for k in dropped:
                ckpt.pop(k)
            if dropped:
                logger.info(
                    "MODEL.LT.REINIT_CLS: the classifier is re-initialised; not loading %d key(s) from the "
                    "checkpoint (%s)", len(dropped), ", ".join(dropped)
                )
        elif mismatched:
            k, got, want = mismatched[0]
            raise CheckpointClassMismatch(
                "checkpoint classifier %s has shape %s but the model expects %s: the checkpoint was "
                "trained for another number of classes (or another classification loss). Set "
                "MODEL.ROI_HEADS.NUM_CLASSES to match the checkpoint, or set MODEL.LT.REINIT_CLS True "
                "to re-initialise the classifier (BAGS decoupled training)." % (k, list(got), list(want))
            )
        return super()._load_model(checkpoint)
