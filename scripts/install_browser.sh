#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver when they are missing (needs root and apt-get);
# the browser tests of report.html and `tiforge web` use them and are skipped without them.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
  echo "chromium/chromedriver missing and apt-get (as root) unavailable" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
