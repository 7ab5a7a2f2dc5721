#!/usr/bin/env bash
# The project's own copy of the team's kube-apiserver script (../shared/k8s/apiserver.sh,
# findings in its README): a real Kubernetes 1.20 API server on loopback for the integration
# tests. Changed here: where prebuilt binaries are looked for (see SEED_DIR).
# apiserver.sh - a REAL kube-apiserver (v1.20.2, built from Debian
# bookworm's `kubernetes` source package) backed by Debian's etcd-server 3.4,
# plus (optionally) kube-controller-manager for garbage collection / namespace
# deletion / service accounts. Loopback only. Uses only Debian packages
# (apt + deb-src); no GitHub, no Go module proxy, no containers.
#
# Usage:
#   apiserver.sh install            # apt deps + build (or reuse cache)
#   apiserver.sh start KUBECONFIG   # install if needed, start etcd +
#                                             # kube-apiserver (+kcm), write kubeconfig
#   apiserver.sh stop               # stop all (by pid files), drop etcd data
#   apiserver.sh status             # exit 0 iff running and /readyz is ok
#
# Environment (all optional):
#   K8S_APISERVER_CACHE   dir holding the built binaries (~/.cache/k8s-apiserver).
#                         It may be pre-seeded with kube-apiserver(.xz) and
#                         kube-controller-manager(.xz) built earlier by this script;
#                         $K8S_APISERVER_SEED_DIR (default ../shared/k8s/bin beside the
#                         checkout) seeds it too when present (no build needed).
#   K8S_APISERVER_STATE   runtime dir: certs, tokens, logs, pids
#                         (/tmp/k8s-apiserver-$K8S_APISERVER_PORT)
#   K8S_APISERVER_PORT    secure port on 127.0.0.1        (16443)
#   K8S_ETCD_PORT         etcd client port on 127.0.0.1   (12379; peer port = +1)
#   K8S_CONTROLLER_MANAGER  1 = also build/run kube-controller-manager (1)
#   K8S_APISERVER_BUILD   scratch dir for the source build (/tmp/k8s-apiserver-build)
#   K8S_APISERVER_EXTRA_ARGS  extra kube-apiserver flags (word-split)
#
# The kubeconfig's default context authenticates as user "admin" (group
# system:masters) with a static bearer token; context "local-cert" uses a
# client certificate instead. Authorization is RBAC, so other identities can
# be tested with impersonation (--as) or extra lines in $STATE/tokens.csv
# (format: token,user,uid,"group1,group2"; restart to reload).
# Idempotent: `install` is a no-op when the cached binaries work; `start`
# only rewrites the kubeconfig when the server is already ready.
set -euo pipefail

CACHE="${K8S_APISERVER_CACHE:-${HOME:-/root}/.cache/k8s-apiserver}"
PORT="${K8S_APISERVER_PORT:-16443}"
ETCD_PORT="${K8S_ETCD_PORT:-12379}"
ETCD_PEER_PORT="$((ETCD_PORT + 1))"
STATE="${K8S_APISERVER_STATE:-/tmp/k8s-apiserver-$PORT}"
BUILD="${K8S_APISERVER_BUILD:-/tmp/k8s-apiserver-build}"
WITH_KCM="${K8S_CONTROLLER_MANAGER:-1}"
KAS="$CACHE/kube-apiserver"
KCM="$CACHE/kube-controller-manager"
SRC_MAJOR_MINOR="1.20"   # what bookworm ships; flags below are for 1.20

log() { echo "[k8s-apiserver] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "must run as root (apt-get)"; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

ensure_deb_src() {
  if apt-get source --print-uris kubernetes 2>/dev/null | grep -q "kubernetes_${SRC_MAJOR_MINOR}"; then
    return 0
  fi
  log "adding deb-src entries mirroring the configured deb entries"
  local added=0
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    sed -e 's/^Types:[[:space:]]*deb[[:space:]]*$/Types: deb-src/' \
      /etc/apt/sources.list.d/debian.sources \
      > /etc/apt/sources.list.d/k8s-apiserver-debsrc.sources
    added=1
  fi
  if [ -f /etc/apt/sources.list ] && grep -qE '^deb[[:space:]]' /etc/apt/sources.list; then
    grep -E '^deb[[:space:]]' /etc/apt/sources.list \
      | sed -e 's/^deb[[:space:]]/deb-src /' \
      > /etc/apt/sources.list.d/k8s-apiserver-debsrc.list
    added=1
  fi
  [ "$added" = 1 ] || cat > /etc/apt/sources.list.d/k8s-apiserver-debsrc.sources <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  apt-get update -qq
}

apt_deps() {
  local pkgs=(etcd-server openssl curl)
  if [ "${1:-}" = build ]; then
    pkgs+=(golang-go golang-github-modern-go-reflect2-dev make rsync jq dpkg-dev)
  fi
  local missing=() p
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
      || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    need_root
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
}

# Prebuilt .xz binaries to seed the cache from, when present: $K8S_APISERVER_SEED_DIR, else the
# team's shared copy beside the checkout (../shared/k8s/bin). Without them the script builds
# kube-apiserver and kube-controller-manager from Debian's `kubernetes` source package.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SEED_DIR="${K8S_APISERVER_SEED_DIR:-$HERE/../../../shared/k8s/bin}"

bin_ok() {   # usable cached binary? (also unpacks a pre-seeded .xz, from the cache or bin/ here)
  local seed="$SEED_DIR/$(basename "$1").xz"
  if [ ! -x "$1" ] && [ ! -f "$1.xz" ] && [ -f "$seed" ]; then
    mkdir -p "$(dirname "$1")" && cp "$seed" "$1.xz"
  fi
  if [ ! -x "$1" ] && [ -f "$1.xz" ]; then
    xz -dc "$1.xz" > "$1.tmp" && chmod 0755 "$1.tmp" && mv -f "$1.tmp" "$1"
  fi
  [ -x "$1" ] && "$1" --version 2>/dev/null | grep -q "v${SRC_MAJOR_MINOR}\."
}

build_k8s() {
  local targets=(cmd/kube-apiserver)
  [ "$WITH_KCM" = 1 ] && targets+=(cmd/kube-controller-manager)
  need_root
  apt_deps build
  ensure_deb_src
  log "building ${targets[*]} from Debian source package 'kubernetes'"
  log "(~12 min for kube-apiserver, +~2.5 min for kube-controller-manager, ~1.4 GiB RAM, 2 cores)"
  rm -rf "$BUILD"; mkdir -p "$BUILD"
  (cd "$BUILD" && apt-get source -qq kubernetes >"$BUILD/source.log" 2>&1) \
    || { cat "$BUILD/source.log" >&2; die "apt-get source kubernetes failed"; }
  local src
  src="$(find "$BUILD" -maxdepth 1 -mindepth 1 -type d -name "kubernetes-*" | head -n1)"
  [ -d "$src/cmd/kube-apiserver" ] && [ -d "$src/vendor" ] || die "no cmd/kube-apiserver or vendor/ in $src"
  # Go >= 1.18 changed runtime.mapiterinit; the vendored reflect2 v1.0.1 makes
  # every json-iterator encode of a map crash (SIGSEGV). Swap in Debian's 1.0.2.
  local r2=/usr/share/gocode/src/github.com/modern-go/reflect2
  local vr2="$src/vendor/github.com/modern-go/reflect2"
  [ -f "$r2/go_above_118.go" ] || die "reflect2 >= 1.0.2 not found in $r2"
  rm -f "$vr2"/*.go "$vr2"/*.s
  cp "$r2"/*.go "$r2"/*.s "$vr2"/
  # Kubernetes 1.20 builds in GOPATH mode (hack/lib sets GO111MODULE=off) from
  # vendor/; nothing is downloaded.
  (cd "$src" && env -u GOFLAGS GOPROXY=off GOTOOLCHAIN=local \
      make WHAT="${targets[*]}" >"$BUILD/build.log" 2>&1) \
    || { tail -n 40 "$BUILD/build.log" >&2; die "build failed (log: $BUILD/build.log)"; }
  mkdir -p "$CACHE"
  local t
  for t in "${targets[@]}"; do
    t="$(basename "$t")"
    install -m 0755 "$src/_output/bin/$t" "$CACHE/$t.tmp"
    mv -f "$CACHE/$t.tmp" "$CACHE/$t"
  done
  (cd "$BUILD" && ls ./*.dsc) > "$CACHE/SOURCE" 2>/dev/null || true
  rm -rf "$BUILD"
}

cmd_install() {
  apt_deps
  if ! bin_ok "$KAS" || { [ "$WITH_KCM" = 1 ] && ! bin_ok "$KCM"; }; then
    build_k8s
  fi
  bin_ok "$KAS" || die "kube-apiserver in $CACHE is not usable"
  log "$("$KAS" --version) at $KAS"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# spawn PIDFILE LOGFILE CMD...: run detached in its own session; the pid file
# holds the pid of CMD itself.
spawn() {
  local pidfile="$1" logfile="$2"; shift 2
  rm -f "$pidfile"
  setsid bash -c 'echo $$ > "$0"; exec "$@"' "$pidfile" "$@" </dev/null >"$logfile" 2>&1 &
  local i
  for i in $(seq 1 50); do [ -s "$pidfile" ] && return 0; sleep 0.02; done
  die "could not start: pid file $pidfile not written"
}

gen_certs() {
  local c="$STATE/pki"
  [ -f "$c/done" ] && return 0
  rm -rf "$c"; mkdir -p "$c"; chmod 700 "$c"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
    -keyout "$c/ca.key" -out "$c/ca.crt" -subj "/CN=k8s-apiserver-test-ca" 2>/dev/null
  printf '%s\n' 'basicConstraints=CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' \
    'extendedKeyUsage=serverAuth' \
    'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc' \
    > "$c/server.ext"
  openssl req -new -newkey rsa:2048 -nodes -sha256 -keyout "$c/server.key" \
    -out "$c/server.csr" -subj "/CN=kube-apiserver" 2>/dev/null
  openssl x509 -req -in "$c/server.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" \
    -CAcreateserial -days 3650 -sha256 -extfile "$c/server.ext" -out "$c/server.crt" 2>/dev/null
  printf '%s\n' 'basicConstraints=CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' \
    'extendedKeyUsage=clientAuth' > "$c/client.ext"
  openssl req -new -newkey rsa:2048 -nodes -sha256 -keyout "$c/admin.key" \
    -out "$c/admin.csr" -subj "/O=system:masters/CN=admin" 2>/dev/null
  openssl x509 -req -in "$c/admin.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" \
    -CAcreateserial -days 3650 -sha256 -extfile "$c/client.ext" -out "$c/admin.crt" 2>/dev/null
  openssl genrsa -out "$c/sa.key" 2048 2>/dev/null
  openssl rsa -in "$c/sa.key" -pubout -out "$c/sa.pub" 2>/dev/null
  local tok
  tok="$(openssl rand -hex 24)"
  echo "$tok" > "$STATE/admin.token"
  echo "$tok,admin,admin-uid,system:masters" > "$STATE/tokens.csv"
  chmod 600 "$STATE/admin.token" "$STATE/tokens.csv"
  touch "$c/done"
}

write_kubeconfig() {
  local out="$1" tok
  tok="$(cat "$STATE/admin.token")"
  mkdir -p "$(dirname "$out")"
  cat > "$out.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$PORT
    certificate-authority: $STATE/pki/ca.crt
users:
- name: admin
  user:
    token: $tok
- name: admin-cert
  user:
    client-certificate: $STATE/pki/admin.crt
    client-key: $STATE/pki/admin.key
contexts:
- name: local
  context:
    cluster: local
    user: admin
    namespace: default
- name: local-cert
  context:
    cluster: local
    user: admin-cert
    namespace: default
current-context: local
EOF
  chmod 600 "$out.tmp"; mv -f "$out.tmp" "$out"
}

api_get() {   # api_get PATH -> body on stdout
  curl -fsS --max-time 3 --cacert "$STATE/pki/ca.crt" \
    -H "Authorization: Bearer $(cat "$STATE/admin.token")" \
    "https://127.0.0.1:$PORT$1" 2>/dev/null
}
readyz() { [ -f "$STATE/admin.token" ] && api_get /readyz | grep -qx ok; }

cmd_start() {
  local kubeconfig="${1:-}"
  [ -n "$kubeconfig" ] || die "usage: $0 start KUBECONFIG_PATH"
  case "$kubeconfig" in /*) ;; *) kubeconfig="$PWD/$kubeconfig" ;; esac
  cmd_install
  mkdir -p "$STATE"
  if pid_alive "$STATE/apiserver.pid" && readyz; then
    write_kubeconfig "$kubeconfig"
    log "already running on https://127.0.0.1:$PORT; kubeconfig: $kubeconfig"
    return 0
  fi
  cmd_stop >/dev/null 2>&1 || true
  gen_certs
  local t0 i; t0="$(now_ms)"
  # etcd: loopback only; throwaway data on tmpfs when available.
  local etcd_data="$STATE/etcd-data"
  [ -d /dev/shm ] && [ -w /dev/shm ] && etcd_data="/dev/shm/k8s-apiserver-etcd-$PORT"
  rm -rf "$etcd_data"; mkdir -p "$etcd_data"; chmod 700 "$etcd_data"
  echo "$etcd_data" > "$STATE/etcd-data.path"
  spawn "$STATE/etcd.pid" "$STATE/etcd.log" etcd --name k8s-test --data-dir "$etcd_data" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "k8s-test=http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster-state new --logger zap --log-level warn \
    --quota-backend-bytes $((2 * 1024 * 1024 * 1024))
  for i in $(seq 1 200); do
    curl -fsS --max-time 1 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null \
      | grep -q '"health":"true"' && break
    pid_alive "$STATE/etcd.pid" || { tail -n 20 "$STATE/etcd.log" >&2; die "etcd exited"; }
    sleep 0.05
  done
  # shellcheck disable=SC2086
  spawn "$STATE/apiserver.pid" "$STATE/apiserver.log" "$KAS" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
    --secure-port="$PORT" --insecure-port=0 \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --tls-cert-file="$STATE/pki/server.crt" --tls-private-key-file="$STATE/pki/server.key" \
    --client-ca-file="$STATE/pki/ca.crt" \
    --token-auth-file="$STATE/tokens.csv" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$STATE/pki/sa.pub" \
    --service-account-signing-key-file="$STATE/pki/sa.key" \
    --api-audiences=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range=10.0.0.0/24 \
    --endpoint-reconciler-type=none \
    --authorization-mode=RBAC \
    --allow-privileged=true --profiling=false --v=1 \
    ${K8S_APISERVER_EXTRA_ARGS:-}
  for i in $(seq 1 1200); do
    readyz && break
    pid_alive "$STATE/apiserver.pid" || { tail -n 30 "$STATE/apiserver.log" >&2; die "kube-apiserver exited"; }
    sleep 0.05
  done
  readyz || { tail -n 30 "$STATE/apiserver.log" >&2; die "kube-apiserver not ready after 60s"; }
  local t1; t1="$(now_ms)"
  write_kubeconfig "$STATE/admin.kubeconfig"
  if [ "$WITH_KCM" = 1 ] && bin_ok "$KCM"; then
    # Only the controllers an operator test usually relies on: ownerReference
    # GC, namespace deletion, default ServiceAccount (+ its token Secret).
    spawn "$STATE/kcm.pid" "$STATE/kcm.log" "$KCM" \
      --kubeconfig="$STATE/admin.kubeconfig" \
      --bind-address=127.0.0.1 --secure-port=0 --port=0 --leader-elect=false \
      --controllers=garbagecollector,namespace,serviceaccount,serviceaccount-token,root-ca-cert-publisher \
      --service-account-private-key-file="$STATE/pki/sa.key" \
      --root-ca-file="$STATE/pki/ca.crt" --v=1
    for i in $(seq 1 600); do   # ready when the default ServiceAccount exists
      api_get /api/v1/namespaces/default/serviceaccounts/default >/dev/null && break
      pid_alive "$STATE/kcm.pid" || { tail -n 30 "$STATE/kcm.log" >&2; die "kube-controller-manager exited"; }
      sleep 0.05
    done
  fi
  write_kubeconfig "$kubeconfig"
  echo "$kubeconfig" > "$STATE/kubeconfig.path"
  log "apiserver ready in $((t1 - t0)) ms, all ready in $(( $(now_ms) - t0 )) ms:" \
      "https://127.0.0.1:$PORT ; kubeconfig: $kubeconfig"
}

stop_pidfile() {
  local f="$1" pid
  [ -f "$f" ] || return 0
  pid="$(cat "$f")"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$f"
}

cmd_stop() {
  stop_pidfile "$STATE/kcm.pid"
  stop_pidfile "$STATE/apiserver.pid"
  stop_pidfile "$STATE/etcd.pid"
  if [ -f "$STATE/etcd-data.path" ]; then
    rm -rf "$(cat "$STATE/etcd-data.path")"; rm -f "$STATE/etcd-data.path"
  fi
  log "stopped (state dir $STATE kept for logs/certs)"
}

cmd_status() {
  if pid_alive "$STATE/apiserver.pid" && readyz; then
    echo "ready https://127.0.0.1:$PORT kubeconfig=$(cat "$STATE/kubeconfig.path" 2>/dev/null)"
  else
    echo "not running"; return 1
  fi
}

case "${1:-}" in
  install) cmd_install ;;
  start)   shift; cmd_start "$@" ;;
  stop)    cmd_stop ;;
  status)  cmd_status ;;
  *) sed -n '2,33p' "$0" >&2; exit 2 ;;
esac
