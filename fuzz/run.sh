#!/usr/bin/env bash
# Build and run the fuzz targets, one after another.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 60); all targets when none is named. Each
# target starts from fuzz/seeds/<target>/ (committed, including the
# reproducers of open bugs, named crash-*) plus fuzz/corpus/<target>/ (kept
# between runs, not committed). Prints the executions per target and exits
# non-zero if any target crashed, hung (-timeout), or ran out of memory
# (-rss_limit_mb); the input is left in fuzz/artifacts/<target>/ and the log
# in fuzz/artifacts/<target>.log.
#
# CI: `fuzz/run.sh 20`. Needs a Rust toolchain and a C++ compiler; installs
# cargo-fuzz when missing. libFuzzer needs nightly compiler flags
# (-Zsanitizer, sancov passes); on a stable toolchain they are enabled with
# RUSTC_BOOTSTRAP=1, set here for the fuzz build only.
#
# FUZZ_TIMEOUT overrides the 5 s hang limit. FUZZ_KNOWN_BUGS=id,... makes the targets skip the inputs of already
# reported bugs (ids in the targets' sources) for long exploratory runs; CI
# must not set it.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

secs="${1:-60}"
if [ $# -gt 0 ]; then shift; fi
case "$secs" in
    ''|*[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac

all_targets=(nbd_handshake nbd_transmission http_range http_disk_service drbd_events2 xha_statefile)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then targets=("${all_targets[@]}"); fi

# Largest input per target: enough for the messages each one parses, small
# enough to keep executions fast.
max_len() {
    case "$1" in
        nbd_handshake) echo 8192 ;;        # options, a GO, a few requests
        nbd_transmission) echo 8192 ;;     # headers and small write payloads
        http_range) echo 256 ;;            # one header value
        http_disk_service) echo 16384 ;;   # pipelined requests, small bodies
        drbd_events2) echo 16384 ;;        # the fixtures are up to 2 KiB
        xha_statefile) echo 8704 ;;        # global + 8 host sections
        *) echo "unknown target $1 (known: ${all_targets[*]})" >&2; exit 2 ;;
    esac
}
for t in "${targets[@]}"; do max_len "$t" >/dev/null; done

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
# Release with debug assertions and overflow checks, AddressSanitizer
# (http-disk-server has unsafe aligned buffers).
started=$(date +%s)
for t in "${targets[@]}"; do
    cargo fuzz build --release --debug-assertions --sanitizer address "$t"
done
echo "build took $(( $(date +%s) - started )) s" >&2
bin_dir="$here/target/x86_64-unknown-linux-gnu/release"

# libFuzzer's -timeout is wall-clock time, so on a loaded machine (or under
# nice) a starved process can look hung. A timeout counts as a hang only if
# its input also runs past the limit when replayed alone; otherwise the input
# is kept as artifacts/<target>/starved-* and fuzzing resumes for the rest of
# the target's time (the corpus carries over).
timeout_s="${FUZZ_TIMEOUT:-5}"

# Runs one target for its time; sets $execs and returns libFuzzer's status.
fuzz_one() {
    local t="$1" log="artifacts/$1.log" deadline=$(( $(date +%s) + secs )) rc left n unit took
    execs=0
    : >"$log"
    while :; do
        left=$(( deadline - $(date +%s) ))
        [ $left -gt 0 ] || return 0
        set +e
        "$bin_dir/$t" "corpus/$t" "seeds/$t" \
            -max_total_time="$left" -timeout="$timeout_s" -rss_limit_mb=1024 \
            -max_len="$(max_len "$t")" -artifact_prefix="artifacts/$t/" \
            -print_final_stats=1 >"$log.part" 2>&1
        rc=$?
        set -e
        cat "$log.part" >>"$log"
        n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log.part" | tail -n 1)
        if [ -z "$n" ]; then
            # Ended by a finding, before the final stats: the last status line.
            n=$(grep -o '^#[0-9]*' "$log.part" | tail -n 1 | tr -d '#')
        fi
        execs=$(( execs + ${n:-0} ))
        unit=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log.part" | tail -n 1)
        if [ $rc -eq 0 ] || ! grep -q 'ERROR: libFuzzer: timeout' "$log.part" || [ ! -e "$unit" ]; then
            rm -f "$log.part"
            return $rc
        fi
        rm -f "$log.part"
        took=$("$bin_dir/$t" -timeout=60 "$unit" 2>&1 | sed -n 's/^Executed .* in \([0-9]*\) ms$/\1/p' | tail -n 1)
        if [ -n "$took" ] && [ "$took" -lt $(( timeout_s * 1000 / 2 )) ]; then
            echo "$t: timeout was starvation (the input runs in $took ms alone); resuming" >&2
            mv "$unit" "artifacts/$t/starved-${unit##*/timeout-}"
        else
            echo "$t: $unit hangs when replayed (${took:-no result} ms)" >&2
            return $rc
        fi
    done
}

failed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    echo "== $t: ${secs} s" >&2
    rc=0
    fuzz_one "$t" || rc=$?
    if [ $rc -eq 0 ]; then
        summary+=("$(printf '%-20s ok      %12s executions' "$t" "$execs")")
    else
        failed+=("$t")
        summary+=("$(printf '%-20s FAILED  %12s executions (exit %d, see fuzz/artifacts/%s.log)' "$t" "$execs" "$rc" "$t")")
        grep -E "panicked at|^(SUMMARY|==[0-9]+== ?ERROR)|Test unit written|out-of-memory" "artifacts/$t.log" | tail -n 6 >&2 || true
    fi
done

echo "fuzz summary (${secs} s per target):"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
