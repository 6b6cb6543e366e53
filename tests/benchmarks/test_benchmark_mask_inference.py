"""benchmarks/benchmark_mask_inference.py at a tiny size: both stages, both variants, each in
its own subprocess; the variants' masks agree."""

import pytest

from benchmarks import benchmark_mask_inference as bmi


@pytest.mark.slow
def test_benchmark_mask_inference_tiny(capsys):
    argv = ["--classes", "20", "--detections", "6", "--repeats", "2", "--size", "64"]
    rows = bmi.main(argv + ["--proposals", "10", "--model-repeats", "1"])
    text = capsys.readouterr().out
    assert [(r[0], r[1]) for r in rows] == [
        ("head", "all"),
        ("head", "selected"),
        ("model", "all"),
        ("model", "selected"),
    ]
    for stage, variant, n, med, cpu, runs, peak, growth, diff in rows:
        assert n == 6 and med > 0 and cpu > 0 and peak > 0 and growth >= 0
        assert runs == (2 if stage == "head" else 1)
        assert diff <= 1e-6
    assert text.count("| head |") == 2 and text.count("| model |") == 2
