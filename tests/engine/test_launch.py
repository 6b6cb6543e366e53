"""Launching CPU (gloo) runs: several "machines" form one world, MODEL.DEVICE cpu is read from the
merged config (YAML or command line), and the lt_detectron logs reach log.txt of a real run."""

import json
import os
import subprocess
import sys

import pytest
import torch

from lt_detectron.engine.launch import is_cpu_device, launch_cpu, launch_on_device
from tests._data import lt_shapes_val_subset

from tests._data import ROOT

TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
BASE = os.path.join(ROOT, "configs", "lt_shapes", "Base-FasterRCNN-Tiny.yaml")


def _free_port():
    from detectron2.engine.launch import _find_free_port

    return _find_free_port()


# A "machine": a script that calls launch_cpu with a tiny main (spawned workers re-import it as
# __mp_main__ and take world_main from there).
_MACHINE = """
import json, os, sys
import torch
import torch.distributed as dist
from detectron2.utils import comm
from lt_detectron.engine.launch import launch_cpu


def world_main(out_dir):
    t = torch.tensor([float(comm.get_rank() + 1)])
    dist.all_reduce(t)
    info = dict(rank=comm.get_rank(), world=comm.get_world_size(), local_rank=comm.get_local_rank(),
                local_size=comm.get_local_size(), backend=dist.get_backend(), reduced=t.item())
    with open(os.path.join(out_dir, "rank%d.json" % comm.get_rank()), "w") as f:
        json.dump(info, f)


if __name__ == "__main__":
    machine_rank, url, out_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    launch_cpu(world_main, 1, num_machines=2, machine_rank=machine_rank, dist_url=url, args=(out_dir,))
"""


@pytest.mark.slow
def test_two_machines_form_one_gloo_world(tmp_path):
    """Two "machines" on this host, one process each (``--num-gpus 1 --num-machines 2``): one world of
    2 whose all-reduce sums over both, not two worlds of 1."""
    script = tmp_path / "machine.py"
    script.write_text(_MACHINE)
    url = "tcp://127.0.0.1:%d" % _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)  # this checkout's lt_detectron
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), url, str(tmp_path)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    infos = [json.load(open(tmp_path / ("rank%d.json" % r))) for r in (0, 1)]
    for r, info in enumerate(infos):
        assert info == dict(
            rank=r,
            world=2,
            local_rank=0,
            local_size=1,
            backend="gloo",
            reduced=3.0,
        )


def test_launch_module_does_not_import_the_trainer_stack():
    """lt_detectron/engine/launch.py imports detectron2.engine only inside the function that uses it
    (CUDA runs), not at module level (read with ast)."""
    import ast

    import lt_detectron.engine.launch as launch

    with open(launch.__file__) as f:
        tree = ast.parse(f.read())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            top.add("." * node.level + (node.module or ""))
    assert "torch.distributed" in top and "detectron2.utils" in top  # the walk sees the imports
    trainer_stack = ("detectron2.engine", "lt_detectron.engine", "..engine", ".trainer")
    assert not [m for m in top if m.startswith(trainer_stack)], top


def test_default_timeout_is_detectron2s():
    from detectron2.engine.launch import DEFAULT_TIMEOUT as D2_TIMEOUT

    from lt_detectron.engine.launch import DEFAULT_TIMEOUT

    assert DEFAULT_TIMEOUT == D2_TIMEOUT


def test_world_checks_name_the_flag():
    with pytest.raises(ValueError, match=r"--machine-rank 2 is out of range for --num-machines 2"):
        launch_cpu(print, 1, num_machines=2, machine_rank=2, dist_url="tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match=r"pass the same --dist-url tcp://"):
        launch_cpu(print, 1, num_machines=2, machine_rank=0, dist_url="auto")
    with pytest.raises(
        ValueError, match=r"num_machines \(--num-machines\) must be an integer >= 1"
    ):
        launch_cpu(
            print, 1, "tcp://127.0.0.1:1"
        )  # the old positional dist_url is refused, not misread


def test_single_process_runs_in_this_process():
    assert launch_on_device("cpu", lambda a, b: a + b, 1, args=(2, 3)) == 5
    assert is_cpu_device("cpu") and is_cpu_device("CPU:0") and not is_cpu_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error():
    with pytest.raises(
        RuntimeError, match="MODEL.DEVICE is 'cuda' but CUDA is not available.*MODEL.DEVICE cpu"
    ):
        launch_on_device("cuda", print, 2)


@pytest.fixture(scope="module")
def train_net():
    from tools import train_net

    return train_net


@pytest.mark.parametrize(
    "opts, device",
    [([], "cpu"), (["MODEL.DEVICE", "cpu"], "cpu"), (["MODEL.DEVICE", "cuda"], "cuda")],
)
def test_device_comes_from_the_merged_config(train_net, monkeypatch, opts, device):
    """The YAML says cpu; the command line may override it. The launcher gets the machines flags."""
    from lt_detectron.engine import defaults

    calls = []
    monkeypatch.setattr(defaults, "launch_on_device", lambda *a, **k: calls.append((a, k)))
    args = train_net.argument_parser().parse_args(
        [
            "--config-file",
            BASE,
            "--num-gpus",
            "2",
            "--num-machines",
            "3",
            "--machine-rank",
            "1",
            "--dist-url",
            "tcp://10.0.0.1:1234",
        ]
        + opts
    )
    defaults.launch_from_args(args, train_net.main)
    ((a, k),) = calls
    assert a[:3] == (device, train_net.main, 2)
    assert k == dict(num_machines=3, machine_rank=1, dist_url="tcp://10.0.0.1:1234", args=(args,))


# ------------------------------------------------------------------------------------------ end to end
_TINY = [
    "SOLVER.MAX_ITER",
    "2",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "DATALOADER.NUM_WORKERS",
    "0",
    "SOLVER.WARMUP_ITERS",
    "1",
    "SOLVER.CHECKPOINT_PERIOD",
    "100",
    "TEST.DETECTIONS_PER_IMAGE",
    "20",
]


def _small_val(tmp_path):
    """8 lt_shapes val images as their own LVIS-format json (registered with --register-dataset)."""
    val_json, val_images = lt_shapes_val_subset(tmp_path / "val8.json", 8)
    return ["--register-dataset", "val8", val_json, val_images]


@pytest.mark.slow
def test_yaml_cpu_two_processes_and_lt_logs_in_log_txt(tmp_path):
    """--num-gpus 2 with MODEL.DEVICE cpu only in the YAML: 2 gloo processes (was: CUDA assertion).
    The class-statistics table and the LVIS evaluator's AP-group table / csv path reach log.txt."""
    out_dir = tmp_path / "out"
    cmd = (
        [sys.executable, TRAIN_NET, "--config-file", BASE, "--num-gpus", "2"]
        + _small_val(tmp_path)
        + _TINY
        + ["DATASETS.TEST", "('val8',)", "OUTPUT_DIR", str(out_dir)]
    )
    assert "MODEL.DEVICE" not in cmd
    res = subprocess.run(
        cmd,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    log = (out_dir / "log.txt").read_text()
    assert "Rank of current process: 0. World size: 2" in log
    assert "Rank of current process: 1. World size: 2" in (out_dir / "log.txt.rank1").read_text()
    # lt_detectron's own lines, in detectron2's file format
    assert "lt_detectron.class_stats INFO: class statistics" in log and "LVIS bands r/c/f" in log
    assert "Per-category bbox AP written to %s" % (out_dir / "inference") in log
    assert "LVIS bbox results of val8" in log and "AP[10,100)" in log
    assert "Per-category bbox AP written to" in res.stdout  # and on stdout (rank 0 only: once)
    assert res.stdout.count("Per-category bbox AP written to") == 1


@pytest.mark.slow
def test_train_net_two_machines_cpu(tmp_path):
    """Two train_net commands, --num-gpus 1 --num-machines 2 --machine-rank {0,1}, train as one world."""
    url = "tcp://127.0.0.1:%d" % _free_port()
    out_dir = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                TRAIN_NET,
                "--config-file",
                BASE,
                "--num-gpus",
                "1",
                "--num-machines",
                "2",
                "--machine-rank",
                str(r),
                "--dist-url",
                url,
            ]
            + _TINY
            + ["DATASETS.TEST", "()", "OUTPUT_DIR", str(out_dir)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert "Rank of current process: 0. World size: 2" in (out_dir / "log.txt").read_text()
    assert "Rank of current process: 1. World size: 2" in (out_dir / "log.txt.rank1").read_text()
    assert (out_dir / "model_final.pth").is_file()
