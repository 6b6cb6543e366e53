"""Quick checks of the benchmark tools (no training): loss benchmark at a tiny scale, the lt benchmark's
parsing / table / plot on fake run folders, and (slow) one train step for two methods."""

import csv
import importlib.util
import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_losses_tiny(capsys):
    bl = _load("benchmark_losses")
    out = bl.main(["--rows", "64", "--cols", "11", "--repeats", "1", "--warmup", "0"])
    text = capsys.readouterr().out
    assert "machine:" in text and "torch" in text
    for name in list(bl.BENCHMARKS) + list(bl.DENSE_BENCHMARKS):
        assert "| %s |" % name in text, name
    assert set(out[("custom", "roi")]) == set(bl.BENCHMARKS)
    assert set(out[("custom", "dense")]) == set(bl.DENSE_BENCHMARKS)
    assert all(v > 0 and math.isfinite(v) for res in out.values() for v in res.values())
    assert "| bags | 64 x " in text  # BAGS' own logit count (C + groups + 2)


def test_benchmark_losses_scales_and_counts():
    bl = _load("benchmark_losses")
    assert bl.SCALES["lvis"][:2] == (8192, 1204) and bl.SCALES["embedded"][:2] == (512, 25)
    lvis = bl.class_counts(1203)
    assert lvis.numel() == 1203 and int(lvis.min()) >= 1
    from lt_detectron.losses import BAGSLayout

    assert BAGSLayout(lvis).num_logits == 1209  # the real LVIS v1 layout: 4 groups


def _fake_run(root, method, ap, counts, group_aps, train_s=61):
    run = root / method
    inf = run / "inference" / "lt_shapes_val"
    inf.mkdir(parents=True)
    with open(inf / "lvis_per_category_bbox.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["category_id", "name", "frequency", "train_instances", "train_images", "AP"])
        for i, (n, a) in enumerate(zip(counts, ap)):
            w.writerow(
                [i + 1, "c%d" % i, "rcf"[min(i, 2)], n, n, "nan" if a is None else "%.4f" % a]
            )
    lines = [
        {"iteration": 19, "total_loss": 1.0},
        {"iteration": 19, "bbox/AP": 1.0, "bbox/AP50": 2.0},  # an earlier evaluation
        {"iteration": 39, "total_loss": 0.5},
        dict(
            {
                "iteration": 39,
                "bbox/AP": 10.0,
                "bbox/AP50": 20.0,
                "bbox/APr": float("nan"),
                "bbox/APc": 5.0,
                "bbox/APf": 12.5,
            },
            **{"bbox/" + k: v for k, v in group_aps.items()},
        ),
    ]
    (run / "metrics.json").write_text("\n".join(json.dumps(d) for d in lines) + "\n")
    (run / "log.txt").write_text(
        "[d2.utils.events]: Overall training speed: 38 iterations in 0:01:%02d (1.6 s / it)\n"
        % (train_s - 60)
    )
    return run


def test_benchmark_lt_parsing_table_and_plot(tmp_path):
    lt = _load("benchmark_lt")
    counts = [100, 20, 3]
    _fake_run(
        tmp_path, "softmax", [30.0, 10.0, None], counts, {"AP[0,10)": 1.5, "AP[100,1000)": 30.0}
    )
    _fake_run(
        tmp_path, "fcos_focal", [25.0, 12.0, 4.0], counts, {"AP[0,10)": 4.0, "AP[10,100)": 12.0}
    )
    res = {m: lt.collect_run(tmp_path / m) for m in ("softmax", "fcos_focal")}
    r = res["softmax"]
    assert r["metrics"]["AP"] == 10.0 and r["metrics"]["AP50"] == 20.0  # the LAST evaluation
    assert r["train_time_s"] == 61.0
    assert [row["train_instances"] for row in r["per_category"]] == counts
    assert math.isnan(r["per_category"][2]["AP"])

    table = lt.format_table(res)
    lines = table.splitlines()
    assert lines[0].startswith(
        "| method | AP | AP50 | APr | APc | APf | AP[0,10) | AP[10,100) | AP[100,1000) |"
    )
    assert lines[0].endswith("| train time |")
    assert len(lines) == 4
    assert lines[2].startswith(
        "| softmax | 10.00 | 20.00 | nan | 5.00 | 12.50 | 1.50 | - | 30.00 | 1:01 |"
    )

    aps, cnt = lt.per_class_ap_arrays(res)
    assert list(cnt) == counts and aps["fcos_focal"][2] == 4.0 and math.isnan(aps["softmax"][2])

    table2, md, png = lt.write_report(res, tmp_path, header="# test")
    assert table2 == table
    assert open(md).read().startswith("# test") and "| fcos_focal |" in open(md).read()
    assert png and os.path.getsize(png) > 0


def test_benchmark_lt_methods_and_resume(tmp_path, capsys):
    lt = _load("benchmark_lt")
    defaults = lt.default_methods()
    assert defaults[0] == "softmax" and "bags_decoupled" not in defaults
    assert any(m.startswith("fcos_") for m in defaults)
    assert all(lt.config_for(m).is_file() for m in defaults)
    assert lt.order_methods(["bags_decoupled", "eqlv2"]) == ["softmax", "bags_decoupled", "eqlv2"]
    opts = lt.method_opts("bags_decoupled", tmp_path, max_iter=5)
    assert opts[opts.index("MODEL.WEIGHTS") + 1] == str(tmp_path / "softmax" / "model_final.pth")
    assert opts[opts.index("SOLVER.MAX_ITER") + 1] == "5"
    # a finished run is skipped (no training), and the report is written from it
    run = _fake_run(tmp_path, "softmax", [30.0, 10.0, None], [100, 20, 3], {"AP[0,10)": 1.5})
    (run / lt.RESULT_FILE).write_text(json.dumps({"method": "softmax", "train_time_s": 61.0}))
    lt.main(["--methods", "softmax", "--output-root", str(tmp_path)])
    out = capsys.readouterr().out
    assert "skipped" in out and "| softmax | 10.00 |" in out
    assert (tmp_path / "lt_benchmark.md").is_file() and (tmp_path / "ap_vs_instances.png").is_file()


@pytest.mark.slow
def test_benchmark_train_step_two_methods(capsys):
    ts = _load("benchmark_train_step")
    res = ts.main(["--methods", "softmax,fcos_focal", "--steps", "1", "--warmup", "0"])
    assert set(res) == {"softmax", "fcos_focal"} and all(v > 0 for v in res.values())
    assert "| fcos_focal |" in capsys.readouterr().out
