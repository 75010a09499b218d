"""Loop devices (loop(4)): a file attached in one LOOP_CONFIGURE ioctl.

The driver's disks and the disk images it unpacks are files mounted
through loop devices. losetup(8) costs a process to attach and another to
detach; here a free device comes from /dev/loop-control
(LOOP_CTL_GET_FREE) and is configured in one ioctl (LOOP_CONFIGURE,
Linux 5.8) with its backing file, offset, size limit and flags, autoclear
among them. Autoclear from the start means the device goes with the last
close of it: the unmount of what was mounted from it, or, when nothing
was, the attaching process's own close, even if that process is killed.
No device is ever left attached by a crash.

Numbers and structures: include/uapi/linux/loop.h.
"""

import contextlib
import errno
import fcntl
import os
import struct

from novalxcdriver import exception

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
ATTEMPTS = 16


def _config(backing_fd, name, offset, size, read_only):
    flags = _LO_FLAGS_AUTOCLEAR | (_LO_FLAGS_READ_ONLY if read_only else 0)
    return _LOOP_CONFIG.pack(
        backing_fd, 0,
        0, 0, 0, offset, size,
        0, 0, 0, flags,
        os.fsencode(name)[:_LO_NAME_SIZE - 1], b'', b'',
        0, 0,
        *([0] * 8))


def _configure(path, offset, size, read_only):
    """Configure a free loop device on path; return (device path, its fd).

    :raises LoopFailed: no device could be configured (nothing is left).
    """
    mode = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
    try:
        backing = os.open(path, mode | os.O_NOFOLLOW)
    except OSError as e:
        raise exception.LoopFailed(path=path, reason=e.strerror)
    try:
        config = _config(backing, path, offset, size, read_only)
        control = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
        try:
            for _attempt in range(ATTEMPTS):
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
        % ATTEMPTS)


@contextlib.contextmanager
def attached(path, offset=0, size=0, read_only=False):
    """Attach path to a free loop device for the with block.

    The device has autoclear set: once the block ends it stays only as
    long as something else holds it open, such as a mount made from it
    in the block (and goes with that mount's unmount).

    :param path: the backing file (not followed if a symlink).
    :param offset: bytes into path where the device starts.
    :param size: bytes the device shows; 0 for the rest of the file.
    :param read_only: the device refuses writes.
    :yields: the device's path, '/dev/loopN'.
    :raises LoopFailed: the file cannot be opened or no device configured.
    """
    device, fd = _configure(path, offset, size, read_only)
    try:
        yield device
    finally:
        os.close(fd)


def set_capacity(device):
    """Make device show its backing file's current size (after a grow).

    :raises LoopFailed: the ioctl failed.
    """
    _ioctl(device, _LOOP_SET_CAPACITY, os.O_RDONLY)


def detach(device):
    """Detach device (losetup -d); a mounted one goes with its unmount.

    A device in use only has autoclear set by LOOP_CLR_FD (loop(4)).

    :raises LoopFailed: it is not attached, or the ioctl failed.
    """
    _ioctl(device, _LOOP_CLR_FD, os.O_RDONLY)


def _ioctl(device, request, mode):
    try:
        fd = os.open(device, mode | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, request, 0)
        finally:
            os.close(fd)
    except OSError as e:
        raise exception.LoopFailed(path=device, reason=e.strerror)
