"""Layout of the library (fast, no import of it): every module of ``lt_detectron`` is at most
``MAX_LINES`` lines, and the layers import only downwards: ``modeling`` never imports ``engine``,
``losses`` imports neither ``data`` nor ``modeling``, and the library imports nothing from the
repository's ``tools``, ``benchmarks`` or ``dev``. Imports are read with ``ast`` (absolute and
relative, at module level or inside functions). The tests mirror the library: every test file
sits in a folder of ``tests/`` named after a part of ``lt_detectron`` or of the repository."""

import ast
import os

import pytest

from tests._data import ROOT

PACKAGE = "lt_detectron"
MAX_LINES = 400


def _modules():
    out = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, PACKAGE)):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    return [os.path.relpath(p, ROOT).replace(os.sep, "/") for p in out]


MODULES = _modules()


def module_name(rel_path):
    """``lt_detectron/a/b.py`` -> ``lt_detectron.a.b``; ``lt_detectron/a/__init__.py`` -> ``lt_detectron.a``."""
    parts = rel_path[: -len(".py")].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source, name, is_package):
    """The absolute names a module imports: ``import a.b`` -> ``a.b``; ``from a import b`` -> ``a``
    and ``a.b`` (``b`` may be a submodule); relative imports resolved against the module ``name``."""
    package = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            out.add(base)
            out.update(base + "." + a.name for a in node.names if a.name != "*")
    return out


def _imports_of(rel_path):
    with open(os.path.join(ROOT, rel_path)) as f:
        source = f.read()
    return imported_names(source, module_name(rel_path), rel_path.endswith("__init__.py"))


def _within(name, prefix):
    return name == prefix or name.startswith(prefix + ".")


def test_imported_names_resolves_relative_and_absolute_imports():
    source = (
        "import os.path\n"
        "from .. import engine\n"
        "from ..data.epochs import x\n"
        "from .dense import y\n"
        "def f():\n"
        "    from tools import demo\n"
    )
    got = imported_names(source, "lt_detectron.modeling.box_predictor", is_package=False)
    assert got == {
        "os.path",
        "lt_detectron",
        "lt_detectron.engine",
        "lt_detectron.data.epochs",
        "lt_detectron.data.epochs.x",
        "lt_detectron.modeling.dense",
        "lt_detectron.modeling.dense.y",
        "tools",
        "tools.demo",
    }
    # a package's relative import starts at the package itself
    assert imported_names("from . import data", "lt_detectron", is_package=True) == {
        "lt_detectron",
        "lt_detectron.data",
    }


def test_the_walk_finds_the_package():
    assert "lt_detectron/__init__.py" in MODULES and "lt_detectron/losses/base.py" in MODULES
    assert len(MODULES) > 50


@pytest.mark.parametrize("rel_path", MODULES)
def test_module_is_at_most_400_lines(rel_path):
    with open(os.path.join(ROOT, rel_path)) as f:
        n = sum(1 for _ in f)
    assert n <= MAX_LINES, (
        f"{rel_path} has {n} lines (limit {MAX_LINES}): split it into modules named after what they "
        "hold, the public names still importable from the package __init__"
    )


LAYER_RULES = [
    ("lt_detectron.modeling", "lt_detectron.engine"),
    ("lt_detectron.losses", "lt_detectron.data"),
    ("lt_detectron.losses", "lt_detectron.modeling"),
    ("lt_detectron", "tools"),
    ("lt_detectron", "benchmarks"),
    ("lt_detectron", "dev"),
]


@pytest.mark.parametrize("layer, forbidden", LAYER_RULES)
def test_layer_does_not_import(layer, forbidden):
    offenders = [
        "%s imports %s" % (rel, name)
        for rel in MODULES
        if _within(module_name(rel), layer)
        for name in sorted(_imports_of(rel))
        if _within(name, forbidden)
    ]
    assert not offenders, "%s must not import %s:\n%s" % (layer, forbidden, "\n".join(offenders))


# test folders for what is not a part of the library: the repository's other folders, and the
# repository as a whole (docs blocks, these layout rules)
NON_LIBRARY_TEST_FOLDERS = {"tools", "benchmarks", "dev", "repo"}


def test_tests_mirror_the_library():
    tests = os.path.join(ROOT, "tests")
    loose = sorted(f for f in os.listdir(tests) if f.startswith("test_") and f.endswith(".py"))
    assert not loose, "test files belong in a folder of tests/ that mirrors what they test: %s" % (
        loose
    )
    parts = {
        os.path.splitext(entry)[0]
        for entry in os.listdir(os.path.join(ROOT, PACKAGE))
        if not entry.startswith("_")
    }
    for folder in sorted(os.listdir(tests)):
        path = os.path.join(tests, folder)
        if not os.path.isdir(path) or folder.startswith(("_", ".")):
            continue
        assert folder in parts or folder in NON_LIBRARY_TEST_FOLDERS, (
            "tests/%s/ is named after no part of lt_detectron/ (%s) nor one of %s"
            % (folder, sorted(parts), sorted(NON_LIBRARY_TEST_FOLDERS))
        )
        assert os.path.isfile(os.path.join(path, "__init__.py")), (
            "tests/%s/ needs an __init__.py (test modules are imported as tests.%s.<name>)"
            % (folder, folder)
        )
