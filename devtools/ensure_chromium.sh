#!/usr/bin/env bash
# Make sure a headless Chromium exists for the run report's browser test.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y chromium
    exit 0
fi
# Not fatal here: the browser test then skips locally (and fails under CI=true).
echo "Chromium not found: install the chromium package to run the report's browser test" >&2
exit 0
