#!/usr/bin/env bash
# Quick start, command 2: install if needed, lint (ruff, configured in pyproject.toml), then run the
# whole test suite. Extra arguments go to pytest (e.g. -k ddp, -x).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh
export MUJOCO_GL="${MUJOCO_GL:-osmesa}" PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-osmesa}"
start=$(date +%s)
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
echo "test suite wall time: $(( $(date +%s) - start )) s"
