#!/usr/bin/env bash
# Installs with apt-get the Debian packages named that are not installed yet, and nothing else.
# Arguments after `--` go to `apt-get install` as they are (a version pin, for example).
# Run as root; safe to run again.
#   ci/install-missing.sh PACKAGE... [-- APT_ARGUMENT...]
set -euo pipefail

packages=()
extra=()
while [ "$#" -gt 0 ]; do
    if [ "$1" = -- ]; then
        shift
        extra=("$@")
        break
    fi
    packages+=("$1")
    shift
done

if [ "$(id -u)" -ne 0 ]; then
    printf 'install-missing: must run as root (it installs %s)\n' "${packages[*]}" >&2
    exit 1
fi

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
printf 'install-missing: installing %s\n' "${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends --allow-downgrades "${missing[@]}" "${extra[@]}"
