"""Quick checks of the benchmark tools (no training): loss benchmark at a tiny scale, the lt benchmark's
parsing / table / plot on fake run folders, and (slow) one train step for two methods."""

import csv
import importlib
import json
import math

import pytest


def _load(name):
    return importlib.import_module("benchmarks." + name)


def test_benchmark_losses_tiny(capsys):
    bl = _load("benchmark_losses")
    out = bl.main(["--rows", "64", "--cols", "11", "--repeats", "1", "--warmup", "0"])
    text = capsys.readouterr().out
    assert "machine:" in text and "torch" in text
    roi, dense = bl.roi_benchmarks(), bl.dense_benchmarks()
    for name in list(roi) + list(dense):
        assert "| %s |" % name in text, name
    assert set(out[("custom", "roi")]) == set(roi)
    assert set(out[("custom", "dense")]) == set(dense)
    assert all(v > 0 and math.isfinite(v) for res in out.values() for v in res.values())
    from lt_detectron.losses import BAGSLayout

    # BAGS' own logit count (C + groups + 2), from its layout of the counts of C = 10 classes
    assert "| bags | 64 x %d |" % BAGSLayout(bl.class_counts(10)).num_logits in text


def _registry_rows():
    from lt_detectron.losses import DENSE_LOSS_REGISTRY, ROI_LOSS_REGISTRY

    return [("roi", n) for n in ROI_LOSS_REGISTRY.names()] + [
        ("dense", n) for n in DENSE_LOSS_REGISTRY.names()
    ]


@pytest.mark.parametrize("kind,name", _registry_rows(), ids=["%s-%s" % r for r in _registry_rows()])
def test_benchmark_rows_come_from_the_loss_registries(kind, name, capsys):
    """Every registered loss is a row of the loss benchmark, built through build_roi_loss /
    build_dense_loss (an instance of the registered class, on logits as wide as it asks for), and
    ``--only <name>`` runs it next to the reference at a tiny scale."""
    import torch

    from lt_detectron.losses import DENSE_LOSS_REGISTRY, ROI_LOSS_REGISTRY

    bl = _load("benchmark_losses")
    table = bl.roi_benchmarks() if kind == "roi" else bl.dense_benchmarks()
    registry = ROI_LOSS_REGISTRY if kind == "roi" else DENSE_LOSS_REGISTRY
    cols = 11 if kind == "roi" else 10  # ROI: C = 10 classes + background; dense: C channels
    step = table[name](32, cols, "cpu", torch.float32)
    assert type(step.loss) is registry.get(name)
    width = step.loss.classifier_spec().num_logits if kind == "roi" else 10
    assert step.shape == (32, width)
    argv = ["--rows", "32", "--cols", "11", "--repeats", "1", "--warmup", "0", "--only", name]
    out = bl.main(argv + (["--no-dense"] if kind == "roi" else []))
    res = out[("custom", kind)]
    assert set(res) == {name, bl.ROI_REFERENCE if kind == "roi" else bl.DENSE_REFERENCE}
    assert res[name] > 0 and math.isfinite(res[name])
    assert "| %s | 32 x %d |" % (name, width) in capsys.readouterr().out


def test_benchmark_goals_name_rows():
    """A goal belongs to a row the tables have (no stale goal of a renamed or removed row)."""
    bl = _load("benchmark_losses")
    assert set(bl.ROI_GOALS) <= set(bl.roi_benchmarks())
    assert set(bl.DENSE_GOALS) <= set(bl.dense_benchmarks())


def test_benchmark_losses_scales_and_counts():
    bl = _load("benchmark_losses")
    assert bl.SCALES["lvis"][:2] == (8192, 1204) and bl.SCALES["embedded"][:2] == (512, 25)
    lvis = bl.class_counts(1203)
    assert lvis.numel() == 1203 and int(lvis.min()) >= 1
    from lt_detectron.losses import BAGSLayout

    assert BAGSLayout(lvis).num_logits == 1209  # the real LVIS v1 layout: 4 groups


def _fake_run(root, method, ap, counts, group_aps, train_s=61, seed=0, final=10.0):
    run = root / method / ("seed%d" % seed)
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
                "bbox/AP": final,
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


def _finished(lt, run, method, seed):
    res = dict(lt.collect_run(run), method=method, seed=seed, threads=1, extra_opts=[])
    (run / lt.RESULT_FILE).write_text(json.dumps(res))
    return res


def test_benchmark_lt_parsing(tmp_path):
    lt = _load("benchmark_lt")
    counts = [100, 20, 3]
    run = _fake_run(
        tmp_path, "softmax", [30.0, 10.0, None], counts, {"AP[0,10)": 1.5, "AP[100,1000)": 30.0}
    )
    r = lt.collect_run(run)
    assert r["metrics"]["AP"] == 10.0 and r["metrics"]["AP50"] == 20.0  # the LAST evaluation
    assert r["curve"] == [(19, 1.0), (39, 10.0)]  # every evaluation: the convergence table
    assert r["train_time_s"] == 61.0
    assert [row["train_instances"] for row in r["per_category"]] == counts
    assert math.isnan(r["per_category"][2]["AP"])


def test_seed_statistics_and_verdicts():
    res = _load("lt_results")
    mean, std, n = res.mean_std([1.0, 2.0, 3.0, float("nan")])
    assert (mean, n) == (2.0, 3) and std == pytest.approx(1.0)  # sample std, nan dropped
    assert math.isnan(res.mean_std([5.0])[1])
    # combined std sqrt(1 + 1) = 1.414: a difference of 1.0 is noise, 2.0 a gain, -2.0 a loss
    assert res.verdict((3.0, 1.0, 3), (2.0, 1.0, 3))[2] == "within noise"
    d, comb, word = res.verdict((4.0, 1.0, 3), (2.0, 1.0, 3))
    assert (d, word) == (2.0, "gain") and comb == pytest.approx(math.sqrt(2))
    assert res.verdict((0.0, 1.0, 3), (2.0, 1.0, 3))[2] == "loss"
    assert res.verdict((9.0, float("nan"), 1), (2.0, 1.0, 3))[2] == "one seed: no verdict"
    assert res.baseline_of("ecm") == "softmax" and res.baseline_of("softmax") is None
    assert res.baseline_of("fcos_bofl") == "fcos_focal" and res.baseline_of("fcos_focal") is None
    assert res.baseline_of("centernet_bofl") == "centernet_focal"
    assert res.baseline_of("sigmoid_bofl") == "sigmoid"
    assert res.method_order(["fcos_bofl", "ecm", "fcos_focal", "softmax"]) == [
        "softmax",
        "ecm",
        "fcos_focal",
        "fcos_bofl",
    ]


def test_benchmark_lt_seeds_csv_report_and_plot(tmp_path):
    lt = _load("benchmark_lt")
    res = _load("lt_results")
    counts = [100, 20, 3]
    runs = []
    # softmax: AP 10, 12, 14 (std 2); ecm: 20, 21, 22 (std 1): +10 > sqrt(5): a gain
    for seed, (a, b) in enumerate([(10.0, 20.0), (12.0, 21.0), (14.0, 22.0)]):
        for m, ap, per in (("softmax", a, [30.0, 10.0, None]), ("ecm", b, [31.0, 12.0, None])):
            run = _fake_run(tmp_path, m, per, counts, {"AP[0,10)": 1.5}, seed=seed, final=ap)
            runs.append(_finished(lt, run, m, seed))
    run = _fake_run(tmp_path, "fcos_focal", [5.0, 2.0, 1.0], counts, {}, train_s=90)
    runs.append(_finished(lt, run, "fcos_focal", 0))
    out = tmp_path / "results"
    res.save_runs(out, runs)
    loaded = res.load_runs(out)
    assert list(loaded) == ["softmax", "ecm", "fcos_focal"]
    assert [r["AP"] for r in loaded["ecm"]] == [20.0, 21.0, 22.0]
    assert loaded["softmax"][1]["curve"] == [(19, 1.0), (39, 12.0)]
    aps, cnt = res.load_per_class(out)
    assert list(cnt) == counts and aps["ecm"].shape == (3, 3) and math.isnan(aps["ecm"][0, 2])
    # re-saving a (method, seed) replaces it
    runs[0]["metrics"] = dict(runs[0]["metrics"], AP=11.0)
    res.save_runs(out, [runs[0]])
    assert [r["AP"] for r in res.load_runs(out)["softmax"]] == [11.0, 12.0, 14.0]

    md = lt.main(["--report", "--results-dir", str(out)])
    text = (out / "lt_benchmark.md").read_text()
    assert text == md
    assert "| ecm | 0,1,2 | 21.00 ± 1.00 |" in text
    assert "| softmax | 0,1,2 | 12.33 ± 1.53 |" in text
    assert "| ecm | softmax | +8.67 (± 1.83) | gain |" in text
    assert "| fcos_focal | 0 | 10.00 |" in text and "1:30 | 1.48 |" in text  # 90 s / 61 s
    assert "AP @ iter 19 | AP @ iter 39" in text
    assert f"--report --results-dir {out.resolve()}`" in text  # the folder it was made from
    png = out / "ap_vs_instances.png"
    assert png.is_file() and png.stat().st_size > 10_000


def test_benchmark_lt_methods_and_resume(tmp_path, capsys):
    lt = _load("benchmark_lt")
    defaults = lt.default_methods()
    assert defaults[0] == "softmax" and not [m for m in defaults if m.endswith("_decoupled")]
    assert any(m.startswith("fcos_") for m in defaults)
    assert all(lt.config_for(m).is_file() for m in defaults)
    assert lt.order_methods(["bags_decoupled", "eqlv2"]) == ["softmax", "bags_decoupled", "eqlv2"]
    # cRT / LWS start from the softmax run as BAGS does
    assert lt.order_methods(["lws_decoupled", "softmax"]) == ["softmax", "lws_decoupled"]
    crt = lt.method_opts("crt_decoupled", tmp_path, max_iter=5, seed=1)
    assert crt[crt.index("MODEL.WEIGHTS") + 1] == str(
        tmp_path / "softmax" / "seed1" / "model_final.pth"
    )
    assert lt.parse_seeds("3") == [0, 1, 2] and lt.parse_seeds("0,4") == [0, 4]
    opts = lt.method_opts("bags_decoupled", tmp_path, max_iter=5, seed=2)
    assert opts[opts.index("MODEL.WEIGHTS") + 1] == str(
        tmp_path / "softmax" / "seed2" / "model_final.pth"
    )  # the softmax run of the same seed
    assert opts[opts.index("SEED") + 1] == "2" and opts[opts.index("SOLVER.MAX_ITER") + 1] == "5"
    assert opts[opts.index("OUTPUT_DIR") + 1] == str(tmp_path / "bags_decoupled" / "seed2")
    # finished runs are skipped (no training), and the report is written from them
    for seed in (0, 1):
        run = _fake_run(tmp_path, "softmax", [30.0, 10.0, None], [100, 20, 3], {}, seed=seed)
        _finished(lt, run, "softmax", seed)
    lt.main(["--methods", "softmax", "--seeds", "2", "--output-root", str(tmp_path)])
    out = capsys.readouterr().out
    assert out.count("skipped") == 2 and "| softmax | 0,1 | 10.00 ± 0.00 |" in out
    for f in ("lt_benchmark.md", "ap_vs_instances.png", "lt_runs.csv", "lt_per_class_ap.csv"):
        assert (tmp_path / f).is_file(), f
    with pytest.raises(FileNotFoundError, match="lt_runs.csv"):
        lt.main(["--report", "--results-dir", str(tmp_path / "empty")])


def test_every_method_keeps_one_colour():
    from lt_detectron.visualization.plots import METHOD_COLORS, method_color, method_style

    losses = [k for k in METHOD_COLORS if k not in ("softmax", "focal")]
    assert len({METHOD_COLORS[k] for k in losses}) == len(losses)  # distinct, baselines black
    assert method_color("softmax") != method_color("fcos_bofl_wf")
    assert (
        method_color("fcos_bofl") == method_color("centernet_bofl") == method_color("sigmoid_bofl")
    )
    assert method_style("fcos_bofl")[1:] != method_style("centernet_bofl")[1:]  # marker / line
    assert method_color("my_new_loss") == method_color("my_new_loss")  # fixed, not a cycle


@pytest.mark.slow
def test_benchmark_train_step_two_methods(capsys):
    ts = _load("benchmark_train_step")
    res = ts.main(["--methods", "softmax,fcos_focal", "--steps", "1", "--warmup", "0"])
    assert set(res) == {"softmax", "fcos_focal"} and all(v > 0 for v in res.values())
    assert "| fcos_focal |" in capsys.readouterr().out
