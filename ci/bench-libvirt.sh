#!/usr/bin/env bash
# The libvirt driver's figures for the README, as whole-process timings (medians of RUNS runs):
#   1. creating a qcow2 overlay on a 2 GiB base image against copying the image
#      (cp, and qemu-img convert);
#   2. request-to-marker time of the tiny guest: provision + boot until BERTH-GUEST-UP appears
#      on the serial console, for 1 VM and for 4 VMs at once.
# Needs ci/libvirt-setup.sh and ci/build-guest.sh first. Usage:
#   ci/bench-libvirt.sh [GUEST_DIR]   (default target/guest; RUNS=5, URI=qemu:///system,
#   REMOTE_URI unset: see the last section)
set -euo pipefail
cd "$(dirname "$0")/.."
GUEST_DIR=${1:-target/guest}
RUNS=${RUNS:-5}
URI=${URI:-qemu:///system}

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f\n", b - a }'; }

WORK=$(mktemp -d /var/tmp/berth-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

echo "== overlay against copy of a 2 GiB base image ($RUNS runs, page cache warm)"
# Incompressible data, so neither copy nor convert can skip any of it.
head -c 2G /dev/urandom > "$WORK/base.raw"
qemu-img convert -q -f raw -O qcow2 "$WORK/base.raw" "$WORK/base.qcow2"
rm "$WORK/base.raw"
qemu-img info "$WORK/base.qcow2" | grep -E 'virtual size|disk size'
for what in overlay cp convert; do
    for _ in $(seq "$RUNS"); do
        rm -f "$WORK/vm.qcow2"
        t=$(now)
        case $what in
            overlay) qemu-img create -q -f qcow2 -b "$WORK/base.qcow2" -F qcow2 "$WORK/vm.qcow2" ;;
            cp) cp "$WORK/base.qcow2" "$WORK/vm.qcow2" && sync "$WORK/vm.qcow2" ;;
            convert) qemu-img convert -q -f qcow2 -O qcow2 "$WORK/base.qcow2" "$WORK/vm.qcow2" && sync "$WORK/vm.qcow2" ;;
        esac
        since "$t"
    done | median | xargs printf "%-8s median %s s\n" "$what"
done
rm -f "$WORK/vm.qcow2" "$WORK/base.qcow2"

echo "== request to marker, tiny guest at $URI ($RUNS runs)"
cargo build -q --release -p berth-drivers --features libvirt --example libvirt-boot
BIN=target/release/examples/libvirt-boot
for count in 1 4; do
    : > "$WORK/per-vm" && : > "$WORK/all"
    for _ in $(seq "$RUNS"); do
        "$BIN" "$count" "$GUEST_DIR/tiny.qcow2" "$URI" > "$WORK/out"
        sed -n 's/^vm .*marker \([0-9.]*\) s$/\1/p' "$WORK/out" >> "$WORK/per-vm"
        sed -n 's/^all .* at marker: \([0-9.]*\) s$/\1/p' "$WORK/out" >> "$WORK/all"
    done
    printf '%s vm(s): per-vm median %s s, all-at-marker median %s s\n' \
        "$count" "$(median < "$WORK/per-vm")" "$(median < "$WORK/all")"
done

# The same host reached through SSH: with REMOTE_URI set (for example
# qemu+ssh://root@127.0.0.1:22/system, a libvirtd behind an sshd), one VM's request-to-marker
# time at URI and at REMOTE_URI, run alternately so that both see the same machine load.
if [ -n "${REMOTE_URI:-}" ]; then
    echo "== request to marker, 1 VM: $URI against REMOTE_URI ($RUNS runs each, alternating)"
    : > "$WORK/local" && : > "$WORK/remote"
    for _ in $(seq "$RUNS"); do
        for where in local remote; do
            if [ "$where" = local ]; then u=$URI; else u=$REMOTE_URI; fi
            "$BIN" 1 "$GUEST_DIR/tiny.qcow2" "$u" > "$WORK/out"
            sed -n 's/^all .* at marker: \([0-9.]*\) s$/\1/p' "$WORK/out" >> "$WORK/$where"
        done
    done
    printf 'local median %s s, over ssh median %s s\n' "$(median < "$WORK/local")" "$(median < "$WORK/remote")"
fi
