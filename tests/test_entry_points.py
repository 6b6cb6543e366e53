"""Every entry point honours every key (issue 22): ``tools/train_net.py`` (training and
``--eval-only``), ``tools/evaluate_results.py`` and library use build their evaluators with the one
builder; the final metrics appear once per dataset and task in the log."""

import json
import os
import subprocess
import sys

import pytest

from lt_detectron.data.embedded import get_lt_shapes, lt_shapes_paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
SOFTMAX = os.path.join(ROOT, "configs", "lt_shapes", "faster_rcnn_tiny_softmax.yaml")


def _small_val(tmp_path, n=16):
    """The first ``n`` lt_shapes val images as their own LVIS-format json."""
    paths = lt_shapes_paths(get_lt_shapes())
    with open(paths["val_json"]) as f:
        data = json.load(f)
    keep = {im["id"] for im in data["images"][:n]}
    data["images"] = [im for im in data["images"] if im["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    out = str(tmp_path / "val_small.json")
    with open(out, "w") as f:
        json.dump(data, f)
    return out, paths["val_images"]


def _train_net(*argv, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, TRAIN_NET, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """3 iterations of the tiny softmax Faster R-CNN through tools/train_net.py, evaluated (standard
    LVIS AP) on 16 lt_shapes val images registered on the command line."""
    tmp_path = tmp_path_factory.mktemp("trained_run")
    val_json, val_images = _small_val(tmp_path)
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
    train = _train_net(
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
def test_eval_only_honours_fixed_and_pooled_ap_like_evaluate_results(trained_run, tmp_path):
    """train_net --eval-only TEST.LT.AP_PROTOCOL fixed TEST.LT.POOLED_AP True reports what
    tools/evaluate_results.py computes from the results file the run saved, and not standard AP."""
    out, val_json = trained_run["out"], trained_run["val_json"]
    folder = os.path.join(out, "inference", "val_small")
    with open(os.path.join(folder, "lvis_metrics.json")) as f:
        standard = json.load(f)
    assert standard["ap_protocol"] == "standard"

    fixed_args = ["TEST.LT.AP_PROTOCOL", "fixed", "TEST.LT.POOLED_AP", "True"]
    weights = os.path.join(out, "model_final.pth")
    ev = _train_net(
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
