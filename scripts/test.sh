#!/usr/bin/env bash
# The test suite, on a fresh machine: set up, then run pytest. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PNEUMOSCAN_VENV:-$ROOT/.venv}"
# The tests exercise every extra: training (PyTorch), Ray Data, PostgreSQL (psycopg), and the test tools.
bash "$ROOT/scripts/setup.sh" test,train,ray,postgres

# System tools the tests drive as real peers, from Debian (their own instances and configuration, never a system
# service): Chromium for the browser tests (Playwright never downloads a browser here), Orthanc and dcmtk for the
# PACS end-to-end tests, dicom3tools' dciodvfy to validate the SR and SC we write, PostgreSQL for the store.
# Installed when missing and root allows; otherwise the tests that need them skip with a message.
have_postgres() {
  command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || missing="$missing orthanc"
command -v storescu >/dev/null 2>&1 || missing="$missing dcmtk"
command -v dciodvfy >/dev/null 2>&1 || missing="$missing dicom3tools"
have_postgres || missing="$missing postgresql"
if [ -n "$missing" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "pneumoscan test: installing Debian's$missing"
    # Only the binaries are wanted: keep the packages' own services (Orthanc, PostgreSQL) from starting
    # (policy-rc.d 101).
    policy=/usr/sbin/policy-rc.d
    ours=""
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && ours=1; fi
    apt-get update -qq || true
    for pkg in $missing; do
      if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null; then
        echo "pneumoscan test: installing $pkg failed; the tests that need it will skip" >&2
      fi
    done
    if [ -n "$ours" ]; then rm -f "$policy"; fi
  else
    echo "pneumoscan test:$missing not found and cannot install (not root); the tests that need them will skip" >&2
  fi
fi
cd "$ROOT"
export PNEUMOSCAN_DATA="${PNEUMOSCAN_DATA:-$ROOT/../shared/data/chest_xray_224}"
exec "$VENV/bin/python" -m pytest "$@"
