#!/usr/bin/env bash
# The test suite, on a fresh machine: set up, then run pytest. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh" test
cd "$ROOT"
export PNEUMOSCAN_DATA="${PNEUMOSCAN_DATA:-$ROOT/../shared/data/chest_xray_224}"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
