"""benchmark_mask_eval at a tiny scale: its workers (ours from ROI-level Instances, the old pasted
path, raw hotcoco, lvis-api on the same RLEs) run and agree on the metrics."""

import numpy as np

from benchmarks import benchmark_mask_eval as bench


def test_benchmark_mask_eval_tiny(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "POOL", 64)
    gt_path, det_path = bench.make_data(str(tmp_path), 3, 40)
    assert bench.make_data(str(tmp_path), 3, 40) == (gt_path, det_path)  # cached
    from lt_detectron.evaluation import common, roi_masks

    kernels, geometry = roi_masks._roi_rle, common._coco_rle
    runs = {
        w: bench.run_worker(w, gt_path, det_path)
        for w in ("ours", "ours_numpy", "pasted", "hotcoco", "lvis")
    }
    runs["ours_direct"] = bench.run_worker("ours_direct", gt_path, det_path, inference_ms=1.0)
    for w, r in runs.items():
        assert r["time"] > 0 and r["peak_gib"] > 0, w
    # "ours_numpy" put the kernels back for what follows
    assert roi_masks._roi_rle is kernels and common._coco_rle is geometry
    ours = runs["ours"]["metrics"]
    assert ours["AP"] > 0  # the generated detections do match the ground truth
    for w in ("ours_numpy", "ours_direct", "pasted", "hotcoco", "lvis"):
        for k in bench.METRICS:
            assert np.isclose(ours[k], runs[w]["metrics"][k], atol=1e-9), (w, k)


def test_benchmark_mask_eval_report(tmp_path, monkeypatch):
    """One command writes the table under the machine header (CPU, load, command)."""
    monkeypatch.setattr(bench, "POOL", 64)
    report = tmp_path / "mask_eval.md"
    bench.main(
        ["--images", "2", "--dets", "20", "--skip-lvis-api", "--numpy-encoder", "--direct"]
        + ["--inference-ms", "1", "--cache", str(tmp_path / "cache"), "--report", str(report)]
    )
    text = report.read_text()
    assert "CPU" in text and "Load average" in text and "| 2 x 20, 1 ms forward |" in text
    assert "NumPy / ours" in text and "direct / ours" in text and "every run (s)" in text


def test_benchmark_mask_eval_profile(tmp_path, monkeypatch, capsys):
    """``--profile`` prints a cProfile of ours instead of the table."""
    monkeypatch.setattr(bench, "POOL", 64)
    bench.main(["--images", "2", "--dets", "20", "--cache", str(tmp_path), "--profile"])
    out = capsys.readouterr().out
    assert "cProfile of ours, 2 images x 20 detections" in out and "tottime" in out
