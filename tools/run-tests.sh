#!/usr/bin/env bash
# Set up the host and run every test suite: style, unit, and functional
# (real LXC containers, busybox and Debian 12 roots). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/test-setup.sh
python3 -m tox -e pep8,unit,functional "$@"
