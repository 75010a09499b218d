#!/usr/bin/env bash
# Set up the host and run every test suite: style, unit, functional (real
# LXC containers, busybox and Debian 12 roots, Linux bridge and Open vSwitch
# NICs; as root, then with the driver as the user novalxc-test) and
# hardening (races, crashes, hostile images, escapes, noisy neighbours;
# about 15 minutes; the driver as novalxc-test). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/test-setup.sh
# The Open vSwitch tests get a private userspace OVS of their own.
NOVALXC_TEST_OVSDB=$(bash tools/test-ovs.sh start)
export NOVALXC_TEST_OVSDB
trap 'bash tools/test-ovs.sh stop' EXIT
# The functional suite both as root and with the driver called as an
# unprivileged user (its privsep daemons through sudo), the hardening
# suite that way only: nova-compute as an operator runs it (issue 14).
python3 -m tox -e pep8,unit,functional,functional-unprivileged,hardening-unprivileged "$@"
