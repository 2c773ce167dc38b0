#!/usr/bin/env bash
# The whole-binary benchmarks in one command, on a fresh Debian/Ubuntu machine:
#   ./benches/run.sh            # loopback comparison, the HTTP edge, then the long link (root only)
#   ./benches/run.sh --quick    # shorter runs, for a smoke test of the harness
# Installs iperf3, openssl, iproute2, nginx, wrk and Redis (apt) if missing, and the peers rathole and bore from
# crates.io into a cache directory (TUNNEL_BENCH_CACHE, default ~/.cache/tunnel-bench); builds
# tunnel-cli and tunnel-bench in release mode; rewrites the result sections of
# docs/benchmarks.md with this run's tables.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${TUNNEL_BENCH_CACHE:-$HOME/.cache/tunnel-bench}
out="$root/docs/benchmarks.md"
quick=()
if [ "${1:-}" = "--quick" ]; then
    quick=(--repeat 1 --seconds 2 --connections 500 --pings 2000 --idle 2000)
fi

missing=()
command -v iperf3 >/dev/null || missing+=(iperf3)
command -v openssl >/dev/null || missing+=(openssl)
command -v ip >/dev/null || missing+=(iproute2)
command -v nginx >/dev/null || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
# rathole's TLS (native-tls) builds against OpenSSL.
[ -x "$cache/bin/rathole" ] || { dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev pkg-config); }
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${missing[@]}"
fi

# Pinned versions, so runs on different days compare the same peers.
[ -x "$cache/bin/rathole" ] || cargo install --root "$cache" --version 0.5.0 rathole
[ -x "$cache/bin/bore" ] || cargo install --root "$cache" --version 0.6.0 bore-cli

cargo build --release --manifest-path "$root/Cargo.toml" -p tunnel-cli -p tunnel-bench
bench="$root/target/release/tunnel-bench"
cli="$root/target/release/tunnel-cli"

"$bench" loopback --tunnel-cli "$cli" --peers "$cache/bin" --out "$out" "${quick[@]}"

edge=()
[ ${#quick[@]} -eq 0 ] || edge=(--seconds 3 --repeat 1 --idle 2000)
"$bench" http-edge --tunnel-cli "$cli" --out "$out" "${edge[@]}"

socks=()
[ ${#quick[@]} -eq 0 ] || socks=(--seconds 2 --repeat 1)
"$bench" socks --tunnel-cli "$cli" --out "$out" "${socks[@]}"

if [ "$(id -u)" = 0 ]; then
    long=()
    [ ${#quick[@]} -eq 0 ] || long=(--seconds 8)
    "$bench" long-link --tunnel-cli "$cli" --out "$out" "${long[@]}"
else
    echo "skipping the long-link benchmark: it needs root (network namespaces, TUN devices)" >&2
fi
