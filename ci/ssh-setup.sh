#!/usr/bin/env bash
# Installs what the Parallels driver's live tests need (drivers/tests/parallels.rs): the OpenSSH
# server they start on loopback and inside network namespaces, the OpenSSH client the driver
# drives, iproute2 for the namespaces, Python 3 for the prlctl/prlsrvctl stand-ins, and tar and
# Perl's shasum, which a template pull runs on the Mac (macOS has both). Run as root; safe to run
# again (it installs only what is missing).
#
# The tests start their own sshd with their own configuration and keys; nothing here starts
# or configures a system sshd. sshd needs its privilege-separation directory, which an init
# system would make: there is none on the CI machines.
set -euo pipefail

PACKAGES=(openssh-server openssh-client iproute2 python3 tar perl)

log() { printf 'ssh-setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (it installs packages)"
    exit 1
fi

"$(dirname "$0")/install-missing.sh" "${PACKAGES[@]}"

mkdir -p /run/sshd
chmod 0755 /run/sshd

# Report what the tests will find, so a CI log shows why a test ran or skipped.
for tool in /usr/sbin/sshd ssh ssh-keygen ip python3 tar shasum; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        log "missing after install: $tool"
        exit 1
    fi
done
ssh -V
ip -V
python3 --version
# Network namespaces need root and a kernel that allows them (some containers do not).
probe_ns="berth-ssh-setup-$$"
if ip netns add "$probe_ns" 2>/dev/null; then
    ip netns del "$probe_ns"
    log "network namespaces work"
else
    log "network namespaces are not available here: the cut-link test will skip"
fi
