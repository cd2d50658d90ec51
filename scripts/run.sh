#!/usr/bin/env bash
# The main job, on a fresh machine: set up, then serve the web app and API on the shipped model
# (http://127.0.0.1:8000/). Extra arguments go to `pneumoscan serve` (e.g. --port 8080).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh" test
exec "$ROOT/.venv/bin/pneumoscan" serve "$@"
