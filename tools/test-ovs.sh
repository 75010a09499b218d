#!/usr/bin/env bash
# A private Open vSwitch (userspace datapath only) for the networking tests:
# `start` prints the ovsdb connection to give them in NOVALXC_TEST_OVSDB,
# `stop` ends it. Its sockets, database and logs live in one directory, so
# it never touches a system or all-in-one OVS running beside it.
set -euo pipefail
dir=${NOVALXC_TEST_OVS_DIR:-/run/novalxc-test-ovs}

stop() {
    for daemon in ovs-vswitchd ovsdb-server; do
        if [ -f "$dir/$daemon.pid" ]; then
            kill "$(cat "$dir/$daemon.pid")" 2>/dev/null || true
        fi
    done
    sleep 0.5
    rm -rf "$dir"
}

case "${1:-}" in
start)
    stop
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
