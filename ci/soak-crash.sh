#!/usr/bin/env bash
# The crash-safety soak: a real `berth serve` under 8 clients of mixed load (submits of one and
# three VMs, cancels, reads), SIGKILLed 20 times at moments that move each round; after every
# restart each acknowledged request exists exactly once, and at the end no VM on a host lacks
# its record. Prints the figures daemon/README.md quotes. `.ci/run` runs the same test with 3
# kills; this runs it with BERTH_SOAK_KILLS (default 20).
set -euo pipefail
cd "$(dirname "$0")/.."
export BERTH_SOAK_KILLS="${BERTH_SOAK_KILLS:-20}"
cargo nextest run -p berth-daemon --test daemon --no-capture \
    sigkill_in_the_middle_of_a_burst_loses_and_duplicates_nothing 2>&1 | grep -E "crash soak|PASS|FAIL|panicked"
