#!/usr/bin/env bash
# The test command: set everything up (idempotent), lint, then run the whole suite (slow
# end-to-end tests included) on 2 processes. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash dev/setup_env.sh
bash dev/lint.sh  # ruff check + ruff format --check (ruff.toml)
# one torch thread per worker: two workers x two OpenMP threads on two cores thrash
OMP_NUM_THREADS=1 exec .venv/bin/python -m pytest -q -n 2 --durations=15 "$@"
