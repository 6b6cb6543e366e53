"""LTTrainer.test() (train_net --eval-only, the periodic evaluation hook) runs a Mask R-CNN through
ROIMaskInference for lt_detectron's evaluators, and the plain model for any other evaluator."""

import pytest
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators

from lt_detectron.engine.trainer import LTTrainer
from lt_detectron.evaluation import LTDatasetEvaluator
from lt_detectron.modeling import ROIMaskInference
from lt_detectron.utils.testing import build_tiny_mask_rcnn, lt_cfg


class _Ours(DatasetEvaluator):
    accepts_roi_masks = LTDatasetEvaluator.accepts_roi_masks


class _Theirs(DatasetEvaluator):  # e.g. detectron2's COCOEvaluator: needs full-image masks
    pass


@pytest.fixture(scope="module")
def model():
    return build_tiny_mask_rcnn()


@pytest.mark.parametrize(
    "evaluator, roi",
    [
        (_Ours(), True),
        (DatasetEvaluators([_Ours(), _Ours()]), True),
        (_Theirs(), False),
        (DatasetEvaluators([_Ours(), _Theirs()]), False),
    ],
)
def test_trainer_evaluation_uses_roi_masks(model, evaluator, roi, monkeypatch):
    import detectron2.evaluation as d2eval

    seen = []
    monkeypatch.setattr(d2eval, "inference_on_dataset", lambda m, loader, ev: seen.append(m) or {})
    monkeypatch.setattr(LTTrainer, "build_test_loader", classmethod(lambda cls, cfg, name: []))
    cfg = lt_cfg(None, "DATASETS.TEST", ("any",))
    LTTrainer.test(cfg, model, [evaluator])
    (ran,) = seen
    if roi:
        assert isinstance(ran, ROIMaskInference) and ran.model is model
    else:
        assert ran is model
