#!/usr/bin/env bash
# Runs every fuzz target for RUNS executions (default 10 million) or MAX_SECONDS (default 1800),
# whichever comes first, then minimises its corpus. Prints executions per target.
# Works with the stable toolchain: `-s none` builds without a sanitizer, which needs nightly.
set -euo pipefail
cd "$(dirname "$0")"
runs=${RUNS:-10000000}
max_seconds=${MAX_SECONDS:-1800}
targets=${*:-$(cargo fuzz list)}
for target in $targets; do
    mkdir -p "corpus/$target"
    log="$(mktemp)"
    cargo fuzz run -s none "$target" "corpus/$target" -- \
        -runs="$runs" -max_total_time="$max_seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1 || { tail -n 40 "$log"; echo "$target: FAILED"; exit 1; }
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    seconds=$(sed -n 's/^stat::total_time_sec: *//p' "$log" 2>/dev/null || true)
    cargo fuzz cmin -s none "$target" "corpus/$target" >/dev/null 2>&1
    echo "$target: $execs executions${seconds:+ in ${seconds}s}, corpus $(ls "corpus/$target" | wc -l) files"
    rm -f "$log"
done
