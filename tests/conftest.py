"""Fixtures shared by the test files. Plain helpers live in ``tests/_data.py`` (datasets written by
tests) and ``lt_detectron.utils.testing`` (configs, tiny models, real-format fixtures).

The everyday loop is ``pytest -m "not slow" -n 2`` (see pytest.ini); ``slow`` marks every test that
trains, starts processes (gloo ranks, ``launch``, a command line run) or takes more than a few
seconds."""

import logging
import os
import subprocess
import sys

import pytest

from tests._data import lt_shapes_val_subset, unique_name, unregister

from tests._data import ROOT


class LoggerRecords(logging.Handler):
    """Collects the messages (WARNING and above) of one logger while in a ``with`` block, whether or
    not the logger propagates to the root (``setup_lt_logger`` may have stopped it): ``.records``."""

    def __init__(self, name):
        super().__init__(logging.WARNING)
        self.records = []
        self.logger = logging.getLogger(name)

    def emit(self, record):
        self.records.append(record.getMessage())

    def __enter__(self):
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)


@pytest.fixture
def logger_warnings():
    """``with logger_warnings("lt_detectron.losses.ecm") as rec: ...``; then ``rec.records``."""
    return LoggerRecords


@pytest.fixture(scope="session")
def train_net_cli():
    """``train_net_cli(*argv, timeout=600)``: ``tools/train_net.py`` in a subprocess from the
    repository root (one thread), its ``CompletedProcess`` with text output."""
    train_net = os.path.join(ROOT, "tools", "train_net.py")

    def run(*argv, timeout=600):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
        return subprocess.run(
            [sys.executable, train_net, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env=env,
        )

    return run


@pytest.fixture(scope="module")
def small_val(tmp_path_factory):
    """The first 12 lt_shapes val images, registered as their own LVIS-format dataset:
    ``(name, json path)``."""
    from lt_detectron.data import register_lt_dataset

    out = tmp_path_factory.mktemp("small_val") / "lt_shapes_val12.json"
    json_file, image_root = lt_shapes_val_subset(out, 12)
    name = unique_name("lt_shapes_val12")
    register_lt_dataset(name, json_file, image_root, evaluator_type="lvis")
    yield name, json_file
    unregister(name)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """lt_detectron's cache (class statistics, ...) in the test's own folder."""
    monkeypatch.setenv("LT_DETECTRON_CACHE", str(tmp_path / "cache"))
