"""The one runner of external commands.

A command is an argv list, never a shell line, run with a timeout; a
failure becomes :class:`exception.CommandFailed` or
:class:`exception.CommandTimedOut`, which carry the command, its exit code
and stderr. Used by lxc.py in
nova-compute and by the privsep daemons' entry points alike.
"""

import os
import select
import subprocess

from oslo_log import log as logging

from novalxcdriver import conf
from novalxcdriver import exception

CONF = conf.CONF
LOG = logging.getLogger(__name__)


def execute(*argv, timeout=None, check_exit_code=0):
    """Run argv (no shell) and return (stdout, stderr) as text.

    Through subprocess directly, not processutils.execute: processutils
    always passes a preexec_fn (to reset SIGPIPE, which Python's
    restore_signals already does), and a preexec_fn makes subprocess
    fork instead of vfork. Forking nova-compute's 150 MB or more costs
    about 13 ms per command on these machines; a vfork costs well under
    one. Under eventlet, subprocess is green, as processutils' is.

    :param timeout: seconds; defaults to ``[lxc] command_timeout``.
    :param check_exit_code: an exit code or a list of them that are not
        failures.
    :raises CommandFailed: on an exit code not in check_exit_code.
    :raises CommandTimedOut: the command was killed after ``timeout``.
    """
    timeout = CONF.lxc.command_timeout if timeout is None else timeout
    cmd = ' '.join(argv)
    ok = ([check_exit_code] if isinstance(check_exit_code, int)
          else list(check_exit_code))
    LOG.debug('Running %s', cmd)
    try:
        # run() kills and reaps the child on a timeout.
        proc = subprocess.run(list(argv), stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=timeout,
                              close_fds=True)
    except subprocess.TimeoutExpired:
        raise exception.CommandTimedOut(cmd=cmd, timeout=timeout)
    out = os.fsdecode(proc.stdout)
    err = os.fsdecode(proc.stderr)
    if proc.returncode not in ok:
        raise exception.CommandFailed(cmd=cmd, exit_code=proc.returncode,
                                      stderr=err.strip())
    return out, err


def wait_exit(proc, timeout):
    """proc's exit status once it ends, waiting up to timeout seconds.

    Popen.wait(timeout) polls, sleeping up to 50 ms between looks
    (CPython's subprocess), so a process's end was seen up to 50 ms late;
    a pidfd (pidfd_open(2), Linux 5.3) turns readable when it ends.

    :param proc: a subprocess.Popen.
    :param timeout: seconds (>= 0).
    :raises subprocess.TimeoutExpired: proc still runs after timeout.
    """
    if proc.poll() is not None:
        return proc.returncode
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:
        # Reaped meanwhile (ESRCH), or no pidfd here (ENOSYS).
        return proc.wait(timeout=timeout)
    try:
        # Alive now, so the pidfd is proc's, not a reused pid's.
        if proc.poll() is None and \
                not select.select([pidfd], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(pidfd)
    return proc.wait()
