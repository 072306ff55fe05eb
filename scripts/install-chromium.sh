#!/usr/bin/env bash
# Install Debian's Chromium for the review page's browser test (Playwright drives it, headless).
# Idempotent: does nothing when /usr/bin/chromium is already there. Playwright's own browser download is
# not used: machines that reach only package registries cannot fetch it. fonts-dejavu-core: without
# any font a bare machine's screenshots show boxes instead of text.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
echo "Installing chromium from Debian's packages..."
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
"$CHROMIUM" --version
