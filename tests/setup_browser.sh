#!/usr/bin/env bash
# Headless Chromium for the browser tests (tests/test_app.py). Idempotent: does nothing when chromium is present.
# Uses Debian's chromium package (playwright's own browser download is not used). Needs root or sudo for apt-get;
# without them it only prints a notice and the browser tests skip.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup_browser.sh: apt-get not found; install Chromium yourself (browser tests will skip)" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "setup_browser.sh: not root and no sudo; cannot install chromium (browser tests will skip)" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
then
    echo "setup_browser.sh: installed $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
else
    # do not stop the rest of the test suite: the browser tests skip and say why
    echo "setup_browser.sh: WARNING: apt-get could not install chromium (browser tests will skip)" >&2
fi
