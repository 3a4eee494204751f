#!/usr/bin/env bash
# Quick start, command 1: install everything, then run the main job on the embedded default data.
# Extra arguments are passed to `medvtc train` as config overrides (key.sub=value).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh
export MUJOCO_GL="${MUJOCO_GL:-osmesa}" PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-osmesa}"
# The main job: CT report generation. It writes the embedded chest-CT phantom set in the
# CT-RATE layout (first run only), trains the 3D ViT + pixel-shuffle compressor + LM in its
# stages, prints the validation metrics and a sample report, then evaluates on the test split.
# --resume makes a second run continue (or just re-evaluate) the first instead of refusing to
# touch its output folder.
.venv/bin/medvtc train --task ct-report --resume "$@"
.venv/bin/medvtc eval --task ct-report "$@"
