"""The README's method table has a row for every registered loss: its "config key" column names
the config value (``MODEL.LT.ROI_LOSS <name>`` / ``MODEL.LT.DENSE_LOSS <name>``, or ``<name>`` in
backticks in a row that names several). A method registered without its row fails here, which is
why docs/adding_a_method.md lists README.md among the files a new method touches."""

import os
import re

import pytest

from lt_detectron.losses import DENSE_LOSS_REGISTRY, ROI_LOSS_REGISTRY
from tests._data import ROOT


def method_table_keys():
    """The config values named in the last column of README.md's "## Methods" table."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text.split("## Methods", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert lines, "README.md: no method table under '## Methods'"
    header = [cell.strip() for cell in lines[0].strip().strip("|").split("|")]
    assert "config key" in header, "README.md's method table has no 'config key' column"
    column = header.index("config key")
    keys = set()
    for row in lines[2:]:  # after the header and its rule
        cell = row.strip().strip("|").split("|")[column]
        keys |= set(re.findall(r"`(?:MODEL\.LT\.(?:ROI|DENSE)_LOSS )?([a-z0-9_]+)`", cell))
    return keys


def test_method_table_reads_the_config_values():
    keys = method_table_keys()
    assert {"softmax", "sigmoid", "focal"} <= keys, keys


@pytest.mark.parametrize(
    "registry, name",
    [("ROI", n) for n, _ in sorted(ROI_LOSS_REGISTRY)]
    + [("DENSE", n) for n, _ in sorted(DENSE_LOSS_REGISTRY)],
)
def test_every_registered_loss_has_a_row_in_the_readme(registry, name):
    assert name in method_table_keys(), (
        "README.md's method table has no row naming `MODEL.LT.%s_LOSS %s`: add one (the method, "
        "its docs/methods.md section, its configs, its config key)" % (registry, name)
    )
