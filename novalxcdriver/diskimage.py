"""Disk images (qcow2, raw with a partition table) as root filesystem trees.

Distributions publish cloud images as whole disks: a partition table (MBR
or GPT) whose partitions hold the root filesystem, an EFI system partition,
a /boot. This module turns one into the directory tree a tarball would
have given (images.py publishes it like any other cache entry), so spawn
does not know the difference. A kernel or boot loader in the image is
ignored: the container runs on the host's kernel.

The whole of ``unpack`` runs in the storage_admin daemon
(privsep.imagecache.unpack_disk_image), on the image that daemon
received into the cache's partial: nova-compute writes nothing there.
Its parsers here are pure Python reads of bounded headers (the format
inspector, the partition table, a superblock's magic, /sbin/init's
name); the ones in C run confined (qemu-img, the tree's copy).

The image comes from a user and is treated as hostile:

1. Its format is read from its content (``classify``) and must be the one
   Glance names (``disk_format``); qemu-img is never left to probe it.
2. A qcow2 must pass oslo.utils' format inspector safety checks (as
   nova.virt.images.do_image_deep_inspection does) and ``qemu-img info``
   checks (``check_info``): no backing file (a hostile qcow2 can name a
   host file, whose content a conversion would copy into the image), no
   external data file, not encrypted, a virtual size within the cache's
   limit. qemu-img runs in the storage_admin daemon as nobody's uid,
   under resource limits (privsep.qemuimg), then ``qemu-img convert -O
   raw`` writes a sparse raw copy (qemu-img(1)).
3. The partition table is parsed here (``partitions``): this host's kernel
   has no partition table parsers (no CONFIG_MSDOS_PARTITION or
   CONFIG_EFI_PARTITION), so ``losetup -P`` shows no partitions; each
   partition is attached as a read-only loop device of its own with its
   offset and size limit (privsep.storage.mount_untrusted).
4. Only ext2/ext3/ext4 (mounted by the ext4 driver), xfs and btrfs
   partitions are mounted (``SUPPORTED``; the filesystem is read from its
   superblock magic), read-only, nosuid, nodev, noexec, without journal
   replay (storage's ``UNTRUSTED_OPTIONS``; mount(8) "FILESYSTEM-SPECIFIC MOUNT
   OPTIONS"), from a read-only loop device, so neither the image nor the
   host is written. The root is the partition holding an executable
   /sbin/init, or the one the image property ``novalxc_root_partition``
   names (``choose_root``).
5. The root's tree is copied by the storage_admin daemon's confined child
   (privsep.unpack.copy_partition, treecopy.copy_tree), as root of a user
   namespace of the unpack range between idmapped views of the partition
   and the rootfs, never as host root: numeric owners, all mode bits, hard
   links, symlinks, FIFOs, mtimes and extended attributes
   (security.capability included) are kept; device nodes, sockets and
   the ``trusted.*`` and ``security.*`` attributes tarball.py leaves out
   are skipped. Regular file sizes, added up, stay within the cache's
   limit, as for a tarball.

The mount and loop devices are undone whatever happens; ``release`` undoes
what a crashed process left in its work directory.

Mounting a filesystem image runs the host kernel's filesystem driver on
data a user wrote: the driver must be trusted to survive a crafted
filesystem (the read-only loop device and mount options do not change
that). Operators who do not want that set ``[lxc] disk_images = false``
(images.py then refuses disk images; only tarballs boot).
"""

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import struct

from oslo_log import log as logging
from oslo_utils.imageutils import format_inspector

from novalxcdriver import disk
from novalxcdriver import exception
from novalxcdriver import loop
from novalxcdriver import mount
from novalxcdriver.privsep import qemuimg
from novalxcdriver.privsep import storage
from novalxcdriver.privsep import unpack as confined

LOG = logging.getLogger(__name__)

ARCHIVE = 'archive'
QCOW2 = 'qcow2'
DISK = 'disk'

# Formats of content a disk image can be, by Glance's disk_format.
_GLANCE_FORMAT = {QCOW2: 'qcow2', DISK: 'raw'}

SECTOR = 512
# Filesystems whose tree can become a rootfs: the ones the storage
# daemon mounts read-only without replaying their journal.
SUPPORTED = tuple(storage.UNTRUSTED_OPTIONS)
# The image property naming the root partition (its number, as Linux
# and sfdisk(8) number them: 1 to 4 for MBR primaries, the entry's index
# plus one for GPT; 0 for a disk without a partition table).
ROOT_PARTITION_PROPERTY = 'novalxc_root_partition'

# (offset, magic, name) of filesystem superblocks: ext2/3/4 s_magic at
# 0x438, xfs sb_magicnum at 0, btrfs magic at 64 KiB + 0x40; the others
# are only named in refusals (NTFS OEM id, FAT32 and FAT12/16 type
# strings, swap's signature at the end of its first 4 KiB page).
_FILESYSTEMS = (
    (0x438, b'\x53\xef', 'ext4'),
    (0, b'XFSB', 'xfs'),
    (0x10040, b'_BHRfS_M', 'btrfs'),
    (3, b'NTFS    ', 'ntfs'),
    (0x52, b'FAT32   ', 'vfat'),
    (0x36, b'FAT', 'vfat'),
    (0xff6, b'SWAPSPACE2', 'swap'),
    (0, b'hsqs', 'squashfs'),
)
FS_PEEK_BYTES = 0x10040 + 8

# Content magic: tarball.py's compressed formats and tar's ustar.
_ARCHIVE_MAGIC = (b'\x1f\x8b', b'\xfd7zXZ\x00', b'BZh', b'\x28\xb5\x2f\xfd')
_QCOW2_MAGIC = b'QFI\xfb'
_ISO_OFFSET = 0x8001
_GPT_SIGNATURE = b'EFI PART'
CLASSIFY_PEEK_BYTES = max(FS_PEEK_BYTES, _ISO_OFFSET + 5)

# MBR: four 16-byte entries at 446, signature 0x55 0xaa at 510; type 0xee
# is GPT's protective entry; 0x05, 0x0f and 0x85 are extended partitions
# (their logical partitions are not read).
_MBR_ENTRIES = 446
_MBR_GPT = 0xee
_MBR_EXTENDED = (0x05, 0x0f, 0x85)
# UEFI spec 2.10, 5.3: GPT header at LBA 1, entries of at least 128 bytes.
_GPT_MAX_ENTRIES = 1024
_GPT_MAX_ENTRY_SIZE = 4096

# qemu-img info as nova.virt.images runs it: 30 s of CPU, 1 GiB of address
# space (a crafted image must not take the host's memory); convert needs
# more of both for a large image.
INFO_LIMITS = dict(timeout=60, cpu_time=30, address_space=1 << 30)
CONVERT_LIMITS = dict(timeout=900, cpu_time=600, address_space=2 << 30)
# exit codes of a qemu-img killed at its CPU limit (SIGXCPU) or by the
# kernel (SIGKILL, e.g. the OOM killer).
_KILLED_AT_LIMIT = (-signal.SIGXCPU, -signal.SIGKILL)
# The copy of the root partition's files (privsep.unpack.copy_partition).
COPY_TIMEOUT = 900

# What unpack makes in its work directory, besides the fetched image
# (images.py names it 'archive').
RAW_FILE = qemuimg.RAW
MOUNT_DIR = confined.PARTITION
FETCHED_FILE = qemuimg.ARCHIVE


@dataclasses.dataclass(frozen=True)
class Partition:
    """One partition of a disk image.

    :ivar number: Linux's partition number; 0 is the whole disk (no table).
    :ivar offset: bytes from the start of the disk.
    :ivar size: bytes.
    """

    number: int
    offset: int
    size: int


# -- pure helpers ----------------------------------------------------------

def classify(head):
    """What an image's first bytes are.

    :param head: the first CLASSIFY_PEEK_BYTES bytes (or all, if fewer).
    :returns: ARCHIVE (a tar, plain or compressed: tarball.py's formats),
        QCOW2, DISK (a partition table, MBR or GPT, or a bare filesystem
        of SUPPORTED), or None for anything else (tarball.py names it in
        its refusal). An ISO 9660 image is None even with a boot sector.
    """
    if head.startswith(_ARCHIVE_MAGIC) or head[257:262] == b'ustar':
        return ARCHIVE
    if head.startswith(_QCOW2_MAGIC):
        return QCOW2
    if head[_ISO_OFFSET:_ISO_OFFSET + 5] == b'CD001':
        return None
    if head[510:512] == b'\x55\xaa' or head[512:520] == _GPT_SIGNATURE:
        return DISK
    if filesystem(head) in SUPPORTED:
        return DISK
    return None


def check_format(kind, disk_format):
    """Refuse content whose format is not the one Glance names.

    :param kind: classify's answer for the content.
    :param disk_format: Glance's disk_format, or None when unknown (the
        content decides).
    :raises DiskImageRefused: they differ.
    """
    if disk_format is None:
        return
    expected = _GLANCE_FORMAT.get(kind, 'raw')
    if disk_format != expected:
        what = {QCOW2: 'a qcow2 image', DISK: 'a raw disk image',
                ARCHIVE: 'a rootfs tarball'}.get(kind, 'unrecognised data')
        raise exception.DiskImageRefused(
            reason='the image is disk_format=%s but its content is %s'
                   % (disk_format, what))


def check_info(info, disk_format, max_bytes):
    """Check ``qemu-img info --output=json`` of an image before converting.

    :param info: the parsed JSON (dict): qemu-img(1) "info", keys
        "format", "virtual-size" (bytes), "backing-filename",
        "full-backing-filename", "encrypted", "format-specific".
    :param disk_format: the format Glance names (and qemu-img was told).
    :param max_bytes: the largest virtual size accepted.
    :raises DiskImageRefused: another format, a backing file, an external
        data file, encryption, or a virtual size above max_bytes.
    """
    if not isinstance(info, dict):
        raise exception.DiskImageRefused(reason='qemu-img info gave no '
                                                'object')
    if info.get('format') != disk_format:
        raise exception.DiskImageRefused(
            reason='qemu-img reads it as %r, not %s'
                   % (info.get('format'), disk_format))
    for key in ('backing-filename', 'full-backing-filename'):
        if info.get(key):
            raise exception.DiskImageRefused(
                reason='it names a backing file (%.200r): images must be '
                       'self-contained' % info[key])
    data = (info.get('format-specific') or {}).get('data') or {}
    if data.get('data-file'):
        raise exception.DiskImageRefused(
            reason='it names an external data file (%.200r)'
                   % data['data-file'])
    if info.get('encrypted'):
        raise exception.DiskImageRefused(reason='it is encrypted')
    size = info.get('virtual-size')
    if type(size) is not int or size < 0:
        raise exception.DiskImageRefused(
            reason='qemu-img gives no virtual size')
    if size > max_bytes:
        raise exception.DiskImageRefused(
            reason='its virtual size of %d bytes exceeds the limit of %d '
                   'bytes ([lxc] image_max_unpacked_gib)' % (size,
                                                             max_bytes))


def filesystem(head):
    """The filesystem whose superblock starts head, or None.

    :param head: the first FS_PEEK_BYTES bytes of a partition.
    :returns: one of SUPPORTED, or 'ntfs', 'vfat', 'swap', 'squashfs'
        (named in refusals), or None.
    """
    for offset, magic, name in _FILESYSTEMS:
        if head[offset:offset + len(magic)] == magic:
            return name
    return None


def partitions(read_at, disk_size):
    """The partitions of a disk image, from its MBR or GPT.

    Entries that do not fit in the disk are left out; logical partitions
    inside an MBR extended partition are not read.

    :param read_at: callable(offset, length) -> bytes of the disk.
    :param disk_size: bytes.
    :returns: list of Partition by number; [Partition(0, 0, disk_size)]
        when there is no partition table, or no usable entry in an MBR
        (a bare filesystem).
    """
    mbr = read_at(0, SECTOR)
    if mbr[510:512] != b'\x55\xaa':
        return [Partition(0, 0, disk_size)]
    entries = [struct.unpack_from('<4xB3xII', mbr, _MBR_ENTRIES + 16 * i)
               for i in range(4)]
    if any(kind == _MBR_GPT for kind, _, _ in entries):
        found = _gpt(read_at, disk_size)
        if found is not None:
            return found
    result = []
    for i, (kind, start, count) in enumerate(entries):
        if kind == 0 or kind in _MBR_EXTENDED or kind == _MBR_GPT:
            continue
        part = Partition(i + 1, start * SECTOR, count * SECTOR)
        if _fits(part, disk_size):
            result.append(part)
    if not result:
        # A boot sector signature without a usable partition: a bare
        # filesystem (FAT and NTFS have one; their boot code fills the
        # table's place).
        return [Partition(0, 0, disk_size)]
    return result


def _gpt(read_at, disk_size):
    header = read_at(SECTOR, 92)
    if header[:8] != _GPT_SIGNATURE:
        return None
    entries_lba, count, entry_size = struct.unpack_from('<QII', header, 72)
    if not (128 <= entry_size <= _GPT_MAX_ENTRY_SIZE and entry_size % 8 == 0):
        return None
    count = min(count, _GPT_MAX_ENTRIES)
    table = read_at(entries_lba * SECTOR, count * entry_size)
    result = []
    for i in range(len(table) // entry_size):
        entry = table[i * entry_size:(i + 1) * entry_size]
        if entry[:16] == b'\0' * 16:
            continue
        first, last = struct.unpack_from('<QQ', entry, 32)
        if last < first:
            continue
        part = Partition(i + 1, first * SECTOR, (last - first + 1) * SECTOR)
        if _fits(part, disk_size):
            result.append(part)
    return result


def _fits(part, disk_size):
    return part.size > 0 and part.offset + part.size <= disk_size


def parse_root_partition(value):
    """The image property's partition number.

    :param value: the property's value (str), or None.
    :returns: int >= 0, or None when value is None.
    :raises DiskImageRefused: not a number from 0 to _GPT_MAX_ENTRIES.
    """
    if value is None:
        return None
    text = str(value).strip()
    if not text.isdigit() or int(text) > _GPT_MAX_ENTRIES:
        raise exception.DiskImageRefused(
            reason='image property %s=%.40r is not a partition number'
                   % (ROOT_PARTITION_PROPERTY, value))
    return int(text)


def choose_root(probed, wanted=None):
    """The root partition among probed ones.

    :param probed: list of (Partition, fs, has_init): fs as ``filesystem``
        gives it, has_init True when an executable /sbin/init is there,
        False when not, None when it was not mounted (unsupported fs) or
        could not be (the fs string then says why).
    :param wanted: the number of the image property, or None.
    :returns: the Partition.
    :raises DiskImageRefused: no partition (or not the wanted one) holds
        a root, or several do and none is named; the reason lists what
        each partition is.
    """
    if wanted is not None:
        for part, fs, has_init in probed:
            if part.number == wanted:
                if has_init:
                    return part
                raise exception.DiskImageRefused(
                    reason='partition %d (image property %s) is %s'
                           % (wanted, ROOT_PARTITION_PROPERTY,
                              _describe(fs, has_init)))
        raise exception.DiskImageRefused(
            reason='the image has no partition %d (image property %s); it '
                   'has %s' % (wanted, ROOT_PARTITION_PROPERTY,
                               _listing(probed)))
    roots = [part for part, _, has_init in probed if has_init]
    if len(roots) == 1:
        return roots[0]
    if roots:
        raise exception.DiskImageRefused(
            reason='partitions %s all hold /sbin/init: name the root with '
                   'the image property %s' % (
                       ', '.join(str(p.number) for p in roots),
                       ROOT_PARTITION_PROPERTY))
    raise exception.DiskImageRefused(
        reason='no partition holds a Linux root filesystem (%s with '
               '/sbin/init): %s' % ('/'.join(('ext2/3/4',) + SUPPORTED[1:]),
                                    _listing(probed)))


def _describe(fs, has_init):
    if has_init is None:
        return (fs or 'unrecognised') + (
            '' if fs is None or fs in SUPPORTED or '(' in fs
            else ' (not supported)')
    return '%s %s /sbin/init' % (fs, 'with' if has_init else 'without')


def _listing(probed):
    if not probed:
        return 'no partitions'
    return '; '.join('partition %d: %s' % (part.number,
                                           _describe(fs, has_init))
                     for part, fs, has_init in probed)


# -- on the host -------------------------------------------------------------

def unpack(image_path, kind, disk_format, workdir, dest, max_bytes,
           is_root, root_partition=None):
    """Copy the root filesystem of a disk image into dest.

    :param image_path: the image as received from Glance,
        ``<workdir>/archive`` (removed here once converted).
    :param kind: QCOW2 or DISK (classify's answer).
    :param disk_format: Glance's disk_format, or None (the content's).
    :param workdir: a private directory of the caller (the cache's
        partial), where the raw conversion and mount point go.
    :param dest: an existing, empty directory: the rootfs.
    :param max_bytes: the largest virtual size and file data total.
    :param is_root: callable(directory) -> bool: whether a mounted
        filesystem holds an executable /sbin/init (initsystem.detect_init).
    :param root_partition: the image property ROOT_PARTITION_PROPERTY's
        value (str), or None to find the root.
    :returns: bytes of regular file data copied.
    :raises DiskImageRefused: the image breaks a rule of the module
        docstring, has no usable root, or qemu-img is not installed.
    :raises CommandFailed, CommandTimedOut: qemu-img convert failed (a
        host's problem, such as a full disk, not the image's: qemu-img
        info failing on the image is DiskImageRefused).
    :raises LoopFailed: no loop device could be attached.
    :raises MountFailed, MountBusy: a mount could not be undone.
    """
    check_format(kind, disk_format)
    root_partition = parse_root_partition(root_partition)
    raw = image_path
    if kind == QCOW2:
        raw = os.path.join(workdir, RAW_FILE)
        _convert(workdir, max_bytes)
        os.unlink(image_path)
    size = os.path.getsize(raw)

    def read_at(offset, length):
        with open(raw, 'rb') as f:
            f.seek(offset)
            return f.read(length)

    mnt = os.path.join(workdir, MOUNT_DIR)
    os.mkdir(mnt, 0o700)
    probed = []
    for part in partitions(read_at, size):
        if root_partition is not None and part.number != root_partition:
            continue
        fs = filesystem(read_at(part.offset, min(FS_PEEK_BYTES, part.size)))
        if fs not in SUPPORTED:
            probed.append((part, fs, None))
            continue
        try:
            _mount(raw, part, fs, mnt)
        except exception.MountFailed as e:
            if isinstance(e, exception.MountBusy):
                raise
            # A damaged filesystem: named in the refusal if no other
            # partition is the root.
            probed.append((part, '%s (cannot be mounted: %s)' % (
                fs, e.kwargs.get('reason')), None))
            continue
        try:
            has_init = bool(is_root(mnt))
        finally:
            mount.unmount(mnt)
        probed.append((part, fs, has_init))
    root = choose_root(probed, root_partition)
    fs = [f for p, f, _ in probed if p == root][0]
    with _mounted(raw, root, fs, mnt):
        copied, skipped = confined.copy_partition(dest, max_bytes,
                                                  COPY_TIMEOUT)
    LOG.info('Disk image %s: partition %d (%s) copied, %d bytes of files; '
             '%d device nodes and sockets skipped (LXC makes /dev)',
             image_path, root.number, fs, copied, skipped)
    return copied


def _convert(workdir, max_bytes):
    """qemu-img info checks, then qemu-img convert -O raw (qemu-img(1)).

    qemu-img runs in the storage_admin daemon as nobody's uid
    (privsep.qemuimg), on ``<workdir>/archive``, into
    ``<workdir>/disk.raw``.
    """
    source = os.path.join(workdir, FETCHED_FILE)
    if shutil.which('qemu-img') is None:
        raise exception.DiskImageRefused(
            reason='qcow2 images need qemu-img on the compute host: '
                   'install the Debian package qemu-utils')
    try:
        inspector = format_inspector.detect_file_format(source)
        inspector.safety_check()
    except format_inspector.SafetyCheckFailed as e:
        raise exception.DiskImageRefused(
            reason='it fails the qcow2 safety checks: %s' % e)
    except format_inspector.ImageFormatError as e:
        raise exception.DiskImageRefused(
            reason='its format cannot be told: %s' % e)
    if str(inspector) != QCOW2:
        raise exception.DiskImageRefused(
            reason='it is disk_format=qcow2 but reads as %s' % inspector)
    try:
        out = qemuimg.qcow2_info(workdir, **INFO_LIMITS)
    except exception.CommandFailed as e:
        # Killed at its CPU limit (SIGXCPU, prlimit(1)) or by the kernel.
        raise exception.DiskImageRefused(
            reason='qemu-img info cannot read it%s: %s' % (
                ' within its CPU and memory limits'
                if e.kwargs.get('exit_code') in _KILLED_AT_LIMIT else '',
                e.kwargs.get('stderr'))) from e
    except exception.CommandTimedOut as e:
        raise exception.DiskImageRefused(
            reason='qemu-img info did not read it within %s s'
                   % e.kwargs.get('timeout')) from e
    try:
        info = json.loads(out)
    except ValueError as e:
        raise exception.DiskImageRefused(
            reason='qemu-img info gave no JSON: %s' % e)
    check_info(info, QCOW2, max_bytes)
    if info['virtual-size'] == 0:
        raise exception.DiskImageRefused(reason='its virtual size is 0')
    qemuimg.qcow2_convert(workdir, info['virtual-size'], max_bytes,
                          **CONVERT_LIMITS)


def _mount(raw, part, fs, mnt):
    """Attach part of raw as a read-only loop device, mount it on mnt.

    The device has autoclear set: it goes with the unmount, or at once if
    the mount fails.

    :raises MountFailed: mount(2) failed (nothing is left).
    :raises LoopFailed: no loop device could be attached (nothing is
        left).
    """
    mount.untrusted_partition(raw, mnt, fs, part.offset, part.size)


@contextlib.contextmanager
def _mounted(raw, part, fs, mnt):
    """_mount for the with block; unmounted at its end, whatever happens."""
    _mount(raw, part, fs, mnt)
    try:
        yield mnt
    finally:
        mount.unmount(mnt)


def release(workdir):
    """Undo what a crashed unpack left in workdir: mounts, loop devices.

    Only the mount point and files ``unpack`` makes are looked at: any
    other mount under workdir is left alone (and keeps workdir).

    :raises MountBusy, MountFailed: a mount cannot be undone (the caller
        then keeps the directory).
    """
    mount.unmount_tree(os.path.join(workdir, MOUNT_DIR))
    for name in (RAW_FILE, FETCHED_FILE):
        path = os.path.realpath(os.path.join(workdir, name))
        for device in disk.loop_devices_of(path):
            LOG.warning('Detaching %s, left attached to %s', device, path)
            try:
                loop.detach(device)
            except exception.LoopFailed as e:
                LOG.info('Cannot detach %s: %s', device, e)
