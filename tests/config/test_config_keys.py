"""Every config key is honoured or refused (issue 22 §4): invalid values are refused at startup with
the allowed values named, a non-default key the run never reads is named in a warning, every key
add_lt_config defines is read by some family of shipped configs, and BOFL's epoch length is filled
only for the runs that use it."""

import json
import os
import subprocess
import sys

import pytest

from tests._data import lt_shapes_val_subset
from lt_detectron.utils.testing import lt_cfg

from tests._data import ROOT

SOFTMAX = os.path.join(ROOT, "configs", "lt_shapes", "faster_rcnn_tiny_softmax.yaml")


def _load_tool(name):
    import importlib

    return importlib.import_module("tools." + name)


@pytest.mark.parametrize(
    "key,value,allowed",
    [
        ("TEST.LT.TOPK_PER_CLASS", "-1", "[1, inf]"),
        ("TEST.LT.TOPK_PER_CLASS", "0", "[1, inf]"),
        ("TEST.LT.AP_PROTOCOL", "Fixed", "'standard', 'fixed'"),
        ("TEST.LT.MAX_DETS", "-1", "[1, inf]"),
    ],
)
def test_invalid_lt_values_are_refused_at_startup(tmp_path, monkeypatch, key, value, allowed):
    """tools/train_net.py stops before any dataset is prepared or model built, naming the key, the
    value, the allowed values and the config file."""
    from lt_detectron.config import LTConfigError

    from lt_detectron.engine import defaults

    train_net = _load_tool("train_net")
    touched = []
    monkeypatch.setattr(defaults, "prepare_datasets", lambda **kw: touched.append(kw))
    monkeypatch.setattr(defaults, "launch_on_device", lambda *a, **kw: touched.append(a))
    args = train_net.argument_parser().parse_args(
        ["--config-file", SOFTMAX, key, value, "OUTPUT_DIR", str(tmp_path)]
    )
    with pytest.raises(LTConfigError) as info:
        defaults.launch_from_args(args, train_net.main)
    msg = str(info.value)
    assert f"{key} = " in msg and value in msg
    assert allowed in msg and SOFTMAX in msg
    assert touched == []


@pytest.mark.slow
def test_invalid_lt_value_exits_with_the_message(train_net_cli):
    """The same refusal as a user sees it: a non-zero exit status and one error line on stderr."""
    p = train_net_cli("--config-file", SOFTMAX, "TEST.LT.AP_PROTOCOL", "Fixed", timeout=300)
    assert p.returncode != 0
    assert "train_net.py: error: invalid value" in p.stderr
    assert "TEST.LT.AP_PROTOCOL = 'Fixed' must be one of 'standard', 'fixed'" in p.stderr


def test_every_shipped_config_passes_validation():
    """No shipped config is refused (the allowed sets and ranges cover the papers' settings)."""
    import glob

    from lt_detectron.config import validate_lt_config

    files = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))
    assert files
    for f in files:
        cfg = lt_cfg(f)
        validate_lt_config(cfg, f)


def test_library_evaluator_builder_refuses_invalid_values():
    """build_lt_evaluator (library users, evaluate_results.py, the trainer) refuses them too."""

    from lt_detectron.config import LTConfigError
    from lt_detectron.evaluation import build_lt_evaluator

    cfg = lt_cfg()
    cfg.TEST.LT.TOPK_PER_CLASS = 0
    with pytest.raises(LTConfigError, match="TEST.LT.TOPK_PER_CLASS = 0"):
        build_lt_evaluator(cfg, "lt_shapes_val", output_folder="", class_stats=None)


def _tiny_cfg(config, *opts):
    return lt_cfg(
        os.path.join(ROOT, "configs", "lt_shapes", config), "DATALOADER.NUM_WORKERS", 0, *opts
    )


@pytest.mark.parametrize(
    "config,opts,unused",
    [
        # EQL v2's keys in a softmax run
        ("faster_rcnn_tiny_softmax.yaml", ["MODEL.LT.EQLV2.GAMMA", "20.0"], "MODEL.LT.EQLV2.GAMMA"),
        # BOFL's epoch length without BOFL
        (
            "faster_rcnn_tiny_softmax.yaml",
            ["MODEL.LT.BOFL.ITERS_PER_EPOCH", "5.0"],
            "MODEL.LT.BOFL.ITERS_PER_EPOCH",
        ),
        # the ROI classifier options on a dense detector
        ("retinanet_tiny_focal.yaml", ["MODEL.LT.CLASSIFIER", "cosine"], "MODEL.LT.CLASSIFIER"),
        # Fixed AP's k under the standard protocol
        (
            "faster_rcnn_tiny_softmax.yaml",
            ["TEST.LT.TOPK_PER_CLASS", "50"],
            "TEST.LT.TOPK_PER_CLASS",
        ),
        # the same keys where the run uses them: no warning
        ("faster_rcnn_tiny_eqlv2.yaml", ["MODEL.LT.EQLV2.GAMMA", "20.0"], None),
        ("faster_rcnn_tiny_softmax.yaml", ["MODEL.LT.CLASSIFIER", "cosine"], None),
        (
            "faster_rcnn_tiny_softmax.yaml",
            ["TEST.LT.AP_PROTOCOL", "fixed", "TEST.LT.TOPK_PER_CLASS", "50"],
            None,
        ),
    ],
)
def test_unused_non_default_lt_key_is_named_at_startup(caplog, config, opts, unused):
    """The model build records the keys it reads; a non-default key it never reads is named."""
    import logging

    from lt_detectron.engine import LTTrainer, prepare_training_data

    cfg = prepare_training_data(_tiny_cfg(config, *opts))[0]
    with caplog.at_level(logging.WARNING, logger="lt_detectron.config_reads"):
        LTTrainer.build_model(cfg)
    warned = [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]
    if unused is None:
        assert warned == []
    else:
        assert len(warned) == 1 and warned[0].startswith(unused + " = "), warned


@pytest.mark.parametrize(
    "config,opts,filled",
    [
        ("faster_rcnn_tiny_softmax.yaml", [], False),
        ("retinanet_tiny_focal.yaml", [], False),
        ("faster_rcnn_tiny_sigmoid_bofl.yaml", [], True),
        ("fcos_tiny_bofl.yaml", [], True),
        ("fcos_tiny_bofl.yaml", ["MODEL.LT.BOFL.LINEAR_SCHEDULE", "False"], False),  # no epochs
    ],
)
def test_iters_per_epoch_is_filled_only_when_the_model_uses_it(caplog, config, opts, filled):
    """MODEL.LT.BOFL.ITERS_PER_EPOCH is filled from the training data (and logged) only for a loss
    that follows BOFL's linear schedule; its value is the RFS-free epoch length: images / batch."""
    import logging

    from lt_detectron.data import load_train_dicts, train_dataset_dicts
    from lt_detectron.engine import prepare_training_data

    given = _tiny_cfg(config, *opts)
    with caplog.at_level(logging.INFO, logger="lt_detectron"):
        cfg = prepare_training_data(given)[0]
    logged = any("ITERS_PER_EPOCH" in r.getMessage() for r in caplog.records)
    assert logged == filled
    if filled:
        images = len(train_dataset_dicts(given, load_train_dicts(given)))
        assert cfg.MODEL.LT.BOFL.ITERS_PER_EPOCH == images / given.SOLVER.IMS_PER_BATCH
    else:
        assert cfg.MODEL.LT.BOFL.ITERS_PER_EPOCH == 0


# one tiny lt_shapes config per family: Faster R-CNN with each ROI loss, then each dense loss, each
# dense detector twice (CenterNet with BOFL's per-image counts)
FAMILIES = [
    "faster_rcnn_tiny_softmax.yaml",
    "faster_rcnn_tiny_sigmoid.yaml",
    "faster_rcnn_tiny_sigmoid_bofl.yaml",
    "faster_rcnn_tiny_eqlv1.yaml",
    "faster_rcnn_tiny_eqlv2.yaml",
    "faster_rcnn_tiny_ecm.yaml",
    "faster_rcnn_tiny_bags.yaml",
    "faster_rcnn_tiny_c2am.yaml",
    "faster_rcnn_tiny_seesaw.yaml",
    "mask_rcnn_tiny_ecm_normed_mask.yaml",
    "fcos_tiny_bofl.yaml",
    "fcos_tiny_eqlv2.yaml",
    "retinanet_tiny_focal.yaml",
    "retinanet_tiny_ecm.yaml",
    "centernet_tiny_efl.yaml",
    "centernet_tiny_bofl.yaml",
]


def _lt_keys():
    """Every key add_lt_config defines under MODEL.LT, TEST.LT and LT_HOOKS (dotted names)."""
    from detectron2.config import CfgNode

    def leaves(node, prefix):
        for k, v in node.items():
            if isinstance(v, CfgNode):
                yield from leaves(v, prefix + k + ".")
            else:
                yield prefix + k

    cfg = lt_cfg()
    return set(
        list(leaves(cfg.MODEL.LT, "MODEL.LT."))
        + list(leaves(cfg.TEST.LT, "TEST.LT."))
        + list(leaves(cfg.LT_HOOKS, "LT_HOOKS."))
    )


@pytest.mark.slow
def test_every_lt_key_is_read_by_some_family(tmp_path):
    """tools/train_net.py builds, trains two iterations (the fewest SOLVER.STEPS (1,) allows) and
    evaluates each family (the commands of dev/check_configs.py, on 4 val images) with a config
    that records its reads: every key add_lt_config defines is read by at least one family, and
    each run reads its own method keys."""
    from dev import check_configs

    val_json, val_images = lt_shapes_val_subset(tmp_path / "val_small.json", 4)
    runs = {}
    for name in FAMILIES:
        config = os.path.join("configs", "lt_shapes", name)
        cfg = check_configs.load_cfg(os.path.join(ROOT, config))
        argv, env = check_configs.build_command(
            config, cfg, str(tmp_path), "builtin", str(tmp_path / name), iters=2
        )
        args = argv[2:]  # after the interpreter and tools/train_net.py
        args[2:2] = ["--register-dataset", "val_small", val_json, val_images]
        runs[name] = args + ["DATASETS.TEST", "('val_small',)", "SOLVER.IMS_PER_BATCH", "1"]
    with open(tmp_path / "runs.json", "w") as f:
        json.dump(runs, f)
    p = subprocess.run(
        [sys.executable, "-m", "tests._train_net_reads"]
        + [str(tmp_path / "runs.json"), str(tmp_path / "reads.json")],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env=dict(env, PYTHONPATH=ROOT),
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    with open(tmp_path / "reads.json") as f:
        reads = {k: set(v) for k, v in json.load(f).items()}
    never = _lt_keys() - set().union(*reads.values())
    assert never == set(), sorted(never)
    # the method keys are read by their method's runs only
    assert "MODEL.LT.EQLV2.GAMMA" in reads["faster_rcnn_tiny_eqlv2.yaml"]
    assert "MODEL.LT.EQLV2.GAMMA" not in reads["faster_rcnn_tiny_softmax.yaml"]
    assert "MODEL.LT.EQLV1.LAMBDA" in reads["faster_rcnn_tiny_eqlv1.yaml"]
    assert "MODEL.LT.EQLV1.LAMBDA" not in reads["faster_rcnn_tiny_eqlv2.yaml"]
    assert "MODEL.LT.BOFL.KAPPA" in reads["centernet_tiny_bofl.yaml"]
    assert "MODEL.LT.BOFL.KAPPA" not in reads["retinanet_tiny_focal.yaml"]
    assert "MODEL.LT.NORMED_MASK.TEMPERATURE" in reads["mask_rcnn_tiny_ecm_normed_mask.yaml"]
    assert "MODEL.LT.NORMED_MASK.TEMPERATURE" not in reads["faster_rcnn_tiny_ecm.yaml"]


@pytest.mark.parametrize(
    "config,warned", [("retinanet_tiny_focal.yaml", True), ("faster_rcnn_tiny_softmax.yaml", False)]
)
def test_fixed_ap_on_a_model_without_topk_inference_is_named(caplog, config, warned):
    """TEST.LT.AP_PROTOCOL fixed changes the ROI box predictor's inference (top-k per class); a dense
    detector keeps TEST.DETECTIONS_PER_IMAGE per image, and the startup says so."""
    import logging

    from lt_detectron.engine import LTTrainer, prepare_training_data

    cfg = prepare_training_data(_tiny_cfg(config, "TEST.LT.AP_PROTOCOL", "fixed"))[0]
    with caplog.at_level(logging.WARNING, logger="lt_detectron.config_reads"):
        model = LTTrainer.build_model(cfg)
    msgs = [r.getMessage() for r in caplog.records if "TEST.DETECTIONS_PER_IMAGE" in r.getMessage()]
    assert bool(msgs) == warned, msgs
    if not warned:  # the ROI box predictor keeps the top-k per class (topk_inference.py)
        assert model.roi_heads.box_predictor.class_topk is not None


@pytest.mark.parametrize("key,value", [("TEST.LT.TOPK_PER_CLASS", "0"), ("TEST.LT.MAX_DETS", "-1")])
def test_evaluate_results_refuses_invalid_values(tmp_path, capsys, key, value):
    """tools/evaluate_results.py checks the trailing KEY VALUE pairs (a negative value is a value,
    not an unknown option) before reading any file."""
    from tools import evaluate_results

    missing = str(tmp_path / "never_read.json")
    with pytest.raises(SystemExit) as info:
        evaluate_results.main([missing, "--gt", missing, key, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"{key} = {value} must be an integer in [1, inf]" in err
