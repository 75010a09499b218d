"""Tests for novalxcdriver.diskimage: disk images as rootfs trees."""

import errno
import io
import json
import os
import struct
import tarfile
from unittest import mock

import fixtures

from novalxcdriver import diskimage
from novalxcdriver import exception
from novalxcdriver.privsep import storage
from tests.unit import base

MiB = 1 << 20
GiB = 1 << 30


def qcow2_header(size=GiB, backing=None):
    """The first KiB of a qcow2 v3 image (QEMU docs/interop/qcow2.txt)."""
    backing_offset = 0x200 if backing else 0
    backing = (backing or '').encode()
    header = struct.pack(
        '>4sIQIIQIIQQIIQQQQII', b'QFI\xfb', 3, backing_offset, len(backing),
        16, size, 0, 16, 0x30000, 0x10000, 1, 0, 0, 0, 0, 0, 4, 104)
    data = bytearray(1024)
    data[:len(header)] = header
    data[backing_offset:backing_offset + len(backing)] = backing
    return bytes(data)


def mbr(entries, disk_signature=b'\x55\xaa'):
    """A boot sector with up to 4 (type, start_lba, sectors) entries."""
    data = bytearray(512)
    for i, (kind, start, count) in enumerate(entries):
        struct.pack_into('<4xB3xII', data, 446 + 16 * i, kind, start, count)
    data[510:512] = disk_signature
    return bytes(data)


def gpt(parts, entries=128, entry_size=128):
    """Protective MBR, GPT header at LBA 1, entries at LBA 2.

    :param parts: list of (index, first_lba, last_lba); index from 0.
    """
    data = bytearray(mbr([(0xee, 1, 0xffffffff)]))
    header = bytearray(512)
    header[:8] = b'EFI PART'
    struct.pack_into('<QII', header, 72, 2, entries, entry_size)
    data += header
    table = bytearray(entries * entry_size)
    for index, first, last in parts:
        base_ = index * entry_size
        table[base_:base_ + 16] = b'\x0f' * 16
        struct.pack_into('<QQ', table, base_ + 32, first, last)
    return bytes(data + table)


def reader(data):
    def read_at(offset, length):
        return data[offset:offset + length]
    return read_at


def superblock(fs):
    head = bytearray(diskimage.FS_PEEK_BYTES)
    offset, magic = {'ext4': (0x438, b'\x53\xef'), 'xfs': (0, b'XFSB'),
                     'btrfs': (0x10040, b'_BHRfS_M'),
                     'ntfs': (3, b'NTFS    '),
                     'vfat': (0x52, b'FAT32   ')}[fs]
    head[offset:offset + len(magic)] = magic
    return head


class ClassifyTest(base.TestCase):

    def test_archives(self):
        tar = bytearray(1024)
        tar[257:262] = b'ustar'
        for head in (bytes(tar), b'\x1f\x8b\x08', b'\xfd7zXZ\x00',
                     b'BZh9', b'\x28\xb5\x2f\xfd'):
            self.assertEqual(diskimage.ARCHIVE, diskimage.classify(head))

    def test_qcow2(self):
        self.assertEqual(diskimage.QCOW2,
                         diskimage.classify(qcow2_header()))

    def test_partition_tables_and_bare_filesystems(self):
        for head in (mbr([(0x83, 2048, 2048)]), gpt([(0, 34, 100)]),
                     bytes(superblock('ext4')), bytes(superblock('xfs')),
                     bytes(superblock('btrfs'))):
            self.assertEqual(diskimage.DISK, diskimage.classify(head))

    def test_others_are_left_to_the_tarball_error(self):
        iso = bytearray(0x9000)
        iso[510:512] = b'\x55\xaa'  # a hybrid ISO has a boot sector too
        iso[0x8001:0x8006] = b'CD001'
        for head in (b'', b'KDMV' + b'\0' * 600, b'vhdxfile', bytes(iso),
                     b'hello world', b'\0' * 70000):
            self.assertIsNone(diskimage.classify(head))


class CheckFormatTest(base.TestCase):

    def test_matching_or_unknown(self):
        diskimage.check_format(diskimage.QCOW2, 'qcow2')
        diskimage.check_format(diskimage.DISK, 'raw')
        diskimage.check_format(diskimage.ARCHIVE, 'raw')
        diskimage.check_format(diskimage.QCOW2, None)

    def test_mismatch_refused(self):
        for kind, fmt, what in ((diskimage.QCOW2, 'raw', 'a qcow2 image'),
                                (diskimage.DISK, 'qcow2', 'a raw disk'),
                                (diskimage.ARCHIVE, 'qcow2', 'a rootfs tar'),
                                (None, 'qcow2', 'unrecognised')):
            e = self.assertRaises(exception.DiskImageRefused,
                                  diskimage.check_format, kind, fmt)
            self.assertIn('disk_format=%s' % fmt, str(e))
            self.assertIn(what, str(e))


class CheckInfoTest(base.TestCase):

    GOOD = {'format': 'qcow2', 'virtual-size': 2 * GiB,
            'format-specific': {'type': 'qcow2', 'data': {'compat': '1.1'}}}

    def refused(self, reason, **changes):
        info = dict(self.GOOD, **changes)
        e = self.assertRaises(exception.DiskImageRefused,
                              diskimage.check_info, info, 'qcow2', 4 * GiB)
        self.assertIn(reason, str(e))

    def test_good(self):
        diskimage.check_info(self.GOOD, 'qcow2', 4 * GiB)
        diskimage.check_info(dict(self.GOOD, **{'virtual-size': 4 * GiB}),
                             'qcow2', 4 * GiB)

    def test_backing_file_refused(self):
        self.refused("backing file ('/etc/shadow')",
                     **{'backing-filename': '/etc/shadow'})
        self.refused('backing file', **{'full-backing-filename': '/x'})

    def test_data_file_refused(self):
        self.refused('external data file', **{'format-specific': {
            'type': 'qcow2', 'data': {'data-file': '/dev/sda'}}})

    def test_other_format_refused(self):
        self.refused("reads it as 'raw'", format='raw')

    def test_encrypted_refused(self):
        self.refused('encrypted', encrypted=True)

    def test_too_large_refused(self):
        self.refused('exceeds the limit', **{'virtual-size': 4 * GiB + 1})

    def test_no_size_refused(self):
        for size in (None, '1', -1, 1.5):
            self.refused('no virtual size', **{'virtual-size': size})

    def test_not_an_object(self):
        self.assertRaises(exception.DiskImageRefused, diskimage.check_info,
                          [], 'qcow2', GiB)


class FilesystemTest(base.TestCase):

    def test_magics(self):
        for fs in ('ext4', 'xfs', 'btrfs', 'ntfs', 'vfat'):
            self.assertEqual(fs, diskimage.filesystem(superblock(fs)))
        self.assertIsNone(diskimage.filesystem(b'\0' * 70000))
        self.assertIsNone(diskimage.filesystem(b''))


class PartitionsTest(base.TestCase):

    def test_gpt(self):
        data = gpt([(0, 2048, 4095), (1, 4096, 8191), (14, 34, 2047)])
        found = diskimage.partitions(reader(data), 8192 * 512)
        self.assertEqual([diskimage.Partition(1, 2048 * 512, 2048 * 512),
                          diskimage.Partition(2, 4096 * 512, 4096 * 512),
                          diskimage.Partition(15, 34 * 512, 2014 * 512)],
                         found)

    def test_gpt_entries_beyond_the_disk_or_reversed_left_out(self):
        data = gpt([(0, 2048, 4095), (1, 4096, 99999), (2, 10, 5)])
        self.assertEqual([1], [p.number for p in diskimage.partitions(
            reader(data), 8192 * 512)])

    def test_gpt_bad_entry_size_falls_back_to_mbr(self):
        data = gpt([(0, 2048, 4095)], entry_size=100)
        # Only the protective entry: nothing usable, the whole disk.
        self.assertEqual([diskimage.Partition(0, 0, 8192 * 512)],
                         diskimage.partitions(reader(data), 8192 * 512))

    def test_mbr_primaries(self):
        data = mbr([(0x83, 2048, 2048), (0, 0, 0), (0x0c, 4096, 1024),
                    (0x05, 6000, 100)])
        self.assertEqual([diskimage.Partition(1, 2048 * 512, 2048 * 512),
                          diskimage.Partition(3, 4096 * 512, 1024 * 512)],
                         diskimage.partitions(reader(data), 8192 * 512))

    def test_no_table_is_the_whole_disk(self):
        self.assertEqual([diskimage.Partition(0, 0, 1000)],
                         diskimage.partitions(reader(b'\0' * 1024), 1000))

    def test_boot_sector_without_partitions_is_the_whole_disk(self):
        # A bare NTFS or FAT filesystem has a boot sector signature.
        self.assertEqual([diskimage.Partition(0, 0, MiB)],
                         diskimage.partitions(reader(mbr([])), MiB))


class RootPartitionTest(base.TestCase):

    P1 = diskimage.Partition(1, MiB, MiB)
    P2 = diskimage.Partition(2, 2 * MiB, MiB)
    P3 = diskimage.Partition(3, 3 * MiB, MiB)

    def test_parse(self):
        self.assertIsNone(diskimage.parse_root_partition(None))
        self.assertEqual(2, diskimage.parse_root_partition('2'))
        self.assertEqual(0, diskimage.parse_root_partition(' 0 '))
        for bad in ('', 'sda1', '-1', '1.5', '99999'):
            e = self.assertRaises(exception.DiskImageRefused,
                                  diskimage.parse_root_partition, bad)
            self.assertIn('novalxc_root_partition', str(e))

    def test_the_one_with_init(self):
        probed = [(self.P1, 'vfat', None), (self.P2, 'ext4', True),
                  (self.P3, 'ext4', False)]
        self.assertEqual(self.P2, diskimage.choose_root(probed))

    def test_none_with_init_lists_what_there_is(self):
        probed = [(self.P1, 'ntfs', None), (self.P2, 'ext4', False),
                  (self.P3, None, None)]
        e = self.assertRaises(exception.DiskImageRefused,
                              diskimage.choose_root, probed)
        self.assertIn('no partition holds a Linux root filesystem', str(e))
        self.assertIn('partition 1: ntfs (not supported); partition 2: '
                      'ext4 without /sbin/init; partition 3: unrecognised',
                      str(e))

    def test_no_partitions(self):
        e = self.assertRaises(exception.DiskImageRefused,
                              diskimage.choose_root, [])
        self.assertIn('no partitions', str(e))

    def test_several_with_init_need_the_property(self):
        probed = [(self.P1, 'ext4', True), (self.P2, 'xfs', True)]
        e = self.assertRaises(exception.DiskImageRefused,
                              diskimage.choose_root, probed)
        self.assertIn('partitions 1, 2 all hold /sbin/init', str(e))
        self.assertIn('novalxc_root_partition', str(e))

    def test_wanted(self):
        probed = [(self.P1, 'ext4', True), (self.P2, 'xfs', True)]
        self.assertEqual(self.P2, diskimage.choose_root(probed, 2))

    def test_wanted_without_init_refused(self):
        e = self.assertRaises(exception.DiskImageRefused,
                              diskimage.choose_root,
                              [(self.P2, 'ext4', False)], 2)
        self.assertIn('partition 2 (image property novalxc_root_partition) '
                      'is ext4 without /sbin/init', str(e))

    def test_wanted_missing_refused(self):
        e = self.assertRaises(exception.DiskImageRefused,
                              diskimage.choose_root,
                              [(self.P1, 'ext4', True)], 4)
        self.assertIn('has no partition 4', str(e))


class _HostTest(base.TestCase):
    """unpack with the host layer (loop devices, mount, qemu-img) mocked.

    mount.untrusted_partition (the daemon's loop device and mount, in one
    call) names its loop device after the offset it starts at, so a mount
    tells which partition it shows.
    """

    def setUp(self):
        super().setUp()
        self.work = self.useFixture(fixtures.TempDir()).path
        self.dest = os.path.join(self.work, 'rootfs')
        self.mnt = os.path.join(self.work, 'mnt')
        os.mkdir(self.dest)
        self.qemu = self.patch('novalxcdriver.diskimage.qemuimg',
                               autospec=True)
        self.loop = self.patch('novalxcdriver.diskimage.loop',
                               autospec=True)
        self.mount = self.patch('novalxcdriver.diskimage.mount',
                                autospec=True)
        self.mounted = []
        self.mount.untrusted_partition.side_effect = self._mount_untrusted
        self.copy = self.patch(
            'novalxcdriver.diskimage.confined.copy_partition',
            autospec=True, return_value=(42, 3))
        # Partition 2 (at 3 MiB) is the root.
        self.roots = {'/dev/loop-at-%d' % (3 * MiB)}

    def _mount_untrusted(self, path, target, fstype, offset, size):
        device = '/dev/loop-at-%d' % offset
        self.mounted.append(device)
        return device

    def is_root(self, mnt):
        self.assertEqual(self.mnt, mnt)
        return self.mounted[-1] in self.roots

    def disk(self, fs1='vfat', fs2='ext4', size=8 * MiB):
        """A GPT disk: partition 1 at 1 MiB (fs1), 2 at 3 MiB (fs2)."""
        data = bytearray(gpt([(0, 2048, 6143), (1, 6144, 14335)]))
        data += bytes(size - len(data))
        for offset, fs in ((MiB, fs1), (3 * MiB, fs2)):
            head = superblock(fs)
            data[offset:offset + len(head)] = head
        path = os.path.join(self.work, 'archive')
        with open(path, 'wb') as f:
            f.write(data)
        return path

    def unpack(self, path, kind=diskimage.DISK, disk_format='raw',
               root_partition=None):
        return diskimage.unpack(path, kind, disk_format, self.work,
                                self.dest, 4 * GiB, self.is_root,
                                root_partition)

    def assert_undone(self):
        """Every mount undone (its loop device, autoclear, goes with it)."""
        self.assertEqual([mock.call(self.mnt)] * len(self.mounted),
                         self.mount.unmount.call_args_list)
        # Nothing else for nova-compute to detach.
        self.loop.detach.assert_not_called()


class UnpackTest(_HostTest):

    def test_root_partition_found_mounted_safely_and_copied(self):
        self.assertEqual(42, self.unpack(self.disk()))
        # Only the supported filesystem was mounted (the probe's mount and
        # the copy's), as untrusted: at its offset, its size.
        self.assertEqual(
            [mock.call(os.path.join(self.work, 'archive'), self.mnt, 'ext4',
                       3 * MiB, 4 * MiB)] * 2,
            self.mount.untrusted_partition.call_args_list)
        self.copy.assert_called_once_with(self.dest, 4 * GiB,
                                          diskimage.COPY_TIMEOUT)
        self.assert_undone()
        self.qemu.qcow2_info.assert_not_called()

    def test_mount_options_keep_each_filesystem_from_writing(self):
        # Only filesystems the daemon mounts without replaying a journal.
        self.assertEqual({'ext4': 'noload', 'xfs': 'norecovery,nouuid',
                          'btrfs': 'rescue=nologreplay'},
                         storage.UNTRUSTED_OPTIONS)
        self.assertEqual(sorted(storage.UNTRUSTED_OPTIONS),
                         sorted(diskimage.SUPPORTED))
        self.unpack(self.disk(fs2='xfs'))
        self.assertEqual('xfs',
                         self.mount.untrusted_partition.call_args.args[2])

    def test_no_linux_root_refused_and_undone(self):
        self.roots = set()
        e = self.assertRaises(exception.DiskImageRefused, self.unpack,
                              self.disk())
        self.assertIn('partition 1: vfat (not supported); partition 2: '
                      'ext4 without /sbin/init', str(e))
        self.copy.assert_not_called()
        self.assert_undone()

    def test_windows_image_refused(self):
        e = self.assertRaises(exception.DiskImageRefused, self.unpack,
                              self.disk(fs1='ntfs', fs2='ntfs'))
        self.assertIn('partition 2: ntfs (not supported)', str(e))
        self.mount.untrusted_partition.assert_not_called()

    def test_failed_copy_still_unmounts(self):
        self.copy.side_effect = OSError(errno.ENOSPC, 'No space left')
        self.assertRaises(OSError, self.unpack, self.disk())
        # The probe's mount and the copy's.
        self.assertEqual(2, len(self.mounted))
        self.assert_undone()

    def test_failed_mount_leaves_nothing_and_names_the_reason(self):
        self.mount.untrusted_partition.side_effect = exception.MountFailed(
            what='ext4', target='mnt', reason='Structure needs cleaning')
        e = self.assertRaises(exception.DiskImageRefused, self.unpack,
                              self.disk())
        self.assertIn('partition 2: ext4 (cannot be mounted: Structure '
                      'needs cleaning)', str(e))
        self.mount.untrusted_partition.assert_called_once_with(
            os.path.join(self.work, 'archive'), self.mnt, 'ext4', 3 * MiB,
            4 * MiB)
        # The daemon left no mount and no loop device to undo.
        self.mount.unmount.assert_not_called()
        self.loop.detach.assert_not_called()
        self.copy.assert_not_called()

    def test_probe_unmounted_even_when_is_root_fails(self):
        def is_root(mnt):
            raise OSError(errno.EIO, 'I/O error')

        self.is_root = is_root
        self.assertRaises(OSError, self.unpack, self.disk())
        self.copy.assert_not_called()
        self.assert_undone()

    def test_property_names_the_partition(self):
        self.roots = {'/dev/loop-at-%d' % MiB, '/dev/loop-at-%d' % (3 * MiB)}
        self.unpack(self.disk(fs1='ext4'), root_partition='1')
        self.assertEqual(['/dev/loop-at-%d' % MiB] * 2, self.mounted)
        e = self.assertRaises(exception.DiskImageRefused, self.unpack,
                              self.disk(fs1='ext4'), root_partition='x')
        self.assertIn('not a partition number', str(e))

    def test_bare_filesystem(self):
        path = os.path.join(self.work, 'archive')
        with open(path, 'wb') as f:
            f.write(superblock('ext4') + bytes(MiB))
        self.roots = {'/dev/loop-at-0'}
        self.unpack(path)
        self.mount.untrusted_partition.assert_called_with(
            path, self.mnt, 'ext4', 0, os.path.getsize(path))
        self.assertEqual(['/dev/loop-at-0'] * 2, self.mounted)

    def test_raw_declared_for_qcow2_content_refused(self):
        self.assertRaises(exception.DiskImageRefused, self.unpack,
                          self.disk(), kind=diskimage.QCOW2,
                          disk_format='raw')
        self.mount.untrusted_partition.assert_not_called()


class Qcow2Test(_HostTest):

    def setUp(self):
        super().setUp()
        self.patch('novalxcdriver.diskimage.shutil.which',
                   return_value='/usr/bin/qemu-img')
        self.info = {'format': 'qcow2', 'virtual-size': 8 * MiB}
        self.qemu.qcow2_info.side_effect = (
            lambda *a, **kw: json.dumps(self.info))
        self.qemu.qcow2_convert.side_effect = self._convert

    def _convert(self, workdir, virtual_size, max_bytes, **kwargs):
        dest = os.path.join(workdir, 'disk.raw')
        with open(self.disk(), 'rb') as src, open(dest, 'wb') as dst:
            dst.write(src.read())

    def qcow2(self, **kwargs):
        path = os.path.join(self.work, 'archive')
        with open(path, 'wb') as f:
            f.write(qcow2_header(**kwargs))
        return path

    def test_checked_converted_then_unpacked(self):
        path = self.qcow2()
        self.assertEqual(42, self.unpack(path, diskimage.QCOW2, 'qcow2'))
        self.qemu.qcow2_info.assert_called_once_with(
            self.work, timeout=60, cpu_time=30, address_space=GiB)
        raw = os.path.join(self.work, 'disk.raw')
        self.qemu.qcow2_convert.assert_called_once_with(
            self.work, 8 * MiB, 4 * GiB, timeout=900, cpu_time=600,
            address_space=2 * GiB)
        self.assertFalse(os.path.exists(path))
        self.assertEqual(raw,
                         self.mount.untrusted_partition.call_args.args[0])
        self.assert_undone()

    def test_backing_file_refused_before_qemu_img_runs(self):
        # oslo.utils' inspector reads the header itself.
        e = self.assertRaises(exception.DiskImageRefused, self.unpack,
                              self.qcow2(backing='/etc/shadow'),
                              diskimage.QCOW2, 'qcow2')
        self.assertIn('safety checks', str(e))
        self.qemu.qcow2_info.assert_not_called()
        self.qemu.qcow2_convert.assert_not_called()

    def test_backing_file_qemu_img_reports_refused(self):
        self.info['backing-filename'] = '/var/lib/nova/secret'
        e = self.assertRaises(exception.DiskImageRefused, self.unpack,
                              self.qcow2(), diskimage.QCOW2, 'qcow2')
        self.assertIn('backing file', str(e))
        self.qemu.qcow2_convert.assert_not_called()

    def test_virtual_size_over_the_limit_refused(self):
        self.info['virtual-size'] = 4 * GiB + 1
        e = self.assertRaises(exception.DiskImageRefused, self.unpack,
                              self.qcow2(), diskimage.QCOW2, 'qcow2')
        self.assertIn('exceeds the limit', str(e))
        self.qemu.qcow2_convert.assert_not_called()

    def test_unreadable_by_qemu_img_refused(self):
        for code, words in ((1, 'cannot read it: Image is corrupt'),
                            (-9, 'within its CPU and memory limits'),
                            (-24, 'within its CPU and memory limits'),
                            (-11, 'cannot read it: Image is corrupt')):
            self.qemu.qcow2_info.side_effect = exception.CommandFailed(
                cmd='qemu-img info', exit_code=code,
                stderr='Image is corrupt')
            e = self.assertRaises(exception.DiskImageRefused, self.unpack,
                                  self.qcow2(), diskimage.QCOW2, 'qcow2')
            self.assertIn(words, str(e))
        self.qemu.qcow2_convert.assert_not_called()

    def test_info_timed_out_refused(self):
        self.qemu.qcow2_info.side_effect = exception.CommandTimedOut(
            cmd='qemu-img info', timeout=60)
        e = self.assertRaises(exception.DiskImageRefused, self.unpack,
                              self.qcow2(), diskimage.QCOW2, 'qcow2')
        self.assertIn('did not read it within 60 s', str(e))
        self.qemu.qcow2_convert.assert_not_called()

    def test_empty_image_refused(self):
        self.info['virtual-size'] = 0
        e = self.assertRaises(exception.DiskImageRefused, self.unpack,
                              self.qcow2(), diskimage.QCOW2, 'qcow2')
        self.assertIn('virtual size is 0', str(e))
        self.qemu.qcow2_convert.assert_not_called()

    def test_not_json_refused(self):
        self.qemu.qcow2_info.side_effect = None
        self.qemu.qcow2_info.return_value = 'oops'
        e = self.assertRaises(exception.DiskImageRefused, self.unpack,
                              self.qcow2(), diskimage.QCOW2, 'qcow2')
        self.assertIn('no JSON', str(e))

    def test_without_qemu_img_refused_clearly(self):
        self.patch('novalxcdriver.diskimage.shutil.which', return_value=None)
        e = self.assertRaises(exception.DiskImageRefused, self.unpack,
                              self.qcow2(), diskimage.QCOW2, 'qcow2')
        self.assertIn('install the Debian package qemu-utils', str(e))
        self.qemu.qcow2_info.assert_not_called()


class ReleaseTest(_HostTest):

    def test_unmounts_and_detaches_what_unpack_leaves(self):
        raw = os.path.join(self.work, 'disk.raw')
        open(raw, 'wb').close()
        loops = self.patch('novalxcdriver.diskimage.disk.loop_devices_of',
                           side_effect=lambda p: ['/dev/loop7'] if p == raw
                           else [])
        diskimage.release(self.work)
        self.mount.unmount_tree.assert_called_once_with(
            os.path.join(self.work, 'mnt'))
        self.loop.detach.assert_called_once_with('/dev/loop7')
        self.assertIn(mock.call(raw), loops.call_args_list)


class TarballUntouchedTest(base.TestCase):
    """A tarball never reaches diskimage (images.py's dispatch)."""

    def test_gzip_tarball_is_an_archive(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode='w:gz') as tar:
            tar.addfile(tarfile.TarInfo('x'))
        self.assertEqual(diskimage.ARCHIVE,
                         diskimage.classify(buf.getvalue()))
