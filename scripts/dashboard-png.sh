#!/usr/bin/env bash
# Renders the chart's Grafana dashboard from a real Prometheus into a PNG
# (scripts/dashboard-png.py, with matplotlib from PyPI in a venv under target/).
#
# Usage: bash scripts/dashboard-png.sh --prometheus URL --dashboard FILE --out PNG [more flags]
#        bash scripts/dashboard-png.sh --setup   (only make the venv; prints its python)
# The venv (target/dashboard-venv, or $DASHBOARD_VENV) is made once and reused while it imports
# the pinned matplotlib. docs/dashboard.png comes from the scrape test:
#   DASHBOARD_PNG=docs/dashboard.png cargo test --test it prometheus_scrape
set -euo pipefail
MATPLOTLIB_VERSION=3.11.2

cd "$(dirname "$0")/.."
VENV="${DASHBOARD_VENV:-target/dashboard-venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
PY="$VENV/bin/python"
log() { echo "[dashboard-png] $*" >&2; }

check() {
  [ -x "$PY" ] && "$PY" -c "
import sys
from importlib.metadata import version
assert version('matplotlib') == sys.argv[1]
import matplotlib.pyplot
" "$MATPLOTLIB_VERSION" >/dev/null 2>&1
}

if ! check; then
  mkdir -p "$(dirname "$VENV")"
  exec 9>"$VENV.lock"
  flock 9
  if ! check; then
    command -v python3 >/dev/null || { log "python3 is missing"; exit 1; }
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
      rm -rf "$VENV"
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "python3 has no working venv module; apt-get install python3-venv"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
      fi
      python3 -m venv "$VENV" || { log "python3 -m venv $VENV failed"; exit 1; }
    fi
    log "pip install matplotlib==$MATPLOTLIB_VERSION into $VENV"
    "$PY" -m pip install --disable-pip-version-check --no-input -q "matplotlib==$MATPLOTLIB_VERSION" >&2
    check || { log "matplotlib $MATPLOTLIB_VERSION does not import in $VENV"; exit 1; }
  fi
  exec 9>&-
fi

if [ "${1:-}" = "--setup" ]; then
  echo "$PY"
  exit 0
fi
exec "$PY" scripts/dashboard-png.py "$@"
