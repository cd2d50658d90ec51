#!/usr/bin/env bash
# The test suite, on a fresh machine: set up, then run pytest. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh" test
# The browser test drives Debian's Chromium (Playwright never downloads a browser here).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "pneumoscan test: installing Debian's chromium for the browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "pneumoscan test: chromium not found and cannot install it (not root); the browser test will skip" >&2
  fi
fi
cd "$ROOT"
export PNEUMOSCAN_DATA="${PNEUMOSCAN_DATA:-$ROOT/../shared/data/chest_xray_224}"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
