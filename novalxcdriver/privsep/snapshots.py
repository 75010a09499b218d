"""Privileged entry points for a snapshot's stage (``storage_admin``).

A snapshot (snapshot.py) stages its point-in-time copy and its read-only
view in ``<driver root>/rootfs/<cid>/snapshot-<image>/`` and reads the
view into a compressed tarball with find | tar | zstd. The stage lies in
root's directories, the readers must see the container's files as its
root does (a user namespace over the container's range, which only root
may map), and readers a crash left behind must be found and killed
(other users' /proc/PID/fd): so the stage, the readers and their end are
here, in the daemon.

The tarball reaches nova-compute through a FIFO that nova-compute makes
in its spool (``<driver root>/spool/``) and holds open for reading:
privsep's channel carries values, never file descriptors. The daemon
opens it for writing without blocking (a FIFO nobody reads fails at once
with ENXIO instead of holding a daemon thread) and makes it zstd's
stdout.

A stage made here is held with an exclusive flock(2) until it is removed.
The kernel lets go when the daemon exits, which oslo.privsep's daemon
does when its nova-compute goes: a stage nobody holds is what a crash
left (stages), and one another daemon holds is the live snapshot of
another nova-compute process, which is left alone.

What is checked before anything is done:

- a stage is ``<driver root>/rootfs/<digits>/snapshot-<name>`` (STAGE_RE),
  below a root without symlinks (storage.check_path); streaming from,
  finishing or cancelling one needs this daemon to have made it;
- the FIFO is ``<driver root>/spool/<name>.fifo`` and, opened with
  O_NOFOLLOW, is a FIFO: nothing else is ever written to;
- the readers' idmap is inside root's subordinate ranges
  (storage.check_idmap): they are never host users.
"""

import errno
import fcntl
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from oslo_log import log as logging

from novalxcdriver import command
from novalxcdriver import conf
from novalxcdriver import mount
from novalxcdriver import privsep
from novalxcdriver.privsep import lxctools
from novalxcdriver.privsep import rootdirs
from novalxcdriver.privsep import storage

CONF = conf.CONF
LOG = logging.getLogger(__name__)

STAGE_PREFIX = 'snapshot-'
MERGED = 'merged'
SPOOL = storage.SPOOL
STAGE_RE = re.compile(r'^snapshot-[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z')
FIFO_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\.fifo\Z')
ZSTD_LEVEL = 3

# find(1) lists what tar(1) archives: /dev's contents are LXC's (it
# populates /dev at start), and device nodes and sockets are never part
# of an image (tarball.py refuses devices). The view is read-only, so
# the list cannot race with the tree.
FIND = ['find', '.', '(', '-path', './dev/*', '-prune', ')', '-o', '(',
        '!', '-type', 'b', '!', '-type', 'c', '!', '-type', 's', '-print0',
        ')']
# POSIX (pax) format keeps long names, sub-second times and every xattr
# (SCHILY.xattr.*, read back by tarball.py): file capabilities, ACLs.
TAR = ['tar', '--create', '--file=-', '--format=posix', '--numeric-owner',
       '--xattrs', '--xattrs-include=*', '--sparse', '--no-recursion',
       '--null', '--files-from=-']
# zstd(1) -T0: every core (at nice 10, below); the frame carries its
# checksum.
ZSTD = ['zstd', '-q', '-c', '-T0', '-%d' % ZSTD_LEVEL, '--check']
# The readers yield to the containers' own work: nice(1), and ionice(1)
# best-effort at the lowest priority.
BACKGROUND = ['nice', '-n', '10', 'ionice', '-c', '2', '-n', '7']
# Bytes of a reader's stderr kept for the error message.
_ERR_BYTES = 4096


class _Stage:
    """A stage this daemon made: its lock and its readers."""

    def __init__(self, lock_fd):
        self.lock_fd = lock_fd
        self.readers = []   # (label, Popen, stderr file)


_held = {}
_held_lock = threading.Lock()


# -- checks -------------------------------------------------------------

def check_stage(call, stage):
    """Refuse stage unless it is a snapshot stage's path (STAGE_RE)."""
    storage.check_path(call, stage)
    if not STAGE_RE.match(os.path.basename(stage)):
        privsep.refuse(call, '%s is not named as a snapshot stage' % stage)
    rootdirs.check_root_dir(call, os.path.dirname(stage))


def _held_stage(call, stage):
    check_stage(call, stage)
    with _held_lock:
        held = _held.get(stage)
    if held is None:
        privsep.refuse(call, '%s was not made by this daemon (make_stage)'
                       % stage)
    return held


def _lock(path, wait=False):
    """An fd of path with an exclusive flock(2) on it, or None if held.

    :param wait: wait for the lock rather than return None.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW |
                 os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_fifo(call, fifo):
    """fifo's write end, blocking once open; never through a link."""
    return storage.open_spool_fifo(call, fifo, FIFO_RE, 'a FIFO',
                                   write=True)


# -- entry points ---------------------------------------------------------

@privsep.storage_admin.entrypoint
def make_stage(stage):
    """Make stage (0700) and its view's mount point; hold its lock.

    Made first: a stage marks its snapshot until removed (recover finds
    what a crash left by it).

    :param stage: ``<driver root>/rootfs/<cid>/snapshot-<image>``.
    :raises PrivilegedCallRefused: the checks (module docstring).
    :raises FileExistsError: stage exists (never reused: a snapshot of
        that image under way, or one a crash cut short).
    :raises OSError: the directories could not be made; none is left.
    """
    check_stage('make_stage', stage)
    os.umask(lxctools.UMASK)
    os.mkdir(stage, 0o700)
    try:
        # Waits: a stages() probe of another thread or daemon may hold it
        # for an instant.
        fd = _lock(stage, wait=True)
        try:
            if not os.path.samestat(os.fstat(fd), os.lstat(stage)):
                raise FileExistsError(errno.EEXIST, 'replaced while it was '
                                      'made', stage)
            os.mkdir(os.path.join(stage, MERGED), 0o755)
        except BaseException:
            os.close(fd)
            raise
    except FileExistsError:
        raise   # not ours to remove
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    with _held_lock:
        _held[stage] = _Stage(fd)


def _argv(idmap, argv):
    # unshare(1) as the daemon's child (root, all of root's capabilities
    # at execve): a user namespace mapping the container's range to 0,
    # then the reader as its root.
    return BACKGROUND + [
        'unshare', '--user',
        '--map-users=%d,0,%d' % (idmap.uid_start, idmap.size),
        '--map-groups=%d,0,%d' % (idmap.gid_start, idmap.size),
        '--setuid', '0', '--setgid', '0', '--'] + list(argv)


@privsep.storage_admin.entrypoint
def stream(stage, idmap, fifo):
    """Start find | tar | zstd on stage's view, writing into fifo.

    Each runs as root of a user namespace of its own mapping idmap's
    range (not the container's namespace: its processes could ptrace
    ours there), at low CPU and I/O priority, with no supplementary
    group. Returns once they run; finish or cancel ends them.

    :param stage: made by make_stage, its view mounted on ``merged``.
    :param idmap: [uid_start, gid_start, size] of the container.
    :param fifo: ``<driver root>/spool/<name>.fifo``, open for reading
        by the caller.
    :raises PrivilegedCallRefused: the checks (module docstring), no view
        mounted, nobody reading fifo, or readers already started.
    """
    call = 'stream'
    held = _held_stage(call, stage)
    idmap = storage.check_idmap(call, idmap)
    merged = os.path.join(stage, MERGED)
    if not storage.is_mount_root(merged):
        privsep.refuse(call, 'no view is mounted on %s' % merged)
    with _held_lock:
        if held.readers:
            privsep.refuse(call, 'the readers of %s were started already'
                           % stage)
        # Claimed before the (slow) start, so two calls cannot both start.
        held.readers = readers = []
    out = _open_fifo(call, fifo)
    os.umask(lxctools.UMASK)
    stdin = None
    try:
        for label, argv in (('find', FIND), ('tar', TAR), ('zstd', ZSTD)):
            err = tempfile.TemporaryFile(dir=stage)
            try:
                proc = subprocess.Popen(
                    _argv(idmap, argv), cwd=merged, stdin=stdin,
                    stdout=out if label == 'zstd' else subprocess.PIPE,
                    stderr=err, close_fds=True, extra_groups=[],
                    start_new_session=True)
            except BaseException:
                err.close()
                raise
            readers.append((label, proc, err))
            if stdin is not None:
                stdin.close()   # the child holds it now
            stdin = proc.stdout
    except BaseException:
        _end(readers)
        with _held_lock:
            held.readers = []
        raise
    finally:
        os.close(out)


@privsep.storage_admin.entrypoint
def finish(stage):
    """Wait for stage's readers; what failed.

    Called once the caller read the tarball's end: the readers are gone
    or about to be, so the wait is short; one still running after
    ``[lxc] command_timeout`` seconds is killed and counts as failed.

    :returns: list of str, one per reader that failed (its name, exit
        code and the start of its stderr); empty when all succeeded.
    :raises PrivilegedCallRefused: stage is not this daemon's, or no
        readers were started.
    """
    held = _held_stage('finish', stage)
    with _held_lock:
        readers = list(held.readers)
    if not readers:
        privsep.refuse('finish', 'no readers were started on %s' % stage)
    deadline = time.monotonic() + CONF.lxc.command_timeout
    failed = []
    for label, proc, err in readers:
        try:
            code = command.wait_exit(
                proc, max(0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if code != 0:
            err.seek(0)
            text = err.read(_ERR_BYTES).decode(errors='replace').strip()
            failed.append('%s exited %d: %s' % (label, code, text))
    return failed


def _end(readers):
    for _label, proc, _err in readers:
        if proc.poll() is None:
            proc.kill()
    for _label, proc, err in readers:
        proc.wait()
        err.close()


@privsep.storage_admin.entrypoint
def cancel(stage):
    """Kill stage's readers (a destroy during the upload).

    :returns: whether stage is this daemon's (False: nothing to do).
    :raises PrivilegedCallRefused: stage is not a stage's path.
    """
    check_stage('cancel', stage)
    with _held_lock:
        held = _held.get(stage)
        readers = list(held.readers) if held else []
    if held is None:
        return False
    for _label, proc, _err in readers:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if readers:
        # What a reader left behind: util-linux unshare's helper child,
        # cwd the stage, outlives a killed unshare for a moment and keeps
        # the view busy for the destroy's unmount.
        _kill_holders(stage)
    return True


def _kill_holders(stage):
    """Kill what still reads stage: a dead snapshot's readers.

    Those of a daemon that died (nova-compute killed) not yet gone by
    SIGPIPE; nothing else has a reason to be in a 0700 directory of the
    driver's own.
    """
    for _attempt in range(50):
        pids = [pid for pid, _comm in mount.holders(stage)
                if pid != os.getpid()]
        if not pids:
            return
        for pid in pids:
            LOG.warning('Killing process %d, left reading the snapshot '
                        'view %s', pid, stage)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)


@privsep.storage_admin.entrypoint
def remove_stage(stage):
    """Remove stage: readers killed, view unmounted, tree deleted.

    A stage this daemon made (its readers are ended first), or one that
    no process holds: what a crash left. The lock goes last, even when
    the removal fails (recover tries again).

    :returns: True if it was removed; False if it does not exist or
        another process holds it (a live snapshot, left alone).
    :raises PrivilegedCallRefused: stage is not a stage's path.
    :raises MountBusy: its view is in use by something that would not
        die; the stage stays.
    """
    check_stage('remove_stage', stage)
    with _held_lock:
        held = _held.pop(stage, None)
    if held is not None:
        _end(held.readers)
        fd = held.lock_fd
    else:
        if not os.path.lexists(stage):
            return False
        fd = _lock(stage)
        if fd is None:
            return False
    try:
        if not os.path.lexists(stage):
            # Gone with its root (a destroy during the upload).
            return False
        _kill_holders(stage)
        storage.unmount_tree(stage)
        shutil.rmtree(stage)
    finally:
        os.close(fd)
    return True


@privsep.storage_admin.entrypoint
def stages(rootfs_dir):
    """The snapshot stages of a container's root directory.

    :param rootfs_dir: ``<driver root>/rootfs/<cid>``.
    :returns: list of [stage path, live], sorted: live when a process
        (this daemon or another) holds the stage's lock.
    :raises PrivilegedCallRefused: rootfs_dir is not a root directory.
    """
    rootdirs.check_root_dir('stages', rootfs_dir)
    try:
        names = os.listdir(rootfs_dir)
    except FileNotFoundError:
        return []
    found = []
    for name in sorted(names):
        stage = os.path.join(rootfs_dir, name)
        if not STAGE_RE.match(name) or os.path.islink(stage) or \
                not os.path.isdir(stage):
            continue
        fd = _lock(stage)
        if fd is not None:
            os.close(fd)
        found.append([stage, fd is None])
    return found
