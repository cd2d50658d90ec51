#!/usr/bin/env bash
# The main job, on a fresh machine: set up, then serve the web app and API on the shipped model
# (http://127.0.0.1:8000/). Extra arguments go to `pneumoscan serve` (e.g. --port 8080). It installs the runtime
# only (no PyTorch, no test tools): `bash scripts/setup.sh train` (or ray, postgres) adds the rest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PNEUMOSCAN_VENV:-$ROOT/.venv}"
bash "$ROOT/scripts/setup.sh" ""
exec "$VENV/bin/pneumoscan" serve "$@"
