#!/usr/bin/env bash
# The daemon answers with the API's types (`berth_api`) only: no `json!` outside unit tests.
# Each file is read up to its `#[cfg(test)]` module.
set -euo pipefail
cd "$(dirname "$0")/.."
found=0
while IFS= read -r -d '' file; do
    if awk '/^#\[cfg\(test\)\]/ { exit } { print FILENAME ":" FNR ": " $0 }' "$file" | grep -E 'json!\s*\(' ; then
        found=1
    fi
done < <(find daemon/src -name '*.rs' -print0)
if [ "$found" -ne 0 ]; then
    echo "ad-hoc json! in the daemon's answer paths (above): answer with a berth_api type" >&2
    exit 1
fi
echo "no ad-hoc json! in daemon/src"
