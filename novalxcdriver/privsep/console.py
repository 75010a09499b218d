"""Privileged entry points for serial console relays (``lxc_admin``).

A relay (consolerelay.py) runs ``lxc-console`` as root for each client,
so it is started, found and stopped in the daemon, never by nova-compute:
serialconsole.py does the work there. Besides lxctools.check_container's
checks on name and lxc_path, the daemon checks that:

- address is an IP address and port_range ``START:STOP`` with START at
  least MIN_PORT, so no privileged port is ever taken;
- watch_pid is this container's LXC monitor, by its command line
  (``[lxc monitor] LXC_PATH NAME``), so the relay dies with the
  container and with nothing else.

Relays are returned as [pid, address, port] lists (privsep's channel
carries no dataclass).
"""

import ipaddress
import os

from novalxcdriver import exception
from novalxcdriver import lxc
from novalxcdriver import privsep
from novalxcdriver.privsep import lxctools
from novalxcdriver import serialconsole

MIN_PORT = 1024  # the first one an unprivileged user may bind (ip(7))


def check_address(call, address):
    """Refuse address unless it is an IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        privsep.refuse(call, '%r is not an IP address' % (address,))


def check_port_range(call, port_range):
    """Refuse a port_range starting below MIN_PORT.

    :raises InvalidPortRange: not START:STOP (serialconsole's check).
    """
    if not isinstance(port_range, str):
        raise exception.InvalidPortRange(port_range=port_range)
    first, _last = serialconsole.parse_port_range(port_range)
    if first < MIN_PORT:
        privsep.refuse(call, 'port range %s starts below %d'
                       % (port_range, MIN_PORT))


def check_monitor(call, pid, name, lxc_path):
    """Refuse pid unless it is the LXC monitor of lxc_path's name."""
    want = ('[lxc monitor] %s %s' % (lxc_path, name)).encode()
    try:
        if type(pid) is not int or pid <= 1:
            raise ValueError(pid)
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            cmdline = f.read().split(b'\0')[0].rstrip()
    except (OSError, ValueError):
        cmdline = None
    if cmdline != want:
        privsep.refuse(call, 'pid %r is not the LXC monitor of %s'
                       % (pid, name))


def _listed(relay):
    return None if relay is None else [relay.pid, relay.address, relay.port]


@privsep.lxc_admin.entrypoint
def ensure_relay(name, lxc_path, watch_pid, address, port_range,
                 restart_only=False):
    """The container's relay, started if none runs (serialconsole.ensure).

    :param watch_pid: the container's LXC monitor; the relay exits with it.
    :param address: IP address to listen on.
    :param port_range: "START:STOP", START >= MIN_PORT.
    :param restart_only: start one only if the container had a relay
        (its state file is there) and it is gone: after a restart of
        nova-compute whose service stop killed it.
    :returns: [pid, address, port], or None when restart_only found
        nothing to restart.
    :raises PrivilegedCallRefused: a check of the module docstring.
    :raises ConsolePortsExhausted, InvalidPortRange: as serialconsole.
    """
    call = 'ensure_relay'
    container_dir = lxctools.check_container(call, name, lxc_path)
    check_address(call, address)
    check_port_range(call, port_range)
    check_monitor(call, watch_pid, name, lxc_path)
    console_argv = lxc.console_argv(name, lxc_path)
    if restart_only and (
            not os.path.exists(os.path.join(container_dir,
                                            serialconsole.STATE_FILE)) or
            serialconsole.current(container_dir, console_argv)):
        return None
    return _listed(serialconsole.ensure(
        container_dir, console_argv, watch_pid, address, port_range))


@privsep.lxc_admin.entrypoint
def current_relay(name, lxc_path):
    """[pid, address, port] of the container's live relay, or None."""
    container_dir = lxctools.check_container('current_relay', name,
                                             lxc_path)
    return _listed(serialconsole.current(
        container_dir, lxc.console_argv(name, lxc_path)))


@privsep.lxc_admin.entrypoint
def stop_relay(name, lxc_path):
    """Stop the container's relay, if any, and forget its state."""
    container_dir = lxctools.check_container('stop_relay', name, lxc_path)
    serialconsole.stop(container_dir, lxc.console_argv(name, lxc_path))
