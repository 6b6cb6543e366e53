"""Every entry point honours every key (issue 22): ``tools/train_net.py`` (training and
``--eval-only``), ``tools/evaluate_results.py`` and library use build their evaluators with the one
builder; the final metrics appear once per dataset and task in the log."""

import json
import os

import pytest

from tests._data import lt_shapes_val_subset

from tests._data import ROOT

SOFTMAX = os.path.join(ROOT, "configs", "lt_shapes", "faster_rcnn_tiny_softmax.yaml")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, train_net_cli):
    """3 iterations of the tiny softmax Faster R-CNN through tools/train_net.py, evaluated (standard
    LVIS AP) on 16 lt_shapes val images registered on the command line."""
    tmp_path = tmp_path_factory.mktemp("trained_run")
    val_json, val_images = lt_shapes_val_subset(tmp_path / "val_small.json", 16)
    out = str(tmp_path / "out")
    flags = ["--config-file", SOFTMAX, "--register-dataset", "val_small", val_json, val_images]
    opts = [
        "DATASETS.TEST",
        "('val_small',)",
        "DATALOADER.NUM_WORKERS",
        "0",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "OUTPUT_DIR",
        out,
    ]
    train = train_net_cli(
        *flags, *opts, "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1", "TEST.EVAL_PERIOD", "0"
    )
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    return dict(flags=flags, opts=opts, out=out, val_json=val_json, proc=train)


@pytest.mark.slow
def test_final_metrics_appear_once_per_task_in_the_log(trained_run):
    """One table per dataset and task in log.txt and on stdout: no detectron2 ``copypaste:`` lines,
    no second "Final results" table."""
    with open(os.path.join(trained_run["out"], "log.txt")) as f:
        log = f.read()
    stdout = trained_run["proc"].stdout
    for text in (log, stdout):
        assert text.count("LVIS bbox results of val_small") == 1
        assert "copypaste" not in text
        assert "Final results" not in text
        # the table's header row (APr/APc/APf and the AP-by-group columns) appears once
        heads = [ln for ln in text.splitlines() if "APr" in ln and "AP[0,10)" in ln]
        assert len(heads) == 1, heads


@pytest.mark.slow
def test_eval_only_honours_fixed_and_pooled_ap_like_evaluate_results(
    trained_run, tmp_path, train_net_cli
):
    """train_net --eval-only TEST.LT.AP_PROTOCOL fixed TEST.LT.POOLED_AP True reports what
    tools/evaluate_results.py computes from the results file the run saved, and not standard AP."""
    out, val_json = trained_run["out"], trained_run["val_json"]
    folder = os.path.join(out, "inference", "val_small")
    with open(os.path.join(folder, "lvis_metrics.json")) as f:
        standard = json.load(f)
    assert standard["ap_protocol"] == "standard"

    fixed_args = ["TEST.LT.AP_PROTOCOL", "fixed", "TEST.LT.POOLED_AP", "True"]
    weights = os.path.join(out, "model_final.pth")
    ev = train_net_cli(
        *trained_run["flags"],
        "--eval-only",
        *trained_run["opts"],
        "MODEL.WEIGHTS",
        weights,
        *fixed_args,
    )
    assert ev.returncode == 0, ev.stdout[-3000:] + ev.stderr[-3000:]
    with open(os.path.join(folder, "lvis_metrics.json")) as f:
        fixed = json.load(f)
    # the protocol was applied: the metrics file says so and carries the pooled-AP keys
    assert fixed["ap_protocol"] == "fixed" and fixed["topk_per_class"] == 10000
    assert any(k.startswith("APpool") for k in fixed["results"]["bbox"])
    assert not any(k.startswith("APpool") for k in standard["results"]["bbox"])

    # the same numbers and keys from the results file the eval-only run saved
    from tools import evaluate_results

    again = str(tmp_path / "again")
    evaluate_results.main(
        [
            os.path.join(folder, "lvis_instances_results.json"),
            "--gt",
            val_json,
            "--config-file",
            SOFTMAX,
            "--output",
            again,
            *fixed_args,
        ]
    )
    with open(os.path.join(again, "lvis_metrics.json")) as f:
        offline = json.load(f)
    assert offline["results"] == fixed["results"]
    assert offline["ap_protocol"] == "fixed"
