#!/usr/bin/env bash
# Install Debian's Chromium for the browser tests (nox -s browser) when it is missing, and print its version.
#
#   .ci/browser/install.sh
#
# The tests start Chromium themselves (headless, an empty profile, no network) and stop it by its PID.
# Installing needs root (apt-get, about a minute and 300 MB); with Chromium on the PATH nothing is installed.
set -euo pipefail

if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        echo "install.sh: Chromium is missing; run as root to install it with apt-get (or apt-get install chromium)" >&2
        exit 1
    fi
    echo "install.sh: installing chromium with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
chromium --version 2>/dev/null
