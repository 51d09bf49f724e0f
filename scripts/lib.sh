# Shared by the scripts: installing and locating the emulators.
CACHE="${SLUICE_CACHE:-$HOME/.cache/sluice}"
MOTO_VENV="$CACHE/moto-venv"
MOTO_SERVER="$MOTO_VENV/bin/moto_server"

# Pinned: a fresh machine gets what the suite was tested with. A cache holding another version
# is reinstalled.
MOTO_VERSION="5.2.5"
KINESALITE_VERSION="3.3.3"
KINESIS_LOCAL_VERSION="0.6.2"

ensure_moto() {
  if [ ! -x "$MOTO_SERVER" ] || [ "$(cat "$MOTO_VENV/.sluice-pin" 2>/dev/null)" != "$MOTO_VERSION" ]; then
    echo "installing moto $MOTO_VERSION into $MOTO_VENV (once; about 80 s)…" >&2
    mkdir -p "$CACHE"
    python3 -m venv "$MOTO_VENV"
    # every transitive package pinned too (scripts/moto-constraints.txt, from pip freeze)
    "$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check \
      -c "$(dirname "${BASH_SOURCE[0]}")/moto-constraints.txt" "moto[server]==$MOTO_VERSION"
    echo "$MOTO_VERSION" >"$MOTO_VENV/.sluice-pin"
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on 127.0.0.1:$1" >&2
  return 1
}

# GET a URL and print the body; fails on non-2xx (curl is not on every machine).
http_get() {
  python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1"
}

NODE_DIR="$CACHE/node"
NODE_MODULES="$NODE_DIR/node_modules"

# kinesalite and kinesis-local (npm). kinesis-local hard-codes a 0.0.0.0 bind: the cached copy
# is patched to bind 127.0.0.1, so no test server listens beyond loopback.
ensure_kinesis_emulators() {
  local pin="kinesalite@$KINESALITE_VERSION kinesis-local@$KINESIS_LOCAL_VERSION"
  if [ ! -f "$NODE_MODULES/kinesalite/package.json" ] || [ ! -f "$NODE_MODULES/kinesis-local/main.js" ] \
    || [ "$(cat "$NODE_DIR/.sluice-pin" 2>/dev/null)" != "$pin" ]; then
    echo "installing $pin into $NODE_DIR (once)…" >&2
    mkdir -p "$NODE_DIR"
    [ -f "$NODE_DIR/package.json" ] || echo '{"name":"sluice-emulators","private":true}' >"$NODE_DIR/package.json"
    # shellcheck disable=SC2086
    (cd "$NODE_DIR" && npm install --silent --no-audit --no-fund --save-exact $pin)
    echo "$pin" >"$NODE_DIR/.sluice-pin"
  fi
  sed -i 's/Host$().em("0.0.0.0")/Host$().em("127.0.0.1")/' "$NODE_MODULES/kinesis-local/main.js"
}

# Prometheus and promtool (Debian's package, pinned): the alert rules are checked and unit-tested
# with promtool, and the dashboard's queries are evaluated by a real Prometheus scraping sluice.
PROMETHEUS_DEB_VERSION="2.42.0+ds-5+deb12u1"

ensure_prometheus() {
  if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
    return
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "promtool/prometheus missing: install Debian's prometheus package ($PROMETHEUS_DEB_VERSION)" >&2
    return 1
  fi
  echo "installing prometheus $PROMETHEUS_DEB_VERSION from the Debian archive (once)…" >&2
  apt-get update -qq
  # the package's service is not started here: tests run their own on loopback
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "prometheus=$PROMETHEUS_DEB_VERSION" >/dev/null
}
