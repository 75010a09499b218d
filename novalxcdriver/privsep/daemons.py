"""Root processes that outlive the call that starts them.

Two kinds, both started by a privsep daemon, never by nova-compute:

- lxcfs (``ensure_lxcfs``, ``storage_admin``: it is a FUSE mount). An
  operator runs it as a service of its own (Debian's lxcfs.service): one
  started by a process dies with that process's systemd unit, and
  containers then get ENOTCONN from their /proc files. The driver starts
  it only when nothing serves lxcfs's mount point (no systemd, or the
  service died), as a recovery; its lock (LOCK_PATH) is the host's, as
  lxcfs is, so two drivers of one host never stack two daemons.
- a container's serial console relay (privsep.console, ``lxc_admin``),
  through start_daemon.
"""

import os
import subprocess
import time

from oslo_concurrency import lockutils
from oslo_log import log as logging

from novalxcdriver import exception
from novalxcdriver import lxcfs
from novalxcdriver import privsep
from novalxcdriver.privsep import lxcconf
from novalxcdriver.privsep import storage

LOG = logging.getLogger(__name__)

# lxcfs is one per host, whatever a driver's state_path: so is its lock.
LOCK_PATH = '/run/novalxc'
LXCFS_LOG = 'lxcfs.log'


def start_daemon(argv, log_path, pass_fds=()):
    """Start argv in a session of its own, outliving this process.

    Its output is appended to log_path (made root's 0600 if missing,
    never opened through a link). Its umask is 022, not the privsep
    daemon's 0. Returns at once; the caller checks that the daemon does
    its job.

    :param argv: list of str, the program and its arguments (no shell).
    :param pass_fds: file descriptors it inherits (others are closed).
    :returns: its pid.
    :raises OSError: log_path cannot be opened, or argv not run.
    """
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT |
                 os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, 'ab') as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, close_fds=True,
                                pass_fds=pass_fds, start_new_session=True,
                                umask=0o022).pid


@privsep.storage_admin.entrypoint
def ensure_lxcfs(state_path, timeout):
    """Make lxcfs serve its mount point, starting it if nothing does.

    Under the host's lxcfs lock: a stale mount (its daemon died) is
    detached first, then lxcfs is started on it, its output appended to
    ``<state_path>/lxcfs.log``, and waited for. Containers started before
    keep their dead binds until restarted, as with any lxcfs restart.

    :param state_path: a driver root of this daemon, ``[lxc] state_path``.
    :param timeout: seconds to wait for lxcfs's files, 0 to 60.
    :returns: list of problems (str), empty once lxcfs serves its files.
    :raises PrivilegedCallRefused: state_path is not a driver root, or
        timeout is out of range.
    """
    call = 'ensure_lxcfs'
    if not isinstance(state_path, str) or \
            state_path not in privsep.driver_roots():
        privsep.refuse(call, '%r is not a driver root of this daemon\'s '
                       'configuration' % (state_path,))
    if type(timeout) not in (int, float) or not 0 <= timeout <= 60:
        privsep.refuse(call, 'timeout %r is not 0 to 60 seconds'
                       % (timeout,))
    # The daemon's umask is 0: the lock's directory and file would be
    # anyone's to replace (a link root then opens) or to hold.
    os.umask(0o022)
    with lockutils.lock('novalxc-lxcfs', external=True, lock_path=LOCK_PATH):
        return _ensure(os.path.join(state_path, LXCFS_LOG), timeout)


def _ensure(log_path, timeout):
    current = lxcfs.state()
    if current == lxcfs.SERVING:
        return []
    if current == lxcfs.STALE:
        LOG.warning('lxcfs mount %s is stale (its daemon died); detaching '
                    'it. Running containers keep stale /proc files until '
                    'they restart.', lxcconf.LXCFS_MOUNT)
        try:
            storage.detach_lazily(lxcconf.LXCFS_MOUNT)
        except exception.MountFailed as e:
            return ['cannot detach the stale lxcfs mount: %s' % e]
    LOG.info('lxcfs is not running; starting it on %s (log: %s)',
             lxcconf.LXCFS_MOUNT, log_path)
    os.makedirs(lxcconf.LXCFS_MOUNT, mode=0o755, exist_ok=True)
    start_daemon(['lxcfs', lxcconf.LXCFS_MOUNT], log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lxcfs.state() == lxcfs.SERVING:
            return []
        time.sleep(0.1)
    return ['lxcfs did not start on %s: see %s'
            % (lxcconf.LXCFS_MOUNT, log_path)]
