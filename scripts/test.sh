#!/usr/bin/env bash
# The test suite, on a fresh machine: set up, then run pytest. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh" test
# The browser test drives Debian's Chromium (Playwright never downloads a browser here).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "pneumoscan test: installing Debian's chromium for the browser test"
    apt-get update -qq && APT_UPDATED=1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "pneumoscan test: chromium not found and cannot install it (not root); the browser test will skip" >&2
  fi
fi
# The PACS end-to-end tests run Debian's Orthanc and dcmtk (their own instance and configuration, never the system one).
missing=""
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || missing="$missing orthanc"
command -v storescu >/dev/null 2>&1 || missing="$missing dcmtk"
if [ -n "$missing" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "pneumoscan test: installing Debian's$missing for the PACS end-to-end tests"
    # Only the binaries are wanted: keep the package's own Orthanc service from starting (policy-rc.d 101).
    policy=/usr/sbin/policy-rc.d
    ours=""
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && ours=1; fi
    if ! { { [ -n "${APT_UPDATED:-}" ] || apt-get update -qq; } &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null; }; then
      echo "pneumoscan test: installing$missing failed; the PACS end-to-end tests will skip" >&2
    fi
    if [ -n "$ours" ]; then rm -f "$policy"; fi
  else
    echo "pneumoscan test:$missing not found and cannot install (not root); the PACS end-to-end tests will skip" >&2
  fi
fi
cd "$ROOT"
export PNEUMOSCAN_DATA="${PNEUMOSCAN_DATA:-$ROOT/../shared/data/chest_xray_224}"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
