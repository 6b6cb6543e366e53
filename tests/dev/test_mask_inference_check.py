"""dev/mask_inference_check.py (run by dev/gpu_check.sh): its CPU part, AMP off and on, and its
clean skip without CUDA."""

import pytest
import torch

import lt_detectron.modeling
from dev import mask_inference_check as mic


@pytest.mark.parametrize("amp", [False, True], ids=["amp_off", "amp_on"])
@pytest.mark.parametrize("agnostic", [False, True], ids=["class_specific", "class_agnostic"])
def test_mask_inference_check_cpu(amp, agnostic):
    diff, mismatches, tol = mic.check("cpu", amp, detections=8, cls_agnostic=agnostic)
    assert 0 <= diff <= tol and mismatches == 0


def test_mask_inference_check_catches_wrong_masks(monkeypatch):
    """The check fails when the class-selected path picks another class's mask."""
    real = lt_detectron.modeling.class_selected_mask_inference

    def shifted(head, x, instances):
        for inst in instances:
            inst.pred_classes = inst.pred_classes + 1
        return real(head, x, instances)

    monkeypatch.setattr(lt_detectron.modeling, "class_selected_mask_inference", shifted)
    with pytest.raises(AssertionError, match="p diff"):
        mic.check("cpu", False, detections=8)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA skip")
def test_mask_inference_check_skips_without_cuda(capsys):
    assert mic.main(["--device", "cuda"]) == 0
    assert "skipped" in capsys.readouterr().out
