"""The confined unpacker, a child of the storage_admin daemon.

Started by privsep/unpack.py, as root: ``python -m
novalxcdriver.unpackchild --mode tarball|tree|disks|upper --max-bytes N
--max-id M --ready-fd R --go-fd G [--disk NAME=FD ...] [--uid-offset U
--gid-offset G]``. In mode
tarball, the tarball is on stdin (a FIFO) and its working directory is an
idmapped view of the image's new rootfs; in mode tree (a disk image's root
partition), its working directory holds two idmapped views, ``source``
(the partition, read-only) and ``rootfs``; in mode disks (a migration's
disk images, privsep/migrationcopy.py), stdin is the source host's tar
stream and each ``--disk`` names a disk and the fd of its new file, which
the daemon opened; in mode upper (a migration's root without a disk), its
working directory is the new upper layer, its namespace maps the disks'
range, and stdin is the source's tar stream of its upper layer. It loads
everything it will run while it can still read root's files (the
interpreter, tarball.py and the decompressors may live in directories
only root may enter), then leaves root for good:

1. unshare(2) CLONE_NEWUSER: a user namespace of its own;
2. one byte on the ready fd; the daemon writes the namespace's uid_map
   and gid_map (0..size-1 onto ids.unpack_idmap()) and answers on the go
   fd;
3. no supplementary group, then gid and uid 0 of the namespace (host ids
   of the unpack range, which no container and no host user has), not
   dumpable (PR_SET_DUMPABLE 0: a concurrent unpacker has the same host
   uid), no new privileges (prctl(2) PR_SET_NO_NEW_PRIVS), killed with
   the daemon (PR_SET_PDEATHSIG);
4. tarball: tarball.unpack_stream of stdin into '.', owners at most
   --max-id; tree: treecopy.copy_tree of source into rootfs; disks:
   diskstream.receive of stdin into the fds; upper: tarball.unpack_upper
   of stdin into '.'. Except in mode disks, the new tree's filesystem is
   synced every quarter second meanwhile (Writeback), so that the
   daemon's syncfs afterwards finds little left to write.

It prints one JSON object on stdout: ``{"size": N}`` (tree: and
``"skipped": K``; disks: N is the sum of the disks' apparent sizes,
and ``"sizes"`` maps each disk's name to its own; upper: and
``"opaque"``, the directories to mark opaque),
or ``{"error": "UnsafeArchiveMember", "member": ..., "reason": ...}``,
``{"error": "ArchiveError", "reason": ...}``, ``{"error":
"DiskImageRefused", "reason": ...}``, ``{"error": "OSError", "errno":
..., "strerror": ..., "filename": ...}``, and exits 0 only on success.

A spare (``python -m novalxcdriver.unpackchild --spare-fd S``) is the same
child started ahead of its job, its imports done: it waits on the socket
S for one message, ``{"argv": [...], "cwd": path, "fds": [n, ...]}`` with
as many fds (SCM_RIGHTS), puts each fd at the number the daemon gave
(stdin, stdout and stderr at 0, 1 and 2: the numbers a child started
with that argv would have had), enters cwd and runs as above with argv.
The socket's end without a message (the daemon let it go) ends it with
status 0, having done nothing.

Only this module runs here; it is never imported by nova-compute or the
daemon. It lives outside the privsep package, whose import (oslo.privsep,
eventlet) would add about 0.3 s to each start.
"""

import argparse
import ctypes
import errno
import fcntl
import json
import os
import signal
import socket
import sys
import threading

# Loaded as root: nothing is imported once the namespace is entered.
import bz2  # noqa: F401  (tarball.py's decompressors, loaded now)
import gzip  # noqa: F401
import lzma  # noqa: F401

import zstandard  # noqa: F401

from novalxcdriver import diskstream
from novalxcdriver import refusal
from novalxcdriver import tarball
from novalxcdriver import treecopy

# What it unpacks: a tarball from stdin, a tree (a disk image's root
# partition) from its working directory's source/ into rootfs/, or a
# migration's disk images from stdin into the files it was handed.
MODES = ('tarball', 'tree', 'disks', 'upper')

CLONE_NEWUSER = 0x10000000    # sched.h
PR_SET_PDEATHSIG = 1          # prctl.h
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.syncfs.argtypes = (ctypes.c_int,)


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, '%s: %s' % (what, os.strerror(err)))


def confine(libc, ready_fd, go_fd):
    """Steps 1 to 3 of the module docstring.

    :raises OSError: a step failed (the unpack does not start).
    """
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0),
           'prctl(PR_SET_PDEATHSIG)')
    if threading.active_count() != 1:
        # unshare(2): EINVAL in a threaded process.
        raise OSError(0, 'threads were started before the unshare')
    _check(libc.unshare(CLONE_NEWUSER), 'unshare(CLONE_NEWUSER)')
    os.write(ready_fd, b'r')
    if os.read(go_fd, 1) != b'g':
        raise OSError(0, 'the daemon did not map the user namespace')
    os.close(ready_fd)
    os.close(go_fd)
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    # Not dumpable: another unpacker (the same host uid) may not reach
    # this one's files or views through /proc/PID/fd, cwd or root
    # (proc(5), ptrace(2) "access mode checking"). The uid change made it
    # so already unless fs.suid_dumpable is 1.
    _check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0),
           'prctl(PR_SET_DUMPABLE)')
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
           'prctl(PR_SET_NO_NEW_PRIVS)')


# A job's message: its argv, cwd and fd numbers, and the fds themselves.
JOB_BYTES = 64 * 1024
JOB_FDS = 64


def await_job(libc, sock_fd):
    """A spare's wait for its job; the argv to run, or None (let go).

    Killed with the daemon meanwhile (PR_SET_PDEATHSIG, as confine sets
    it again). The job's fds are put where it says, its cwd entered, the
    socket closed.

    :raises OSError: a step failed, or the message is not a job (the
        spare then fails as a child whose confinement failed).
    """
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0),
           'prctl(PR_SET_PDEATHSIG)')
    sock = socket.socket(fileno=sock_fd)
    try:
        data, fds, _flags, _addr = socket.recv_fds(sock, JOB_BYTES, JOB_FDS)
    finally:
        sock.close()
    try:
        job = json.loads(data) if data else None
        if job is None:
            return None
        argv, cwd, targets = job['argv'], job['cwd'], job['fds']
        if not (isinstance(argv, list) and isinstance(cwd, str) and
                isinstance(targets, list) and len(targets) == len(fds) and
                all(isinstance(a, str) for a in argv) and
                all(type(n) is int and n >= 0 for n in targets) and
                len(set(targets)) == len(targets)):
            raise ValueError('not a job')
    except (ValueError, KeyError, TypeError) as e:
        for fd in fds:
            os.close(fd)
        raise OSError(errno.EINVAL, 'the spare\'s job: %s' % e)
    place(fds, targets)
    os.chdir(cwd)
    return argv


def place(fds, targets):
    """Move each of fds to the number in targets at its index.

    0, 1 and 2 are replaced; any other target must be free (nothing
    this process opened is closed by it).

    :raises OSError: EBUSY, a target in use.
    """
    # Above every number in play first, so that no move closes another.
    top = max(fds + targets) + 1
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, top) for fd in fds]
    for fd in fds:
        os.close(fd)
    for fd, target in zip(moved, targets):
        if target > 2 and _is_open(target):
            for left in moved:
                os.close(left)
            raise OSError(errno.EBUSY, 'fd %d is in use' % target)
    for fd, target in zip(moved, targets):
        os.dup2(fd, target)
        os.close(fd)


def _is_open(fd):
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return False
    return True


def _disk_arg(text):
    name, _sep, fd = text.partition('=')
    return name, int(fd)


def run(argv=None):
    """Confine, unpack; returns (exit status, JSON-able result)."""
    parser = argparse.ArgumentParser(prog='unpackchild')
    parser.add_argument('--mode', choices=MODES, default='tarball')
    parser.add_argument('--max-bytes', type=int, required=True)
    parser.add_argument('--max-id', type=int, required=True)
    parser.add_argument('--ready-fd', type=int, required=True)
    parser.add_argument('--go-fd', type=int, required=True)
    parser.add_argument('--disk', action='append', default=[],
                        type=_disk_arg, help='NAME=FD (mode disks)')
    parser.add_argument('--uid-offset', type=int, default=0,
                        help='taken off owners (mode upper)')
    parser.add_argument('--gid-offset', type=int, default=0)
    args = parser.parse_args(argv)
    try:
        confine(_libc(), args.ready_fd, args.go_fd)
        if args.mode == 'disks':
            # The daemon syncs the files it handed over itself.
            sizes = diskstream.receive(sys.stdin.buffer, dict(args.disk),
                                       args.max_bytes)
            return 0, {'size': sum(sizes.values()), 'sizes': sizes}
        # unpack.COPY_ROOTFS (not imported here); '.' is the new tree.
        with Writeback('rootfs' if args.mode == 'tree' else '.'):
            if args.mode == 'tree':
                # unpack.COPY_SOURCE and COPY_ROOTFS.
                size, skipped = treecopy.copy_tree('source', 'rootfs',
                                                   args.max_bytes)
                return 0, {'size': size, 'skipped': skipped}
            if args.mode == 'upper':
                size, opaque = tarball.unpack_upper(
                    sys.stdin.buffer, '.', args.max_bytes, args.uid_offset,
                    args.gid_offset, args.max_id)
                return 0, {'size': size, 'opaque': opaque}
            size = tarball.unpack_stream(sys.stdin.buffer, '.',
                                         args.max_bytes, max_id=args.max_id)
    except (refusal.DiskImageRefused, refusal.UnsafeArchiveMember,
            refusal.ArchiveError, OSError) as e:
        return 1, failure(e)
    return 0, {'size': size}


def syncfs(fd):
    """syncfs(2) of the filesystem holding fd (which waits for it).

    :raises OSError: the call failed.
    """
    if _LIBC.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, 'syncfs: %s' % os.strerror(err))


class Writeback:
    """While in it, a thread syncs path's filesystem every INTERVAL s.

    The daemon syncs the tree before it publishes it (privsep/imagecache.py,
    disks.sync_filesystem) and nova-compute waits for that; nothing writes
    it back before (vm.dirty_expire_centisecs is 30 s). Syncing as the
    tree is written overlaps the write-back with the unpack: a Debian
    root (8,600 files) at 1 Gbit/s, on a fresh ext4, waited 0.28 s for
    its final syncfs, and 0.08 to 0.12 s with these. A failed call here
    is not reported: the daemon's own syncfs, which follows, is the one
    that counts (and fails the same way).
    """

    INTERVAL = 0.25   # seconds

    def __init__(self, path):
        self._path = path
        self._stopped = threading.Event()
        self._thread = None
        self._fd = None

    def __enter__(self):
        try:
            # The daemon made path; a link there (never the image's to
            # write) is not followed to another filesystem.
            self._fd = os.open(self._path, os.O_RDONLY | os.O_DIRECTORY |
                               os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            # The unpack, which writes there, says what is wrong.
            return self
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='writeback')
        self._thread.start()
        return self

    def _run(self):
        while not self._stopped.wait(self.INTERVAL):
            try:
                syncfs(self._fd)
            except OSError:
                pass

    def __exit__(self, *exc):
        if self._thread is None:
            return
        self._stopped.set()
        # A syncfs under way ends first: the daemon's would wait for it.
        self._thread.join()
        os.close(self._fd)


def failure(error):
    """What the child prints for error, a refusal or an OSError.

    :returns: a JSON-able dict, ``{"error": <class name>, ...}`` as the
        module docstring gives; privsep/unpack.py's _outcome raises the
        matching exception.py class (or OSError) from it.
    """
    if isinstance(error, refusal.UnsafeArchiveMember):
        return {'error': 'UnsafeArchiveMember',
                'member': str(error.kwargs.get('member')),
                'reason': str(error.kwargs.get('reason'))}
    for kind in (refusal.DiskImageRefused, refusal.ArchiveError):
        if isinstance(error, kind):
            return {'error': kind.__name__,
                    'reason': str(error.kwargs.get('reason'))}
    result = {'error': 'OSError', 'errno': error.errno or 0,
              'strerror': error.strerror or str(error)}
    # symlink(2) and link(2) name the new path second: the first is
    # the link's text, the image's own.
    name = error.filename2 if error.filename2 is not None else error.filename
    if name is not None:
        # Relative to the child's working directory.
        result['filename'] = os.fsdecode(name)
    return result


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['--spare-fd'] and len(argv) == 2:
        try:
            argv = await_job(_libc(), int(argv[1]))
        except OSError as e:
            sys.stdout.write(json.dumps(failure(e)) + '\n')
            sys.stdout.flush()
            return 1
        if argv is None:
            return 0
    status, result = run(argv)
    sys.stdout.write(json.dumps(result) + '\n')
    sys.stdout.flush()
    return status


if __name__ == '__main__':
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Without Python's teardown (10 to 20 ms of freeing every object,
    # which the daemon's finish waits for): all that was written is in
    # the kernel's hands (the tree's files closed, stdout flushed), and
    # the Writeback thread was joined.
    os._exit(status)
