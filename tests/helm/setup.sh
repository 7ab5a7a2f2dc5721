#!/usr/bin/env bash
# Helm's own engine for the chart tests (tests/it/helm_chart.rs): a Python virtual environment
# with the PyPI package helm-python-sdk, whose wheel bundles libhelm_c (Helm's Go SDK behind a
# C ABI, loaded with ctypes). No helm binary, no Go toolchain.
#
# Usage: bash tests/helm/setup.sh [VENV]   (default: target/helm-venv)
# Prints the venv's python on stdout. Idempotent and cached: a venv that already imports the
# pinned version is reused (about 0.3 s); otherwise it is (re)created, which downloads a 75 MB
# wheel once. Needs python3 >= 3.10 with venv (installs Debian's python3-venv when missing and
# running as root).
set -euo pipefail
HELM_PYTHON_SDK_VERSION=0.2.2

cd "$(dirname "$0")/../.."
VENV="${1:-${HELM_VENV:-target/helm-venv}}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
PY="$VENV/bin/python"
log() { echo "[helm-setup] $*" >&2; }

check() {
  [ -x "$PY" ] && "$PY" - "$HELM_PYTHON_SDK_VERSION" <<'PYEOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
assert version("helm-python-sdk") == sys.argv[1]
import helm_python
helm_python.helm_sdk_version()
PYEOF
}

if check; then
  echo "$PY"
  exit 0
fi

# One installer at a time (test threads and parallel runs); re-check once the lock is held.
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
if check; then
  echo "$PY"
  exit 0
fi

command -v python3 >/dev/null || { log "python3 is missing"; exit 1; }
python3 - <<'PYEOF' || { log "python3 >= 3.10 is needed (helm-python-sdk requires it)"; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
PYEOF

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
log "pip install helm-python-sdk==$HELM_PYTHON_SDK_VERSION into $VENV"
"$PY" -m pip install --disable-pip-version-check --no-input -q "helm-python-sdk==$HELM_PYTHON_SDK_VERSION" >&2
check || { log "helm-python-sdk $HELM_PYTHON_SDK_VERSION does not import in $VENV"; exit 1; }
log "helm-python-sdk $HELM_PYTHON_SDK_VERSION ready ($("$PY" -c 'import helm_python as h; print("Helm SDK", h.helm_sdk_version())'))"
echo "$PY"
