"""dev/check_configs.py (every shipped config on the real-format fixtures) and dev/gpu_check.sh."""

import os
import subprocess
import sys

import pytest

from dev import check_configs as cc

from tests._data import ROOT


def test_families_and_selection():
    assert cc.family("configs/lvis_v1/eqlv2_mask_rcnn_R_50_FPN_1x.yaml") == ("mask_rcnn", "eqlv2")
    assert cc.family("configs/lvis_v1/eqlv2_cascade_mask_rcnn_R_50_FPN_1x.yaml") == (
        "cascade_mask_rcnn",
        "eqlv2",
    )
    assert cc.family("configs/dense/bofl_centernet_R_50_FPN_140e_coco_lt.yaml") == (
        "centernet",
        "bofl",
    )
    assert cc.family("configs/dense/focal_fcos_R_50_FPN_gn_scratch_3x_lvis_v1.yaml") == (
        "fcos",
        "focal",
        "gn_scratch",
    )
    configs = cc.list_configs()
    on_disk = [
        os.path.join("configs", d, f)
        for d in ("lvis_v1", "coco_lt", "dense")
        for f in sorted(os.listdir(os.path.join(ROOT, "configs", d)))
        if f.endswith(".yaml") and not f.startswith("Base-")
    ]
    assert sorted(configs) == sorted(on_disk)
    fam = cc.pick_families(configs)
    assert len(fam) == len({cc.family(c) for c in configs}) and set(fam) <= set(configs)
    assert cc.list_configs(["dense/focal_fcos*"], ["*gn_scratch*"]) == [
        c for c in on_disk if os.path.basename(c).startswith("focal_fcos") and "gn_scratch" not in c
    ]


def test_commands_weights_registration_and_dependency(tmp_path):
    cfg = cc.load_cfg(os.path.join(ROOT, "configs/lvis_v1/bags_mask_rcnn_R_50_FPN_decoupled.yaml"))
    dep = cc.softmax_dependency("configs/lvis_v1/bags_mask_rcnn_R_50_FPN_decoupled.yaml", cfg)
    assert dep == "configs/lvis_v1/softmax_mask_rcnn_R_50_FPN_1x.yaml"
    soft = cc.load_cfg(os.path.join(ROOT, dep))
    assert cc.softmax_dependency(dep, soft) is None

    fx = str(tmp_path / "fx")
    argv, env = cc.build_command(dep, soft, fx, "builtin", str(tmp_path / "out"))
    assert env["DETECTRON2_DATASETS"] == fx
    assert (
        argv[1] == cc.TRAIN_NET
        and "SOLVER.MAX_ITER" in argv
        and argv[argv.index("SOLVER.MAX_ITER") + 1] == "3"
    )
    if soft.MODEL.WEIGHTS.startswith("detectron2://ImageNetPretrained/"):
        assert argv[argv.index("MODEL.WEIGHTS") + 1] == os.path.join(
            fx, "ImageNetPretrained", "MSRA", "R-50.pkl"
        )
    argv, _ = cc.build_command(dep, soft, fx, "detectron2", str(tmp_path / "out"))
    assert argv[argv.index("DATASETS.TRAIN") + 1] == "('my_lvis_v1_train',)"
    assert argv[argv.index("DATASETS.TEST") + 1] == "('my_lvis_v1_val',)"
    joined = " ".join(argv)
    assert (
        os.path.join(fx, "lvis/lvis_v1_train.json") in joined
        and os.path.join(fx, "coco/") in joined
    )
    argv, _ = cc.build_command("x.yaml", cfg, fx, "builtin", "o", weights="/w/model_final.pth")
    assert argv[argv.index("MODEL.WEIGHTS") + 1] == "/w/model_final.pth"


@pytest.mark.slow
def test_failure_is_reported_with_log_tail(tmp_path):
    """A run that fails (here: a missing fixture folder) gives rc != 0, the log tail, exit 1."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "dev.check_configs",
            "--configs",
            "dense/focal_fcos_R_50_FPN_1x_coco.yaml",
            "--registration",
            "builtin",
            "--fixtures",
            str(tmp_path / "missing"),
            "--output",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        cwd=ROOT,
    )
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert "FAILED" in out.stdout and "---- tail of" in out.stdout
    assert str(tmp_path / "missing") in out.stdout  # the log tail names the missing dataset file
    with open(tmp_path / "work" / "check_configs.csv") as f:
        rows = f.read().splitlines()
    assert rows[0].startswith("config,registration,rc") and ",builtin,1," in rows[1]


def test_gpu_check_script_syntax_and_arguments():
    script = os.path.join(ROOT, "dev", "gpu_check.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    bad = subprocess.run(["bash", script, "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr


@pytest.mark.slow
def test_gpu_check_dry_run_lists_every_registered_method(tmp_path):
    """The dry run (the method list comes from a Python process reading the loss registry)."""
    script = os.path.join(ROOT, "dev", "gpu_check.sh")
    out = subprocess.run(
        ["bash", script, "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, WORK=str(tmp_path)),
    )
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if "tools/train_net.py" in ln]
    # every registered ROI loss (Seesaw included) and fedloss, AMP off and on, softmax before BAGS
    from lt_detectron.losses import ROI_LOSS_REGISTRY

    methods = ROI_LOSS_REGISTRY.names() + ["fedloss"]
    assert "seesaw" in methods and len(lines) == 2 * len(methods)
    for m in methods:
        assert sum(" configs/lvis_v1/%s_mask_rcnn" % m in ln for ln in lines) == 2, m
    for amp in ("False", "True"):
        order = [ln for ln in lines if "SOLVER.AMP.ENABLED " + amp in ln]
        assert len(order) == len(methods)
        first = [i for i, ln in enumerate(order) if "/softmax_mask_rcnn" in ln or "/bags_" in ln]
        assert "/softmax_mask_rcnn" in order[first[0]]
    assert all("SOLVER.MAX_ITER 20" in ln and "MODEL.DEVICE cuda" in ln for ln in lines)
    bags = [ln for ln in lines if "bags_mask_rcnn" in ln]
    assert all("softmax_amp_" in ln and "model_final.pth" in ln for ln in bags)
    bad = subprocess.run(
        ["bash", script, "--dry-run"],
        capture_output=True,
        text=True,
        env=dict(os.environ, METHODS="nosuch", WORK=str(tmp_path)),
    )
    assert bad.returncode != 0 and "unknown method nosuch" in bad.stderr


@pytest.mark.slow
def test_gpu_check_runs_on_cpu(tmp_path):
    """The script end to end in its CPU mode: one method, AMP off, 3 iterations, small inputs."""
    env = dict(
        os.environ,
        DEVICE="cpu",
        ITERS="3",
        AMP="off",
        METHODS="sigmoid",
        SMALL="1",
        WORK=str(tmp_path),
        BATCH="2",
        OMP_NUM_THREADS="1",
        PYTHON=sys.executable,
    )
    out = subprocess.run(
        ["bash", os.path.join(ROOT, "dev", "gpu_check.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    row = [ln for ln in out.stdout.splitlines() if ln.startswith("| sigmoid |")][-1].split("|")
    assert row[4].strip() == "0" and float(row[5]) > 0  # rc, s/iter
    assert os.path.isfile(tmp_path / "gpu_check.md")


@pytest.mark.slow
def test_check_configs_families(tmp_path):
    """CI: one config per (architecture x loss) family through tools/train_net.py on the fixtures,
    builtin names; detectron2's register_* helpers for one config per dataset x head type.
    The GN from-scratch variants are left out of the family set except one (dense FCOS), for
    time (each takes 2-3 min on a CPU); the full sweep is `python -m dev.check_configs`."""
    from lt_detectron.utils.testing import make_fixtures

    fx = make_fixtures(str(tmp_path / "fx"))["root"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = [
        ["--families", "--exclude", "*gn_scratch*", "--registration", "builtin"],
        [
            "--configs",
            "lvis_v1/softmax_mask_rcnn_R_50_FPN_1x.yaml",
            "coco_lt/softmax_faster_rcnn_R_50_FPN_1x.yaml",
            "dense/ecm_centernet_R_50_FPN_140e_coco_lt.yaml",
            "dense/focal_retinanet_R_50_FPN_1x_coco.yaml",
            "dense/focal_fcos_R_50_FPN_gn_scratch_3x_lvis_v1.yaml",
            "--registration",
            "detectron2",
        ],
    ]
    for i, extra in enumerate(runs):
        work = tmp_path / ("work%d" % i)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "dev.check_configs",
                "-j",
                "2",
                "--fixtures",
                fx,
                "--output",
                str(work),
            ]
            + extra,
            capture_output=True,
            text=True,
            timeout=1800,  # 5-8 min quiet; generous for a loaded machine (no wall-clock goal here)
            env=env,
            cwd=ROOT,
        )
        assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
        with open(work / "check_configs.csv") as f:
            lines = f.read().splitlines()[1:]
        assert lines and all(",0," in ln for ln in lines)
