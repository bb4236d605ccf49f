#!/usr/bin/env bash
# Install Debian's Chromium for the browser tests (tests/browser), once.
#
# Idempotent: does nothing when /usr/bin/chromium is already there. Uses the
# distribution package only; never `playwright install` (it downloads its own
# browser build, which CI and the sandbox do not allow).
set -euo pipefail

if [[ -x /usr/bin/chromium ]]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi

SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

if [[ ! -x /usr/bin/chromium ]]; then
    echo "apt-get installed chromium but /usr/bin/chromium is missing" >&2
    exit 1
fi
echo "installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
