#!/usr/bin/env bash
# Idempotent setup: a virtual environment in .venv with torch, detectron2 (v0.6, patched
# build made by dev/install_detectron2.py) and lt_detectron installed in editable mode.
# Re-running it is cheap: every step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.lt_detectron_setup
want="$(cat requirements.txt requirements-dev.txt setup.py dev/install_detectron2.py lt_detectron/evaluation/*.pyx | sha1sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import detectron2, lt_detectron" 2>/dev/null; then
  echo "[setup] .venv is up to date"
  exit 0
fi
echo "[setup] installing requirements (torch, pycocotools, lvis, ...)"
# --no-compile: no .pyc for every file of every wheel (half of this step's time, measured); the
# modules actually imported are compiled below
.venv/bin/python -m pip install -q --disable-pip-version-check --no-compile -r requirements.txt -r requirements-dev.txt
echo "[setup] installing detectron2"
.venv/bin/python dev/install_detectron2.py
echo "[setup] installing lt_detectron (editable; builds its compiled mask encoder where a C compiler is found)"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
.venv/bin/python -c "from lt_detectron.evaluation.roi_masks import compiled_encoder as c; print('[setup] compiled mask encoder:', 'built' if c() else 'not built (no C compiler?): the NumPy path, same results, slower')"
echo "[setup] compiling the modules the project imports"
# Bytecode only for what the project, its tools and tests import (about 20 s, where pip's compiling
# of every wheel took 100 s): with PYTHONDONTWRITEBYTECODE set, as on some machines, Python would
# otherwise recompile torch and detectron2 in every process (about 10 s each, measured).
env -u PYTHONDONTWRITEBYTECODE .venv/bin/python - <<'PY'
import importlib
import pkgutil

import lt_detectron

names = [m.name for m in pkgutil.walk_packages(lt_detectron.__path__, "lt_detectron.")]
names = [n for n in names if not n.endswith(".__main__")]  # scripts, not modules
names += ["detectron2.engine", "detectron2.evaluation", "detectron2.utils.visualizer",
          "detectron2.data.datasets", "torch.utils.tensorboard", "matplotlib.pyplot",
          "polars", "hotcoco", "orjson", "lvis", "pycocotools.coco", "pytest"]
for name in names:
    try:
        importlib.import_module(name)
    except ImportError:  # optional packages
        pass
PY
echo "$want" > "$stamp"
echo "[setup] done"
