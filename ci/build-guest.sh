#!/usr/bin/env bash
# Builds the tiny guest that the libvirt driver's live tests and benchmarks boot, from Debian
# packages only: the Debian kernel and a busybox initramfs whose /init prints BERTH-GUEST-UP on
# the serial console (ttyS0) and then idles. Writes into OUTDIR:
#
#   tiny.qcow2        the bootable base image (a FAT disk with syslinux, the kernel and the
#                     initramfs; 64 MiB)
#   vmlinuz, initrd.gz the kernel and initramfs it holds, for direct-boot experiments
#
# Safe to run again: it rebuilds only when tiny.qcow2 is missing (FORCE=1 rebuilds). Needs
# apt-get (to download, not install, the kernel and busybox), cpio, gzip, dosfstools, mtools,
# syslinux and qemu-img: ci/libvirt-setup.sh installs them.
set -euo pipefail

MARKER=BERTH-GUEST-UP
DISK_MIB=64

log() { printf 'build-guest: %s\n' "$*" >&2; }

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
if [ -f "$OUT/tiny.qcow2" ] && [ "${FORCE:-0}" != 1 ]; then
    log "$OUT/tiny.qcow2 exists (FORCE=1 rebuilds it)"
    exit 0
fi

for tool in apt-get dpkg-deb cpio gzip mkfs.vfat mcopy syslinux qemu-img; do
    if ! command -v "$tool" >/dev/null; then
        log "$tool is missing: run ci/libvirt-setup.sh (or apt-get install cpio dosfstools mtools syslinux qemu-utils)"
        exit 1
    fi
done

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# apt-get download fetches as the _apt user, which must be able to write here.
if id _apt >/dev/null 2>&1; then
    chown _apt "$WORK"
fi
cd "$WORK"

# The metapackage names the current kernel package; download (not install) it and busybox.
KPKG=$(apt-cache depends linux-image-amd64 | sed -n 's/^  Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1)
if [ -z "$KPKG" ]; then
    log "cannot find the kernel package linux-image-amd64 depends on (run apt-get update)"
    exit 1
fi
log "downloading $KPKG and busybox-static"
apt-get download -qq "$KPKG" busybox-static
dpkg-deb -x "$(ls "$KPKG"_*.deb)" kernel
dpkg-deb -x "$(ls busybox-static_*.deb)" busybox
cp kernel/boot/vmlinuz-* vmlinuz

mkdir -p root/bin root/dev root/proc root/sys
cp busybox/bin/busybox root/bin/busybox
cat > root/init <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# The marker goes to the serial console (what the host logs) and to the screen.
echo $MARKER > /dev/ttyS0
echo $MARKER > /dev/tty0
while true; do sleep 3600; done
INIT
chmod +x root/init
(cd root && find . | cpio -o -H newc --quiet) | gzip -9 > initrd.gz

# A FAT disk with syslinux in its boot sector: SeaBIOS boots it like a floppy, and mtools
# writes it without mounting anything (no loop devices needed).
truncate -s "${DISK_MIB}M" disk.raw
mkfs.vfat -n BERTH disk.raw >/dev/null
syslinux --install disk.raw
cat > syslinux.cfg <<CFG
DEFAULT berth
PROMPT 0
TIMEOUT 0
LABEL berth
  KERNEL vmlinuz
  INITRD initrd.gz
  APPEND console=tty0 console=ttyS0,115200 quiet panic=-1
CFG
mcopy -i disk.raw vmlinuz initrd.gz syslinux.cfg ::/
qemu-img convert -q -f raw -O qcow2 disk.raw tiny.qcow2

cp vmlinuz initrd.gz "$OUT/"
mv tiny.qcow2 "$OUT/tiny.qcow2"
log "wrote $OUT/tiny.qcow2 ($KPKG, marker $MARKER on ttyS0)"
