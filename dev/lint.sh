#!/usr/bin/env bash
# Lint: ruff check (pyflakes + pycodestyle) and ruff format --check over the repository
# (configuration: ruff.toml). Fix with: .venv/bin/ruff format . && .venv/bin/ruff check --fix .
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
