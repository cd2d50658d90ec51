#!/usr/bin/env bash
# The main job, on a fresh machine: set up, then summarise the training data.
# Extra arguments are passed to `pneumoscan data summary`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh" test
DATA="${PNEUMOSCAN_DATA:-$ROOT/../shared/data/chest_xray_224}"
exec "$ROOT/.venv/bin/pneumoscan" data summary "$DATA" --split train "$@"
