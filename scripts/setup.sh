#!/usr/bin/env bash
# Create or reuse the project's virtual environment (.venv) and install pneumoscan with the extras named in $1
# (comma-separated; "" for the runtime alone: predict, serve, listen, explain on ONNX Runtime, no PyTorch).
#   bash scripts/setup.sh              the runtime (what scripts/run.sh installs)
#   bash scripts/setup.sh train        + PyTorch, scikit-learn, Matplotlib: train (fine-tune), export, adapt,
#                                      calibrate, evaluate, --backend torch
#   bash scripts/setup.sh ray          + Ray Data: predict --engine ray
#   bash scripts/setup.sh postgres     + psycopg: the store on PostgreSQL
#   bash scripts/setup.sh test,train,ray,postgres   everything the tests need (what scripts/test.sh installs)
# Idempotent: a second run only reinstalls when pyproject.toml, this script or the extras changed. Extras add to
# the same environment; nothing is uninstalled. Called by run.sh and test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PNEUMOSCAN_VENV:-$ROOT/.venv}"
EXTRAS="${1-}"

pick_python() {
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "pneumoscan setup: Python 3.11 or newer is required" >&2
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  PY="$(pick_python)"
  echo "pneumoscan setup: creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi

stamp="$VENV/.pneumoscan-installed"
# The stamp is "<hash of pyproject.toml and this script> <extras installed so far>". Extras only ever add, so a
# request for extras already installed (run.sh after test.sh) needs no pip run; a new one, or a changed
# pyproject.toml, installs the union.
hash="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -c1-16)"
have_hash=""; have_extras=""
if [ -f "$stamp" ]; then read -r have_hash have_extras < "$stamp" || true; fi
union="$(printf '%s\n' "${have_extras//,/$'\n'}" "${EXTRAS//,/$'\n'}" | sed '/^$/d' | sort -u | paste -sd, -)"
if [ "$have_hash" != "$hash" ] || [ "$union" != "$have_extras" ] || ! "$VENV/bin/python" -c 'import pneumoscan' 2>/dev/null; then
  target="$ROOT"
  if [ -n "$union" ]; then target="$ROOT[$union]"; fi
  echo "pneumoscan setup: installing pneumoscan${union:+[$union]} into $VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # torch (extra "train") is pinned to 2.13.0 in pyproject.toml: that CPU build is on this machine's disk
  # (see DEVELOPERS.md).
  "$VENV/bin/python" -m pip install --quiet -e "$target"
  echo "$hash $union" > "$stamp"
fi
