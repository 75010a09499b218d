"""Serial consoles: a TCP port per running container for nova-serialproxy.

Nova's serial console contract (nova.console.type.ConsoleSerial): the
driver names a host and a TCP port that nova-serialproxy connects to and
relays to the user's websocket; Nova asks again with the same question to
validate a token's port, so the answer must be cheap and stable.

A container's console is LXC's /dev/console, reached with ``lxc-console
-t 0 -e -1`` (lxc-console(1)): escapes off, one client at a time. A relay
process (consolerelay.py) listens on the port and runs one lxc-console per
client. It is started on the first console request, not at every boot
(most containers never have a console attached), and lives in a session
of its own, so nova-compute restarts keep it; init_host starts again, on
the same port, a relay found dead for a running container. It watches the
container's LXC monitor and exits with it; destroy stops it.

The port is bound here, from ``[serial_console] port_range`` on
``[serial_console] proxyclient_address`` (as libvirt binds a guest's TCP
serial port), and the listening socket handed to the relay: the bind is
the allocation, so two drivers on one host cannot take the same port.

``<container_dir>/serial-console.json`` records the relay's pid, address
and port (the port is tried first again when a relay must be restarted);
its output goes to ``serial-console.log`` beside it.
"""

import dataclasses
import json
import os
import signal
import socket
import sys

from oslo_log import log as logging

from novalxcdriver import durable
from novalxcdriver import exception
from novalxcdriver import host
from novalxcdriver.privsep import daemons

LOG = logging.getLogger(__name__)

STATE_FILE = 'serial-console.json'
LOG_FILE = 'serial-console.log'
RELAY_MODULE = 'novalxcdriver.consolerelay'


@dataclasses.dataclass(frozen=True)
class Relay:
    """A running relay: its pid and the address and TCP port it serves."""

    pid: int
    address: str
    port: int


def parse_port_range(text):
    """(first, last) ports of "START:STOP" ([serial_console] port_range).

    As nova.console.serial reads it, STOP is included.

    :raises InvalidPortRange: not two ports with START < STOP.
    """
    try:
        start, stop = (int(p) for p in text.split(':'))
    except ValueError:
        raise exception.InvalidPortRange(port_range=text)
    if not 0 < start < stop <= 65535:
        raise exception.InvalidPortRange(port_range=text)
    return start, stop


def candidate_ports(preferred, first, last):
    """Ports to try in order: preferred (if in range), then first..last."""
    if preferred is not None and first <= preferred <= last:
        yield preferred
    for port in range(first, last + 1):
        if port != preferred:
            yield port


def relay_argv(listen_fd, watch_pid, console_argv):
    """The relay's command line (list of str)."""
    return [sys.executable, '-m', RELAY_MODULE, '--listen-fd',
            str(listen_fd), '--watch-pid', str(watch_pid),
            '--'] + list(console_argv)


def current(container_dir, console_argv):
    """The relay serving this container, or None.

    Only a live process whose command line is this container's relay
    counts: a pid reused by anything else is not taken for it.
    """
    saved = _read_state(container_dir)
    if saved is None:
        return None
    try:
        relay = Relay(int(saved['pid']), str(saved['address']),
                      int(saved['port']))
    except (KeyError, TypeError, ValueError):
        return None
    cmdline = host.cmdline(relay.pid)
    if (RELAY_MODULE in cmdline and
            cmdline[-len(console_argv):] == list(console_argv)):
        return relay
    return None


def ensure(container_dir, console_argv, watch_pid, address, port_range):
    """The container's relay, started if none runs.

    The caller serialises calls for one container (it holds the
    container's lock).

    :param container_dir: the container's directory (<lxc_path>/<name>).
    :param console_argv: the console command, lxc.console_argv().
    :param watch_pid: the relay exits when this process does (the
        container's LXC monitor).
    :param address: IP address to listen on.
    :param port_range: "START:STOP".
    :returns: Relay.
    :raises ConsolePortsExhausted: no port of the range is free.
    :raises InvalidPortRange: port_range is not START:STOP.
    """
    relay = current(container_dir, console_argv)
    if relay is not None and relay.address == address:
        return relay
    if relay is not None:
        stop(container_dir, console_argv)
    saved = _read_state(container_dir) or {}
    preferred = saved.get('port') if isinstance(saved.get('port'),
                                                int) else None
    listener = _bind(address, preferred, port_range)
    port = listener.getsockname()[1]
    with listener:
        fd = listener.fileno()
        pid = daemons.start_daemon(
            relay_argv(fd, watch_pid, console_argv),
            os.path.join(container_dir, LOG_FILE), pass_fds=(fd,))
    relay = Relay(pid, address, port)
    durable.write(os.path.join(container_dir, STATE_FILE),
                  json.dumps(dataclasses.asdict(relay)), mode=0o600)
    LOG.info('Serial console relay of %s listens on %s:%d (pid %d)',
             container_dir, address, relay.port, relay.pid)
    return relay


def _bind(address, preferred, port_range):
    first, last = parse_port_range(port_range)
    family = socket.AF_INET6 if ':' in address else socket.AF_INET
    for port in candidate_ports(preferred, first, last):
        sock = socket.socket(family, socket.SOCK_STREAM)
        # A port whose last relay's connections linger in TIME_WAIT can
        # be taken again; a port someone listens on cannot (Linux).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
            sock.listen(4)
        except OSError:
            sock.close()
            continue
        return sock
    raise exception.ConsolePortsExhausted(port_range=port_range,
                                          address=address)


def stop(container_dir, console_argv):
    """Stop the container's relay, if one runs, and forget its state.

    SIGTERM to its process group (the session it leads): the relay and
    the console client it runs, which would otherwise serve its client
    until that left.
    """
    relay = current(container_dir, console_argv)
    if relay is not None:
        try:
            os.killpg(relay.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        host.wait_gone(relay.pid)
    for name in (STATE_FILE, LOG_FILE):
        try:
            os.unlink(os.path.join(container_dir, name))
        except FileNotFoundError:
            pass


def _read_state(container_dir):
    try:
        with open(os.path.join(container_dir, STATE_FILE)) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None
