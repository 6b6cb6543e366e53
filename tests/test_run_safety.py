"""Run safety (issue 22): ``--resume`` with another config is refused (names the checkpoint and the
keys), a second run on a held ``OUTPUT_DIR`` is refused (names the holder, overwrites nothing), a
diverging dense head ends with the trainer's "Training stopped" message, and the temporary files of
killed checkpoint writes / dataset generations are removed once their writer is dead."""

import os
import select
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs", "lt_shapes")
TINY = [
    "SOLVER.IMS_PER_BATCH",
    "2",
    "DATALOADER.NUM_WORKERS",
    "0",
    "SOLVER.WARMUP_ITERS",
    "1",
    "SOLVER.CHECKPOINT_PERIOD",
    "100",
    "TEST.EVAL_PERIOD",
    "0",
    "DATASETS.TEST",
    "()",
]


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_fcos_non_finite_predictions_stop_training_with_the_trainer_message(tmp_path):
    """Bad input: NaN box predictions of a diverging FCOS end in LTTrainer's "Training stopped at
    iteration N" FloatingPointError, not fvcore's ``bad box: x1 larger than x2`` assertion."""
    from detectron2.config import get_cfg

    from lt_detectron import add_lt_config
    from lt_detectron.engine import LTTrainer

    cfg = get_cfg()
    add_lt_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, "fcos_tiny_focal.yaml"))
    cfg.merge_from_list(TINY + ["SOLVER.MAX_ITER", "4", "OUTPUT_DIR", str(tmp_path)])
    trainer = LTTrainer(cfg)
    trainer.resume_or_load(resume=False)
    head = trainer.model.head
    forward = head.forward
    calls = {"n": 0}

    def diverged_after_two(features):
        calls["n"] += 1
        logits, regs, ctrs = forward(features)
        if calls["n"] > 2:
            regs = [r * float("nan") for r in regs]
        return logits, regs, ctrs

    head.forward = diverged_after_two
    with pytest.raises(FloatingPointError, match=r"Training stopped at iteration 2 .*not finite"):
        trainer.train()


def _fork(work):
    """Run ``work(ready, wait)`` in a forked child, where the child calls ``ready()`` in the middle of its
    write and ``wait()`` blocks until ``finish()`` (returned with the pid) lets it go on."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            work(lambda: os.write(ready_w, b"1"), lambda: os.read(go_r, 1))
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(go_r)
    if not select.select([ready_r], [], [], 120)[0] or os.read(ready_r, 1) != b"1":
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise AssertionError("the forked writer failed before the middle of its write")
    os.close(ready_r)  # the child is in the middle of its write

    def finish():
        os.write(go_w, b"1")
        os.waitpid(pid, 0)

    return pid, finish


def test_killed_checkpoint_write_leaves_no_temp_file(tmp_path):
    """Bad input: the temporary file of a checkpoint write killed mid-way is removed by the next
    checkpoint save in that folder (its writer is dead); a live writer's temporary file is kept."""
    from lt_detectron.engine.checkpoint import LTCheckpointer
    from lt_detectron.utils.atomic import atomic_write

    def write(path, then):
        return lambda ready, wait: atomic_write(
            path, lambda f: (f.write(b"partial"), f.flush(), ready(), then(wait))
        )

    killed, _ = _fork(write(str(tmp_path / "model_0000009.pth"), lambda wait: os._exit(9)))
    os.waitpid(killed, 0)
    dead_tmp = set(os.listdir(tmp_path))
    assert len(dead_tmp) == 1, dead_tmp  # the killed write's temporary file
    live, finish = _fork(write(str(tmp_path / "model_0000010.pth"), lambda wait: wait()))
    live_tmp = set(os.listdir(tmp_path)) - dead_tmp
    try:
        LTCheckpointer(torch.nn.Linear(2, 2), str(tmp_path)).save("model_0000001")
        names = set(os.listdir(tmp_path))
        assert names == {"last_checkpoint", "model_0000001.pth"} | live_tmp, names
    finally:
        finish()
    assert (tmp_path / "model_0000010.pth").read_bytes() == b"partial"  # the live write finished


def test_killed_generation_temp_folder_is_removed_by_an_immediate_rerun(tmp_path, monkeypatch):
    """Bad input: a dataset generation killed a moment ago leaves its temporary folder; a rerun
    right away (well within 60 s) removes it, and keeps the folder of a live generation."""
    from lt_detectron.data import embedded
    from lt_detectron.data.embedded import cache

    small = dict(
        num_train_images=60,
        num_val_images=40,
        image_size=96,
        val_instances_per_class=8,
        max_size=32,
    )
    root = tmp_path / "lt_shapes_vX_seed0"

    def generation(then):
        def work(ready, wait):
            monkeypatch.setattr(cache, "write_dataset", lambda plan, tmp: (ready(), then(wait)))
            embedded.generate_lt_shapes(root, seed=0, **small)

        return work

    killed, _ = _fork(generation(lambda wait: os._exit(9)))
    os.waitpid(killed, 0)
    (dead,) = os.listdir(tmp_path)
    assert time.time() - (tmp_path / dead).stat().st_mtime < 60
    # the rerun (a generation that is now writing) removed the killed one's folder as it started
    live, finish = _fork(generation(lambda wait: wait()))
    try:
        names = os.listdir(tmp_path)
        assert dead not in names, names
        (alive,) = names
        assert embedded.cleanup_stale_temp(root) == []  # a live generation's folder is kept
        assert os.listdir(tmp_path) == [alive]
    finally:
        finish()
