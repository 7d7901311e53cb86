#!/usr/bin/env bash
# Flower's deployment runtime on one machine: a SuperLink and three SuperNodes as separate processes on
# localhost, and `flwr run examples/flower` against them (insecure, or TLS with certificates made here).
# Every round leaves the same files as the file pipeline (`fedbip verify -r T -w WORK/coordinator`).
#
#   examples/flower/deploy.sh [WORK] [insecure|tls]
#
# WORK holds the workspaces (made with make_workspaces.py unless WORK/coordinator/fedbip.yaml exists),
# the Flower home (flwr-home/), certificates (certs/) and the processes' logs (logs/). ROUNDS (default 2)
# sets num-server-rounds; PORT (default: a free one) the SuperLink's. The processes this script starts
# are stopped when it ends, by their process ids.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mkdir -p "${1:-/tmp/fedbip-flower-deploy}" && cd "${1:-/tmp/fedbip-flower-deploy}" && pwd)
MODE=${2:-insecure}
PYTHON=${PYTHON:-python}
BIN=${FLWR_BIN:-$(dirname "$(command -v flower-superlink)")}
ROUNDS=${ROUNDS:-2}
SITES=${SITES:-site_a site_b site_c}   # one SuperNode per site: WORK/<site> is its workspace
case "$MODE" in insecure|tls) ;; *) echo "mode must be insecure or tls, got $MODE" >&2; exit 2 ;; esac

export FLWR_HOME="$WORK/flwr-home" FLWR_TELEMETRY_ENABLED=0
mkdir -p "$FLWR_HOME" "$WORK/logs"
[ -f "$WORK/coordinator/fedbip.yaml" ] || "$PYTHON" "$HERE/make_workspaces.py" "$WORK"
PORT=${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

PIDS=()
stop() {  # stop what this script started, by pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop EXIT

if [ "$MODE" = tls ]; then  # a CA and a server certificate for 127.0.0.1 / localhost, for this run only
  C="$WORK/certs"
  mkdir -p "$C"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=fedbip test CA" \
    -keyout "$C/ca.key" -out "$C/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$C/server.key" -out "$C/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' > "$C/san.ext"
  openssl x509 -req -in "$C/server.csr" -CA "$C/ca.crt" -CAkey "$C/ca.key" -CAcreateserial -days 2 \
    -extfile "$C/san.ext" -out "$C/server.pem" 2>/dev/null
  LINK_TLS=(--ssl-ca-certfile "$C/ca.crt" --ssl-certfile "$C/server.pem" --ssl-keyfile "$C/server.key")
  NODE_TLS=(--root-certificates "$C/ca.crt")
  CONN="root-certificates = \"$C/ca.crt\""
else
  LINK_TLS=(--insecure)
  NODE_TLS=(--insecure)
  CONN="insecure = true"
fi

cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "fedbip"

[superlink.fedbip]
address = "127.0.0.1:$PORT"
$CONN
TOML

"$BIN/flower-superlink" "${LINK_TLS[@]}" --host 127.0.0.1 --port "$PORT" \
  --disable-runtime-dependency-installation --database "$WORK/flwr-home/state.db" \
  > "$WORK/logs/superlink.log" 2>&1 &
PIDS+=($!)
# wait (at most 120 s) until the SuperLink accepts connections
"$PYTHON" - "$PORT" <<'PY' || { tail -n 20 "$WORK/logs/superlink.log" >&2; exit 1; }
import socket, sys, time
deadline = time.time() + 120
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        break
    except OSError:
        if time.time() > deadline:
            sys.exit("the SuperLink did not start within 120 s")
        time.sleep(0.5)
PY
k=0
for s in $SITES; do
  "$BIN/flower-supernode" "${NODE_TLS[@]}" --superlink "127.0.0.1:$PORT" --port $((PORT + 1 + k)) \
    --node-config "site='$s' workspace='$WORK/$s'" > "$WORK/logs/supernode-$s.log" 2>&1 &
  PIDS+=($!)
  k=$((k + 1))
done

start=$(date +%s)
"$BIN/flwr" run "$HERE" fedbip --stream \
  --run-config "workspace='$WORK/coordinator' num-server-rounds=$ROUNDS min-available-nodes=3 plot=false" \
  > "$WORK/logs/flwr-run.log" 2>&1 || { tail -n 40 "$WORK/logs/flwr-run.log" >&2; exit 1; }
echo "flwr run: $ROUNDS rounds in $(( $(date +%s) - start )) s ($MODE); logs in $WORK/logs"
