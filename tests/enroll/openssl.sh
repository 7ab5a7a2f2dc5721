#!/usr/bin/env bash
# The openssl command for the enrollment gate's cross-check (tests/it/enroll_gate.rs): prints
# its path; installs Debian's openssl when missing and running as root. Exit 3 when there is
# none and it cannot be installed.
set -euo pipefail
if command -v openssl >/dev/null; then
  command -v openssl
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[openssl] apt-get install openssl" >&2
  (exec 9>/tmp/ddm-update-operator-apt.lock; flock 9
   apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
     --no-install-recommends openssl >/dev/null) || true
  if command -v openssl >/dev/null; then
    command -v openssl
    exit 0
  fi
fi
echo "[openssl] no openssl and it cannot be installed here (needs root and apt-get)" >&2
exit 3
