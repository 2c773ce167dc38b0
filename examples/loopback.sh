#!/usr/bin/env bash
# The main job on one machine: `tunnel-cli serve` with its defaults (generated certificate and
# token), a local HTTP service, and `tunnel-cli connect` publishing it; then a request through
# the tunnel. Keeps running until Ctrl-C; with ONESHOT=1 it exits after the request.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p tunnel-cli
bin="$root/target/release/tunnel-cli"
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# Waits (up to 10 s) until FILE has a line matching PATTERN.
wait_for() {
    for _ in $(seq 100); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "timed out waiting for '$2' in $1:" >&2
    cat "$1" "$1.err" >&2 2>/dev/null || true
    exit 1
}

# 1. The server, default settings, state kept in a temporary directory.
"$bin" serve --listen 127.0.0.1:7700 --state-dir "$work/state" >"$work/serve" 2>"$work/serve.err" &
pids+=($!)
wait_for "$work/serve" "tunnel-cli connect"
cat "$work/serve"

# 2. A service to publish: a static HTTP server on an OS-chosen port.
echo "hello from behind the tunnel" >"$work/index.html"
python3 -m http.server 0 --bind 127.0.0.1 --directory "$work" >"$work/http" 2>&1 &
pids+=($!)
wait_for "$work/http" "Serving HTTP"
http_port=$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$work/http" | head -n1)

# 3. The client, with exactly the commands the server printed, publishing the service.
TUNNEL_TOKEN=$(sed -n 's/^  export TUNNEL_TOKEN=//p' "$work/serve")
export TUNNEL_TOKEN
read -r -a connect <<<"$(grep "tunnel-cli connect" "$work/serve" | sed "s|-R 0:127.0.0.1:8080|-R 0:127.0.0.1:$http_port|")"
"$bin" "${connect[@]:1}" >"$work/connect" 2>"$work/connect.err" &
pids+=($!)
wait_for "$work/connect" "remote forward ready"
cat "$work/connect"
public=$(sed -n 's/remote forward ready: \([^ ]*\) .*/\1/p' "$work/connect" | head -n1)

# 4. A visitor.
echo "GET http://$public/index.html through the tunnel:"
python3 -c "import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode().strip())" "http://$public/index.html"

if [ "${ONESHOT:-0}" = 1 ]; then exit 0; fi
echo "tunnel up: http://$public/ -> 127.0.0.1:$http_port (Ctrl-C to stop)"
wait "${pids[0]}"
