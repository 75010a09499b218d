"""qemu-img on a fetched qcow2, run as nobody's uid (``storage_admin``).

A qcow2 from Glance is hostile input, and qemu-img parses it (qemu-img(1)).
It never does so as host root: the daemon runs each qemu-img as an id of
its own (ids.helper_ids(): host uid and gid H + n for the n-th run at a
time, which no container, no host user, no unpacker and no other
qemu-img has: a process may reopen the files of another process of its
uid through /proc/PID/fd, proc(5)), with no supplementary group, no new
privileges (PR_SET_NO_NEW_PRIVS), killed with the daemon
(PR_SET_PDEATHSIG), all through setpriv(1), under the CPU time and
address space limits nova.virt.images gives it (prlimit(1)), and killed
after a timeout. Exec'd tools rather than a preexec_fn: the daemon runs
its calls in threads, where a preexec_fn may deadlock (subprocess).

It reaches its files through descriptors the daemon opened and hands
over: the fetched image (``<partial>/archive``) and, for a conversion,
the new raw image (``<partial>/disk.raw``, made here), named
``/dev/fd/N``. qemu-img opens those names again, which the kernel checks
against the file's owner (proc(5), /proc/PID/fd), so both are its id's
while it runs and root's again after; the partial, root's 0700, keeps
everyone else out. A bug in qemu-img can then write as H + n, which owns
nothing but those two files.

The checks of qemu-img's answer (no backing file, no data file, a size
within the cache's limit: diskimage.check_info) stay in nova-compute;
``convert`` takes the virtual size it checked, and refuses a raw image
larger than max_bytes.
"""

import contextlib
import os
import stat
import subprocess
import threading

from oslo_log import log as logging

from novalxcdriver import exception
from novalxcdriver import ids
from novalxcdriver import privsep
from novalxcdriver.privsep import imagecache

LOG = logging.getLogger(__name__)

ARCHIVE = imagecache.ARCHIVE
RAW = imagecache.RAW
_ENV = {'PATH': '/usr/sbin:/usr/bin:/sbin:/bin', 'LANG': 'C',
        'LC_ALL': 'C'}
_MAX_STDERR = 4000

_slots_lock = threading.Lock()
_slots_used = set()


@contextlib.contextmanager
def _slot(call):
    """The helper number (0..HELPER_IDS-1) of one run, free again after."""
    with _slots_lock:
        free = [n for n in range(ids.HELPER_IDS) if n not in _slots_used]
        if not free:
            privsep.refuse(call, 'more than %d qemu-img runs at once'
                           % ids.HELPER_IDS)
        slot = free[0]
        _slots_used.add(slot)
    try:
        yield slot
    finally:
        with _slots_lock:
            _slots_used.discard(slot)


def check_partial(call, partial):
    """Refuse partial unless it is an image cache partial, root's 0700."""
    imagecache.check_partial(call, partial)


def _open_archive(call, partial):
    """The fetched image's fd: a regular file of one link, root's.

    Or a helper's: a daemon that died mid-run left it so.
    """
    path = os.path.join(partial, ARCHIVE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC |
                     os.O_NONBLOCK)
    except FileNotFoundError:
        privsep.refuse(call, '%s does not exist' % path)
    except OSError as e:
        privsep.refuse(call, '%s cannot be opened: %s' % (path, e))
    try:
        st = os.fstat(fd)
        helpers = ids.helper_ids()
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or not (
                st.st_uid == 0 or helpers.uid_start <= st.st_uid <
                helpers.uid_start + helpers.size):
            privsep.refuse(call, '%s is not a regular file of root\'s with '
                           'one link' % path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def confined_argv(argv, cpu_time, address_space, slot=0):
    """argv behind setpriv(1) and prlimit(1), as helper slot's ids."""
    helpers = ids.helper_ids()
    return ['setpriv', '--reuid', str(helpers.uid_start + slot),
            '--regid', str(helpers.gid_start + slot), '--clear-groups',
            '--no-new-privs', '--pdeathsig', 'KILL', '--',
            'prlimit', '--cpu=%d' % cpu_time, '--as=%d' % address_space,
            '--'] + list(argv)


def _run(argv, fds, timeout, cpu_time, address_space, slot):
    """argv, confined (confined_argv); (stdout, stderr) as text.

    :param fds: the daemon's fds to hand over, at the same numbers.
    :raises CommandFailed: a non-zero exit (exit_code -N: killed by
        signal N, e.g. SIGXCPU at the CPU limit).
    :raises CommandTimedOut: killed after timeout seconds.
    """
    cmd = ' '.join(argv)
    try:
        proc = subprocess.run(
            confined_argv(argv, cpu_time, address_space, slot),
            stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
            close_fds=True, pass_fds=tuple(fds), env=dict(_ENV), cwd='/',
            umask=0o077)
    except subprocess.TimeoutExpired:
        raise exception.CommandTimedOut(cmd=cmd, timeout=timeout)
    out = os.fsdecode(proc.stdout)
    err = os.fsdecode(proc.stderr[-_MAX_STDERR:]).strip()
    if proc.returncode != 0:
        raise exception.CommandFailed(cmd=cmd, exit_code=proc.returncode,
                                      stderr=err)
    return out, err


class _Given:
    """Files handed to a helper's ids for the call, root's again after."""

    def __init__(self, slot):
        self._fds = []
        self._helpers = ids.helper_ids()
        self.slot = slot

    def give(self, fd):
        os.fchown(fd, self._helpers.uid_start + self.slot,
                  self._helpers.gid_start + self.slot)
        self._fds.append(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for fd in self._fds:
            try:
                os.fchown(fd, 0, 0)
            except OSError as e:
                LOG.warning('Cannot give fd %d back to root: %s', fd, e)
        return False


@privsep.storage_admin.entrypoint
def qcow2_info(partial, timeout, cpu_time, address_space):
    """``qemu-img info -f qcow2 --output=json`` of ``<partial>/archive``.

    :param partial: an image cache partial (check_partial) holding the
        fetched image.
    :param timeout: seconds of wall time (int > 0).
    :param cpu_time: seconds of CPU (int > 0; RLIMIT_CPU).
    :param address_space: bytes (int > 0; RLIMIT_AS).
    :returns: qemu-img's JSON text.
    :raises PrivilegedCallRefused: the checks, an archive that is not a
        regular file of root's with one link.
    :raises CommandFailed, CommandTimedOut: qemu-img failed, was killed at
        a limit, or took longer than timeout.
    """
    call = 'qcow2_info'
    check_partial(call, partial)
    privsep.check_positive_ints(call, timeout=timeout, cpu_time=cpu_time,
                                address_space=address_space)
    fd = _open_archive(call, partial)
    try:
        with _slot(call) as slot, _Given(slot) as given:
            given.give(fd)
            out, _err = _run(
                ['qemu-img', 'info', '-f', 'qcow2', '--output=json',
                 '/dev/fd/%d' % fd], [fd], timeout, cpu_time,
                address_space, slot)
    finally:
        os.close(fd)
    return out


@privsep.storage_admin.entrypoint
def qcow2_convert(partial, virtual_size, max_bytes, timeout, cpu_time,
                  address_space):
    """``<partial>/archive`` (qcow2) to the sparse raw ``<partial>/disk.raw``.

    The raw file is made here (O_EXCL), virtual_size bytes long, and
    ``qemu-img convert -n --target-is-zero`` writes the image's data into
    it (qemu-img(1)): it keeps its holes. A failed conversion removes it.

    :param virtual_size: bytes, as qemu-img info gave it (int > 0, at most
        max_bytes).
    :param max_bytes: the cache's limit (int > 0).
    :param timeout, cpu_time, address_space: as qcow2_info.
    :raises PrivilegedCallRefused: the checks, disk.raw exists already.
    :raises CommandFailed, CommandTimedOut: as qcow2_info.
    :raises OSError: the raw file could not be made (e.g. ENOSPC).
    """
    call = 'qcow2_convert'
    check_partial(call, partial)
    privsep.check_positive_ints(
        call, timeout=timeout, cpu_time=cpu_time,
        address_space=address_space, virtual_size=virtual_size,
        max_bytes=max_bytes)
    if virtual_size > max_bytes:
        privsep.refuse(call, 'virtual_size %d is above max_bytes %d'
                       % (virtual_size, max_bytes))
    raw = os.path.join(partial, RAW)
    fd = _open_archive(call, partial)
    try:
        try:
            out = os.open(raw, os.O_RDWR | os.O_CREAT | os.O_EXCL |
                          os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            privsep.refuse(call, '%s exists already' % raw)
        try:
            os.ftruncate(out, virtual_size)
            with _slot(call) as slot, _Given(slot) as given:
                given.give(fd)
                given.give(out)
                _run(['qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw',
                      '-n', '--target-is-zero', '/dev/fd/%d' % fd,
                      '/dev/fd/%d' % out], [fd, out], timeout, cpu_time,
                     address_space, slot)
        except BaseException:
            os.unlink(raw)
            raise
        finally:
            os.close(out)
    finally:
        os.close(fd)
