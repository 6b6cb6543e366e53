"""Test-time calibration (issue 25 §1, lt_detectron/modeling/calibration.py): NorCal, logit adjustment
and tau-norm against naive float64 re-derivations of the authors' equations (NorCal: tydpan/NorCal's
``exps`` + renormalisation; tau-norm: classifier-balancing's ``pnorm``), the identity at 0, the
errors, the config keys, and ``--eval-only`` / ``tools/calibrate.py`` on a tiny trained checkpoint."""

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform

from lt_detectron.class_stats import ClassStats
from lt_detectron.config import LTConfigError, validate_lt_config
from lt_detectron.losses import ROI_LOSS_REGISTRY, SigmoidROILoss, SoftmaxROILoss
from lt_detectron.modeling import LongTailFastRCNNOutputLayers
from lt_detectron.modeling.calibration import (
    CALIBRATION_REGISTRY,
    LogitAdjustment,
    NorCal,
    TauNorm,
    build_calibration,
)
from lt_detectron.utils.testing import lt_cfg

from tests._data import ROOT

SOFTMAX = os.path.join(ROOT, "configs", "lt_shapes", "faster_rcnn_tiny_softmax.yaml")

C, D, R = 6, 16, 40


def _predictor(cls_loss=None, calibration=None, seed=0):
    torch.manual_seed(seed)
    p = LongTailFastRCNNOutputLayers(
        ShapeSpec(channels=D),
        box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)),
        num_classes=C,
        cls_loss=cls_loss or SoftmaxROILoss(C),
        calibration=calibration,
    )
    with torch.no_grad():  # trained-looking rows: norms and biases that differ per class
        p.cls_score.weight.mul_(torch.linspace(5, 200, C + 1)[:, None])
        if p.cls_score.bias is not None:
            p.cls_score.bias.copy_(torch.randn(C + 1))
    return p.eval()


def _probs(pred, x):
    scores, deltas = pred(x)
    return pred.predict_probs((scores, deltas), [x])[0].detach().double().numpy()


def _features(seed=1):
    return torch.randn(R, D, generator=torch.Generator().manual_seed(seed))


def _counts(seed=2):
    return np.random.default_rng(seed).integers(1, 500, size=C).astype(np.float64)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _logits64(pred, x):
    w = pred.cls_score.weight.detach().double().numpy()
    b = pred.cls_score.bias.detach().double().numpy()
    return x.double().numpy() @ w.T + b, w, b


@pytest.mark.parametrize("gamma", [0.3, 1.0])
def test_norcal_softmax_matches_authors_exps_renormalised(gamma):
    """tydpan/NorCal (``WITH exps``, ``RENORM True``): exp(logits), class columns divided by
    N_c^gamma, the background kept, every row renormalised."""
    n = _counts()
    x = _features()
    pred = _predictor(calibration=NorCal(C, gamma, n))
    z, _, _ = _logits64(pred, x)
    e = np.exp(z)
    e[:, :C] /= n**gamma
    want = e / e.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(_probs(pred, x), want, rtol=1e-5, atol=1e-7)


def test_norcal_sigmoid_each_class_against_background():
    """[interp] sigmoid loss: each class-vs-background pair renormalised as the authors' softmax,
    exp(z_c) / N_c^gamma / (exp(z_c) / N_c^gamma + 1); the background score stays 0."""
    n, gamma = _counts(), 0.7
    x = _features()
    pred = _predictor(SigmoidROILoss(C), NorCal(C, gamma, n))
    z, _, _ = _logits64(pred, x)
    s = np.exp(z[:, :C]) / n**gamma
    want = np.concatenate([s / (s + 1.0), np.zeros((R, 1))], axis=1)
    np.testing.assert_allclose(_probs(pred, x), want, rtol=1e-5, atol=1e-7)


def test_norcal_zero_count_class_is_treated_as_one_image():
    """[interp] a class without training images: N_c = 1 (no division by 0)."""
    n = _counts()
    n[2] = 0
    x = _features()
    got = _probs(_predictor(calibration=NorCal(C, 1.0, n)), x)
    want = _probs(_predictor(calibration=NorCal(C, 1.0, np.maximum(n, 1))), x)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_logit_adjustment_matches_menon_post_hoc(tau):
    """Menon et al. post-hoc: softmax(z_c - tau log pi_c, z_bg), pi = instance counts / their sum."""
    n = _counts(5)
    x = _features()
    pred = _predictor(calibration=LogitAdjustment(C, tau, n))
    z, _, _ = _logits64(pred, x)
    z[:, :C] -= tau * np.log(n / n.sum())
    np.testing.assert_allclose(_probs(pred, x), _softmax(z), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_tau_norm_matches_pnorm_of_the_class_rows(tau):
    """classifier-balancing's pnorm (w_c / ||w_c||_2^tau) on the class rows, logits recomputed from
    the features; [interp] bias and background row kept. The layer itself is not changed."""
    x = _features()
    pred = _predictor(calibration=TauNorm(C, tau))
    before = {k: v.clone() for k, v in pred.state_dict().items()}
    _, w, b = _logits64(pred, x)
    wn = w.copy()
    for c in range(C):
        wn[c] = w[c] / np.linalg.norm(w[c]) ** tau
    want = _softmax(x.double().numpy() @ wn.T + b)
    np.testing.assert_allclose(_probs(pred, x), want, rtol=1e-5, atol=1e-7)
    after = pred.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_tau_norm_without_bias_is_the_authors_bias_free_logits():
    """With a zero bias, the calibrated logits are the authors' x . pnorm(W, tau) (class rows)."""
    x, tau = _features(), 1.0
    pred = _predictor(calibration=TauNorm(C, tau))
    with torch.no_grad():
        pred.cls_score.bias.zero_()
    z, w, _ = _logits64(pred, x)
    got = pred.calibration(pred(x)[0], pred.cls_score).detach().double().numpy()
    want = x.double().numpy() @ (w / np.linalg.norm(w, axis=1, keepdims=True) ** tau).T
    np.testing.assert_allclose(got[:, :C], want[:, :C], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[:, C], z[:, C], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "calibration", [NorCal(C, 0.0, _counts()), LogitAdjustment(C, 0.0, _counts()), TauNorm(C, 0.0)]
)
@pytest.mark.parametrize("loss", [SoftmaxROILoss, SigmoidROILoss])
def test_gamma_zero_and_tau_zero_are_the_identity(calibration, loss):
    x = _features()
    plain = _probs(_predictor(loss(C)), x)
    np.testing.assert_allclose(_probs(_predictor(loss(C), calibration), x), plain, rtol=1e-6)


def test_calibration_adds_nothing_to_the_checkpoint():
    """A saved model stays the trained one: same state-dict keys with or without calibration."""
    plain = _predictor().state_dict()
    calibrated = _predictor(calibration=NorCal(C, 1.0, _counts())).state_dict()
    assert plain.keys() == calibrated.keys()


@pytest.mark.parametrize("name", ["eqlv2", "bags", "seesaw", "c2am", "ecm"])
def test_error_for_an_inapplicable_method(name):
    """Losses whose scores are not a plain softmax / sigmoid of the logits are refused, naming
    TEST.LT.CALIBRATION and the loss."""
    cfg = lt_cfg(None, "MODEL.LT.ROI_LOSS", name)
    cls = ROI_LOSS_REGISTRY.get(name)
    counts = [50, 20, 10, 5, 3, 1]
    loss = cls(**cls.from_config(cfg, C, _stats(counts)))
    with pytest.raises(ValueError, match=r"TEST\.LT\.CALIBRATION norcal .*%s" % name):
        _predictor(loss, NorCal(C, 1.0, counts))


def test_error_for_tau_norm_on_a_cosine_classifier():
    with pytest.raises(ValueError, match=r"tau_norm .*CosineClassifier.*MODEL\.LT\.CLASSIFIER"):
        _predictor(SoftmaxROILoss(C, classifier="cosine"), TauNorm(C, 1.0))


def test_config_keys_validated_and_built_from_class_stats():
    """Bad values name the key; from the config the counts come from the class-statistics registry
    (NorCal: image counts; logit adjustment: instance counts)."""
    for opts, key in (
        (("TEST.LT.CALIBRATION", "norcall"), "TEST.LT.CALIBRATION"),
        (("TEST.LT.CALIBRATION_GAMMA", -1.0), "TEST.LT.CALIBRATION_GAMMA"),
        (("TEST.LT.CALIBRATION_TAU", -0.5), "TEST.LT.CALIBRATION_TAU"),
    ):
        with pytest.raises(LTConfigError, match=key.replace(".", r"\.")):
            validate_lt_config(lt_cfg(SOFTMAX, *opts))
    assert CALIBRATION_REGISTRY.names() == ["logit_adjustment", "norcal", "tau_norm"]
    assert build_calibration(lt_cfg(SOFTMAX), C) is None

    class Stats:
        image_counts = [4, 1, 9, 0, 2, 7]
        instance_counts = [10, 3, 30, 0, 5, 8]

    nc = build_calibration(
        lt_cfg(SOFTMAX, "TEST.LT.CALIBRATION", "norcal", "TEST.LT.CALIBRATION_GAMMA", 0.5), C, Stats
    )
    want = -0.5 * np.log(np.maximum(Stats.image_counts, 1))
    np.testing.assert_allclose(nc.shift[:C].numpy(), want, rtol=1e-6)
    la = build_calibration(
        lt_cfg(SOFTMAX, "TEST.LT.CALIBRATION", "logit_adjustment", "TEST.LT.CALIBRATION_TAU", 2.0),
        C,
        Stats,
    )
    n = np.maximum(Stats.instance_counts, 1)
    np.testing.assert_allclose(la.shift[:C].numpy(), -2.0 * np.log(n / n.sum()), rtol=1e-6)
    assert float(la.shift[C]) == 0.0
    with pytest.raises(ValueError, match=r"DATASETS\.TRAIN.*MODEL\.LT\.CLASS_STATS_FILE"):
        build_calibration(lt_cfg(SOFTMAX, "TEST.LT.CALIBRATION", "norcal"), C, None)


def _tiny_cfg(config, *opts):
    return lt_cfg(
        os.path.join(ROOT, "configs", "lt_shapes", config),
        "MODEL.DEVICE",
        "cpu",
        "DATALOADER.NUM_WORKERS",
        "0",
        *opts,
    )


@pytest.mark.parametrize(
    "config,opts,unused",
    [
        ("faster_rcnn_tiny_softmax.yaml", ["TEST.LT.CALIBRATION_GAMMA", "0.5"], "GAMMA"),
        (
            "faster_rcnn_tiny_softmax.yaml",
            ["TEST.LT.CALIBRATION", "norcal", "TEST.LT.CALIBRATION_TAU", "1.0"],
            "TAU",
        ),
        ("retinanet_tiny_focal.yaml", ["TEST.LT.CALIBRATION", "norcal"], "CALIBRATION"),
        (
            "faster_rcnn_tiny_softmax.yaml",
            ["TEST.LT.CALIBRATION", "norcal", "TEST.LT.CALIBRATION_GAMMA", "0.5"],
            None,
        ),
    ],
)
def test_calibration_key_without_effect_is_named(caplog, config, opts, unused):
    """A strength the chosen calibration does not read, or a calibration on a detector without the
    ROI box predictor, is named at model build."""
    import logging

    from lt_detectron.engine import LTTrainer, prepare_training_data

    cfg = prepare_training_data(_tiny_cfg(config, *opts), check_images=False)[0]
    with caplog.at_level(logging.WARNING, logger="lt_detectron.config_reads"):
        LTTrainer.build_model(cfg)
    warned = [r.getMessage() for r in caplog.records if "no effect" in r.getMessage()]
    if unused is None:
        assert warned == []
    else:
        assert len(warned) == 1 and warned[0].startswith(
            "TEST.LT.CALIBRATION" + ("_" + unused if unused != "CALIBRATION" else "")
        ), warned


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, train_net_cli):
    """3 iterations of the tiny softmax Faster R-CNN (tools/train_net.py), evaluated uncalibrated at
    the end on 8 lt_shapes val images registered on the command line."""
    from tests._data import lt_shapes_val_subset

    tmp = tmp_path_factory.mktemp("calibration")
    val_json, val_images = lt_shapes_val_subset(tmp / "val8.json", 8)
    flags = ["--config-file", SOFTMAX, "--register-dataset", "val8", val_json, val_images]
    opts = ["DATASETS.TEST", "('val8',)", "DATALOADER.NUM_WORKERS", "0"]
    out = str(tmp / "train")
    train = train_net_cli(
        *flags, *opts, "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3",
        "SOLVER.WARMUP_ITERS", "1", "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", out,
    )  # fmt: skip
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    weights = os.path.join(out, "model_final.pth")
    return dict(flags=flags, opts=opts, weights=weights, tmp=tmp, out=out)


def _eval_only(train_net_cli, ck, out, *opts):
    p = train_net_cli(
        *ck["flags"], "--eval-only", *ck["opts"], "MODEL.WEIGHTS", ck["weights"], "OUTPUT_DIR", out,
        *opts,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    folder = os.path.join(out, "inference", "val8")
    with open(os.path.join(folder, "lvis_instances_results.json")) as f:
        dets = json.load(f)
    with open(os.path.join(folder, "lvis_metrics.json")) as f:
        metrics = json.load(f)
    return dets, metrics, p.stdout + p.stderr


@pytest.mark.slow
def test_eval_only_with_calibration_changes_the_scores_and_reports(tiny_checkpoint, train_net_cli):
    """``--eval-only TEST.LT.CALIBRATION norcal`` on a trained checkpoint: other scores, the LVIS
    table reported, the checkpoint file untouched."""
    ck = tiny_checkpoint
    with open(ck["weights"], "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    # the training run's final evaluation of the same weights, uncalibrated
    with open(os.path.join(ck["out"], "inference", "val8", "lvis_instances_results.json")) as f:
        plain = json.load(f)
    calib, metrics, log = _eval_only(
        train_net_cli, ck, str(ck["tmp"] / "norcal"),
        "TEST.LT.CALIBRATION", "norcal", "TEST.LT.CALIBRATION_GAMMA", "1.0",
    )  # fmt: skip
    assert "LVIS bbox results of val8" in log
    assert {"AP", "APr", "APc", "APf"} <= set(metrics["results"]["bbox"])
    key = lambda d: (d["image_id"], d["category_id"], tuple(round(v, 3) for v in d["bbox"]))  # noqa
    plain_s = {key(d): d["score"] for d in plain}
    common = [key(d) for d in calib if key(d) in plain_s]
    assert common, "no detection in both runs"
    # NorCal with gamma 1 divides every class score by its image count before renormalising:
    # a detection kept by both runs has another score
    changed = [k for k in common if abs(plain_s[k] - {key(d): d["score"] for d in calib}[k]) > 1e-6]
    assert len(changed) > 0.9 * len(common)
    with open(ck["weights"], "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == digest


@pytest.mark.slow
def test_sweep_command_prints_a_row_per_value(tiny_checkpoint, tmp_path, capsys):
    """tools/calibrate.py on a 6-image held-out split of the training images: one row per (protocol,
    value) with AP and pooled AP; gamma 0 gives the uncalibrated model's numbers."""
    from lt_detectron.engine.calibration_sweep import calibration_sweep, register_heldout_split
    from tests._data import unregister
    from tools import calibrate

    ck = tiny_checkpoint
    common = ["DATALOADER.NUM_WORKERS", "0", "MODEL.WEIGHTS", ck["weights"]]
    argv = ["--config-file", SOFTMAX, "--method", "norcal", "--values", "0,2"]
    argv += ["--heldout-images", "6", "--protocols", "standard,fixed"]
    argv += common + ["OUTPUT_DIR", str(tmp_path), "TEST.LT.POOLED_AP", "True"]
    rows = calibrate.main(calibrate.argument_parser().parse_args(argv))
    out = capsys.readouterr().out
    table = [ln.split() for ln in out.splitlines() if ln.split()[:1] in (["standard"], ["fixed"])]
    assert [(t[0], float(t[1])) for t in table] == [
        ("standard", 0.0), ("standard", 2.0), ("fixed", 0.0), ("fixed", 2.0)
    ]  # fmt: skip
    assert all("AP" in r and "APpool" in r for r in rows)
    cfg = lt_cfg(SOFTMAX, *common, "OUTPUT_DIR", str(tmp_path))
    name = register_heldout_split(cfg, 6, 0)  # the split the tool registered
    # gamma 0 = no calibration
    try:
        none = calibration_sweep(cfg, "none", [0.0], name)[0]
    finally:
        unregister(name)
    zero = [r for r in rows if r["protocol"] == "standard" and r["value"] == 0.0][0]
    assert {k: none[k] for k in ("AP", "APc", "APf")} == {k: zero[k] for k in ("AP", "APc", "APf")}


def _stats(counts):
    return ClassStats(
        ("fake",),
        tuple("c%d" % i for i in range(len(counts))),
        tuple(range(len(counts))),
        counts,
        counts,
        60,
        np.array(["f", "f", "c", "c", "r", "r"][: len(counts)]),
    )


@pytest.mark.parametrize("name", ROI_LOSS_REGISTRY.names())
def test_declared_score_activation_is_what_predict_probs_computes(name):
    """A loss that declares ``score_activation`` (what the calibrations rely on) computes exactly
    that: softmax over the C+1 logits, or sigmoid of the C class logits with background 0."""
    cls = ROI_LOSS_REGISTRY.get(name)
    loss = cls(
        **cls.from_config(lt_cfg(None, "MODEL.LT.ROI_LOSS", name), C, _stats([50, 20, 10, 5, 3, 1]))
    )
    act = getattr(loss, "score_activation", None)
    if act is None:
        assert cls.score_activation is None
        return
    z = torch.randn(R, C + 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = loss.predict_probs(z).numpy()
    if act == "softmax":
        want = _softmax(z.numpy())
    else:
        assert act == "sigmoid", act
        want = np.concatenate([1 / (1 + np.exp(-z.numpy()[:, :C])), np.zeros((R, 1))], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_heldout_split_is_a_seeded_subset_of_the_training_images(tmp_path):
    """``register_heldout_split``: n images of DATASETS.TRAIN[0] drawn by default_rng(seed) from the
    sorted ids, with exactly their annotations; the same images for the same seed; a clear error
    for a size the training set cannot give."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from lt_detectron.engine.calibration_sweep import register_heldout_split
    from lt_detectron.evaluation.common import load_gt_json
    from tests._data import unregister

    cfg = lt_cfg(SOFTMAX, "OUTPUT_DIR", str(tmp_path))
    train = cfg.DATASETS.TRAIN[0]
    gt = load_gt_json(MetadataCatalog.get(train).json_file, train)
    ids = sorted(im["id"] for im in gt["images"])
    names = []
    try:
        for seed in (0, 1):
            name = register_heldout_split(cfg, 5, seed, output_dir=str(tmp_path / str(seed)))
            names.append(name)
            with open(tmp_path / str(seed) / (name + ".json")) as f:
                split = json.load(f)
            want = set(np.random.default_rng(seed).choice(ids, size=5, replace=False).tolist())
            assert {im["id"] for im in split["images"]} == want
            anns = [a["id"] for a in gt["annotations"] if a["image_id"] in want]
            assert sorted(a["id"] for a in split["annotations"]) == sorted(anns)
            assert split["categories"] == gt["categories"]
            assert len(DatasetCatalog.get(name)) == 5  # registered, loadable
        assert names[0] != names[1]
        assert register_heldout_split(cfg, 5, 0, output_dir=str(tmp_path / "0")) == names[0]
        with pytest.raises(ValueError, match="--heldout-images"):
            register_heldout_split(cfg, len(ids) + 1, 0, output_dir=str(tmp_path))
    finally:
        unregister(*names)


def test_eval_only_of_an_inapplicable_method_stops_with_the_key():
    """tools/train_net.py (which builds the model inside ``exit_on_user_error``) stops with a
    one-line error naming TEST.LT.CALIBRATION and the loss, not a traceback."""
    from lt_detectron.engine import LTTrainer, defaults, prepare_training_data

    cfg = _tiny_cfg("faster_rcnn_tiny_bags.yaml", "TEST.LT.CALIBRATION", "norcal")
    cfg = prepare_training_data(cfg, check_images=False)[0]
    with pytest.raises(
        SystemExit, match=r"train_net\.py: error: TEST\.LT\.CALIBRATION norcal .*bags"
    ):
        with defaults.exit_on_user_error("train_net.py"):
            LTTrainer.build_model(cfg)
