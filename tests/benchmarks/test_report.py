"""benchmarks/report.py (the machine header and tables every benchmark writes) and
``benchmark_lvis_eval --report`` at a tiny scale."""

import datetime
import os
import subprocess
import sys

import pytest

from benchmarks.report import (
    Table,
    cpu_model,
    machine_header,
    markdown_table,
    package_versions,
    write_report,
    write_table,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cpu_model_reads_the_first_model_name(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nvendor_id\t: X\nmodel name\t: Test CPU 9000 @ 1.0GHz\n\n"
        "processor\t: 1\nmodel name\t: Other\n"
    )
    assert cpu_model(str(info)) == "Test CPU 9000 @ 1.0GHz"
    assert cpu_model(str(tmp_path / "missing"))  # falls back to platform, never empty


def test_package_versions_marks_missing_packages():
    from importlib import metadata

    text = package_versions(("numpy", "no-such-package-lt"))
    assert text == f"numpy {metadata.version('numpy')}, no-such-package-lt -"


def test_machine_header_names_date_command_cpu_load_and_versions():
    now = datetime.datetime(2026, 1, 2, 3, 4, tzinfo=datetime.timezone.utc)
    text = machine_header("python -m benchmarks.x --n 3", (1.5, 0.25, 0.125), ("numpy",), now)
    lines = text.splitlines()
    assert lines[0] == "- Date: 2026-01-02 03:04 UTC"
    assert lines[1] == "- Command: `python -m benchmarks.x --n 3`"
    assert lines[2] == f"- CPU: {cpu_model()} ({os.cpu_count()} logical cores)"
    assert lines[3].startswith("- Load average (1 / 5 / 15 min): 1.50 / 0.25 / 0.12 at the start, ")
    assert lines[4].endswith(package_versions(("numpy",)))


def test_markdown_table_and_its_row_length_check():
    assert markdown_table(["a", "b"], [(1, "x"), (2.5, "y")]) == (
        "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 | y |"
    )
    with pytest.raises(ValueError, match="3 values for 2 columns"):
        markdown_table(["a", "b"], [(1, 2, 3)])


def test_write_report_writes_header_tables_and_notes(tmp_path):
    path = tmp_path / "sub" / "r.md"
    text = write_report(
        str(path),
        "cmd --x",
        [Table("First", ["n", "t"], [(1, "2 s")], ["a note"]), Table("", ["k"], [("v",)])],
        title="Bench",
    )
    assert path.read_text() == text
    assert text.startswith("# Bench\n\n- Date: ")
    assert "- Command: `cmd --x`" in text
    assert "### First\n\n| n | t |\n|---|---|\n| 1 | 2 s |\n\n- a note\n" in text
    assert text.endswith("| k |\n|---|\n| v |\n")
    one = write_table(str(tmp_path / "one.md"), ["c"], [(7,)], "cmd")
    assert one.endswith("| c |\n|---|\n| 7 |\n") and "- CPU: " in one


@pytest.mark.slow
def test_lvis_eval_report_command_at_a_tiny_scale(tmp_path):
    """The one command writes the header, the evaluation rows (one per ``--inference-ms``, with
    the time of evaluate() after the last image) and the pooled-AP row."""
    report = tmp_path / "lvis_eval.md"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.benchmark_lvis_eval",
        "--images",
        "3",
        "--tasks",
        "bbox",
        "--skip-lvis-api",
        "--pooled",
        "--authors-max-images",
        "0",
        "--inference-ms",
        "0",
        "1",
        "--cache",
        str(tmp_path / "cache"),
        "--report",
        str(report),
    ]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    text = report.read_text()
    assert "- Command: `python -m benchmarks.benchmark_lvis_eval --images 3 --tasks bbox" in text
    assert "- CPU: " in text and "- Load average (1 / 5 / 15 min): " in text
    rows = [line for line in text.splitlines() if line.startswith("| 3 |")]
    assert len(rows) == 3, text  # a row per inference pause, pooled AP once
    tight, paused, pooled = (r.split(" | ") for r in rows)
    columns = next(x for x in text.splitlines() if x.startswith("| images x 300 dets | task"))
    columns = columns.split(" | ")
    ours, after = columns.index("ours"), columns.index("evaluate() after the last image")
    for main, ms in ((tight, "0 ms"), (paused, "1 ms")):
        assert main[1:4] == ["bbox", "standard", ms], main
        assert main[ours].endswith(" s") and main[after].endswith(" s")  # in seconds
        assert float(main[after][:-2]) <= float(main[ours][:-2])
    assert pooled[1].endswith(" s") and pooled[7] == "-"  # the authors' were not run


def test_lvis_eval_inference_ms_rows_and_evaluate_after_the_last_image():
    """benchmark_lvis_eval --inference-ms: the pause of each row and evaluate() after the last
    image = ours - its process() part (medians of the row)."""
    from benchmarks.lvis_eval_tables import MAIN_COLUMNS, main_table

    def run(t, p):
        return {"time": t, "process": p, "read_masks": 0.0, "peak_gib": 1.0, "metrics": {}}

    rows = []
    for ms, ours in (
        (0.0, [run(1.5, 0.5), run(1.75, 0.5), run(1.25, 0.25)]),
        (10.0, [run(0.75, 0.5)]),
    ):
        med = {k: None for k in ("lvis", "ours_nojson")}
        med.update(ours=sorted(ours, key=lambda r: r["time"])[(len(ours) - 1) // 2])
        med["hotcoco"] = run(0.5, 0.0)
        rows.append(
            dict(
                n=5, task="bbox", protocol="standard", inference_ms=ms, med=med, runs={"ours": ours}
            )
        )
    table = main_table(rows, repeats=3)
    col = {c: i for i, c in enumerate(MAIN_COLUMNS)}
    tight, paused = table.rows
    assert tight[col["inference pause (not timed)"]] == "0 ms"
    assert paused[col["inference pause (not timed)"]] == "10 ms"
    assert tight[col["ours"]] == "1.50 s" and tight[col["ours: process()"]] == "0.50 s"
    assert tight[col["evaluate() after the last image"]] == "1.00 s"  # 1.5 - 0.5
    assert paused[col["evaluate() after the last image"]] == "0.25 s"  # 0.75 - 0.5
    assert paused[col["ours / raw hotcoco"]] == "1.50x"
    assert any("10 ms, every run" in note for note in table.notes)
