#!/usr/bin/env bash
# Prometheus's own tools for the monitoring tests: `promtool` checks and unit-tests the chart's
# alerts (tests/it/prometheus_rules.rs), `prometheus` scrapes the operator
# (tests/it/prometheus_scrape.rs). Both from Debian's `prometheus` package, installed with
# apt-get when either is missing and running as root. Idempotent; prints nothing on success
# (the tests find both on PATH). Exit 3 when they are missing and cannot be installed.
set -euo pipefail
have() { command -v promtool >/dev/null && command -v prometheus >/dev/null; }
if have; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[prometheus] apt-get install prometheus" >&2
  (
    exec 9>/tmp/ddm-update-operator-apt.lock
    flock 9
    # The package would start its own server (on :9090) where an init system runs; a
    # policy-rc.d answering 101 tells Debian's maintainer scripts not to start services.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
      chmod 755 /usr/sbin/policy-rc.d
      trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      prometheus >/dev/null
  ) || true
  if have; then
    exit 0
  fi
fi
echo "[prometheus] no promtool and prometheus, and they cannot be installed here (needs root and apt-get)" >&2
exit 3
