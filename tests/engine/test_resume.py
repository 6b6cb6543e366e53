"""End to end on lt_shapes (CPU): BAGS decoupled evaluates identically in process, with
``--eval-only`` and after ``--resume`` (the trained classifier is kept); ``model_final.pth`` loads in
stock detectron2 with the same predictions; resume falls back past a truncated checkpoint;
``RepeatFactorTrainingSampler`` resumes exactly; each of 2 gloo ranks resumes its own RNG state."""

import itertools
import logging
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.utils.env import seed_all_rng

import lt_detectron  # noqa: F401
from lt_detectron.data.samplers import (
    ResumableRepeatFactorTrainingSampler,
    ResumableTrainingSampler,
)
from lt_detectron.engine import LTCheckpointer, LTTrainer
from lt_detectron.engine.checkpoint import get_rng_state
from lt_detectron.utils.testing import lt_cfg

from tests._data import ROOT

CONFIGS = os.path.join(ROOT, "configs", "lt_shapes")


def _cfg(config, out, *opts):
    cfg = lt_cfg(os.path.join(CONFIGS, config))
    cfg.merge_from_list(
        [
            "SOLVER.MAX_ITER",
            "3",
            "SOLVER.IMS_PER_BATCH",
            "2",
            "SOLVER.CHECKPOINT_PERIOD",
            "100",
            "DATALOADER.NUM_WORKERS",
            "0",
            "SOLVER.WARMUP_ITERS",
            "1",
            "DATASETS.TEST",
            "()",
            "OUTPUT_DIR",
            str(out),
        ]
        + list(opts)
    )
    return cfg


def _predict(model, n=3):
    """Raw detections of ``model`` on the first ``n`` lt_shapes val images."""
    from detectron2.data import DatasetCatalog, DatasetMapper

    cfg = _cfg("Base-FasterRCNN-Tiny.yaml", "/nonexistent")
    mapper = DatasetMapper(cfg, is_train=False)
    inputs = [mapper(d) for d in DatasetCatalog.get("lt_shapes_val")[:n]]
    model.eval()
    with torch.no_grad():
        outs = model(inputs)
    return [
        (o["instances"].pred_boxes.tensor, o["instances"].scores, o["instances"].pred_classes)
        for o in outs
    ]


def _assert_same_predictions(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            assert torch.equal(u, v)


def _assert_same_metrics(a, b):
    """Identical nested metric dicts (NaN == NaN: a group without classes)."""
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _assert_same_metrics(a[k], b[k])
        else:
            assert a[k] == b[k] or (np.isnan(a[k]) and np.isnan(b[k])), (k, a[k], b[k])


@pytest.fixture(scope="module")
def softmax_final(tmp_path_factory):
    """A tiny softmax Faster R-CNN trained for 3 iterations: (cfg, model_final.pth, trained model)."""
    out = tmp_path_factory.mktemp("softmax")
    seed_all_rng(0)
    cfg = _cfg("faster_rcnn_tiny_softmax.yaml", out)
    trainer = LTTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return cfg, str(out / "model_final.pth"), trainer.model


@pytest.mark.slow
def test_bags_decoupled_eval_only_and_resume_keep_the_trained_classifier(
    tmp_path,
    small_val,
    softmax_final,
    caplog,
):
    out = tmp_path / "bags"
    opts = [
        "MODEL.WEIGHTS",
        softmax_final[1],
        "DATASETS.TEST",
        "('%s',)" % small_val[0],
        "TEST.EVAL_PERIOD",
        "0",
    ]
    seed_all_rng(0)
    cfg = _cfg("faster_rcnn_tiny_bags_decoupled.yaml", out, *opts)
    assert cfg.MODEL.LT.REINIT_CLS and cfg.MODEL.LT.FREEZE_ALL_BUT_CLS
    with caplog.at_level(logging.INFO, logger="lt_detectron.engine.checkpoint"):
        trainer = LTTrainer(cfg)
        trainer.resume_or_load(resume=False)
    assert "classifier does not fit the model" in caplog.text  # the decoupling step re-initialises
    trainer.train()
    trained_cls = trainer.model.roi_heads.box_predictor.cls_score.weight.detach().clone()
    in_process = LTTrainer.test(cfg, trainer.model)
    want_pred = _predict(trainer.model)

    for resume in (
        False,
        True,
    ):  # tools/train_net.py --eval-only [--resume] MODEL.WEIGHTS model_final.pth
        caplog.clear()
        cfg_eval = _cfg("faster_rcnn_tiny_bags_decoupled.yaml", out, *opts)
        cfg_eval.MODEL.WEIGHTS = str(out / "model_final.pth")
        model = LTTrainer.build_model(cfg_eval)
        with caplog.at_level(logging.INFO, logger="lt_detectron.engine.checkpoint"):
            LTCheckpointer(
                model, save_dir=cfg_eval.OUTPUT_DIR, reinit_cls=cfg_eval.MODEL.LT.REINIT_CLS
            ).resume_or_load(cfg_eval.MODEL.WEIGHTS, resume=resume)
        assert (
            "classifier fits the model and is loaded (resuming and evaluation keep it"
            in caplog.text
        )
        assert torch.equal(model.roi_heads.box_predictor.cls_score.weight, trained_cls)
        _assert_same_predictions(_predict(model), want_pred)
        _assert_same_metrics(LTTrainer.test(cfg_eval, model), in_process)

    # --resume of the trained BAGS run: the classifier is kept too (nothing left to train)
    t2 = LTTrainer(_cfg("faster_rcnn_tiny_bags_decoupled.yaml", out, *opts))
    t2.resume_or_load(resume=True)
    assert t2.start_iter == 3
    assert torch.equal(t2.model.roi_heads.box_predictor.cls_score.weight, trained_cls)


@pytest.mark.slow
def test_model_final_loads_in_stock_detectron2(softmax_final):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import DefaultPredictor
    from detectron2.modeling import build_model

    cfg, path, trained = softmax_final
    ckpt = torch.load(path, weights_only=True)  # tensors and plain types only
    assert len(ckpt["trainer"]["rng"]["per_rank"]) == 1
    model = build_model(cfg)
    DetectionCheckpointer(model).load(path)  # stock: fvcore's torch.load, weights_only by default
    for k, v in trained.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = path
    predictor = DefaultPredictor(cfg)
    image = (np.random.default_rng(0).random((128, 128, 3)) * 255).astype(np.uint8)
    stock = predictor(image)["instances"]
    predictor.model = trained.eval()
    ours = predictor(image)["instances"]
    assert len(stock) > 0
    assert torch.equal(stock.pred_boxes.tensor, ours.pred_boxes.tensor)
    assert torch.equal(stock.scores, ours.scores)
    assert torch.equal(stock.pred_classes, ours.pred_classes)


def _train(cfg, resume=False, record=None):
    trainer = LTTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    if record is not None:
        model = trainer._trainer.model
        forward = model.forward

        def recording(batched_inputs):
            record.append([d["image_id"] for d in batched_inputs])
            return forward(batched_inputs)

        model.forward = recording
    trainer.train()
    return trainer


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_resume_falls_back_past_a_truncated_checkpoint_and_continues(tmp_path, caplog):
    opts = ["SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.MAX_ITER", "4"]
    seed_all_rng(0)
    full = _train(
        _cfg("faster_rcnn_tiny_softmax.yaml", tmp_path / "full", *opts[:2], "SOLVER.MAX_ITER", "6")
    )
    seed_all_rng(0)
    _train(_cfg("faster_rcnn_tiny_softmax.yaml", tmp_path / "split", *opts))
    split = tmp_path / "split"
    assert (split / "last_checkpoint").read_text() == "model_final.pth"
    final = split / "model_final.pth"
    data = final.read_bytes()
    final.write_bytes(data[: len(data) // 3])  # a write cut short
    seed_all_rng(123)
    with caplog.at_level(logging.WARNING):
        second = LTTrainer(
            _cfg("faster_rcnn_tiny_softmax.yaml", split, *opts[:2], "SOLVER.MAX_ITER", "6")
        )
        second.resume_or_load(resume=True)
    assert "Cannot resume from %s" % final in caplog.text and "truncated or corrupt" in caplog.text
    assert "Resumed from %s instead of %s" % (split / "model_0000003.pth", final) in caplog.text
    assert second.start_iter == 4  # model_0000003.pth holds iteration 3
    second.train()
    want = _state(full.model)
    for k, v in _state(second.model).items():
        assert torch.equal(v, want[k]), k


@pytest.mark.slow
def test_repeat_factor_sampler_resumes_exactly(tmp_path):
    """N + resume + M iterations with RepeatFactorTrainingSampler == N+M straight: the same batches
    and bitwise the same EQL v2 buffers."""
    opts = [
        "MODEL.LT.ROI_LOSS",
        "eqlv2",
        "DATALOADER.SAMPLER_TRAIN",
        "RepeatFactorTrainingSampler",
        "DATALOADER.REPEAT_THRESHOLD",
        "0.1",
    ]
    seed_all_rng(0)
    want_batches = []
    full = _train(
        _cfg("Base-FasterRCNN-Tiny.yaml", tmp_path / "full", *opts, "SOLVER.MAX_ITER", "5"),
        record=want_batches,
    )
    assert isinstance(full._trainer.data_loader.lt_sampler, ResumableRepeatFactorTrainingSampler)
    seed_all_rng(0)
    got_batches = []
    _train(
        _cfg("Base-FasterRCNN-Tiny.yaml", tmp_path / "split", *opts, "SOLVER.MAX_ITER", "3"),
        record=got_batches,
    )
    seed_all_rng(123)  # a new process
    second = _train(
        _cfg("Base-FasterRCNN-Tiny.yaml", tmp_path / "split", *opts, "SOLVER.MAX_ITER", "5"),
        resume=True,
        record=got_batches,
    )
    assert second.start_iter == 3
    assert got_batches == want_batches and len(want_batches) == 5
    assert want_batches[3:] != want_batches[:2]  # a restarted stream would repeat the first batches
    want, got = _state(full.model), _state(second.model)
    stats = [k for k in want if k.endswith(("pos_grad", "neg_grad", "pos_neg"))]
    assert stats and any(want[k].abs().sum() > 0 for k in stats)
    for k in want:
        assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("world_size", [1, 3])
def test_resumable_samplers_continue_detectron2_streams(world_size):
    """The resumable samplers yield detectron2's streams from ``start`` on (several RFS epochs,
    each with its own stochastic rounding and permutation), sharded by rank."""
    factors = torch.tensor([1.0, 2.5, 1.0, 3.2, 1.7, 1.0, 1.0])
    n = 200  # about 17 RFS epochs
    ref_rfs = list(
        itertools.islice(RepeatFactorTrainingSampler(factors, seed=7)._infinite_indices(), 1000)
    )
    ref_ts = list(itertools.islice(ResumableTrainingSampler(7, seed=7)._infinite_indices(), 1000))
    for start in (0, 5, 37, 120):
        for rank in range(world_size):
            for cls, args, ref in (
                (ResumableRepeatFactorTrainingSampler, (factors,), ref_rfs),
                (ResumableTrainingSampler, (7,), ref_ts),
            ):
                s = cls(*args, seed=7)
                s._rank, s._world_size = rank, world_size
                s.set_start(start)
                got = list(itertools.islice(iter(s), n // world_size))
                assert got == ref[start + rank :: world_size][: n // world_size]
    # the seed travels with the checkpoint (SEED -1 draws a new one per run)
    a, b = (
        ResumableRepeatFactorTrainingSampler(factors, seed=1),
        ResumableRepeatFactorTrainingSampler(factors, seed=2),
    )
    b.load_state_dict(torch.load(_roundtrip(a.state_dict()), weights_only=True))
    assert list(itertools.islice(iter(a), 50)) == list(itertools.islice(iter(b), 50))
    with pytest.raises(ValueError, match="start must be >= 0"):
        a.set_start(-1)


def _roundtrip(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def _rng_worker(out_dir):
    # launch_cpu's worker: the gloo group and detectron2's local group (load_train_dicts asks
    # comm.get_local_rank()), destroyed by the launcher
    rank = dist.get_rank()
    torch.set_num_threads(1)
    run = os.path.join(out_dir, "run")
    seed_all_rng(100 + rank)  # default_setup seeds SEED + rank
    _train(_cfg("Base-FasterRCNN-Tiny.yaml", run, "SOLVER.MAX_ITER", "2", "MODEL.DEVICE", "cpu"))
    end = get_rng_state()
    dist.barrier()
    seed_all_rng(999)  # a new process
    t2 = LTTrainer(
        _cfg("Base-FasterRCNN-Tiny.yaml", run, "SOLVER.MAX_ITER", "3", "MODEL.DEVICE", "cpu")
    )
    t2.resume_or_load(resume=True)
    after = get_rng_state()
    torch.save(
        {
            "end": end,
            "after": after,
            "torch_pending": t2._torch_rng_to_restore,
            "start_iter": t2.start_iter,
        },
        os.path.join(out_dir, "rank%d.pt" % rank),
    )


@pytest.mark.slow
def test_each_rank_resumes_its_own_rng_state(tmp_path):
    from lt_detectron.engine import launch_cpu

    rendezvous = "file://" + os.path.join(str(tmp_path), "rendezvous")
    launch_cpu(_rng_worker, 2, dist_url=rendezvous, args=(str(tmp_path),))
    ckpt = torch.load(tmp_path / "run" / "model_final.pth", weights_only=True)
    per_rank = ckpt["trainer"]["rng"]["per_rank"]
    assert len(per_rank) == 2
    r = [torch.load(tmp_path / ("rank%d.pt" % i), weights_only=True) for i in range(2)]
    assert not torch.equal(
        r[0]["end"]["numpy"]["keys"], r[1]["end"]["numpy"]["keys"]
    )  # ranks differ
    for i in range(2):
        assert r[i]["start_iter"] == 2
        end, after, saved = r[i]["end"], r[i]["after"], per_rank[i]
        for part in ("numpy", "python"):
            for k, v in end[part].items():
                for x in (after[part][k], saved[part][k]):
                    assert torch.equal(x, v) if isinstance(v, torch.Tensor) else x == v, (
                        i,
                        part,
                        k,
                    )
        assert torch.equal(r[i]["torch_pending"], end["torch"])  # restored after the first batch
        assert torch.equal(saved["torch"], end["torch"])
