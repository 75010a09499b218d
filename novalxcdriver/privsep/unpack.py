"""An image's tarball unpacked by a confined child (``storage_admin``).

A Glance image is hostile input: libarchive, tarball.py's filter and the C
decompressors (zlib, lzma, bz2, zstd) all parse it. None of them runs as
host root. The daemon starts unpackchild.py, which loads its code as root
and then enters a user namespace of its own mapping ids 0..65535 onto
:func:`novalxcdriver.ids.unpack_idmap` (the top of root's subordinate
ranges, which IdAllocator never gives a container). It unpacks into an
idmapped bind of the new rootfs (mount_setattr(2) MOUNT_ATTR_IDMAP with
the same range): a file it makes as namespace uid n (host R+n) lands on
disk owned by n, as root's unpack made it, setuid bits and file
capabilities included, so the image cache's layout does not change. A bug
in the unpacker can write only as host uids R.., which own nothing: not
the host's files, not a container's, only the rootfs it was given (the
view's) and what "others" may write. Owners above 65535 cannot be mapped
and are refused (tarball.py rule 8).

The flow, for one rootfs (``<driver root>/images/.partial-<image id>-
<pid>-<x>/rootfs``, made by nova-compute's image cache, empty):

1. nova-compute makes a FIFO in its spool (``<driver root>/spool/
   unpack-<pid>-<hex>.fifo``) and opens it for writing (a reader of its
   own first, then closed, so that the open does not block);
2. start: the daemon opens the FIFO for reading (a FIFO, never through a
   link), mounts the view on ``<partial>/view``, starts the child with
   the FIFO as its stdin, maps its namespace and lets it go;
3. nova-compute writes the tarball and closes the FIFO;
4. finish: the daemon waits for the child, unmounts and removes the view
   and returns the bytes unpacked, or raises what the child reported.

cancel kills the child and removes the view (a download that failed).
The daemon keeps one record per running unpack; a crash of nova-compute
leaves the child reading a FIFO without a writer (EOF: it fails), and
the partial (with its view's mount, if the daemon died too) is removed by
the image cache's remove_partials, which unmounts first.

The child's start (an interpreter, its imports) is 0.05 to 0.1 s of a
first boot. With ``[lxc] spare_unpacker``, the daemon keeps one child
started ahead (unpackchild.py's spare: imports done, not yet confined,
killed with the daemon), started by a thread of its own once an unpack
ends (not during one: two cores) or when nova-compute asks
(prepare_spare, at init_host). Step 2 hands a spare, when there is one,
what it would have been started with, over a socket; else it starts a
child.

A disk image's root partition (diskimage.py) is copied by the same child
(``--mode tree``, treecopy.py) in one call, copy_partition: the partition
nova-compute mounted read-only on ``<partial>/mnt`` gets a read-only
idmapped view of the same range, so the child reads the image's files as
their owners 0..65535 of its namespace and writes them so into the
rootfs's view. Both views sit in ``<partial>/copy``, a directory of the
range's root (the child's working directory: it cannot enter the
partial, root's 0700, once confined).
"""

import ctypes.util
import json
import os
import re
import select
import socket
import stat
import subprocess
import sys
import tempfile
import threading

from oslo_log import log as logging

from novalxcdriver import command
from novalxcdriver import conf
from novalxcdriver import exception
from novalxcdriver import ids
from novalxcdriver import mount
from novalxcdriver import privsep
from novalxcdriver.privsep import imagecache
from novalxcdriver.privsep import storage

CONF = conf.CONF
LOG = logging.getLogger(__name__)

CHILD_MODULE = 'novalxcdriver.unpackchild'
# libarchive-c loads os.environ['LIBARCHIVE'], else asks find_library, which
# runs ldconfig -p: about 10 ms of each child's start, so asked once here
# (never from this process's environment). A soname: dlopen(3) looks for it
# in the system's library directories only. None: the child's import fails.
LIBARCHIVE_SONAME = ctypes.util.find_library('archive')
PACKAGE = os.path.dirname(os.path.abspath(privsep.__file__))
VIEW = 'view'
# A disk image's copy: the partition's mount point (diskimage.py mounts
# it), and the child's directory with the two views.
PARTITION = imagecache.PARTITION
COPY = 'copy'
COPY_SOURCE = 'source'
COPY_ROOTFS = 'rootfs'
SPOOL = storage.SPOOL
FIFO_RE = re.compile(r'^unpack-[0-9]+-[0-9a-f]{1,64}\.fifo\Z')
# images/.partial-<image uuid>-<pid>-<mkdtemp's suffix>/rootfs
ROOTFS_RE = re.compile(imagecache.PARTIAL_RE.pattern[:-2] + r'/rootfs\Z')
# Its last words: one JSON object; more is not read.
_MAX_RESULT = 64 * 1024
_STDERR_TAIL = 2000

_running = {}
_running_lock = threading.Lock()


class _Unpack:
    def __init__(self, proc, made, out, err):
        self.proc = proc
        # The directories start made (mount points among them), in order.
        self.made = made
        # Files, not pipes: nobody reads the child's output until it is
        # done, and a full pipe would stop it (and the download with it).
        self.out = out
        self.err = err

    def output(self):
        for f in (self.out, self.err):
            f.seek(0)
        out = self.out.read(_MAX_RESULT)
        self.err.seek(0, os.SEEK_END)
        self.err.seek(max(0, self.err.tell() - _STDERR_TAIL))
        err = self.err.read()
        self.out.close()
        self.err.close()
        return out, err


def check_rootfs(call, rootfs):
    """Refuse rootfs unless it is an image cache partial's, root's.

    :returns: its view's path (``<partial>/view``).
    """
    imagecache.check_named(call, rootfs, ROOTFS_RE, 'the rootfs of an image '
                           'cache partial (<driver root>/images/.partial-'
                           '<image id>-<pid>-<x>/rootfs)')
    try:
        st = os.lstat(rootfs)
    except FileNotFoundError:
        privsep.refuse(call, '%s does not exist' % rootfs)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
        privsep.refuse(call, '%s is not a directory of root\'s' % rootfs)
    return os.path.join(os.path.dirname(rootfs), VIEW)


def _open_fifo(call, fifo):
    """fifo's read end, blocking once open; never through a link."""
    return storage.open_spool_fifo(call, fifo, FIFO_RE, 'an unpack FIFO',
                                   write=False)


def _child_argv(max_bytes, ready_fd, go_fd, mode='tarball',
                extra_argv=(), max_id=ids.UNPACK_IDS - 1):
    return [sys.executable, '-m', CHILD_MODULE, '--mode', mode,
            '--max-bytes', str(max_bytes),
            '--max-id', str(max_id),
            '--ready-fd', str(ready_fd), '--go-fd', str(go_fd)] + list(
                extra_argv)


def _child_env():
    # The same code as this daemon's, wherever it was imported from.
    env = {'PATH': '/usr/sbin:/usr/bin:/sbin:/bin', 'LANG': 'C',
           'PYTHONPATH': os.path.dirname(os.path.dirname(PACKAGE))}
    if LIBARCHIVE_SONAME:
        env['LIBARCHIVE'] = LIBARCHIVE_SONAME
    return env


class _Spares:
    """At most one spare child, and the thread that starts it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._spare = None
        self._wanted = threading.Event()
        self._thread = None

    def take(self):
        """The spare, alive and the caller's now: (Popen, socket), or None."""
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None and spare[0].poll() is not None:
            LOG.warning('The spare unpacker %d ended (status %s) before '
                        'it was used', spare[0].pid, spare[0].returncode)
            spare[1].close()
            return None
        return spare

    def want(self):
        """Have a spare started, if none is (returns at once)."""
        if not CONF.lxc.spare_unpacker:
            return
        with self._lock:
            if self._thread is None:
                # Its own thread for good: PR_SET_PDEATHSIG kills a child
                # when the thread that started it ends.
                self._thread = threading.Thread(
                    target=self._run, name='spare-unpacker', daemon=True)
                self._thread.start()
        self._wanted.set()

    def _run(self):
        while True:
            self._wanted.wait()
            self._wanted.clear()
            with self._lock:
                if self._spare is not None:
                    continue
            try:
                spare = _start_spare()
            except Exception as e:
                LOG.warning('Cannot start a spare unpacker: %s', e)
                continue
            with self._lock:
                self._spare = spare


_SPARES = _Spares()


def _start_spare():
    """A new spare child: (Popen, the daemon's end of its socket)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        with open(os.devnull, 'r+b') as null:
            proc = _popen([sys.executable, '-m', CHILD_MODULE, '--spare-fd',
                           str(theirs.fileno())], null, null, null, '/',
                          (theirs.fileno(),))
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return proc, ours


def _hand(spare, argv, stdin, out, err, cwd, pass_fds):
    """Give spare the job argv would have started; its Popen.

    :raises OSError: the spare is gone (it is killed and reaped).
    """
    proc, sock = spare
    fds = [stdin, out.fileno(), err.fileno()] + list(pass_fds)
    job = {'argv': argv[3:], 'cwd': cwd, 'fds': [0, 1, 2] + list(pass_fds)}
    try:
        socket.send_fds(sock, [json.dumps(job).encode()], fds)
    except OSError:
        _kill(proc)
        raise
    finally:
        sock.close()
    return proc


@privsep.storage_admin.entrypoint
def prepare_spare():
    """Have the daemon start a spare unpacker now, unless it has one.

    Nothing when ``[lxc] spare_unpacker`` is off. Returns at once.
    """
    _SPARES.want()


def _wait_readable(fd, timeout, what):
    ready, _w, _x = select.select([fd], [], [], timeout)
    if not ready:
        raise exception.CommandTimedOut(cmd=what, timeout=timeout)


def _kill(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _remove(made):
    """Unmount and remove made's directories, the last made first."""
    for path in reversed(made):
        # EINVAL (not a mount point) is no failure.
        storage._unmount(path)
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass


def _claim(call, rootfs):
    with _running_lock:
        if rootfs in _running:
            privsep.refuse(call, '%s is being unpacked already' % rootfs)
        if os.listdir(rootfs):
            privsep.refuse(call, '%s is not empty' % rootfs)
        _running[rootfs] = None


def _unclaim(rootfs):
    with _running_lock:
        del _running[rootfs]


@privsep.storage_admin.entrypoint
def start_unpack(rootfs, fifo, max_bytes):
    """Start the confined child unpacking fifo's tarball into rootfs.

    Returns once the child runs in its namespace, reading fifo.

    :param rootfs: an image cache partial's empty rootfs (check_rootfs).
    :param fifo: ``<driver root>/spool/unpack-<pid>-<hex>.fifo``, open for
        writing by the caller.
    :param max_bytes: the most bytes of file data to unpack (> 0).
    :raises PrivilegedCallRefused: the checks, a rootfs not empty or
        already being unpacked.
    :raises IdmapUnavailable: root's subordinate ranges lack the unpack
        range.
    :raises CommandFailed, CommandTimedOut: the child did not start.
    :raises MountFailed: the view could not be mounted.
    """
    call = 'start_unpack'
    view = check_rootfs(call, rootfs)
    privsep.check_positive_ints(call, max_bytes=max_bytes)
    # Claimed under the lock, started outside it: a slow start (the
    # child's imports) holds no other unpack up.
    _claim(call, rootfs)
    try:
        held = _start(call, [(view, False)], [(rootfs, view, 0)],
                      lambda: _open_fifo(call, fifo), 'tarball', max_bytes)
    except BaseException:
        _unclaim(rootfs)
        raise
    with _running_lock:
        _running[rootfs] = held


def _start(call, dirs, mounts, open_stdin, mode, max_bytes, extra_argv=(),
           pass_fds=(), cwd=None, view_namespace=None):
    """Start the child in mode once its rootfs is claimed; the _Unpack.

    :param dirs: [(path, owned)] to make, 0700, in order (refused if one
        exists), owned by the unpack range's root if owned, root's
        otherwise; the first is the child's working directory (``/``
        when there is none).
    :param mounts: [(source, target, extra mount_setattr flags)]: the
        idmapped views.
    :param open_stdin: callable returning the child's stdin (an fd).
    :param extra_argv: more arguments for the child.
    :param pass_fds: more fds the child inherits (its files).
    :param cwd: its working directory when dirs is empty (default ``/``).
    :param view_namespace: the held user namespace (storage.
        held_namespace) the views are idmapped with; default: the unpack
        range's, storage.user_namespace.
    """
    idmap = ids.unpack_idmap()
    made = []
    proc = stdin = out = err = None
    fds = []
    try:
        for path, owned in dirs:
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                privsep.refuse(call, '%s exists already' % path)
            made.append(path)
            if owned:
                os.chown(path, idmap.uid_start, idmap.gid_start)
        out = tempfile.TemporaryFile()
        err = tempfile.TemporaryFile()
        stdin = open_stdin()
        with view_namespace or storage.user_namespace(idmap) as userns_fd:
            for source, target, attr in mounts:
                storage._idmapped(source, target, userns_fd, attr)
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        fds = [ready_r, ready_w, go_r, go_w]
        argv = _child_argv(max_bytes, ready_w, go_r, mode, extra_argv,
                           idmap.size - 1)
        cwd = made[0] if made else (cwd or '/')
        pass_fds = (ready_w, go_r) + tuple(pass_fds)
        proc = _launch(argv, stdin, out, err, cwd, pass_fds)
        os.close(ready_w)
        os.close(go_r)
        fds = [ready_r, go_w]
        _wait_readable(ready_r, CONF.lxc.command_timeout,
                       'unpacker unshare')
        if os.read(ready_r, 1) != b'r':
            status = proc.wait()
            raise exception.CommandFailed(
                cmd=CHILD_MODULE, exit_code=status,
                stderr=_Unpack(proc, made, out, err).output()[1].decode(
                    errors='replace'))
        storage._map_writer([(0, idmap.uid_start, idmap.size)],
                            [(0, idmap.gid_start, idmap.size)])(proc.pid)
        os.write(go_w, b'g')
    except BaseException:
        if proc is not None:
            _kill(proc)
        _remove(made)
        for f in (out, err):
            if f is not None:
                f.close()
        raise
    finally:
        if stdin is not None:
            os.close(stdin)
        for fd in fds:
            os.close(fd)
    return _Unpack(proc, made, out, err)


def _launch(argv, stdin, out, err, cwd, pass_fds):
    """The child running argv: the spare given it, else a new one."""
    spare = _SPARES.take()
    if spare is not None:
        try:
            return _hand(spare, argv, stdin, out, err, cwd, pass_fds)
        except OSError as e:
            LOG.warning('The spare unpacker could not take its job (%s): '
                        'starting another', e)
    return _popen(argv, stdin, out, err, cwd, pass_fds)


def _popen(argv, stdin, stdout, stderr, cwd, pass_fds):
    """A new child process (a spare or an unpacker) running argv."""
    # umask 022: the daemon's is 0, and libarchive makes missing parents
    # with the default mode.
    return subprocess.Popen(
        argv, stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd,
        pass_fds=pass_fds, close_fds=True, umask=0o022, env=_child_env())


def _held(call, rootfs):
    check_rootfs(call, rootfs)
    with _running_lock:
        held = _running.get(rootfs)
        if held is not None:
            del _running[rootfs]
    if held is None:
        # None: not started, or its start still running.
        privsep.refuse(call, '%s is not being unpacked (start_unpack)'
                       % rootfs)
    return held


@privsep.storage_admin.entrypoint
def finish_unpack(rootfs, timeout):
    """Wait for rootfs's unpacker; the bytes of file data it unpacked.

    The view is unmounted and removed whatever the outcome.

    :param timeout: seconds to wait after the caller closed the FIFO.
    :raises PrivilegedCallRefused: no unpack of rootfs is running.
    :raises UnsafeArchiveMember, ArchiveError: the tarball was refused (as
        tarball.unpack_stream raises them).
    :raises OSError: writing the rootfs failed (e.g. ENOSPC).
    """
    held = _held('finish_unpack', rootfs)
    return _wait(held, timeout, lambda: exception.ArchiveError(
        reason='the unpacker did not finish within %s s of the end of the '
               'download' % timeout))['size']


def _wait(held, timeout, late):
    """The child's outcome (_outcome) once it ends; its views removed.

    :param late: callable() -> the exception raised when the child is
        still running after timeout seconds (it is killed first).
    """
    try:
        try:
            command.wait_exit(held.proc, timeout)
        except subprocess.TimeoutExpired:
            _kill(held.proc)
            raise late()
        finally:
            _remove(held.made)
    finally:
        # Read and closed whatever happened (a view that cannot be
        # removed would otherwise leave the daemon two open files).
        out, err = held.output()
        _SPARES.want()
    return _outcome(held.proc.returncode, out, err)


def _outcome(returncode, out, err):
    """The child's result object, or the exception it reported."""
    tail = err[-_STDERR_TAIL:].decode(errors='replace').strip()
    try:
        result = json.loads(out[:_MAX_RESULT].decode().splitlines()[-1])
    except (ValueError, IndexError, UnicodeDecodeError):
        result = None
    if returncode == 0 and isinstance(result, dict) and \
            type(result.get('size')) is int:
        return result
    if isinstance(result, dict):
        kind = result.get('error')
        if kind == 'DiskImageRefused':
            raise exception.DiskImageRefused(reason=str(result.get('reason')))
        if kind == 'UnsafeArchiveMember':
            raise exception.UnsafeArchiveMember(
                member=str(result.get('member')),
                reason=str(result.get('reason')))
        if kind == 'ArchiveError':
            raise exception.ArchiveError(reason=str(result.get('reason')))
        if kind == 'OSError' and type(result.get('errno')) is int:
            strerror = str(result.get('strerror'))
            if isinstance(result.get('filename'), str):
                # In the message: privsep sends an exception's args only,
                # and OSError's filename is not one of them.
                strerror = '%s: %r' % (strerror, result['filename'])
            raise OSError(result['errno'], strerror)
    how = ('killed by signal %d' % -returncode if returncode < 0
           else 'exit status %d' % returncode)
    raise exception.ArchiveError(reason='the unpacker failed (%s): %s'
                                 % (how, tail or 'no message'))


@privsep.storage_admin.entrypoint
def cancel_unpack(rootfs):
    """Kill rootfs's unpacker and remove its view (a failed download).

    :raises PrivilegedCallRefused: no unpack of rootfs is running.
    """
    held = _held('cancel_unpack', rootfs)
    try:
        _kill(held.proc)
    finally:
        try:
            _remove(held.made)
        finally:
            held.output()
            _SPARES.want()


def _check_partition(call, partition):
    """Refuse unless a read-only mount is on partition."""
    if mount.top(partition) is None:
        privsep.refuse(call, 'nothing is mounted on %s' % partition)
    if not os.statvfs(partition).f_flag & os.ST_RDONLY:
        privsep.refuse(call, '%s is mounted read-write' % partition)


@privsep.storage_admin.entrypoint
def copy_partition(rootfs, max_bytes, timeout):
    """Copy the partition mounted on rootfs's ``<partial>/mnt`` into it.

    By the confined child (module docstring), through idmapped views in
    ``<partial>/copy``, which are unmounted and removed whatever happens.
    Files keep their owners, modes, links, times and the xattrs
    treecopy.copy_tree keeps.

    :param rootfs: an image cache partial's empty rootfs (check_rootfs).
    :param max_bytes: the most bytes of file data (> 0).
    :param timeout: seconds the copy may take (> 0); the child is killed
        after.
    :returns: (bytes of file data copied, device nodes and sockets
        skipped).
    :raises PrivilegedCallRefused: the checks, no read-only mount on
        ``<partial>/mnt``, a rootfs not empty or being unpacked.
    :raises DiskImageRefused: the image's files break treecopy's rules or
        the limit, or the copy took longer than timeout.
    :raises OSError: reading or writing failed (e.g. ENOSPC).
    :raises CommandFailed, CommandTimedOut, MountFailed: as start_unpack.
    """
    call = 'copy_partition'
    check_rootfs(call, rootfs)
    privsep.check_positive_ints(call, max_bytes=max_bytes)
    if type(timeout) not in (int, float) or not 0 < timeout < float('inf'):
        privsep.refuse(call, 'timeout %r is not a positive number of '
                       'seconds' % (timeout,))
    partial = os.path.dirname(rootfs)
    partition = os.path.join(partial, PARTITION)
    _check_partition(call, partition)
    work = os.path.join(partial, COPY)
    source = os.path.join(work, COPY_SOURCE)
    target = os.path.join(work, COPY_ROOTFS)
    _claim(call, rootfs)
    try:
        held = _start(
            call, [(work, True), (source, False), (target, False)],
            [(partition, source, storage._MOUNT_ATTR_RDONLY),
             (rootfs, target, 0)],
            lambda: os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC),
            'tree', max_bytes)
        result = _wait(held, timeout, lambda: exception.DiskImageRefused(
            reason='its copy took longer than %s s' % timeout))
    finally:
        _unclaim(rootfs)
    skipped = result.get('skipped', 0)
    if type(skipped) is not int or skipped < 0:
        raise exception.ArchiveError(
            reason='the unpacker reported %r skipped' % (skipped,))
    return result['size'], skipped
