"""Privileged entry points for mounts and loop devices (``storage_admin``).

Every mount the driver makes on the host, and the loop devices its disks
and unpacked disk images are mounted from, are made here, in the privsep
daemon, through the kernel's syscalls (no mount(8), no losetup(8)). Each
entry point first checks, in the daemon, that:

- every path is absolute, normalized and strictly below a driver root of
  the daemon's configuration (:func:`novalxcdriver.privsep.driver_roots`),
  with no symlink below the root: the caller never steers a mount onto
  the host's own directories (lxcfs's mount point alone, for
  detach_lazily, is outside them);
- an idmap is ``[uid_start, gid_start, size]`` inside root's subordinate
  ranges (subuid(5), subgid(5)), so a view it maps is never host root's;
- a loop device is ``/dev/loopN`` backed by a file below a driver root;
- a filesystem is one the driver mounts (FILESYSTEMS, UNTRUSTED_OPTIONS).

A refusal raises PrivilegedCallRefused and mounts nothing; a syscall's
failure comes back as MountFailed, MountBusy or LoopFailed.

Idmapped mounts (mount_setattr(2) with MOUNT_ATTR_IDMAP) show the shared,
unshifted image directory to a container's user namespace as if owned by
its range, without chowning a file; the daemon makes the user namespace
itself from the idmap it is given (held by a clone of its own that only
waits: held_namespace), since an fd does not cross its socket. Overlay
(kernel Documentation/filesystems/overlayfs.rst) stacks a per-container
upper directory on that view; an overlay mount cannot be idmapped
itself, so the idmap goes on the lower layer. Loop devices (loop(4)) are
configured in one LOOP_CONFIGURE ioctl (Linux 5.8) with autoclear, so no
crash leaves one attached. Syscall numbers are x86_64's; structures are
include/uapi/linux/mount.h's and loop.h's.
"""

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import re
import signal
import stat
import struct
import time

from oslo_log import log as logging

from novalxcdriver import conf
from novalxcdriver import exception
from novalxcdriver import ids
from novalxcdriver import mount
from novalxcdriver import privsep
from novalxcdriver.privsep import lxcconf
from novalxcdriver.privsep import writeback

CONF = conf.CONF
LOG = logging.getLogger(__name__)

_libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                        ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.statx.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                        ctypes.c_uint, ctypes.c_char_p)
_libc.clone.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                        ctypes.c_void_p)

# asm/unistd_64.h
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
# linux/mount.h, fcntl.h
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = os.O_CLOEXEC
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_NODEV = 0x4
_MOUNT_ATTR_IDMAP = 0x100000
_MNT_DETACH = 2  # sys/mount.h
_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8

# The driver's own disks (disk.FILESYSTEMS).
FILESYSTEMS = ('ext4', 'btrfs')
# A disk's loop device I/O counters when attached, beside its image
# (Documentation/block/stat.rst): the device is reused by later disks,
# so diagnostics reports the difference.
IO_BASELINE = '.iostat'
SYS_DEV_BLOCK = '/sys/dev/block'
# (fs, offset, magic) of each filesystem's superblock signature: btrfs's
# superblock is at 64 KiB, magic at +0x40; ext4's at 1 KiB, s_magic at
# +0x38 (kernel fs/btrfs/accessors.h, fs/ext4/ext4.h).
_MAGIC = (('btrfs', 0x10040, b'_BHRfS_M'), ('ext4', 0x438, b'\x53\xef'))
# Filesystems of disk images the host does not trust, with the mount(2)
# data that keeps each from writing (mount(8) "FILESYSTEM-SPECIFIC MOUNT
# OPTIONS"): ext4 'noload' does not load (replay) the journal, xfs
# 'norecovery' does not replay the log ('nouuid': two images made from
# one cloud image share a UUID), btrfs 'rescue=nologreplay' does not
# replay the log tree. All need a read-only mount.
UNTRUSTED_OPTIONS = {
    'ext4': 'noload',
    'xfs': 'norecovery,nouuid',
    'btrfs': 'rescue=nologreplay',
}
# Processes a MountBusy message names at most.
_MAX_NAMED = 10
# An unmount found busy while no process holds the mount is tried again
# this many times, this many seconds apart.
_BUSY_RETRIES = 10
_BUSY_RETRY_S = 0.02
_LOOP_RE = re.compile(r'^/dev/loop[0-9]{1,7}\Z')
# nova-compute's directory below a driver root for the FIFOs it shares
# with the daemons (a snapshot's stream, an unpack's tarball).
SPOOL = 'spool'

# loop(4), include/uapi/linux/loop.h.
LOOP_CONTROL = '/dev/loop-control'
_LOOP_CLR_FD = 0x4C01
_LOOP_SET_CAPACITY = 0x4C07
_LOOP_CONFIGURE = 0x4C0A
_LOOP_CTL_GET_FREE = 0x4C82
_LO_FLAGS_READ_ONLY = 1
_LO_FLAGS_AUTOCLEAR = 4
_LO_NAME_SIZE = 64
# struct loop_config: fd, block_size, then struct loop_info64 (lo_device,
# lo_inode, lo_rdevice, lo_offset, lo_sizelimit; lo_number,
# lo_encrypt_type, lo_encrypt_key_size, lo_flags; lo_file_name,
# lo_crypt_name, lo_encrypt_key; lo_init[2]), then __reserved[8]: 304
# bytes, no padding.
_LOOP_CONFIG = struct.Struct('=II5Q4I64s64s32s2Q8Q')
# A device LOOP_CTL_GET_FREE named may be taken by another process before
# LOOP_CONFIGURE (EBUSY): ask again, as losetup does.
LOOP_ATTEMPTS = 16


class _MountAttr(ctypes.Structure):
    # struct mount_attr (MOUNT_ATTR_SIZE_VER0 = 32 bytes)
    _fields_ = [('attr_set', ctypes.c_uint64),
                ('attr_clr', ctypes.c_uint64),
                ('propagation', ctypes.c_uint64),
                ('userns_fd', ctypes.c_uint64)]


# -- checks -------------------------------------------------------------

def check_path(call, path, root_too=False):
    """Refuse path unless it is strictly below a driver root, unaliased.

    Absolute and normalized, and no component below the root is a
    symlink (what exists of it): the kernel would follow one out. Below
    the deepest root that holds it: a root may itself be reached through
    a symlink, or hold another root that is one (the operator's).

    :param root_too: a driver root itself passes too (nothing is ever
        mounted on one, but everything below it may be unmounted).
    """
    if not isinstance(path, str) or not os.path.isabs(path) or \
            os.path.normpath(path) != path or '\0' in path:
        privsep.refuse(call, '%r is not an absolute normalized path'
                       % (path,))
    below = None
    for root in privsep.driver_roots():
        if root_too and path == root:
            return
        top = root.rstrip('/')
        if path.startswith(top + '/') and (below is None or
                                           len(top) > len(below[0])):
            below = (top, path[len(top) + 1:])
    if below is None:
        privsep.refuse(call, '%s is not below a driver root of this '
                       'daemon\'s configuration' % path)
    _refuse_symlinks(call, path, *below)


def _refuse_symlinks(call, path, top, below):
    """Refuse path if a component of below, under top, is a symlink.

    One lstat(2) per component, down to the first that does not exist
    (nothing below it does). Stricter than comparing realpaths, which
    leaves a symlink loop unresolved and so equal to itself.
    """
    current = top
    for name in below.split('/'):
        current += '/' + name
        try:
            mode = os.lstat(current).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as e:
            privsep.refuse(call, '%s: cannot tell whether %s is a symlink '
                           '(%s)' % (path, current, e.strerror))
        if stat.S_ISLNK(mode):
            privsep.refuse(call, '%s goes through a symlink' % path)


# statx(2), include/uapi/linux/stat.h: struct statx is 256 bytes;
# stx_attributes is the u64 at byte 8, stx_attributes_mask the one at 56.
_AT_SYMLINK_NOFOLLOW = 0x100
_STATX_ATTR_MOUNT_ROOT = 0x2000
_STATX_SIZE = 256
_STATX_ATTRIBUTES = struct.Struct('=8xQ')
_STATX_ATTRIBUTES_MASK = struct.Struct('=56xQ')


def is_mount_root(path):
    """True when path, its last component not followed, is a mount's root.

    What ``path in mount.mountpoints()`` says for a path without symlinks,
    from one statx(2) (STATX_ATTR_MOUNT_ROOT, Linux 5.8; idmapped mounts
    need 5.12) instead of a read of the whole mount table, which grows
    with the containers on the host and which the kernel prints under
    the lock every mount(2) takes. A symlink among path's parents is
    followed, as mount(2) follows it.

    :param path: absolute path (str).
    :returns: False when nothing is there.
    :raises OSError: statx failed otherwise, or ENOTSUP: the kernel does
        not report mount roots.
    """
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if _libc.statx(_AT_FDCWD, os.fsencode(path), _AT_SYMLINK_NOFOLLOW, 0,
                   buf) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOENT, errno.ENOTDIR):
            return False
        raise OSError(err, os.strerror(err), path)
    if not _STATX_ATTRIBUTES_MASK.unpack_from(buf)[0] & \
            _STATX_ATTR_MOUNT_ROOT:
        raise OSError(errno.ENOTSUP, 'statx(2) reports no mount roots on '
                      'this kernel', path)
    return bool(_STATX_ATTRIBUTES.unpack_from(buf)[0] &
                _STATX_ATTR_MOUNT_ROOT)


def check_idmap(call, idmap):
    """Refuse idmap unless it is [uid_start, gid_start, size] of root's.

    :returns: ids.Idmap.
    :raises IdmapUnavailable: root's subuid or subgid range is unreadable.
    """
    if not isinstance(idmap, (list, tuple)) or len(idmap) != 3 or \
            any(type(n) is not int for n in idmap) or idmap[2] <= 0:
        privsep.refuse(call, '%r is not [uid_start, gid_start, size]'
                       % (idmap,))
    uid_start, gid_start, size = idmap
    subuids, subgids = ids.read_subordinate_ranges()
    if not (lxcconf.within(uid_start, size, [subuids]) and
            lxcconf.within(gid_start, size, [subgids])):
        privsep.refuse(call, 'idmap %r is not inside root\'s subordinate '
                       'ids' % (idmap,))
    return ids.Idmap(uid_start, gid_start, size)


def check_loop_device(call, device):
    """Refuse device unless it is a loop device backed below a root.

    :raises LoopFailed: it is not attached (any more).
    """
    if not isinstance(device, str) or not _LOOP_RE.match(device):
        privsep.refuse(call, '%r is not a loop device' % (device,))
    backing = backing_file(device)
    if backing is None:
        # Nothing to refuse: detached meanwhile, which callers expect.
        raise exception.LoopFailed(path=device, reason='not attached')
    check_backing(call, backing)


def check_backing(call, backing):
    """Refuse a loop device's backing file unless it is below a root.

    :param backing: as sysfs gives it (backing_file): resolved by the
        kernel, so below a driver root's real path when that root is a
        symlink (mount.py), and followed by ' (deleted)' once unlinked.
    """
    if backing.endswith(' (deleted)'):
        backing = backing[:-len(' (deleted)')]
    for root in privsep.driver_roots():
        real = os.path.realpath(root)
        if real != root and backing.startswith(real.rstrip('/') + '/'):
            backing = os.path.join(root, os.path.relpath(backing, real))
            break
    check_path(call, backing)


def open_spool_fifo(call, fifo, name_re, what, write):
    """A FIFO of a driver root's spool, opened; blocking once open.

    nova-compute makes it (``<driver root>/spool`` is its own) and holds
    the other end. It must be named as name_re says, be a FIFO (looked
    at before the open too: opening a device node can act on its
    device), and is never opened through a link; the open file must be
    what was looked at (samestat).

    :param what: its kind, for the refusal ('an unpack FIFO').
    :param write: True for the write end (nova-compute must be reading:
        ENXIO otherwise), False for the read end.
    :returns: the fd.
    :raises PrivilegedCallRefused: any of the above.
    """
    check_path(call, fifo)
    spool = os.path.dirname(fifo)
    if not name_re.match(os.path.basename(fifo)) or \
            os.path.basename(spool) != SPOOL or \
            os.path.dirname(spool) not in privsep.driver_roots():
        privsep.refuse(call, '%s is not %s of a driver root\'s spool '
                       '(<driver root>/%s/%s)' % (fifo, what, SPOOL,
                                                  name_re.pattern))
    try:
        before = os.lstat(fifo)
    except FileNotFoundError:
        privsep.refuse(call, '%s does not exist' % fifo)
    if not stat.S_ISFIFO(before.st_mode):
        privsep.refuse(call, '%s is not a FIFO' % fifo)
    mode = os.O_WRONLY if write else os.O_RDONLY
    try:
        fd = os.open(fifo, mode | os.O_NONBLOCK | os.O_NOFOLLOW |
                     os.O_CLOEXEC)
    except OSError as e:
        # ENXIO: no reader; ELOOP: a symlink; ENOENT: gone.
        privsep.refuse(call, 'cannot open %s for %s: %s'
                       % (fifo, 'writing' if write else 'reading',
                          e.strerror))
    after = os.fstat(fd)
    if not stat.S_ISFIFO(after.st_mode) or \
            not os.path.samestat(before, after):
        os.close(fd)
        privsep.refuse(call, '%s was replaced while it was opened' % fifo)
    os.set_blocking(fd, True)
    return fd


def backing_file(device):
    """The file behind loop device '/dev/loopN' (sysfs), or None.

    As sysfs gives it: ' (deleted)' follows the path of an unlinked file.
    """
    sysfs = '/sys/block/%s/loop/backing_file' % os.path.basename(device)
    try:
        with open(sysfs) as f:
            return f.read().rstrip('\n')
    except OSError:
        return None


def _check_fstype(call, fstype, allowed):
    if fstype not in allowed:
        privsep.refuse(call, 'filesystem %r is not one of %s'
                       % (fstype, ', '.join(sorted(allowed))))


def _check_size(call, what, n):
    if type(n) is not int or n < 0:
        privsep.refuse(call, '%s %r is not a byte count' % (what, n))


def filesystem_of(path):
    """'btrfs' or 'ext4', from the superblock of the image file at path.

    :raises DiskUnreadable: neither signature is there (not a disk this
        driver made, or a damaged one), or the file is unreadable.
    """
    try:
        # O_NONBLOCK: a FIFO in the image's place must not hold a thread.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK |
                     os.O_CLOEXEC)
        with open(fd, 'rb') as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise exception.DiskUnreadable(path=path,
                                               reason='not a regular file')
            for fs, offset, magic in _MAGIC:
                f.seek(offset)
                if f.read(len(magic)) == magic:
                    return fs
    except OSError as e:
        raise exception.DiskUnreadable(path=path, reason=str(e))
    raise exception.DiskUnreadable(path=path,
                                   reason='no btrfs or ext4 superblock')


# -- syscalls -------------------------------------------------------------

def _check(result, what, target):
    if result < 0:
        err = ctypes.get_errno()
        raise exception.MountFailed(what=what, target=target,
                                    reason=os.strerror(err))
    return result


def _mount(source, target, fstype, flags, data, what):
    _check(_libc.mount(os.fsencode(source), os.fsencode(target),
                       fstype.encode(), flags,
                       data.encode() if data is not None else None),
           what, target)


def _idmapped(source, target, userns_fd, extra_attr):
    """open_tree(2) a clone of source, idmap it, move_mount(2) on target.

    nodev always, plus extra_attr.
    """
    what = 'idmapped view of %s' % source
    tree = _check(_libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(source),
                                _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC),
                  what, target)
    try:
        attr = _MountAttr(_MOUNT_ATTR_IDMAP | _MOUNT_ATTR_NODEV | extra_attr,
                          0, 0, userns_fd)
        _check(_libc.syscall(_SYS_MOUNT_SETATTR, tree, b'', _AT_EMPTY_PATH,
                             ctypes.byref(attr), ctypes.sizeof(attr)),
               what, target)
        _check(_libc.syscall(_SYS_MOVE_MOUNT, tree, b'', _AT_FDCWD,
                             os.fsencode(target), _MOVE_MOUNT_F_EMPTY_PATH),
               what, target)
    finally:
        os.close(tree)


def _unmount(target):
    """umount2(2) without MNT_DETACH; see mount.unmount."""
    for attempt in range(_BUSY_RETRIES + 1):
        if _libc.umount2(os.fsencode(target), 0) == 0:
            return
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return
        if err != errno.EBUSY:
            break
        found = mount.holders(target)
        if found or attempt == _BUSY_RETRIES:
            break
        # Busy with no holder left: one that was just killed (a
        # snapshot reader's unshare(1) helper, whose cwd is the stage)
        # may still be on its way out.
        time.sleep(_BUSY_RETRY_S)
    if err == errno.EBUSY:
        if found:
            names = ', '.join('pid %d (%s)' % h for h in found[:_MAX_NAMED])
            if len(found) > _MAX_NAMED:
                names += ' and %d more' % (len(found) - _MAX_NAMED)
        else:
            names = ('no process of this mount namespace (a mount below '
                     'it, or a kernel user such as a loop device)')
        raise exception.MountBusy(target=target, holders=names)
    raise exception.MountFailed(what='unmount', target=target,
                                reason=os.strerror(err))


def _loop_config(backing_fd, name, offset, size, read_only):
    flags = _LO_FLAGS_AUTOCLEAR | (_LO_FLAGS_READ_ONLY if read_only else 0)
    return _LOOP_CONFIG.pack(
        backing_fd, 0,
        0, 0, 0, offset, size,
        0, 0, 0, flags,
        os.fsencode(name)[:_LO_NAME_SIZE - 1], b'', b'',
        0, 0,
        *([0] * 8))


def _loop_configure(path, offset, size, read_only):
    """Configure a free loop device on path; return (device path, its fd).

    :raises LoopFailed: no device could be configured (nothing is left).
    """
    mode = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
    try:
        backing = os.open(path, mode | os.O_NOFOLLOW)
    except OSError as e:
        raise exception.LoopFailed(path=path, reason=e.strerror)
    try:
        config = _loop_config(backing, path, offset, size, read_only)
        control = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
        try:
            for _attempt in range(LOOP_ATTEMPTS):
                device = '/dev/loop%d' % fcntl.ioctl(control,
                                                     _LOOP_CTL_GET_FREE)
                fd = os.open(device, mode)
                try:
                    fcntl.ioctl(fd, _LOOP_CONFIGURE, config)
                except OSError as e:
                    os.close(fd)
                    if e.errno != errno.EBUSY:
                        raise
                    continue
                return device, fd
        finally:
            os.close(control)
    except OSError as e:
        raise exception.LoopFailed(path=path, reason=e.strerror)
    finally:
        # The device holds its own reference to the file.
        os.close(backing)
    raise exception.LoopFailed(
        path=path, reason='every free device was taken first (%d tries)'
        % LOOP_ATTEMPTS)


@contextlib.contextmanager
def loop_attached(path, offset=0, size=0, read_only=False):
    """Attach path to a free loop device for the with block (autoclear).

    Once the block ends the device stays only as long as something else
    holds it, such as a mount made from it in the block.

    :param offset: bytes into path where the device starts.
    :param size: bytes the device shows; 0 for the rest of the file.
    :yields: the device's path, '/dev/loopN'.
    :raises LoopFailed: the file cannot be opened or no device configured.
    """
    device, fd = _loop_configure(path, offset, size, read_only)
    try:
        yield device
    finally:
        os.close(fd)


def _loop_ioctl(device, request):
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, request, 0)
        finally:
            os.close(fd)
    except OSError as e:
        raise exception.LoopFailed(path=device, reason=e.strerror)


# -- user namespaces for idmapped mounts ------------------------------------

# sched.h: the holder shares the daemon's memory (no copy, no exec) and
# gets a user namespace of its own.
_CLONE_VM = 0x00000100
_CLONE_NEWUSER = 0x10000000
# What the holder runs: pause(3), a C function, on a stack of its own.
_HOLDER_FN = ctypes.cast(_libc.pause, ctypes.c_void_p)
_HOLDER_STACK = 64 * 1024
# The holder's signal mask, through libc: signal.pthread_sigmask turns
# both masks into sets of Signals (about 0.14 ms per holder, against
# 1.4 µs). sigset_t is 1024 bits in glibc (bits/types/__sigset_t.h);
# glibc's pthread_sigmask leaves its own two signals out of a block.
_SIGSET_SIZE = 128
_SIG_BLOCK, _SIG_SETMASK = 0, 2
_pthread_sigmask = _libc.pthread_sigmask
_EVERY_SIGNAL = ctypes.create_string_buffer(_SIGSET_SIZE)
_libc.sigfillset(_EVERY_SIGNAL)


def _clone_holder():
    """Start a process in a new user namespace that only waits.

    clone(2) with CLONE_VM runs pause(3) on a stack of its own in this
    process's memory, as glibc's posix_spawn runs its child: no Python
    runs there, nothing is copied or executed. Every signal but SIGKILL
    is blocked in it (the mask is inherited), so no handler of this
    process runs in it and pause never returns.

    :returns: (pid, stack): the stack must outlive the process.
    :raises OSError: clone(2) failed.
    """
    stack = ctypes.create_string_buffer(_HOLDER_STACK)
    top = (ctypes.addressof(stack) + _HOLDER_STACK) & ~15
    old = ctypes.create_string_buffer(_SIGSET_SIZE)
    err = _pthread_sigmask(_SIG_BLOCK, _EVERY_SIGNAL, old)
    if err:
        raise OSError(err, os.strerror(err))
    try:
        pid = _libc.clone(_HOLDER_FN, top,
                          _CLONE_VM | _CLONE_NEWUSER | signal.SIGCHLD, None)
        err = ctypes.get_errno()
    finally:
        _pthread_sigmask(_SIG_SETMASK, old, None)
    if pid < 0:
        raise OSError(err, os.strerror(err))
    return pid, stack


@contextlib.contextmanager
def held_namespace(write_maps):
    """Yield an open fd of a new user namespace, its maps written.

    The namespace is held by a short-lived process of the daemon's own
    (_clone_holder); write_maps(pid) writes its uid_map and gid_map
    (user_namespaces(7), "Defining user and group ID mappings"). The fd
    alone keeps the namespace alive once the process is gone. (Two
    execs, ``unshare --user cat``, did this before: about 2 ms of CPU
    against 0.4 ms.)

    :raises CommandFailed: clone(2) failed, or a map was refused.
    """
    try:
        pid, stack = _clone_holder()
    except OSError as e:
        raise exception.CommandFailed(
            cmd='clone(CLONE_NEWUSER)', exit_code=e.errno, stderr=str(e))
    fd = None
    try:
        write_maps(pid)
        fd = os.open('/proc/%d/ns/user' % pid, os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        del stack
    try:
        yield fd
    finally:
        os.close(fd)


def _map_writer(uid_lines, gid_lines):
    def write_maps(pid):
        for name, lines in (('uid_map', uid_lines), ('gid_map', gid_lines)):
            path = '/proc/%d/%s' % (pid, name)
            try:
                with open(path, 'w') as f:
                    f.write(''.join('%d %d %d\n' % line for line in lines))
            except OSError as e:
                raise exception.CommandFailed(
                    cmd='writing %s' % path, exit_code=e.errno,
                    stderr=str(e))
    return write_maps


def user_namespace(idmap):
    """A held user namespace mapping idmap's host range to ids 0..size-1.

    :param idmap: ids.Idmap.
    """
    return held_namespace(_map_writer([(0, idmap.uid_start, idmap.size)],
                                      [(0, idmap.gid_start, idmap.size)]))


def shifting_namespace(disk_idmap, idmap):
    """A held user namespace shifting disk_idmap's host ids to idmap's.

    Through an idmapped mount made with it, a file owned by
    ``disk_idmap.uid_start + n`` shows as owned by ``idmap.uid_start +
    n`` (gids alike), and what is written through it lands in
    disk_idmap's range. Id 0 maps to itself: overlayfs makes its work
    directories as the mounter's root, which must be mapped.
    """
    return held_namespace(_map_writer(
        [(disk_idmap.uid_start, idmap.uid_start, idmap.size), (0, 0, 1)],
        [(disk_idmap.gid_start, idmap.gid_start, idmap.size), (0, 0, 1)]))


# -- entry points -----------------------------------------------------------

@privsep.storage_admin.entrypoint
def mount_disk(path, target):
    """Attach the disk image file path to a loop device, mount it on target.

    Mounted nodev, as the filesystem its superblock names (one of
    FILESYSTEMS, filesystem_of). The device has autoclear set: it goes
    with the unmount, or at once if the mount fails.

    :returns: the loop device's path, '/dev/loopN'.
    :raises PrivilegedCallRefused: the checks (module docstring).
    :raises DiskUnreadable: no known filesystem (nothing is attached).
    :raises LoopFailed: no loop device could be attached.
    :raises MountFailed: mount(2) failed (nothing is left).
    """
    call = 'mount_disk'
    check_path(call, path)
    check_path(call, target)
    fstype = filesystem_of(path)
    with loop_attached(path) as device:
        _mount(device, target, fstype, _MS_NODEV, None,
               '%s %s' % (fstype, device))
    # Before the container starts: an earlier user's throttle must not
    # follow the device.
    writeback.clear_attached(device)
    _save_io_baseline(path, device)
    return device


def _save_io_baseline(path, device):
    """Save 'MAJ:MIN <the device's stat>' in ``<path>.iostat``, 0644.

    Bookkeeping for diagnostics only: a failure is logged, and leaves no
    baseline (rather than an earlier attachment's). Made anew, never
    opened through a link.
    """
    baseline = path + IO_BASELINE
    try:
        try:
            os.unlink(baseline)
        except FileNotFoundError:
            pass
        rdev = os.stat(device).st_rdev
        number = '%d:%d' % (os.major(rdev), os.minor(rdev))
        with open(os.path.join(SYS_DEV_BLOCK, number, 'stat')) as f:
            counters = f.read()
        os.umask(0o022)
        fd = os.open(baseline, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                     os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, 'w') as f:
            f.write('%s %s' % (number, counters))
    except OSError as e:
        LOG.warning('Cannot save the I/O counters of %s for %s: %s',
                    device, path, e)


@privsep.storage_admin.entrypoint
def mount_untrusted(path, target, fstype, offset, size):
    """Mount a partition of a disk image read-only for reading its files.

    ro, nosuid, nodev, noexec, with UNTRUSTED_OPTIONS' mount data, from a
    read-only loop device (autoclear) over bytes offset to offset + size
    of path: nothing on it runs or opens a device from the host's side,
    and nothing is written to the image.

    :param fstype: one of UNTRUSTED_OPTIONS.
    :param offset, size: bytes; size 0 for the rest of the file.
    :returns: the loop device's path.
    :raises PrivilegedCallRefused, LoopFailed, MountFailed: as mount_disk.
    """
    call = 'mount_untrusted'
    check_path(call, path)
    check_path(call, target)
    _check_fstype(call, fstype, UNTRUSTED_OPTIONS)
    _check_size(call, 'offset', offset)
    _check_size(call, 'size', size)
    with loop_attached(path, offset=offset, size=size,
                       read_only=True) as device:
        _mount(device, target, fstype,
               _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
               UNTRUSTED_OPTIONS[fstype], '%s %s' % (fstype, device))
    return device


@privsep.storage_admin.entrypoint
def idmapped_bind(source, target, idmap):
    """Bind source on target, read-only and nodev, shifted by idmap.

    A file owned by host uid 0 in source appears owned by
    ``idmap[0]`` (the container's root) under target.

    :param idmap: [uid_start, gid_start, size] (an ids.Idmap's fields).
    :raises PrivilegedCallRefused: the checks (module docstring).
    :raises MountFailed: a syscall failed.
    :raises CommandFailed: no user namespace was made.
    """
    call = 'idmapped_bind'
    check_path(call, source)
    check_path(call, target)
    checked = check_idmap(call, idmap)
    with user_namespace(checked) as userns_fd:
        # Read-only: the shared image is never written through a view.
        _idmapped(source, target, userns_fd, _MOUNT_ATTR_RDONLY)


@privsep.storage_admin.entrypoint
def idmapped_over(target, disk_idmap, idmap):
    """Stack an idmapped bind of the mount at target on target itself.

    Read-write: disks a migration brought, owned in disk_idmap, shown in
    the container's idmap at the paths the rest of the driver uses
    (shifting_namespace). An unmount_tree takes both mounts off.

    :param disk_idmap, idmap: [uid_start, gid_start, size], equal sizes.
    :raises PrivilegedCallRefused, MountFailed, CommandFailed: as
        idmapped_bind.
    """
    call = 'idmapped_over'
    check_path(call, target)
    disk = check_idmap(call, disk_idmap)
    checked = check_idmap(call, idmap)
    if disk.size != checked.size:
        privsep.refuse(call, 'idmaps of %d and %d ids' % (disk.size,
                                                          checked.size))
    with shifting_namespace(disk, checked) as userns_fd:
        _idmapped(target, target, userns_fd, 0)


def _check_overlay_dirs(call, paths, target):
    for path in paths:
        check_path(call, path)
        # Overlay options are comma/colon separated with no escaping.
        if any(c in path for c in ',:\\\n'):
            raise exception.MountFailed(
                what='overlay', target=target,
                reason='unsupported character in path %r' % path)


@privsep.storage_admin.entrypoint
def overlay(lower, upper, work, target):
    """Mount an overlay of upper (read-write) over lower on target.

    Overlayfs keeps the mounter's credentials and checks every access to
    the layers against them too (overlayfs.rst, "Permission model"): what
    a container may do on its root is bounded by this daemon's
    capabilities, hence storage_admin's list.

    :raises PrivilegedCallRefused: the checks (module docstring).
    :raises MountFailed: mount(2) failed, or a path holds ',', ':', '\\'.
    """
    call = 'overlay'
    check_path(call, target)
    _check_overlay_dirs(call, (lower, upper, work), target)
    _mount('overlay', target, 'overlay', 0,
           'lowerdir=%s,upperdir=%s,workdir=%s' % (lower, upper, work),
           'overlay')


@privsep.storage_admin.entrypoint
def overlay_readonly(lowers, target):
    """Mount a read-only overlay of lowers (top first) on target.

    With no upper layer the overlay is read-only by itself (overlayfs.rst,
    "Multiple lower layers"); nosuid and nodev too, since host processes
    read the tree.

    :param lowers: list of directories, the topmost first.
    :raises PrivilegedCallRefused, MountFailed: as overlay.
    """
    call = 'overlay_readonly'
    check_path(call, target)
    if not isinstance(lowers, (list, tuple)) or not lowers:
        privsep.refuse(call, 'lowers %r is not a list of paths' % (lowers,))
    _check_overlay_dirs(call, lowers, target)
    _mount('overlay', target, 'overlay', _MS_RDONLY | _MS_NOSUID | _MS_NODEV,
           'lowerdir=%s' % ':'.join(lowers), 'overlay')


@privsep.storage_admin.entrypoint
def unmount(target):
    """Unmount target; see mount.unmount."""
    check_path('unmount', target)
    _unmount(target)


@privsep.storage_admin.entrypoint
def unmount_tree(top):
    """Unmount everything at or below top, deepest first; mount.unmount_tree.

    top may be a driver root itself (everything of the driver's). The
    daemon's own mountinfo decides what is below top.
    """
    check_path('unmount_tree', top, root_too=True)
    for point in sorted(mount.below(top), key=len, reverse=True):
        _unmount(point)


def detach_lazily(target):
    """Detach lxcfs's mount lazily (umount2(2) MNT_DETACH). Idempotent.

    Only lxcfs's FUSE mount once its daemon died (nothing is deleted under
    it; its users keep it until they let go, as with any lxcfs restart),
    for privsep.daemons.ensure_lxcfs, in the daemon.

    :raises PrivilegedCallRefused: target is not lxcfs's mount point.
    :raises MountFailed: for errors other than 'not mounted'.
    """
    if target != lxcconf.LXCFS_MOUNT:
        privsep.refuse('detach_lazily', '%r is not lxcfs\'s mount point %s'
                       % (target, lxcconf.LXCFS_MOUNT))
    if _libc.umount2(os.fsencode(target), _MNT_DETACH) == 0:
        return
    err = ctypes.get_errno()
    if err not in (errno.EINVAL, errno.ENOENT):
        raise exception.MountFailed(what='lazy unmount', target=target,
                                    reason=os.strerror(err))


@privsep.storage_admin.entrypoint
def loop_set_capacity(device):
    """Make device show its backing file's current size (after a grow).

    :raises PrivilegedCallRefused: not a loop device backed below a root.
    :raises LoopFailed: the ioctl failed.
    """
    check_loop_device('loop_set_capacity', device)
    _loop_ioctl(device, _LOOP_SET_CAPACITY)


@privsep.storage_admin.entrypoint
def loop_detach(device):
    """Detach device (LOOP_CLR_FD); a mounted one goes with its unmount.

    :raises PrivilegedCallRefused: not a loop device backed below a root.
    :raises LoopFailed: it is not attached, or the ioctl failed.
    """
    check_loop_device('loop_detach', device)
    _loop_ioctl(device, _LOOP_CLR_FD)
