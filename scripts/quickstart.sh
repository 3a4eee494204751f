#!/usr/bin/env bash
# Quick start, command 1: install everything, then run the main job on the embedded default data.
# Extra arguments are passed to `medvtc train` as config overrides (key.sub=value).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh
export MUJOCO_GL="${MUJOCO_GL:-osmesa}" PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-osmesa}"
# The main job until the CT-report task lands: train a learned compressor (pixel-shuffle)
# on the embedded token grids, then evaluate it on the held-out split. --resume makes a second
# run continue (or just re-evaluate) the first instead of refusing to touch its output folder.
.venv/bin/medvtc train --task compressors --resume "$@"
.venv/bin/medvtc eval --task compressors "$@"
