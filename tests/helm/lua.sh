#!/usr/bin/env bash
# A Lua 5.1 interpreter for the Argo CD health-check tests (Argo CD runs those scripts with
# gopher-lua, which follows Lua 5.1). Prints its path; installs Debian's lua5.1 when missing and
# running as root. Exit 3 when there is none and it cannot be installed.
set -euo pipefail
for candidate in lua5.1 luajit; do
  if command -v "$candidate" >/dev/null; then
    command -v "$candidate"
    exit 0
  fi
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[lua] apt-get install lua5.1" >&2
  (exec 9>/tmp/ddm-update-operator-apt.lock; flock 9
   apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
     --no-install-recommends lua5.1 >/dev/null) || true
  if command -v lua5.1 >/dev/null; then
    command -v lua5.1
    exit 0
  fi
fi
echo "[lua] no lua5.1 and it cannot be installed here (needs root and apt-get)" >&2
exit 3
