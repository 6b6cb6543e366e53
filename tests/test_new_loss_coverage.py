"""A loss registered outside the test files is covered with no edit to them: the contract tests
(tests/test_loss_contract.py), the ROI head tests (tests/test_box_predictor.py) and the dense model
tests (tests/test_dense_models.py) take their methods from the loss registries at collection time.

A throwaway ROI loss and a throwaway dense loss are registered by a plugin loaded before collection
(as a new module of lt_detectron/losses would be), and a pytest run selecting them by name must run
and pass cases of every one of the three files."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ("test_loss_contract.py", "test_box_predictor.py", "test_dense_models.py")

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
def test_a_newly_registered_loss_is_picked_up_by_the_contract_and_head_tests(tmp_path):
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
    passed = re.findall(r"^PASSED tests/(test_\w+\.py)::(\S+)", res.stdout, re.M)
    assert passed and all("throwaway" in case for _, case in passed), passed
    for f in FILES:
        assert any(name == f for name, _ in passed), "no throwaway case ran in %s:\n%s" % (
            f,
            out[-3000:],
        )
