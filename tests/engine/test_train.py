"""End to end on CPU: a few training iterations + evaluation, resume, checkpoint class-count
errors, and a 2-process (gloo) run through tools/train_net.py."""

import json
import os
import subprocess
import sys

import pytest
import torch
from detectron2.data import DatasetCatalog

import lt_detectron  # noqa: F401
from lt_detectron.data.embedded import get_lt_shapes, lt_shapes_paths
from lt_detectron.engine import CheckpointClassMismatch, LTCheckpointer, LTTrainer
from lt_detectron.class_stats import ClassStatsError
from lt_detectron.utils.testing import lt_cfg

from tests._data import ROOT

BASE = os.path.join(ROOT, "configs", "lt_shapes", "Base-FasterRCNN-Tiny.yaml")


def make_cfg(tmp_path, test_name, *opts):
    cfg = lt_cfg(BASE)
    cfg.merge_from_list(
        [
            "SOLVER.MAX_ITER",
            "4",
            "SOLVER.IMS_PER_BATCH",
            "2",
            "SOLVER.CHECKPOINT_PERIOD",
            "2",
            "DATALOADER.NUM_WORKERS",
            "0",
            "DATASETS.TEST",
            "('%s',)" % test_name,
            "OUTPUT_DIR",
            str(tmp_path),
            "SOLVER.WARMUP_ITERS",
            "1",
        ]
        + list(opts)
    )
    return cfg


@pytest.mark.slow
def test_train_few_iterations_and_evaluate(tmp_path, small_val):
    cfg = make_cfg(tmp_path, small_val[0])
    trainer = LTTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert os.path.isfile(tmp_path / "model_final.pth")
    res = LTTrainer.test(cfg, trainer.model)
    bbox = res["bbox"]  # DefaultTrainer.test unwraps a single dataset
    for k in ("AP", "AP50", "APr", "APc", "APf"):
        assert k in bbox
    assert os.path.isfile(tmp_path / "metrics.json")


@pytest.mark.slow
def test_resume_is_exact_and_class_mismatch_is_clear(tmp_path, small_val):
    torch.manual_seed(0)
    cfg = make_cfg(tmp_path, small_val[0])
    trainer = LTTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    final = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    # our checkpoints load under torch >= 2.6 (weights_only default) and resume sets the iteration
    cfg2 = make_cfg(tmp_path, small_val[0], "SOLVER.MAX_ITER", "4")
    t2 = LTTrainer(cfg2)
    t2.resume_or_load(resume=True)
    assert t2.start_iter == 4
    for k, v in t2.model.state_dict().items():
        assert torch.equal(v, final[k]), k
    # a checkpoint from another class count: a clear error, not a shape crash
    cfg3 = make_cfg(tmp_path / "other", small_val[0])
    model = LTTrainer.build_model(cfg3)
    ckpt = torch.load(tmp_path / "model_final.pth", weights_only=True)  # plain data only
    w = ckpt["model"]["roi_heads.box_predictor.cls_score.weight"]
    ckpt["model"]["roi_heads.box_predictor.cls_score.weight"] = w[:10]
    ckpt["model"]["roi_heads.box_predictor.cls_score.bias"] = ckpt["model"][
        "roi_heads.box_predictor.cls_score.bias"
    ][:10]
    torch.save(ckpt, tmp_path / "nine_classes.pth")
    with pytest.raises(
        CheckpointClassMismatch, match=r"shape \[10, 128\] but the model expects \[25, 128\]"
    ):
        LTCheckpointer(model).load(str(tmp_path / "nine_classes.pth"))
    # ... unless the classifier is re-initialised on purpose (BAGS decoupled recipe)
    before = model.roi_heads.box_predictor.cls_score.weight.clone()
    LTCheckpointer(model, reinit_cls=True).load(str(tmp_path / "nine_classes.pth"))
    assert torch.equal(model.roi_heads.box_predictor.cls_score.weight, before)
    assert torch.equal(
        model.roi_heads.box_predictor.bbox_pred.weight,
        final["roi_heads.box_predictor.bbox_pred.weight"],
    )


def test_num_classes_mismatch_is_a_startup_error(tmp_path, small_val):
    cfg = make_cfg(tmp_path, small_val[0], "MODEL.ROI_HEADS.NUM_CLASSES", "80")
    with pytest.raises(
        ClassStatsError,
        match="MODEL.ROI_HEADS.NUM_CLASSES = 80 but the training data lt_shapes_train has 24",
    ):
        LTTrainer(cfg)


@pytest.mark.slow
def test_two_process_cpu_training(tmp_path):
    """tools/train_net.py --num-gpus 2 MODEL.DEVICE cpu: gloo DDP, distributed evaluation."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        os.path.join(ROOT, "tools", "train_net.py"),
        "--config-file",
        BASE,
        "--num-gpus",
        "2",
        "MODEL.DEVICE",
        "cpu",
        "SOLVER.MAX_ITER",
        "3",
        "SOLVER.IMS_PER_BATCH",
        "4",
        "DATALOADER.NUM_WORKERS",
        "0",
        "SOLVER.CHECKPOINT_PERIOD",
        "100",
        "OUTPUT_DIR",
        str(tmp_path),
        "SOLVER.WARMUP_ITERS",
        "1",
        "DATASETS.TEST",
        "('lt_shapes_val',)",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert (
        "world_size=2" in log.replace(" ", "") or "Rank of current process: 0. World size: 2" in log
    )
    assert os.path.isfile(tmp_path / "model_final.pth")
    assert "LVIS bbox results of lt_shapes_val" in out.stdout  # the evaluator's table


@pytest.mark.slow
def test_train_net_on_a_dataset_registered_on_the_command_line(tmp_path):
    """--register-dataset NAME JSON IMAGE_ROOT: a user's COCO-format data, counted automatically."""
    from tests._data import write_coco_json

    write_coco_json(str(tmp_path / "train.json"), [6, 3, 1], image_size=64, write_images=True)
    cmd = [
        sys.executable,
        os.path.join(ROOT, "tools", "train_net.py"),
        "--config-file",
        BASE,
        "--register-dataset",
        "mine_train",
        str(tmp_path / "train.json"),
        str(tmp_path),
        "--register-dataset",
        "mine_val",
        str(tmp_path / "train.json"),
        str(tmp_path),
        "DATASETS.TRAIN",
        "('mine_train',)",
        "DATASETS.TEST",
        "('mine_val',)",
        "MODEL.ROI_HEADS.NUM_CLASSES",
        "3",
        "SOLVER.MAX_ITER",
        "2",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "DATALOADER.NUM_WORKERS",
        "0",
        "SOLVER.WARMUP_ITERS",
        "1",
        "INPUT.MIN_SIZE_TRAIN",
        "(64,)",
        "INPUT.MIN_SIZE_TEST",
        "64",
        "OUTPUT_DIR",
        str(tmp_path / "out"),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "COCO bbox results of mine_val" in out.stdout  # COCO-format json: the coco_lt evaluator
    log = out.stdout + out.stderr
    assert "instances" in log and "classes" in log  # the class-statistics summary is logged


def _method_state(model):
    sd = model.state_dict()
    return {k: v.clone() for k, v in sd.items() if ".cls_loss." in k}


@pytest.mark.slow
@pytest.mark.parametrize(
    "opts",
    [
        ("MODEL.LT.ROI_LOSS", "eqlv2"),
        ("MODEL.LT.ROI_LOSS", "ecm", "MODEL.LT.ECM.MEASURE_ITERS", "4"),
    ],
)
def test_resume_reproduces_the_uninterrupted_method_state(tmp_path, small_val, opts):
    """N iterations, stop, resume, M more == N+M uninterrupted (EQL v2 buffers, measured ECM ratio)."""
    from detectron2.utils.env import seed_all_rng

    common = list(opts) + ["SOLVER.CHECKPOINT_PERIOD", "100", "DATASETS.TEST", "()"]
    seed_all_rng(0)  # as default_setup does in a fresh train_net process
    full = LTTrainer(make_cfg(tmp_path / "full", small_val[0], *common, "SOLVER.MAX_ITER", "5"))
    full.resume_or_load(resume=False)
    full.train()
    want = _method_state(full.model)
    assert want and any(v.abs().sum() > 0 for v in want.values())

    seed_all_rng(0)
    first = LTTrainer(make_cfg(tmp_path / "split", small_val[0], *common, "SOLVER.MAX_ITER", "3"))
    first.resume_or_load(resume=False)
    first.train()
    interrupted = _method_state(first.model)
    seed_all_rng(123)  # a new process: the RNG state comes from the checkpoint
    second = LTTrainer(make_cfg(tmp_path / "split", small_val[0], *common, "SOLVER.MAX_ITER", "5"))
    second.resume_or_load(resume=True)
    assert second.start_iter == 3
    second.train()
    got = _method_state(second.model)
    assert any(
        not torch.equal(interrupted[k], got[k]) for k in got
    )  # the state moved after resuming
    for k in want:
        torch.testing.assert_close(
            got[k], want[k], rtol=1e-6, atol=1e-7, msg=lambda m, k=k: k + ": " + m
        )


def test_nan_loss_stops_with_a_clear_error_and_keeps_checkpoints(tmp_path, small_val):
    cfg = make_cfg(
        tmp_path,
        small_val[0],
        "SOLVER.MAX_ITER",
        "6",
        "SOLVER.CHECKPOINT_PERIOD",
        "2",
        "DATASETS.TEST",
        "()",
    )
    trainer = LTTrainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer._trainer.model
    forward = model.forward
    calls = {"n": 0}

    def nan_after_three(batched_inputs):
        calls["n"] += 1
        losses = forward(batched_inputs)
        if calls["n"] > 3:
            losses["loss_cls"] = losses["loss_cls"] * float("nan")
        return losses

    model.forward = nan_after_three
    with pytest.raises(
        FloatingPointError,
        match=r"iteration 3 because a loss is not finite.*model_0000001.pth.*SOLVER.BASE_LR",
    ):
        trainer.train()
    assert (tmp_path / "model_0000001.pth").is_file()


@pytest.mark.parametrize("sampler", ["TrainingSampler", "RepeatFactorTrainingSampler"])
def test_trainer_parses_the_training_json_once(tmp_path, small_val, monkeypatch, sampler):
    """LTTrainer's startup (class statistics, BOFL epoch length, data loader) reads the training
    dataset once: one DatasetCatalog.get and one json.load of the training json per process."""
    from lt_detectron.class_stats import clear_class_stats_cache

    train_json = lt_shapes_paths(get_lt_shapes())["train_json"]
    cfg = make_cfg(
        tmp_path,
        small_val[0],
        "DATALOADER.SAMPLER_TRAIN",
        sampler,
        "MODEL.LT.ROI_LOSS",
        "sigmoid",
        "MODEL.LT.BOFL.ENABLED",
        "True",
        "MODEL.LT.BOFL.DEFERRED_EPOCHS",
        "0",
    )
    gets, loads = [], []
    real_get, real_load = DatasetCatalog.get, json.load
    monkeypatch.setattr(DatasetCatalog, "get", lambda n: gets.append(n) or real_get(n))
    monkeypatch.setattr(
        json,
        "load",
        lambda f, *a, **k: loads.append(getattr(f, "name", f)) or real_load(f, *a, **k),
    )
    (tmp_path / "config.yaml").write_text(cfg.dump())  # as default_setup writes it
    clear_class_stats_cache()
    try:
        trainer = LTTrainer(cfg)
        next(iter(trainer._trainer.data_loader))  # the loader's first batch: no further parse
    finally:
        clear_class_stats_cache()
    assert gets == ["lt_shapes_train"], gets
    assert sum(os.path.abspath(str(f)) == os.path.abspath(train_json) for f in loads) == 1, loads
    # BOFL's epoch length comes from that parse, is in the trainer's config and in config.yaml
    ipe = trainer.cfg.MODEL.LT.BOFL.ITERS_PER_EPOCH
    assert ipe > 0 and cfg.MODEL.LT.BOFL.ITERS_PER_EPOCH == 0  # the caller's config is not changed
    assert trainer.model.roi_heads.box_predictor.cls_loss.bofl.iters_per_epoch == ipe
    written = lt_cfg(str(tmp_path / "config.yaml"))
    assert written.MODEL.LT.BOFL.ITERS_PER_EPOCH == ipe


def test_eval_only_startup_parses_the_training_json_once(tmp_path, small_val, monkeypatch):
    """train_net --eval-only: the checks and one parse (prepare_training_data), then the model,
    whose heads read the statistics and BOFL's epoch length without parsing again."""
    from lt_detectron.class_stats import clear_class_stats_cache
    from lt_detectron.engine import prepare_training_data

    cfg = make_cfg(
        tmp_path,
        small_val[0],
        "MODEL.LT.ROI_LOSS",
        "sigmoid",
        "MODEL.LT.BOFL.ENABLED",
        "True",
        "MODEL.LT.BOFL.DEFERRED_EPOCHS",
        "0",
    )
    gets = []
    real_get = DatasetCatalog.get
    monkeypatch.setattr(DatasetCatalog, "get", lambda n: gets.append(n) or real_get(n))
    clear_class_stats_cache()
    try:
        cfg = prepare_training_data(cfg)[
            0
        ]  # with MODEL.LT.BOFL.ITERS_PER_EPOCH from the same parse
        assert cfg.MODEL.LT.BOFL.ITERS_PER_EPOCH > 0
        LTTrainer.build_model(cfg)
    finally:
        clear_class_stats_cache()
    assert gets == ["lt_shapes_train"], gets


def test_subclass_with_detectron2s_build_train_loader_signature(tmp_path, small_val):
    """A user trainer overriding build_train_loader(cls, cfg) (detectron2's signature) still works."""
    calls = []

    class MyTrainer(LTTrainer):
        @classmethod
        def build_train_loader(cls, cfg):
            calls.append(cfg.DATASETS.TRAIN)
            return super().build_train_loader(cfg)

    MyTrainer(make_cfg(tmp_path, small_val[0]))
    assert calls == [("lt_shapes_train",)]
