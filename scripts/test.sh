#!/usr/bin/env bash
# Install everything the tests need into .venv (fresh machine: about 3 minutes) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q -r requirements-dev.txt
if [ -f tests/setup_browser.sh ]; then bash tests/setup_browser.sh; fi
# one worker per core (at most 4), each test file in one worker (its module fixtures are made once); "-n 0": one process
.venv/bin/python -m pytest -q -rs -n auto --maxprocesses 4 --dist loadfile "$@"
