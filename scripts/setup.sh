#!/usr/bin/env bash
# Create or reuse the project's virtual environment (.venv) and install pneumoscan with everything it needs.
# Idempotent: a second run only reinstalls when pyproject.toml changed. Sourced by run.sh and test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PNEUMOSCAN_VENV:-$ROOT/.venv}"
EXTRAS="${1:-test}"

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
want="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -c1-16)-$EXTRAS"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$VENV/bin/python" -c 'import pneumoscan' 2>/dev/null; then
  echo "pneumoscan setup: installing pneumoscan[$EXTRAS] into $VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # torch is pinned to 2.13.0 in pyproject.toml: that CPU build is on this machine's disk (see DEVELOPERS.md).
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$EXTRAS]"
  echo "$want" > "$stamp"
fi
