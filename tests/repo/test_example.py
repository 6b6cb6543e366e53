"""The user-guide example (examples/custom_meta_arch.py): a meta-architecture of one's own that
reuses an lt_detectron loss (tensors in/out) or the box head, built from Detectron2's registry and
trained for a few iterations on the embedded dataset."""

import math

import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.utils.events import EventStorage

from examples import custom_meta_arch as example  # (registers LTExampleBoxClassifier once)


@pytest.fixture(scope="module")
def batch():
    from lt_detectron.data.embedded import get_lt_shapes

    get_lt_shapes()
    cfg = example.example_cfg()
    torch.manual_seed(0)
    mapper = DatasetMapper(cfg, is_train=True)
    return [mapper(d) for d in DatasetCatalog.get("lt_shapes_train")[:2]]


def _train(model, batch, iters, lr=0.01):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    model.train()
    losses = []
    with EventStorage(0):  # Detectron2 heads log to the event storage
        for _ in range(iters):
            loss_dict = model(batch)
            total = sum(loss_dict.values())
            opt.zero_grad()
            total.backward()
            opt.step()
            losses.append(float(total))
    return losses


def test_registered_and_built_from_config():
    assert META_ARCH_REGISTRY.get("LTExampleBoxClassifier") is example.LTExampleBoxClassifier
    cfg = example.example_cfg("ecm", "loss")
    model = build_model(cfg)
    assert isinstance(model, example.LTExampleBoxClassifier)
    from lt_detectron import get_class_stats

    counts = get_class_stats(cfg.DATASETS.TRAIN).instance_counts
    assert model.cls_loss.instance_counts.tolist() == counts.tolist()  # counts from the registry
    with pytest.raises(KeyError, match="unknown MODEL.LT.ROI_LOSS 'nope'; registered: bags, c2am"):
        build_model(example.example_cfg("nope", "loss"))


@pytest.mark.parametrize("head", ["loss", "predictor"])
def test_method_keys_reach_the_example_loss(head):
    """The example builds its loss with build_roi_loss, as the heads do: MODEL.LT.<METHOD>.* reach it
    (its former copy of the translation dropped MODEL.LT.BAGS.* and MODEL.LT.C2AM.*)."""
    cfg = example.example_cfg("bags", head)
    cfg.MODEL.LT.BAGS.BETA = 3.5
    cfg.MODEL.LT.BAGS.BIN_EDGES = [5, 50]
    model = build_model(cfg)
    loss = model.cls_loss if head == "loss" else model.predictor.cls_loss
    assert loss.beta == 3.5 and loss.layout.bin_edges == (5.0, 50.0)
    classifier = model.cls_score if head == "loss" else model.predictor.cls_score
    assert classifier.out_features == loss.layout.num_logits  # the layer the loss asked for
    cfg = example.example_cfg("c2am", head)
    cfg.MODEL.LT.C2AM.SCALE = 17.0
    cfg.MODEL.LT.C2AM.ALPHA = 0.25
    model = build_model(cfg)
    loss = model.cls_loss if head == "loss" else model.predictor.cls_loss
    assert (loss.scale, loss.alpha) == (17.0, 0.25)
    z = torch.randn(3, loss.num_classes + 1)
    torch.testing.assert_close(loss.predict_probs(z), torch.softmax(17.0 * z, dim=1))


def test_eqlv2_loss_head_trains(batch):
    torch.manual_seed(0)
    model = build_model(example.example_cfg("eqlv2", "loss"))
    loss = model.cls_loss
    assert float(loss.pos_grad.abs().sum()) == 0.0 and torch.all(loss.pos_neg == 100)
    losses = _train(model, batch, iters=6)
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    # the EQL v2 statistics were accumulated: every class saw negatives, the GT classes positives
    gt = torch.cat([b["instances"].gt_classes for b in batch]).unique()
    assert torch.all(loss.neg_grad > 0)
    assert torch.all(loss.pos_grad[gt] > 0)
    assert not torch.all(loss.pos_neg == 100)
    model.eval()
    with torch.no_grad():
        out = model([{"image": b["image"], "height": 64, "width": 64} for b in batch])
    inst = out[0]["instances"]
    assert inst.image_size == (64, 64) and len(inst) > 0
    assert inst.pred_classes.max() < model.num_classes and torch.isfinite(inst.scores).all()


@pytest.mark.parametrize(
    "loss,head", [("eqlv2", "predictor"), ("bags", "predictor"), ("c2am", "loss")]
)
def test_other_heads_train(batch, loss, head):
    torch.manual_seed(0)
    model = build_model(example.example_cfg(loss, head))
    losses = _train(model, batch, iters=3)
    assert all(math.isfinite(v) for v in losses)
    if loss == "eqlv2":
        assert torch.all(model.predictor.cls_loss.neg_grad > 0)
    model.eval()
    with torch.no_grad():
        out = model([{"image": batch[0]["image"]}])
    assert len(out[0]["instances"]) > 0
