"""Run safety (issue 22): ``--resume`` with another config is refused (names the checkpoint and the
keys), a second run on a held ``OUTPUT_DIR`` is refused (names the holder, overwrites nothing), a
diverging dense head ends with the trainer's "Training stopped" message, and the temporary files of
killed checkpoint writes / dataset generations are removed once their writer is dead."""

import os
import select
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from lt_detectron.utils.testing import lt_cfg

from tests._data import ROOT

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


def _train_net(config, out, *args, max_iter=2):
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py")]
    cmd += ["--config-file", os.path.join(CONFIGS, config)] + list(args)
    cmd += TINY + ["SOLVER.MAX_ITER", str(max_iter), "OUTPUT_DIR", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)


def _lt_cfg(config, *opts):
    cfg = lt_cfg(os.path.join(CONFIGS, config))
    cfg.merge_from_list(list(opts))
    return cfg


@pytest.mark.slow
def test_resume_with_another_methods_config_is_refused_unless_forced(tmp_path):
    """Item 8: a softmax run resumed with the EQL v2 config exits non-zero naming the checkpoint file
    and MODEL.LT.ROI_LOSS (config.yaml untouched); ``--allow-config-change`` continues the run."""
    out = tmp_path / "run"
    first = _train_net("faster_rcnn_tiny_softmax.yaml", out)
    assert first.returncode == 0, first.stderr[-3000:]
    config_before = (out / "config.yaml").read_text()
    final = str(out / "model_final.pth")

    refused = _train_net("faster_rcnn_tiny_eqlv2.yaml", out, "--resume", max_iter=3)
    log = refused.stdout + refused.stderr
    assert refused.returncode != 0, log[-3000:]
    assert final in log and "MODEL.LT.ROI_LOSS" in log and "--allow-config-change" in log
    assert "'softmax'" in log and "'eqlv2'" in log
    listing = log.split("These keys differ:")[1].split("Resume with")[0]
    assert "MODEL.LT.ROI_LOSS" in listing and "SOLVER.MAX_ITER" not in listing  # may differ
    assert (out / "config.yaml").read_text() == config_before
    assert torch.load(final, weights_only=True)["iteration"] == 1

    forced = _train_net(
        "faster_rcnn_tiny_eqlv2.yaml", out, "--resume", "--allow-config-change", max_iter=3
    )
    assert forced.returncode == 0, (forced.stdout + forced.stderr)[-3000:]
    assert torch.load(final, weights_only=True)["iteration"] == 2  # continued from iteration 1


@pytest.mark.slow
def test_resume_with_the_same_config_continues(tmp_path):
    """Item 8's other side: ``--resume`` with the run's own config (a longer SOLVER.MAX_ITER) continues,
    although the trainer filled keys into the recorded config (MODEL.LT.CLASS_STATS_FILE: the run's
    class_stats.json)."""
    out = tmp_path / "run"
    first = _train_net("faster_rcnn_tiny_softmax.yaml", out)
    assert first.returncode == 0, first.stderr[-3000:]
    recorded = torch.load(str(out / "model_final.pth"), weights_only=True)["config"]
    assert "class_stats.json" in recorded  # filled by the trainer, '' in the config file
    resumed = _train_net("faster_rcnn_tiny_softmax.yaml", out, "--resume", max_iter=3)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert torch.load(str(out / "model_final.pth"), weights_only=True)["iteration"] == 2


@pytest.mark.slow
def test_second_run_on_a_held_output_dir_is_refused_naming_the_holder(tmp_path):
    """Item 9: while a softmax run trains in OUTPUT_DIR, an EQL v2 train_net on it exits non-zero,
    names the first run (pid and host) and writes nothing there: config.yaml is the first run's."""
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file"]
    cmd += [os.path.join(CONFIGS, "faster_rcnn_tiny_softmax.yaml")] + TINY
    cmd += ["SOLVER.MAX_ITER", "100000", "OUTPUT_DIR", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(1200):  # until the first run trains (its config.yaml is final then)
            log = out / "log.txt"
            if first.poll() is not None or (
                log.is_file() and "Starting training" in log.read_text()
            ):
                break
            time.sleep(0.25)
        assert first.poll() is None, "the first run ended early"
        os.kill(first.pid, signal.SIGSTOP)  # holds OUTPUT_DIR without using the CPU
        config_before = (out / "config.yaml").read_text()
        files_before = sorted(os.listdir(out))
        second = _train_net("faster_rcnn_tiny_eqlv2.yaml", out)
    finally:
        first.kill()
        first.wait()
    log = second.stdout + second.stderr
    assert second.returncode != 0, log[-3000:]
    assert "pid %d on host %s" % (first.pid, socket.gethostname()) in log, log[-3000:]
    assert "OUTPUT_DIR" in log and str(out) in log
    assert (out / "config.yaml").read_text() == config_before
    assert sorted(os.listdir(out)) == files_before


def test_output_dir_lock_is_exclusive_shared_and_released_with_its_holder(tmp_path):
    """Training holds OUTPUT_DIR exclusively, --eval-only shares it with other evaluations; the lock
    of a process that died is free again (the OS drops it)."""
    from lt_detectron.engine.run_guard import OutputDirBusy, OutputDirLock

    out = str(tmp_path)

    def hold(ready, wait):
        OutputDirLock(out, exclusive=True, purpose="killed run").acquire()
        ready()
        wait()

    child, _ = _fork(hold)
    try:
        with pytest.raises(OutputDirBusy, match="pid %d .*killed run" % child):
            OutputDirLock(out, exclusive=False, purpose="eval").acquire()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    a = OutputDirLock(out, exclusive=False, purpose="eval a").acquire()
    b = OutputDirLock(out, exclusive=False, purpose="eval b").acquire()
    with pytest.raises(OutputDirBusy, match="eval a"):
        OutputDirLock(out, exclusive=True, purpose="train").acquire()
    a.release()
    b.release()
    OutputDirLock(out, exclusive=True, purpose="train").acquire().release()


@pytest.mark.parametrize("config", ["fcos_tiny_focal.yaml", "retinanet_tiny_focal.yaml"])
def test_dense_non_finite_predictions_stop_training_with_the_trainer_message(tmp_path, config):
    """Bad input: NaN box predictions of a diverging FCOS / RetinaNet (GIoU box loss) end in
    LTTrainer's "Training stopped at iteration N" FloatingPointError, not fvcore's
    ``bad box: x1 larger than x2`` assertion."""
    from lt_detectron.engine import LTTrainer

    cfg = _lt_cfg(config, *TINY, "SOLVER.MAX_ITER", "4", "OUTPUT_DIR", str(tmp_path))
    trainer = LTTrainer(cfg)
    trainer.resume_or_load(resume=False)
    head = trainer.model.head
    forward = head.forward
    calls = {"n": 0}

    def diverged_after_two(features):
        calls["n"] += 1
        out = list(forward(features))  # [logits, box regression, (centerness)] per level
        if calls["n"] > 2:
            out[1] = [r * float("nan") for r in out[1]]
        return out

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


def test_resume_config_check_allows_extending_and_refuses_another_model(tmp_path, caplog):
    """The keys that may differ on resume (SOLVER.MAX_ITER, TEST.*, NUM_WORKERS, ...) and the epoch
    length the trainer fills pass; another loss or learning rate is refused, with --resume and for a
    fresh run over the checkpoints; forced, both go on with a warning."""
    from lt_detectron.engine.checkpoint import LTCheckpointer
    from lt_detectron.engine.run_guard import ResumeConfigMismatch, check_output_dir_config

    out = ("OUTPUT_DIR", str(tmp_path))
    trained = _lt_cfg("fcos_tiny_bofl.yaml", *out, "MODEL.LT.BOFL.ITERS_PER_EPOCH", "7.0")
    LTCheckpointer(torch.nn.Linear(2, 2), str(tmp_path), config_dump=trained.dump()).save(
        "model_final"
    )
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["config"] == trained.dump()
    extended = _lt_cfg(
        "fcos_tiny_bofl.yaml",
        *out,
        "SOLVER.MAX_ITER",
        str(2 * trained.SOLVER.MAX_ITER),
        "TEST.EVAL_PERIOD",
        "7",
        "DATALOADER.NUM_WORKERS",
        "3",
    )
    assert extended.MODEL.LT.BOFL.ITERS_PER_EPOCH == 0  # filled by the trainer: not compared
    check_output_dir_config(extended, resume=True)
    for opts, key in (
        (("MODEL.LT.DENSE_LOSS", "focal"), "MODEL.LT.DENSE_LOSS"),
        (("SOLVER.BASE_LR", str(trained.SOLVER.BASE_LR * 2)), "SOLVER.BASE_LR"),
        (("MODEL.LT.BOFL.ITERS_PER_EPOCH", "8.0"), "MODEL.LT.BOFL.ITERS_PER_EPOCH"),
    ):
        other = _lt_cfg("fcos_tiny_bofl.yaml", *out, *opts)
        for resume in (True, False):
            with pytest.raises(ResumeConfigMismatch) as e:
                check_output_dir_config(other, resume=resume)
            msg = str(e.value)
            assert str(tmp_path / "model_final.pth") in msg and "--allow-config-change" in msg
            (line,) = [ln for ln in msg.splitlines() if ln.startswith("  ")]  # one key differs
            assert line.startswith("  %s: " % key), msg
            check_output_dir_config(other, resume=resume, allow_change=True)
