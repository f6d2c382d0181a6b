#!/usr/bin/env bash
# Installs Debian's chromium for the status-page browser test
# (examples/relay, TestStatusPageInBrowser) when no Chromium is on PATH.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y chromium
