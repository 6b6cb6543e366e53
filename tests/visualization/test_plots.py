"""Method plots: each function writes a PNG, and the data it plots (sorted by training instance
count, descending) equals an independent computation; the training hook and tools/plot_methods.py
write the plots for the model's box predictors (cascade stages, BAGS layout, DDP wrapper)."""

import os
import types

import numpy as np
import pytest
import torch
import torch.nn as nn
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.utils.events import EventStorage
from PIL import Image

import lt_detectron  # noqa: F401
from lt_detectron.visualization import plots, result_plots
from lt_detectron.engine.hooks import (
    LTPlotHook,
    build_lt_hooks,
    insert_before_writers,
    plot_sources,
)
from lt_detectron.losses import EQLv2Loss
from lt_detectron.modeling import LongTailFastRCNNOutputLayers
from lt_detectron.utils.testing import lt_cfg

from tests._data import ROOT

# ties (2 x 10, 2 x 3) and a zero-count class on purpose
COUNTS = np.array([10, 500, 3, 0, 10, 77, 3, 1])
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _expected_order(counts):
    # descending count, ties by class id (independent of np.argsort)
    return np.array(sorted(range(len(counts)), key=lambda i: (-counts[i], i)))


def _is_png(path):
    assert os.path.isfile(path) and os.path.getsize(path) > 1000
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC


def test_expected_order_helper():
    np.testing.assert_array_equal(plots.sort_by_count(COUNTS), _expected_order(COUNTS))
    np.testing.assert_array_equal(_expected_order(COUNTS), [1, 5, 0, 4, 2, 6, 7, 3])


def test_weight_norms(tmp_path):
    torch.manual_seed(0)
    C = len(COUNTS)
    w = torch.randn(C + 1, 6)
    order = _expected_order(COUNTS)
    expected = [float(torch.sqrt((w[i] ** 2).sum())) for i in order]
    d = plots.weight_norm_data(w, COUNTS)
    np.testing.assert_array_equal(d["order"], order)
    np.testing.assert_array_equal(d["counts"], COUNTS[order])
    assert np.all(np.diff(d["counts"]) <= 0)
    np.testing.assert_allclose(d["norms"], expected, rtol=1e-6)
    np.testing.assert_allclose(d["background_norm"], float(w[C].norm()), rtol=1e-6)
    # C rows (no background), and a grouped layout addressed by class_rows
    assert np.isnan(plots.weight_norm_data(w[:C], COUNTS)["background_norm"])
    rows = torch.tensor([8, 7, 6, 5, 4, 3, 2, 1])
    d2 = plots.weight_norm_data(w, COUNTS, class_rows=rows)
    np.testing.assert_allclose(d2["norms"], [float(w[rows[i]].norm()) for i in order], rtol=1e-6)
    with pytest.raises(ValueError):
        plots.weight_norm_data(w[:3], COUNTS)
    path = plots.plot_weight_norms(
        w, COUNTS, ["c%d" % i for i in range(C)], str(tmp_path / "a" / "wn.png")
    )
    assert path == str(tmp_path / "a" / "wn.png")
    _is_png(path)


def test_eqlv2_ratios_from_a_real_loss(tmp_path):
    torch.manual_seed(1)
    C = len(COUNTS)
    loss = EQLv2Loss(C)
    for _ in range(3):
        loss(torch.randn(32, C + 1), torch.randint(0, C + 1, (32,)))
    pos, neg = loss.pos_grad.double().numpy(), loss.neg_grad.double().numpy()
    assert pos.any() and neg.any()
    order = _expected_order(COUNTS)
    ratio = pos / (neg + 1e-10)
    r = 1.0 / (1.0 + np.exp(-12.0 * (ratio - 0.8)))
    q = 1.0 + 4.0 * (1.0 - r)
    d = plots.eqlv2_ratio_data(loss.pos_grad, loss.neg_grad, COUNTS)
    np.testing.assert_array_equal(d["order"], order)
    np.testing.assert_allclose(d["ratio"], ratio[order], rtol=1e-5)
    np.testing.assert_allclose(
        d["ratio"], loss.pos_neg.double().numpy()[order], rtol=1e-5
    )  # the loss' own g
    np.testing.assert_allclose(d["r"], r[order], rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(d["q"], q[order], rtol=1e-5)
    # the weights the loss uses next step are the plotted ones
    neg_w, pos_w = loss.get_weights(torch.float64)
    np.testing.assert_allclose(d["r"], neg_w[:C].numpy()[order], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(d["q"], pos_w[:C].numpy()[order], rtol=1e-4)
    _is_png(plots.plot_eqlv2_ratios(loss.pos_grad, loss.neg_grad, COUNTS, str(tmp_path / "eq.png")))
    # what the loss says it plots: its own g (pos_neg) and the q/r it uses next step
    pd = loss.plot_data()
    assert pd["name"] == "eqlv2_ratios" and "EQL v2" in pd["title"]
    np.testing.assert_allclose(pd["ratio"].numpy(), ratio, rtol=1e-5)
    (q_label, q_vals), (r_label, r_vals) = pd["factors"].items()
    assert q_label.startswith("q_j") and r_label.startswith("r_j")
    np.testing.assert_allclose(q_vals.numpy(), q, rtol=1e-4)
    np.testing.assert_allclose(r_vals.numpy(), r, rtol=1e-4, atol=1e-7)
    d = plots.class_statistics_data(pd, COUNTS)
    np.testing.assert_array_equal(d["order"], order)
    np.testing.assert_allclose(d["factors"][q_label], q[order], rtol=1e-4)
    _is_png(plots.plot_class_statistics(pd, COUNTS, str(tmp_path / "cs.png")))
    with pytest.raises(ValueError, match="entries for 8 classes"):
        plots.class_statistics_data(dict(pd, ratio=pd["ratio"][:3]), COUNTS)


def test_efl_statistics_are_plotted_as_efl():
    """EFL keeps gradient statistics too (``stats.pos_grad`` ...): the plot asks the loss, so it is drawn
    with EFL's own factors gamma_j = gamma_b + s (1 - g_j), w_j = gamma_j / gamma_b, never as EQL v2."""
    from lt_detectron.losses import DENSE_LOSS_REGISTRY

    torch.manual_seed(2)
    C = len(COUNTS)
    efl = DENSE_LOSS_REGISTRY.get("efl")(C, focal_gamma=2.0, scale_factor=8.0)
    for _ in range(3):
        z = torch.randn(40, C, requires_grad=True)
        efl(z, torch.randint(0, C + 1, (40,))).backward()
    g = efl.stats.pos_neg.double().numpy()
    assert 0 < g.min() and g.max() <= 1 and not np.allclose(g, 1)
    pd = efl.plot_data()
    assert pd["name"] == "efl_ratios" and "EFL" in pd["title"] and "EQL" not in pd["title"]
    (gl, gv), (wl, wv) = pd["factors"].items()
    assert gl.startswith("gamma_j") and wl.startswith("w_j")
    np.testing.assert_allclose(pd["ratio"].numpy(), g, rtol=1e-6)
    np.testing.assert_allclose(gv.numpy(), 2.0 + 8.0 * (1 - g), rtol=1e-5)
    np.testing.assert_allclose(wv.numpy(), (2.0 + 8.0 * (1 - g)) / 2.0, rtol=1e-5)
    model = nn.Module()
    model.head = nn.Module()
    model.head.cls_loss = efl
    src = plot_sources(model)
    assert src["weight_norms"] == [] and [(t, m) for t, m in src["statistics"]] == [
        ("head_cls_loss", efl)
    ]


def test_bofl_schedule(tmp_path):
    counts = np.array([100, 10, 1, 0])
    d = plots.bofl_schedule_data(counts, total_epochs=5, deferred_epochs=1, kappa=0.5)
    # default classes: head (most), mid (median rank among non-zero), tail (fewest non-zero)
    np.testing.assert_array_equal(d["classes"], [0, 1, 2])
    np.testing.assert_array_equal(d["epochs"], [0, 1, 2, 3, 4, 5])
    lam = np.array([0, 0, 0.25, 0.5, 0.75, 1.0])  # clip((e - d) / (T - d), 0, 1)
    np.testing.assert_allclose(d["lam"], lam)
    alpha = 111.0 / (4 * np.array([100.0, 10.0, 1.0]))  # n / (C n_i)
    np.testing.assert_allclose(d["alpha"], alpha)
    np.testing.assert_allclose(d["alpha_hat"], 1 + 0.5 * lam[None] * (alpha[:, None] - 1))
    # explicit classes, zero-count class is neutral (alpha 1)
    d2 = plots.bofl_schedule_data(counts, 5, 1, 0.5, classes=[3, 2])
    np.testing.assert_allclose(d2["alpha_hat"][0], 1.0)
    # per-iteration: lambda is linear in the fractional epoch
    d3 = plots.bofl_schedule_data(counts, 5, 1, 0.5, per_iteration=True)
    np.testing.assert_allclose(d3["lam"], np.clip((d3["epochs"] - 1) / 4, 0, 1))
    _is_png(
        plots.plot_bofl_schedule(
            counts, 5, 1, 0.5, str(tmp_path / "bofl.png"), class_names=["a", "b", "c", "d"]
        )
    )


def test_ap_vs_instances(tmp_path):
    assert (
        plots.plot_ap_vs_instances is result_plots.plot_ap_vs_instances
    )  # still importable from plots
    counts = np.array([5, 2000, 50, 0, 500, 20])
    ap = {
        "softmax": np.array([0.0, 0.6, 0.2, np.nan, 0.5, 0.1]),
        "eqlv2": np.array([0.3, 0.6, 0.4, 0.1, 0.5, np.nan]),
    }
    d = result_plots.ap_vs_instances_data(ap, counts)
    order = _expected_order(counts)
    np.testing.assert_array_equal(d["order"], order)
    np.testing.assert_array_equal(d["counts"], [2000, 500, 50, 20, 5, 0])
    np.testing.assert_allclose(d["ap"]["eqlv2"], ap["eqlv2"][order])
    assert d["bins"] == [(0.0, 10.0), (10.0, 100.0), (100.0, 1000.0), (1000.0, float("inf"))]
    np.testing.assert_array_equal(d["bin_counts"], [2, 2, 1, 1])
    np.testing.assert_allclose(
        d["bin_mean"]["softmax"], [0.0, 0.15, 0.5, 0.6]
    )  # NaN class left out
    np.testing.assert_allclose(d["bin_mean"]["eqlv2"], [0.2, 0.4, 0.5, 0.6])
    d2 = result_plots.ap_vs_instances_data({"m": np.array([0.1, 0.2])}, np.array([5, 7]))
    assert np.isnan(d2["bin_mean"]["m"][1:]).all()  # empty bins
    _is_png(result_plots.plot_ap_vs_instances(ap, counts, str(tmp_path / "ap.png")))


def _write_eval_csv(path):
    """A per-category csv written by the evaluators' own writer; returns the rows."""
    from lt_detectron.evaluation.common import write_per_category_csv

    rows = [
        dict(
            category_id=1,
            name="disk",
            frequency="f",
            train_instances=1500,
            train_images=400,
            AP=71.25,
        ),
        dict(category_id=2, name="star", frequency="r", train_instances=3, train_images=3, AP=12.5),
        dict(
            category_id=3,
            name="ring",
            frequency="c",
            train_instances=40,
            train_images=30,
            AP=float("nan"),
        ),
        dict(category_id=4, name="bar", frequency="c", train_instances=0, train_images=0, AP=0.0),
    ]
    write_per_category_csv(str(path), rows)
    return rows


def test_result_plots_from_the_evaluators_csv(tmp_path):
    rows = _write_eval_csv(tmp_path / "inference" / "ds" / "lvis_per_category_bbox.csv")
    d = result_plots.read_per_category_csv(
        str(tmp_path / "inference" / "ds" / "lvis_per_category_bbox.csv")
    )
    assert d["name"] == [r["name"] for r in rows] and d["frequency"] == ["f", "r", "c", "c"]
    np.testing.assert_array_equal(d["category_id"], [r["category_id"] for r in rows])
    np.testing.assert_array_equal(d["train_instances"], [1500, 3, 40, 0])
    np.testing.assert_allclose(d["AP"], [71.25, 12.5, np.nan, 0.0])
    paths = result_plots.write_result_plots(
        str(tmp_path / "inference" / "ds" / "lvis_per_category_bbox.csv"),
        str(tmp_path / "plots"),
        label="softmax",
        suffix="final",
    )
    assert [os.path.basename(p) for p in paths] == [
        "ap_vs_instances_lvis_bbox_final.png",
        "ap_per_category_lvis_bbox_final.png",
    ]
    for p in paths:
        _is_png(p)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a per-category AP csv"):
        result_plots.read_per_category_csv(str(tmp_path / "bad.csv"))


# ---------------------------------------------------------------------- hook
def _predictor(loss, C, counts=None):
    from lt_detectron.losses import ROI_LOSS_REGISTRY

    cls_loss = ROI_LOSS_REGISTRY.get(loss)(C if counts is None else counts)
    return LongTailFastRCNNOutputLayers(
        ShapeSpec(channels=8),
        box2box_transform=Box2BoxTransform((10, 10, 5, 5)),
        num_classes=C,
        cls_loss=cls_loss,
    )


class _FakeDDP(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module


def test_plot_sources_cascade_bags_and_ddp():
    C = len(COUNTS)
    model = nn.Module()
    model.roi_heads = nn.Module()
    model.roi_heads.box_predictor = nn.ModuleList(
        [_predictor("eqlv2", C), _predictor("bags", C, COUNTS)]
    )
    src = plot_sources(_FakeDDP(model))
    assert [t for t, _, _ in src["weight_norms"]] == [
        "box_predictor_stage0",
        "box_predictor_stage1",
    ]
    assert src["weight_norms"][0][2] is None
    layout = model.roi_heads.box_predictor[1].cls_loss.layout
    np.testing.assert_array_equal(src["weight_norms"][1][2], layout.column_of_label[:C])
    assert [t for t, _ in src["statistics"]] == ["box_predictor_stage0"]
    assert src["statistics"][0][1] is model.roi_heads.box_predictor[0].cls_loss


def test_hook_writes_periodic_and_final_plots(tmp_path):
    from lt_detectron.class_stats import ClassStats

    C = len(COUNTS)
    stats = ClassStats(
        ("fake",),
        tuple("c%d" % i for i in range(C)),
        tuple(range(C)),
        COUNTS,
        COUNTS,
        10,
        np.array(["f"] * C),
    )
    model = nn.Module()
    model.roi_heads = nn.Module()
    model.roi_heads.box_predictor = _predictor("eqlv2", C)
    bofl = dict(total_epochs=4, deferred_epochs=1, kappa=1.0)
    old_csv = tmp_path / "inference" / "old" / "lvis_per_category_bbox.csv"
    _write_eval_csv(old_csv)  # an earlier run's results: not plotted
    hook = LTPlotHook(2, str(tmp_path), class_stats=stats, bofl=bofl)
    storage = EventStorage(0)
    hook.trainer = types.SimpleNamespace(model=_FakeDDP(model), iter=0, max_iter=4, storage=storage)
    hook.before_train()
    for it in range(4):
        hook.trainer.iter = storage.iter = it
        if (
            it == 2
        ):  # an evaluation (TEST.EVAL_PERIOD; EvalHook runs before this hook) writes its csv
            _write_eval_csv(tmp_path / "inference" / "val" / "lvis_per_category_bbox.csv")
        hook.after_step()
    hook.after_train()
    names = sorted(os.listdir(tmp_path / "plots"))
    assert names == sorted(
        [
            "bofl_schedule.png",
            "weight_norms_box_predictor_iter0000002.png",
            "eqlv2_ratios_box_predictor_iter0000002.png",
            "weight_norms_box_predictor_final.png",
            "eqlv2_ratios_box_predictor_final.png",
            "ap_vs_instances_lvis_bbox_val_iter0000003.png",
            "ap_per_category_lvis_bbox_val_iter0000003.png",
        ]
    )
    for n in names:
        _is_png(str(tmp_path / "plots" / n))
    # each PNG also went into the event storage (TensorBoard), tagged without its <when>, at its step
    put = [(name, step) for name, _, step in storage._vis_data]
    assert put == [
        ("lt_plots/bofl_schedule", 0),
        ("lt_plots/weight_norms_box_predictor", 1),
        ("lt_plots/eqlv2_ratios_box_predictor", 1),
        ("lt_plots/ap_vs_instances_lvis_bbox_val", 2),
        ("lt_plots/ap_per_category_lvis_bbox_val", 2),
        ("lt_plots/weight_norms_box_predictor", 3),
        ("lt_plots/eqlv2_ratios_box_predictor", 3),
    ]
    img = storage._vis_data[0][1]
    png = np.asarray(Image.open(tmp_path / "plots" / "bofl_schedule.png").convert("RGB"))
    assert img.dtype == torch.float32 and tuple(img.shape) == (3,) + png.shape[:2]
    np.testing.assert_allclose(img.permute(1, 2, 0).numpy(), png / 255.0, atol=1e-6)


def test_plot_hook_runs_before_the_writers():
    """Placed before detectron2's PeriodicWriter, so the images of the last step and of the final
    evaluation are written (its after_train closes the writers)."""
    from detectron2.engine import hooks as d2hooks

    writer = d2hooks.PeriodicWriter([], period=20)
    timer, ours = d2hooks.IterationTimer(), object()
    assert insert_before_writers([timer, None, writer], [ours]) == [timer, None, ours, writer]
    assert insert_before_writers([timer], [ours]) == [timer, ours]


def test_build_lt_hooks():
    cfg = lt_cfg()
    cfg.DATASETS.TRAIN = ()
    assert build_lt_hooks(cfg) == []
    cfg.LT_HOOKS.PLOT_PERIOD = 50
    hooks = build_lt_hooks(cfg, types.SimpleNamespace(class_stats=None))
    assert len(hooks) == 1 and isinstance(hooks[0], LTPlotHook) and hooks[0]._period == 50


# ---------------------------------------------------------------------- tool
def _load_tool():
    from tools import plot_methods

    return plot_methods


def test_plot_methods_tool(tmp_path):
    from detectron2.modeling import build_model

    tool = _load_tool()
    cfg_file = os.path.join(ROOT, "configs", "lt_shapes", "faster_rcnn_tiny_eqlv2.yaml")
    cfg = lt_cfg(cfg_file)
    model = build_model(cfg)
    loss = model.roi_heads.box_predictor.cls_loss
    loss.pos_grad.uniform_(0, 1)
    loss.neg_grad.uniform_(1, 2)
    ckpt = str(tmp_path / "model.pth")
    torch.save({"model": model.state_dict()}, ckpt)
    out = tmp_path / "plots"
    paths = tool.main(["--config-file", cfg_file, "--output", str(out), "MODEL.WEIGHTS", ckpt])
    assert sorted(os.path.basename(p) for p in paths) == [
        "eqlv2_ratios_box_predictor.png",
        "weight_norms_box_predictor.png",
    ]
    for p in paths:
        _is_png(p)
    # config-only BOFL schedule
    paths = tool.main(
        [
            "--config-file",
            os.path.join(ROOT, "configs", "lt_shapes", "faster_rcnn_tiny_sigmoid.yaml"),
            "--bofl-schedule",
            "--output",
            str(out),
            "MODEL.LT.BOFL.ENABLED",
            "True",
        ]
    )
    assert [os.path.basename(p) for p in paths] == ["bofl_schedule.png"]
    _is_png(paths[0])
    with pytest.raises(SystemExit):
        tool.main(["--config-file", cfg_file, "--output", str(out)])  # no weights
    # an evaluation's csv alone: the result plots, labelled with the run folder
    csv_path = tmp_path / "run_x" / "inference" / "val" / "lvis_per_category_bbox.csv"
    _write_eval_csv(csv_path)
    paths = tool.main(["--output", str(out), "--results", str(csv_path)])
    assert [os.path.basename(p) for p in paths] == [
        "ap_vs_instances_lvis_bbox_val.png",
        "ap_per_category_lvis_bbox_val.png",
    ]
    with pytest.raises(SystemExit, match="does not exist"):
        tool.main(["--output", str(out), "--results", str(tmp_path / "missing.csv")])


def test_bofl_schedule_settings_follow_the_config():
    """The plot takes BOFL's settings from the same function as the loss (losses/bofl.py): LINEAR_SCHEDULE
    False is lambda = 1 from the first epoch; a config without BOFL has none."""

    from lt_detectron.engine.hooks import bofl_settings

    cfg = lt_cfg()
    cfg.DATASETS.TRAIN = ()
    assert bofl_settings(cfg) is None  # softmax ROI loss, focal dense loss
    cfg.MODEL.LT.ROI_LOSS = "sigmoid"
    cfg.MODEL.LT.BOFL.ENABLED = True
    cfg.MODEL.LT.BOFL.TOTAL_EPOCHS = 4
    cfg.MODEL.LT.BOFL.DEFERRED_EPOCHS = 1
    cfg.MODEL.LT.BOFL.ITERS_PER_EPOCH = 5.0
    s = bofl_settings(cfg)
    d = plots.bofl_schedule_data(COUNTS, s["total_epochs"], s["deferred_epochs"], s["kappa"])
    np.testing.assert_allclose(d["lam"], [0, 0, 1 / 3, 2 / 3, 1])
    cfg.MODEL.LT.BOFL.LINEAR_SCHEDULE = False
    s = bofl_settings(cfg)
    d = plots.bofl_schedule_data(COUNTS, s["total_epochs"], s["deferred_epochs"], s["kappa"])
    assert len(d["lam"]) >= 2 and np.all(d["lam"] == 1.0)
    cfg.MODEL.LT.BOFL.ENABLED = False
    cfg.MODEL.LT.DENSE_LOSS = "bofl"
    assert bofl_settings(cfg) is not None


def test_eqlv2_ratio_data_uses_the_loss_mapping():
    from lt_detectron.losses import eqlv2_map

    pos, neg = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([2.0, 2.0, 0.1])
    d = plots.eqlv2_ratio_data(pos, neg, [30, 20, 10], gamma=12.0, mu=0.8, alpha=4.0)
    r = eqlv2_map(pos.double() / (neg.double() + 1e-10), 12.0, 0.8).numpy()
    np.testing.assert_allclose(d["r"], r, rtol=1e-12)  # counts already sorted descending
    np.testing.assert_allclose(d["q"], 1 + 4.0 * (1 - r), rtol=1e-12)


# ---------------------------------------------------------------------- TensorBoard, end to end
@pytest.mark.slow
def test_training_writes_plots_into_tensorboard(tmp_path):
    """A short training with LT_HOOKS.PLOT_PERIOD: the PNGs are written and detectron2's
    TensorboardXWriter writes them as image summaries, the final ones and the evaluation's included."""
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lt_detectron.data import register_lt_dataset
    from lt_detectron.data.embedded import get_lt_shapes, lt_shapes_paths
    from lt_detectron.engine import LTTrainer
    from tests._data import unique_name, unregister

    paths = lt_shapes_paths(get_lt_shapes())
    data = json.load(open(paths["val_json"]))
    keep = {im["id"] for im in data["images"][:6]}
    data["images"] = [im for im in data["images"] if im["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    json.dump(data, open(tmp_path / "val6.json", "w"))
    name = unique_name("lt_shapes_val6")
    register_lt_dataset(
        name, str(tmp_path / "val6.json"), paths["val_images"], evaluator_type="lvis"
    )
    try:
        cfg = lt_cfg()
        cfg.merge_from_file(
            os.path.join(ROOT, "configs", "lt_shapes", "faster_rcnn_tiny_eqlv2.yaml")
        )
        cfg.merge_from_list(
            [
                "SOLVER.MAX_ITER",
                "4",
                "SOLVER.IMS_PER_BATCH",
                "2",
                "SOLVER.WARMUP_ITERS",
                "1",
                "SOLVER.CHECKPOINT_PERIOD",
                "100",
                "DATALOADER.NUM_WORKERS",
                "0",
                "DATASETS.TEST",
                "('%s',)" % name,
                "OUTPUT_DIR",
                str(tmp_path / "run"),
                "LT_HOOKS.PLOT_PERIOD",
                "2",
                "TEST.DETECTIONS_PER_IMAGE",
                "20",
            ]
        )
        trainer = LTTrainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
    finally:
        unregister(name)
    plot_dir = tmp_path / "run" / "plots"
    expected = {
        "weight_norms_box_predictor_iter0000002.png",
        "eqlv2_ratios_box_predictor_iter0000002.png",
        "weight_norms_box_predictor_final.png",
        "eqlv2_ratios_box_predictor_final.png",
        "ap_vs_instances_lvis_bbox_%s_final.png" % name,
        "ap_per_category_lvis_bbox_%s_final.png" % name,
    }
    assert set(os.listdir(plot_dir)) == expected
    for n in expected:
        _is_png(str(plot_dir / n))
    [events] = [f for f in os.listdir(tmp_path / "run") if f.startswith("events.out.tfevents")]
    acc = EventAccumulator(str(tmp_path / "run" / events), size_guidance={"images": 0})
    acc.Reload()
    images = {
        tag: [(e.step, e.width, e.height) for e in acc.Images(tag)] for tag in acc.Tags()["images"]
    }
    final = Image.open(plot_dir / "weight_norms_box_predictor_final.png")
    assert images["lt_plots/weight_norms_box_predictor"][-1][1:] == final.size
    assert len(images["lt_plots/weight_norms_box_predictor"]) == 2  # iteration 2 and final
    assert len(images["lt_plots/eqlv2_ratios_box_predictor"]) == 2
    assert (
        len(images["lt_plots/ap_vs_instances_lvis_bbox_%s" % name]) == 1
    )  # after the final evaluation
    assert len(images["lt_plots/ap_per_category_lvis_bbox_%s" % name]) == 1


def test_every_ap_plot_axis_is_in_percent(tmp_path, monkeypatch):
    """The per-category bars (drawn by hotcoco, which expects 0-1) show AP in % as the evaluators
    report it: bar lengths are the csv's values, the axis says %, the mean line is their mean."""
    import hotcoco.plot

    from lt_detectron.visualization import result_plots

    drawn = []
    real = hotcoco.plot.per_category_ap
    monkeypatch.setattr(
        hotcoco.plot, "per_category_ap", lambda *a, **kw: drawn.append(real(*a, **kw)) or drawn[-1]
    )
    ap = np.array([62.5, 10.0, np.nan, 40.0])
    result_plots.plot_per_category_ap(["a", "b", "c", "d"], ap, str(tmp_path / "bars.png"))
    ((fig, ax),) = drawn
    widths = sorted(p.get_width() for p in ax.patches)
    assert widths == pytest.approx([10.0, 40.0, 62.5])
    assert "%" in ax.get_xlabel()
    (mean_line,) = [ln for ln in ax.lines if ln.get_label().startswith("Mean AP")]
    assert mean_line.get_xdata()[0] == pytest.approx(np.nanmean(ap))
    assert mean_line.get_label() == "Mean AP: %.1f" % np.nanmean(ap)


def test_methods_without_a_colour_get_distinct_colours_in_one_figure():
    from lt_detectron.visualization.plots import METHOD_COLORS, method_style, method_styles

    own = ["softmax", "ecm", "fcos_focal"]  # colours of their own (the baselines share black)
    spare = ["eqlv1", "crt_decoupled", "lws_decoupled", "softmax_norcal"]
    spare += ["softmax_logit_adjustment", "softmax_tau_norm"]
    # the toolbox report's figure: ten methods without a colour of their own (8 spares were too few)
    spare += ["sigmoid_norcal", "sigmoid_logit_adjustment", "sigmoid_tau_norm", "seesaw_tau_norm"]
    styles = method_styles(own[:2] + spare + own[2:])
    for m in own:  # a method's own style is kept
        assert styles[m] == method_style(m) and styles[m][0] == METHOD_COLORS[m.split("_")[-1]]
    colours = [styles[m][0] for m in spare]
    assert len(set(colours)) == len(spare), dict(zip(spare, colours))
    assert not set(colours) & {styles[m][0] for m in own}
