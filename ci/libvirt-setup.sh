#!/usr/bin/env bash
# Installs QEMU and the libvirt daemon from Debian's packages and starts them, so that the
# libvirt driver's live tests can run real VMs at qemu:///system. Run as root; safe to run
# again (it installs only what is missing and starts only what is not running).
#
# There is no init system on the CI machines, so virtlogd and libvirtd are started by hand.
set -euo pipefail

URI=qemu:///system
# Debian 12's qemu-system-x86 depends on its own qemu-utils; pinning it in the same install
# keeps apt from removing a newer qemu-utils without a replacement.
QEMU_UTILS_PIN=${QEMU_UTILS_PIN:-qemu-utils=1:7.2+dfsg-7+deb12u18+b3}
PACKAGES=(
    libvirt-daemon-system libvirt-clients libvirt-dev qemu-system-x86 pkg-config
    # For ci/build-guest.sh: the initramfs and a FAT boot disk made without mounting anything.
    busybox-static cpio syslinux mtools dosfstools
)

log() { printf 'libvirt-setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (it installs packages and starts system daemons)"
    exit 1
fi

pin=()
if ! dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep -q 'install ok installed'; then
    pin=("$QEMU_UTILS_PIN")
fi
"$(dirname "$0")/install-missing.sh" "${PACKAGES[@]}" -- "${pin[@]}"

# Without udev, /dev/kvm keeps mode 0600 root:root, while Debian's udev rule makes it 0660
# root:kvm. libvirt checks it as the qemu user (a member of kvm): unreadable, it judges its cached
# QEMU capabilities stale and probes QEMU again on every domain definition (about a minute each).
# Apply the rule by hand. Guests still use the domain type their template asks for.
if [ -c /dev/kvm ] && getent group kvm >/dev/null; then
    chgrp kvm /dev/kvm
    chmod 0660 /dev/kvm
fi

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

mkdir -p /run/libvirt
if ! running /run/virtlogd.pid; then
    log "starting virtlogd"
    virtlogd -d
fi
if ! running /run/libvirtd.pid; then
    log "starting libvirtd"
    libvirtd -d
fi

# libvirtd answers a few seconds after it forks; give it up to a minute.
for _ in $(seq 1 60); do
    if virsh -c "$URI" version >/dev/null 2>&1; then
        virsh -c "$URI" version
        exit 0
    fi
    sleep 1
done
log "libvirtd did not answer at $URI within 60 s"
virsh -c "$URI" version
exit 1
