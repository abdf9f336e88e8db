#!/bin/sh
# Whole replays on loaded fleets: the synthetic CI trace (seed 7) on examples/fleet-ci.toml with
# every class count divided by 30 (100,000 VMs; about 2,200 requests waiting on average) and by
# 20 (1,000,000 VMs), under each policy. Prints every run and the median of RUNS runs (wall
# seconds and peak RSS from /usr/bin/time). Run from the repository root after
#   cargo build --release --bin berth
# BERTH=path/to/berth compares another build (for example one built from an older commit).
set -eu
BERTH=${BERTH:-target/release/berth}
RUNS=${RUNS:-5}
WORK=${WORK:-${TMPDIR:-/tmp}/berth-loaded-fleets}
mkdir -p "$WORK"
[ -f "$WORK/synth-100k.jsonl" ] || "$BERTH" trace synth --vms 100000 --seed 7 --out "$WORK/synth-100k.jsonl"
[ -f "$WORK/synth-1m.jsonl.gz" ] || "$BERTH" trace synth --vms 1000000 --seed 7 --out "$WORK/synth-1m.jsonl.gz"

# measure NAME TRACE FLEET POLICY: RUNS runs, then the medians.
measure() {
    name=$1 trace=$2 fleet=$3 policy=$4
    : > "$WORK/times"
    i=0
    while [ "$i" -lt "$RUNS" ]; do
        /usr/bin/time -f "%e %M" -o "$WORK/time" \
            "$BERTH" sim run --trace "$trace" --fleet "$fleet" --policy "$policy" \
            --eta-samples 0 > /dev/null
        cat "$WORK/time" >> "$WORK/times"
        i=$((i + 1))
    done
    secs=$(cut -d' ' -f1 "$WORK/times" | sort -n | tr '\n' ' ')
    med=$(cut -d' ' -f1 "$WORK/times" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p")
    rss=$(cut -d' ' -f2 "$WORK/times" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p")
    echo "$name $policy: median ${med} s, $((rss / 1024)) MiB peak; runs: $secs"
}

for policy in ${POLICIES:-fcfs easy greedy}; do
    measure "100k on fleet-ci-30" "$WORK/synth-100k.jsonl" examples/fleet-ci-30.toml "$policy"
done
for policy in ${POLICIES_1M:-easy}; do
    measure "1M on fleet-ci-20" "$WORK/synth-1m.jsonl.gz" examples/fleet-ci-20.toml "$policy"
done
