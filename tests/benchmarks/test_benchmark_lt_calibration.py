"""benchmarks/benchmark_lt.py calibration rows (``<m>_norcal``, ``<m>_logit_adjustment``,
``<m>_tau_norm``): eval-only of the trained ``<m>`` run of the same seed, compared with it."""

import subprocess
from pathlib import Path

from benchmarks import benchmark_lt as lt
from benchmarks import lt_results as res


def test_calibration_rows_evaluate_the_trained_run_of_the_same_seed(tmp_path, monkeypatch):
    assert res.calibration_of("softmax_norcal") == ("softmax", "norcal")
    assert res.calibration_of("sigmoid_tau_norm") == ("sigmoid", "tau_norm")
    assert res.calibration_of("softmax") is None and res.calibration_of("norcal") is None
    assert res.baseline_of("sigmoid_logit_adjustment") == "sigmoid"
    assert res.baseline_of("softmax_norcal") == "softmax"
    assert lt.config_for("sigmoid_norcal") == lt.config_for("sigmoid")
    # the trained method is added before its calibration rows
    assert lt.order_methods(["softmax_norcal", "sigmoid_tau_norm"]) == [
        "softmax",
        "softmax_norcal",
        "sigmoid",
        "sigmoid_tau_norm",
    ]
    opts = lt.method_opts("softmax_norcal", tmp_path, seed=2, calibration_values={"norcal": 0.3})
    assert opts[opts.index("MODEL.WEIGHTS") + 1] == str(
        tmp_path / "softmax" / "seed2" / "model_final.pth"
    )
    assert opts[opts.index("TEST.LT.CALIBRATION") + 1] == "norcal"
    assert opts[opts.index("TEST.LT.CALIBRATION_GAMMA") + 1] == "0.3"
    opts = lt.method_opts("softmax_tau_norm", tmp_path, seed=0)
    assert opts[opts.index("TEST.LT.CALIBRATION_TAU") + 1] == "1.0"

    seen = []

    def fake_call(cmd, **kw):  # no training: record the command
        seen.append(cmd)
        return 1

    monkeypatch.setattr(subprocess, "call", fake_call)
    try:
        lt.run_method("softmax_logit_adjustment", tmp_path, seed=1, convergence=True)
    except RuntimeError:
        pass  # nothing was evaluated
    cmd = seen[0]
    assert "--eval-only" in cmd and "TEST.EVAL_PERIOD" not in cmd
    assert Path(cmd[cmd.index("--config-file") + 1]) == lt.config_for("softmax")
    assert cmd[cmd.index("TEST.LT.CALIBRATION_TAU") + 1] == "1.0"


def test_an_eval_only_run_is_collected_from_the_evaluators_metrics_file(tmp_path):
    """A calibration row is an ``--eval-only`` run: no ``metrics.json`` (training writes it), only
    the evaluator's ``inference/<dataset>/<protocol>_metrics.json``; its metrics must be read."""
    import json
    import math

    out = tmp_path / "inference" / "lt_shapes_val"
    out.mkdir(parents=True)
    (out / "lvis_metrics.json").write_text(
        json.dumps(
            {
                "dataset": "lt_shapes_val",
                "results": {"bbox": {"AP": 60.25, "APr": 37.0, "APl": None}},
            }
        )
    )
    run = res.collect_run(tmp_path)
    assert run["metrics"]["AP"] == 60.25 and run["metrics"]["APr"] == 37.0
    assert math.isnan(run["metrics"]["APl"])
    assert run["curve"] == []
