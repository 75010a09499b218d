#!/usr/bin/env bash
# An Open vSwitch for the networking tests: `start` prints the ovsdb
# connection to give them in NOVALXC_TEST_OVSDB. One already running (the
# all-in-one cloud's or Debian's) is used as it is: two userspace datapaths
# cannot share a host (both need the ovs-netdev device); the tests only add
# and remove bridges of their own on it. Otherwise a private one is started,
# with its sockets, database and logs in one directory, and `stop` ends it.
set -euo pipefail
dir=${NOVALXC_TEST_OVS_DIR:-/run/novalxc-test-ovs}

stop() {
    for daemon in ovs-vswitchd ovsdb-server; do
        if [ -f "$dir/$daemon.pid" ]; then
            kill "$(cat "$dir/$daemon.pid")" 2>/dev/null || true
        fi
    done
    sleep 0.5
    # A userspace datapath's device may outlive its daemon and would keep
    # the next ovs-vswitchd (e.g. the all-in-one cloud's) from opening its
    # own; remove it when no ovs-vswitchd is left to own it.
    if ! pgrep -x ovs-vswitchd >/dev/null; then
        ip link delete ovs-netdev 2>/dev/null || true
    fi
    rm -rf "$dir"
}

system_db=unix:/run/openvswitch/db.sock

case "${1:-}" in
start)
    stop
    if ovs-vsctl --db="$system_db" --timeout=2 show >/dev/null 2>&1; then
        echo "$system_db"
        exit 0
    fi
    mkdir -p "$dir"
    ovsdb-tool create "$dir/conf.db" /usr/share/openvswitch/vswitch.ovsschema
    ovsdb-server "$dir/conf.db" --remote="punix:$dir/db.sock" \
        --pidfile="$dir/ovsdb-server.pid" --unixctl="$dir/ovsdb-server.ctl" \
        --log-file="$dir/ovsdb-server.log" -vconsole:off --detach
    ovs-vsctl --db="unix:$dir/db.sock" --no-wait init
    ovs-vswitchd "unix:$dir/db.sock" --pidfile="$dir/ovs-vswitchd.pid" \
        --unixctl="$dir/ovs-vswitchd.ctl" \
        --log-file="$dir/ovs-vswitchd.log" -vconsole:off --detach
    echo "unix:$dir/db.sock"
    ;;
stop)
    stop
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
