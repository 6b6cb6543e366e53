"""A new method is covered with no edit outside losses/, configs/ and its own files
(docs/adding_a_method.md): the contract tests (tests/losses/test_loss_contract.py), the ROI head tests
(tests/modeling/test_box_predictor.py), the dense model tests (tests/modeling/test_dense_models.py) and the loss
benchmark (tests/benchmarks/test_benchmarks.py: a row per registered loss, run at a tiny scale) take their
methods from the loss registries at collection time, and the config sweep (dev/check_configs.py)
finds its yaml files under configs/.

A throwaway ROI loss and a throwaway dense loss are registered by a plugin loaded before collection
(as a new module of lt_detectron/losses would be), and a pytest run selecting them by name must run
and pass cases of every one of the four files. Throwaway leaf configs written into a temporary
configs tree are listed by the sweep, each as its own (architecture, loss) family."""

import os
import re
import subprocess
import sys

import pytest

from tests._data import ROOT

FILES = (
    "losses/test_loss_contract.py",
    "modeling/test_box_predictor.py",
    "modeling/test_dense_models.py",
    "benchmarks/test_benchmarks.py",
)

PLUGIN = '''
from lt_detectron.losses import (
    DENSE_LOSS_REGISTRY,
    ROI_LOSS_REGISTRY,
    FocalDenseLoss,
    SoftmaxROILoss,
)


@ROI_LOSS_REGISTRY.register("throwaway")
class ThrowawayROILoss(SoftmaxROILoss):
    """Softmax cross-entropy under a name no test file knows."""


@DENSE_LOSS_REGISTRY.register("throwaway")
class ThrowawayDenseLoss(FocalDenseLoss):
    """Focal loss under a name no test file knows."""
'''


@pytest.mark.slow
def test_a_newly_registered_loss_is_picked_up_by_the_contract_head_and_benchmark_tests(tmp_path):
    (tmp_path / "throwaway_loss_plugin.py").write_text(PLUGIN)
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT, os.environ.get("PYTHONPATH", "")]),
    )
    cmd = [sys.executable, "-m", "pytest", "-p", "throwaway_loss_plugin", "-p", "no:cacheprovider"]
    cmd += ["-q", "-rA", "-m", "not slow", "-k", "throwaway"]
    cmd += [os.path.join("tests", f) for f in FILES]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    passed = re.findall(r"^PASSED tests/(\w+/test_\w+\.py)::(\S+)", res.stdout, re.M)
    assert passed and all("throwaway" in case for _, case in passed), passed
    for f in FILES:
        assert any(name == f for name, _ in passed), "no throwaway case ran in %s:\n%s" % (
            f,
            out[-3000:],
        )


def test_a_new_methods_configs_are_picked_up_by_the_config_sweep(tmp_path):
    from dev import check_configs as cc

    leaves = {
        "configs/lvis_v1/throwaway_mask_rcnn_R_50_FPN_1x.yaml": ("mask_rcnn", "throwaway"),
        "configs/coco_lt/throwaway_faster_rcnn_R_50_FPN_1x.yaml": ("faster_rcnn", "throwaway"),
        "configs/dense/throwaway_fcos_R_50_FPN_1x_lvis_v1.yaml": ("fcos", "throwaway"),
    }
    for rel in leaves:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(
            '_BASE_: "Base-X.yaml"\nMODEL:\n  LT:\n    ROI_LOSS: throwaway\n'
        )
    (tmp_path / "configs/lvis_v1/Base-Throwaway.yaml").write_text("MODEL: {}\n")  # a base: no run

    configs = cc.list_configs(root=str(tmp_path))
    assert sorted(configs) == sorted(os.path.normpath(r) for r in leaves)
    families = cc.pick_families(configs)
    assert sorted(cc.family(c) for c in families) == sorted(leaves.values())
    assert cc.list_configs(["*throwaway_fcos*"], root=str(tmp_path)) == [
        os.path.normpath("configs/dense/throwaway_fcos_R_50_FPN_1x_lvis_v1.yaml")
    ]
