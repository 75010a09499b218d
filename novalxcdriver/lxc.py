"""External commands' argv: lxc-*.

The commands that act on a container (lxc-start, lxc-stop, lxc-info,
lxc-ls, lxc-freeze, lxc-unfreeze) run in a privsep daemon, through
:mod:`novalxcdriver.privsep.lxctools`; the functions here are their
callers' names for them; the disks' tools run in
:mod:`novalxcdriver.privsep.disks`, a snapshot's readers in
:mod:`novalxcdriver.privsep.snapshots`, qemu-img in
:mod:`novalxcdriver.privsep.qemuimg`. ``lxc-start --version`` still runs
here, through :func:`novalxcdriver.command.execute`: an argv list, never
a shell, with a timeout. Option meanings follow the LXC 5 man pages
(lxc-start(1), lxc-stop(1), lxc-info(1), lxc-ls(1), lxc-freeze(1)).
"""

from oslo_log import log as logging

from novalxcdriver import command
from novalxcdriver import conf
from novalxcdriver import hostdirs
from novalxcdriver.privsep import lxctools

CONF = conf.CONF
LOG = logging.getLogger(__name__)

# Modules that run a command call lxc.execute (one name to mock in tests).
execute = command.execute
# lxc-info -s prints these; see lxc_state_t in LXC's lxccontainer.h.
STATES = ('STOPPED', 'STARTING', 'RUNNING', 'STOPPING', 'ABORTING',
          'FREEZING', 'FROZEN', 'THAWED')


def write_config(name, lxc_path, text):
    """Replace the container's config; see lxctools.write_config."""
    lxctools.write_config(name, lxc_path, text)


def start(name, lxc_path):
    """lxc-start -d; see :func:`novalxcdriver.privsep.lxctools.start`."""
    lxctools.start(name, lxc_path)


def stop(name, lxc_path, timeout):
    """Clean halt (lxc.signal.halt) then, after ``timeout`` seconds, kill."""
    lxctools.stop(name, lxc_path, timeout)


def request_halt(name, lxc_path, timeout):
    """Ask for a clean halt and wait up to ``timeout`` seconds; never kill.

    :returns: True if the container stopped within the timeout.
    """
    return lxctools.request_halt(name, lxc_path, timeout)


def kill(name, lxc_path):
    """lxc-stop -k: SIGKILL init at once."""
    lxctools.kill(name, lxc_path)


def reboot(name, lxc_path, timeout):
    """Request a clean reboot (lxc.signal.reboot) and wait for it.

    :returns: True if the container rebooted within ``timeout`` seconds.
    """
    return lxctools.reboot(name, lxc_path, timeout)


def freeze(name, lxc_path):
    lxctools.freeze(name, lxc_path)


def unfreeze(name, lxc_path):
    lxctools.unfreeze(name, lxc_path)


def make_dir(name, lxc_path):
    """Make the container's directory, and a missing lxc_path first.

    Root's 0700, or 2750 in a shared lxc_path; lxc_path as
    hostdirs.make_lxc_path makes it.

    :raises FileExistsError: it exists; nothing was touched.
    """
    hostdirs.make_lxc_path(lxc_path)
    lxctools.make_dir(name, lxc_path)


def remove_dir(name, lxc_path, instance_uuid):
    """Remove the container's directory if it is the instance's.

    The daemon decides whose it is (lxctools.remove_dir).

    :returns: True if it was there.
    :raises PrivilegedCallRefused: it is not (only) the instance's.
    """
    return lxctools.remove_dir(name, lxc_path, instance_uuid)


def set_marker(name, lxc_path, marker, text=''):
    """Write marker (lxctools.MARKERS) in the container's directory."""
    lxctools.set_marker(name, lxc_path, marker, text)


def clear_marker(name, lxc_path, marker):
    """Remove marker from the container's directory; True if it was."""
    return lxctools.clear_marker(name, lxc_path, marker)


def console_output(name, lxc_path, max_bytes):
    """The tail of the container's console log (lxctools.console_output)."""
    return lxctools.console_output(name, lxc_path, max_bytes)


def info(name, lxc_path):
    """State and init PID of one container.

    :returns: (state, pid): state is one of STATES, pid an int or
        None.
    :raises ContainerNotFound: LXC does not know the container.
    """
    state, pid = lxctools.info(name, lxc_path)
    return state, pid


def states(lxc_path):
    """State and init pid of every container under lxc_path (one lxc-ls).

    :returns: dict of container name to (state, pid): state one of
        STATES, pid an int or None.
    """
    # Through privsep's channel the pairs arrive as lists.
    return {name: tuple(pair)
            for name, pair in lxctools.states(lxc_path).items()}


def console_argv(name, lxc_path):
    """lxc-console on the container's /dev/console (tty 0), escapes off.

    With no escape key every byte reaches the container (lxc-console(1));
    its stdin and stdout are the client's.
    """
    return ['lxc-console', '-n', name, '-P', lxc_path, '-t', '0',
            '-e', '-1']


def monitor_pid(init_pid):
    """The pid of the LXC monitor of the container whose init is init_pid.

    The monitor (``[lxc monitor] PATH NAME``) is init's parent and lives
    while the container runs, across reboots from inside, which start a
    new init under the same monitor.

    :returns: int, or None when init is gone or its parent is not a
        monitor.
    """
    try:
        with open('/proc/%d/stat' % init_pid) as f:
            # Field 4 follows "(comm)", which may hold spaces.
            ppid = int(f.read().rpartition(')')[2].split()[1])
        with open('/proc/%d/cmdline' % ppid, 'rb') as f:
            parent = f.read()
    except (OSError, ValueError, IndexError):
        return None
    return ppid if parent.startswith(b'[lxc monitor]') else None


def version():
    """The installed LXC version as a string, e.g. '5.0.2'."""
    out, _err = execute('lxc-start', '--version')
    return out.strip()
