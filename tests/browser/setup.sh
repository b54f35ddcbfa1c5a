#!/usr/bin/env bash
# Set up what the browser test (pytest -m browser) needs: Debian's Chromium, driven by the
# Python package playwright (Playwright's own browser download is not used and not needed).
# The Python side (jupyterlab, playwright, anywidget) comes from the project's dev install.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
fi
chromium --version 2>/dev/null || true
