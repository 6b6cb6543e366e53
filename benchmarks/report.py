"""Benchmark results as a markdown file with the machine beside the numbers.

Every benchmark that writes a results file uses the same header (:func:`machine_header`): the UTC
date, the exact command, the CPU model and core count, the load average when the benchmark started
and when it ended (the numbers mean little on a busy machine), the Python version and the versions
of the packages that decide the timings. Tables are plain markdown (:func:`markdown_table`);
:func:`write_report` writes the header and any number of tables, :func:`write_table` one table.

  from benchmarks.report import Table, write_report
  load0 = os.getloadavg()
  ...  # measure
  write_report(path, command, [Table("Boxes", columns, rows)], load_at_start=load0)
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from importlib import metadata
from typing import NamedTuple, Optional, Sequence, Tuple

__all__ = [
    "Table",
    "cpu_model",
    "package_versions",
    "machine_header",
    "markdown_table",
    "write_report",
    "write_table",
    "command_line",
]

DEFAULT_PACKAGES = ("torch", "numpy", "hotcoco", "lvis", "polars")


class Table(NamedTuple):
    """One markdown table of a report: a title (a ``###`` heading; empty: none), the column names,
    the rows (any values, written with ``str``) and notes written under it as a list."""

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence]
    notes: Sequence[str] = ()


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (``/proc/cpuinfo``'s first ``model name``), else ``platform``'s."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def package_versions(packages: Sequence[str] = DEFAULT_PACKAGES) -> str:
    """``"torch 2.5.1, numpy 2.1.3, ..."``; a package that is not installed reads ``-``."""
    out = []
    for name in packages:
        try:
            out.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name} -")
    return ", ".join(out)


def _load(load: Tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in load)


def machine_header(
    command: str,
    load_at_start: Optional[Tuple[float, float, float]] = None,
    packages: Sequence[str] = DEFAULT_PACKAGES,
    now: Optional[datetime.datetime] = None,
) -> str:
    """Markdown lines that say where, when and how the numbers below them were measured.

    ``load_at_start``: ``os.getloadavg()`` taken before the measurements; the load at the time of
    the call is written beside it."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    load_end = os.getloadavg()
    load = (
        f"{_load(load_at_start)} at the start, {_load(load_end)} at the end"
        if load_at_start is not None
        else f"{_load(load_end)}"
    )
    return "\n".join(
        [
            f"- Date: {now.strftime('%Y-%m-%d %H:%M UTC')}",
            f"- Command: `{command}`",
            f"- CPU: {cpu_model()} ({os.cpu_count()} logical cores)",
            f"- Load average (1 / 5 / 15 min): {load}",
            f"- Python {platform.python_version()}; {package_versions(packages)}",
        ]
    )


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A markdown table; a row must have one value per column."""
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"a row of {len(row)} values for {len(columns)} columns: {row!r}")
    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def write_report(
    path: str,
    command: str,
    tables: Sequence[Table],
    title: str = "",
    load_at_start: Optional[Tuple[float, float, float]] = None,
) -> str:
    """Write the :func:`machine_header` and the tables to ``path`` (markdown); returns the text."""
    parts = [f"# {title}\n" if title else "", machine_header(command, load_at_start), ""]
    for t in tables:
        if t.title:
            parts += [f"### {t.title}", ""]
        parts += [markdown_table(t.columns, t.rows), ""]
        if t.notes:
            parts += [f"- {n}" for n in t.notes] + [""]
    text = "\n".join(p for p in parts if p is not None).lstrip("\n")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return text


def write_table(
    path: str,
    columns: Sequence[str],
    rows: Sequence[Sequence],
    command: str,
    title: str = "",
    load_at_start: Optional[Tuple[float, float, float]] = None,
) -> str:
    """:func:`write_report` of one table."""
    return write_report(path, command, [Table("", columns, rows)], title, load_at_start)


def command_line() -> str:
    """How this process was started, as ``python -m package.module args`` when run with ``-m``."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    head = f"python -m {spec.name}" if spec is not None and spec.name else f"python {sys.argv[0]}"
    return " ".join([head] + sys.argv[1:])
