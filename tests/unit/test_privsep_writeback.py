"""privsep.writeback: root blkio throttles of the driver's loop devices.

The entry points run here in-process (client mode off), on a fake sysfs
(storage.SYS_DEV_BLOCK) and a fake root blkio cgroup
(writeback.ROOT_BLKIO), both temporary directories: the host's
/sys/fs/cgroup is never touched, whoever runs the tests. What is asserted
is what each refuses before writing anything, and the exact lines it
writes (limits.writeback_rules, limits.clear_rules).
"""

import builtins
import os

import fixtures

from novalxcdriver import exception
from novalxcdriver import limits
from novalxcdriver import privsep
from novalxcdriver.privsep import storage
from novalxcdriver.privsep import writeback
from tests.unit import base

FILES = ('blkio.throttle.read_bps_device', 'blkio.throttle.read_iops_device',
         'blkio.throttle.write_bps_device',
         'blkio.throttle.write_iops_device')
IO = [['disk_read_bytes_sec', 1000], ['disk_write_bytes_sec', 2000],
      ['disk_write_iops_sec', 30]]
# The sysfs directory of a device on a PCI disk, and its partition's.
DISK = 'pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda'
# Numbers that are not MAJ:MIN; the fake sysfs has an entry of each name
# that leads to an attached loop device, so only the shape refuses them.
BAD_NUMBERS = ('7', '7:', ':3', 'a:b', '7:3\n', '7:3 ', ' 7:3', '+7:3',
               '7:3/', '1:2:3', '12345:3', '7:12345678', '0x7:3', '٧:٣')


class _LooksLikeANumber(object):
    """Not a str, though its str() is a good number: refused by type."""

    def __str__(self):
        return '7:3'

    __repr__ = __str__


class _Recorder(object):
    """A file opened for writing, recording each write(2) it makes."""

    def __init__(self, f, name, log):
        self._f = f
        self._name = name
        self._log = log

    def write(self, data):
        self._log.append((self._name, data))
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._f.close()


class _Base(base.TestCase):
    """A fake sysfs with loop devices, a fake cgroup v1 root blkio."""

    def setUp(self):
        super().setUp()
        self.tmp = os.path.realpath(self.useFixture(fixtures.TempDir()).path)
        self.state = os.path.join(self.tmp, 'state')
        self.root = os.path.join(self.state, 'rootfs', '3')
        os.makedirs(self.root)
        self.image = os.path.join(self.root, 'root.img')
        open(self.image, 'w').close()
        self.cfg = self.storage_admin_here(os.path.join(self.tmp, 'lxc'),
                                           self.state)
        self.sys = os.path.join(self.tmp, 'sys')
        self.blocks = os.path.join(self.sys, 'dev', 'block')
        os.makedirs(self.blocks)
        self.patch_object(storage, 'SYS_DEV_BLOCK', self.blocks)
        self.blkio = os.path.join(self.tmp, 'cgroup', 'blkio')
        os.makedirs(self.blkio)
        self.patch_object(writeback, 'ROOT_BLKIO', self.blkio)
        self.make_v1()
        # Every write to a file the module opens: (name below the fake
        # root blkio, what was written).
        self.writes = []
        self.patch_object(writeback, 'open', create=True,
                          side_effect=self._open)

    def _open(self, path, mode='r', *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        if any(c in mode for c in 'wax+'):
            return _Recorder(f, os.path.relpath(path, self.blkio),
                             self.writes)
        return f

    def make_v1(self):
        for name in FILES:
            open(os.path.join(self.blkio, name), 'w').close()

    def make_v2(self):
        for name in FILES:
            os.unlink(os.path.join(self.blkio, name))

    def loop(self, number, name, backing=None, attached=True):
        """A loop device's sysfs entry; backing_file if backing is given."""
        device = os.path.join(self.sys, 'devices', 'virtual', 'block', name)
        os.makedirs(device, exist_ok=True)
        if attached:
            os.makedirs(os.path.join(device, 'loop'), exist_ok=True)
            if backing is not None:
                with open(os.path.join(device, 'loop', 'backing_file'),
                          'w') as f:
                    f.write(backing + '\n')
        self.link(number, device)

    def link(self, number, device):
        """<sys>/dev/block/number -> device, as sysfs links it (relative)."""
        entry = os.path.join(self.blocks, number)
        os.symlink(os.path.relpath(device, os.path.dirname(entry)), entry)

    def disk(self, number='8:0'):
        device = os.path.join(self.sys, 'devices', DISK)
        os.makedirs(device, exist_ok=True)
        self.link(number, device)

    def contents(self):
        """{file name: what it holds} of the fake root blkio."""
        found = {}
        for name in os.listdir(self.blkio):
            with open(os.path.join(self.blkio, name)) as f:
                found[name] = f.read()
        return found

    def refused(self, fn, *args):
        before = self.contents()
        e = self.assertRaises(exception.PrivilegedCallRefused, fn, *args)
        self.assertEqual([], self.writes)
        self.assertEqual(before, self.contents())
        return str(e)

    def expected(self, io_throttles, *numbers):
        return [rule for number in numbers
                for rule in limits.writeback_rules(io_throttles, number)]


class EntryPointsTest(base.TestCase):

    def test_every_entry_point_is_covered(self):
        # A new entry point needs its checks tested here.
        names = {n for n, f in vars(writeback).items()
                 if privsep.storage_admin.is_entrypoint(f)}
        self.assertEqual({'set_writeback', 'clear_writeback'}, names)


class HasRootRulesTest(_Base):

    def test_cgroup_v1(self):
        self.assertTrue(writeback.has_root_rules())
        self.assertTrue(writeback.has_root_rules(self.blkio))

    def test_cgroup_v2(self):
        self.make_v2()
        self.assertFalse(writeback.has_root_rules())
        self.assertFalse(writeback.has_root_rules(
            os.path.join(self.tmp, 'nothing')))

    def test_root_argument(self):
        other = os.path.join(self.tmp, 'other')
        os.mkdir(other)
        self.assertFalse(writeback.has_root_rules(other))
        open(os.path.join(other, 'blkio.throttle.write_bps_device'),
             'w').close()
        self.assertTrue(writeback.has_root_rules(other))
        self.make_v2()
        self.assertTrue(writeback.has_root_rules(other))
        self.assertFalse(writeback.has_root_rules())


class CheckDeviceTest(_Base):
    """check_device, through both entry points."""

    def setUp(self):
        super().setUp()
        self.loop('7:3', 'loop3', self.image)

    def both_refuse(self, number):
        msg = self.refused(writeback.clear_writeback, number)
        self.assertIn('clear_writeback', msg)
        msg = self.refused(writeback.set_writeback, IO, [number])
        self.assertIn('set_writeback', msg)
        return msg

    def test_numbers_not_maj_min(self):
        loop3 = os.path.join(self.sys, 'devices', 'virtual', 'block',
                             'loop3')
        for number in BAD_NUMBERS:
            if '/' not in number:
                self.link(number, loop3)
        # '../7:3' would be <sys>/dev/7:3.
        os.symlink('block/7:3', os.path.join(self.sys, 'dev', '7:3'))
        for number in BAD_NUMBERS + ('../7:3', '../block/7:3', '', '7:3\0'):
            msg = self.both_refuse(number)
            self.assertIn('is not a device number MAJ:MIN', msg)
        for number in (None, 7, 7.3, b'7:3', ['7:3'], ('7', '3'),
                       _LooksLikeANumber()):
            msg = self.both_refuse(number)
            self.assertIn('is not a device number MAJ:MIN', msg)

    def test_a_well_formed_number_passes(self):
        writeback.clear_writeback('7:3')
        self.assertEqual(len(FILES), len(self.writes))

    def test_a_disk(self):
        self.disk('8:0')
        msg = self.both_refuse('8:0')
        self.assertIn('8:0 is not a loop device', msg)

    def test_a_partition_of_a_loop_device(self):
        part = os.path.join(self.sys, 'devices', 'virtual', 'block',
                            'loop3', 'loop3p1')
        os.makedirs(part)
        self.link('259:0', part)
        self.assertIn('is not a loop device', self.both_refuse('259:0'))

    def test_no_such_device(self):
        self.assertIn('7:99 is not a loop device', self.both_refuse('7:99'))

    def test_a_root_that_is_a_symlink(self):
        # sysfs gives the resolved path: below the root's real path (a
        # state_path /var/lib/nova -> /srv/nova, mount.py).
        real = os.path.join(self.tmp, 'srv', 'state')
        os.makedirs(os.path.join(real, 'rootfs', '4'))
        alias = os.path.join(self.tmp, 'aliased-state')
        os.symlink(real, alias)
        self.cfg.config(group='lxc', state_path=alias)
        self.loop('7:4', 'loop4', os.path.join(real, 'rootfs', '4',
                                               'root.img'))
        writeback.clear_writeback('7:4')
        self.assertEqual(len(FILES), len(self.writes))
        del self.writes[:]
        # Its real path is no root itself: what is not below it still is
        # refused.
        self.loop('7:5', 'loop5', os.path.join(self.tmp, 'srv', 'x.img'))
        self.assertIn('is not below a driver root',
                      self.both_refuse('7:5'))

    def test_backed_outside_the_roots(self):
        self.loop('7:7', 'loop7', '/etc/shadow')
        self.loop('7:8', 'loop8', self.tmp + '/lxc-other/x.img')
        self.loop('7:9', 'loop9', self.state)
        for number in ('7:7', '7:8', '7:9'):
            msg = self.both_refuse(number)
            self.assertIn('is not below a driver root', msg)

    def test_backing_not_normalized(self):
        self.loop('7:7', 'loop7', self.root + '/../../../../etc/shadow')
        self.loop('7:8', 'loop8', 'root.img')
        for number in ('7:7', '7:8'):
            msg = self.both_refuse(number)
            self.assertIn('not an absolute normalized path', msg)

    def test_backed_through_a_symlink_below_a_root(self):
        os.symlink('/etc', os.path.join(self.root, 'link'))
        self.loop('7:7', 'loop7', os.path.join(self.root, 'link', 'shadow'))
        self.assertIn('goes through a symlink', self.both_refuse('7:7'))

    def test_deleted_backing_file(self):
        # sysfs names an unlinked file with ' (deleted)' after its path:
        # the path itself is what is checked.
        os.unlink(self.image)
        self.loop('7:4', 'loop4', self.image + ' (deleted)')
        writeback.set_writeback(IO, ['7:4'])
        writeback.clear_writeback('7:4')
        self.assertEqual(self.expected(IO, '7:4') + limits.clear_rules('7:4'),
                         self.writes)

    def test_deleted_suffix_stripped_before_the_check(self):
        os.symlink('/etc/shadow', os.path.join(self.root, 'link.img'))
        self.loop('7:7', 'loop7',
                  os.path.join(self.root, 'link.img') + ' (deleted)')
        self.loop('7:8', 'loop8', '/etc/shadow (deleted)')
        self.assertIn('goes through a symlink', self.both_refuse('7:7'))
        self.assertIn('not below a driver root', self.both_refuse('7:8'))

    def test_a_detached_loop_device_is_not_a_refusal(self):
        # Detached: the kernel removes loop/ (nothing to refuse, callers
        # expect it); or loop/ is there without its backing_file (a
        # detach racing the read).
        self.loop('7:5', 'loop5', attached=False)
        self.loop('7:6', 'loop6')
        for number in ('7:5', '7:6'):
            e = self.assertRaises(exception.LoopFailed,
                                  writeback.clear_writeback, number)
            self.assertIn(number, str(e))
            self.assertIn('not attached', str(e))
            self.assertRaises(exception.LoopFailed, writeback.set_writeback,
                              IO, [number])
        self.assertEqual([], self.writes)

    def test_checked_on_cgroup_v2_too(self):
        self.make_v2()
        self.disk('8:0')
        self.loop('7:5', 'loop5', attached=False)
        self.both_refuse('8:0')
        self.both_refuse('7:3\n')
        self.assertRaises(exception.LoopFailed, writeback.clear_writeback,
                          '7:5')
        self.assertRaises(exception.LoopFailed, writeback.set_writeback, IO,
                          ['7:5'])
        self.assertEqual([], os.listdir(self.blkio))


class CheckThrottlesTest(_Base):

    def setUp(self):
        super().setUp()
        self.loop('7:3', 'loop3', self.image)

    def test_the_shape_returned(self):
        self.assertEqual(
            (('disk_read_bytes_sec', 1000), ('disk_write_bytes_sec', 2000),
             ('disk_write_iops_sec', 30)),
            writeback.check_throttles('x', IO))
        self.assertEqual((), writeback.check_throttles('x', []))
        self.assertEqual((('disk_write_iops_sec', 1),),
                         writeback.check_throttles(
                             'x', (('disk_write_iops_sec', 1),)))

    def test_not_a_list(self):
        for io in (None, 'disk_write_bytes_sec', {'disk_write_bytes_sec': 1},
                   5, iter([['disk_write_bytes_sec', 1]])):
            self.refused(writeback.set_writeback, io, ['7:3'])

    def test_unknown_kinds(self):
        for kind in ('disk_total_bytes_sec', 'disk_write_bytes_sec ',
                     'DISK_WRITE_BYTES_SEC', 'quota:disk_write_bytes_sec',
                     'blkio.throttle.write_bps_device', '', None, 1,
                     ['disk_write_bytes_sec']):
            msg = self.refused(writeback.set_writeback, [[kind, 1]],
                               ['7:3'])
            self.assertIn('is not [kind, value]', msg)

    def test_values(self):
        for value in (True, False, 1.0, 2000.5, '2000', b'1', None, -1,
                      1 << 64, 1 << 70, [1]):
            for kind in limits.IO_KINDS:
                msg = self.refused(writeback.set_writeback,
                                   [[kind, value]], ['7:3'])
                self.assertIn('is not [kind, value]', msg)

    def test_value_bounds_accepted(self):
        top = (1 << 64) - 1
        writeback.set_writeback([['disk_write_bytes_sec', 0],
                                 ['disk_write_iops_sec', top]], ['7:3'])
        self.assertEqual([('blkio.throttle.write_bps_device', '7:3 0'),
                          ('blkio.throttle.write_iops_device',
                           '7:3 %d' % top)], self.writes)

    def test_a_kind_repeats(self):
        for io in ([['disk_write_bytes_sec', 1], ['disk_write_bytes_sec', 2]],
                   [['disk_read_iops_sec', 1], ['disk_write_iops_sec', 1],
                    ['disk_read_iops_sec', 1]]):
            msg = self.refused(writeback.set_writeback, io, ['7:3'])
            self.assertIn('a kind repeats', msg)

    def test_pairs_of_the_wrong_shape(self):
        for pair in ([], ['disk_write_bytes_sec'],
                     ['disk_write_bytes_sec', 1, 2], 'disk_write_bytes_sec',
                     'ab', {'disk_write_bytes_sec': 1}, None, 1,
                     {'disk_write_bytes_sec', 1}):
            self.refused(writeback.set_writeback, [pair], ['7:3'])
            self.refused(writeback.set_writeback,
                         [['disk_read_bytes_sec', 1], pair], ['7:3'])

    def test_refused_before_the_devices_are_read(self):
        # A bad device too: the throttles' refusal comes first.
        msg = self.refused(writeback.set_writeback, [['x', 1]], ['7:99'])
        self.assertIn('is not [kind, value]', msg)


class SetWritebackTest(_Base):

    def setUp(self):
        super().setUp()
        self.loop('7:3', 'loop3', self.image)
        self.loop('7:9', 'loop9', os.path.join(self.root, 'eph.img'))

    def test_the_write_throttles_of_each_device(self):
        writeback.set_writeback(IO, ['7:3', '7:9'])
        self.assertEqual([
            ('blkio.throttle.write_bps_device', '7:3 2000'),
            ('blkio.throttle.write_iops_device', '7:3 30'),
            ('blkio.throttle.write_bps_device', '7:9 2000'),
            ('blkio.throttle.write_iops_device', '7:9 30'),
        ], self.writes)
        self.assertEqual(self.expected(IO, '7:3', '7:9'), self.writes)
        # Really written there, each rule a write of its own; reads are
        # the reader's: its own cgroup's rule binds them.
        self.assertEqual({'blkio.throttle.read_bps_device': '',
                          'blkio.throttle.read_iops_device': '',
                          'blkio.throttle.write_bps_device': '7:9 2000',
                          'blkio.throttle.write_iops_device': '7:9 30'},
                         self.contents())

    def test_tuples_and_every_kind(self):
        io = tuple((k, i + 1) for i, k in enumerate(limits.IO_KINDS))
        writeback.set_writeback(io, ('7:3',))
        self.assertEqual(self.expected(io, '7:3'), self.writes)

    def test_nothing_to_write(self):
        writeback.set_writeback([], ['7:3'])
        writeback.set_writeback([['disk_read_bytes_sec', 1]], ['7:3'])
        writeback.set_writeback(IO, [])
        self.assertEqual([], self.writes)

    def test_devices_not_a_list(self):
        for devices in (None, '7:3', {'7:3': 1}, 7, b'7:3'):
            msg = self.refused(writeback.set_writeback, IO, devices)
            self.assertIn('set_writeback', msg)

    def test_every_device_checked_before_any_rule(self):
        self.disk('8:0')
        self.loop('7:5', 'loop5', attached=False)
        self.refused(writeback.set_writeback, IO, ['7:3', '8:0'])
        self.refused(writeback.set_writeback, IO, ['7:3', '7:9', '7:3\n'])
        self.assertRaises(exception.LoopFailed, writeback.set_writeback, IO,
                          ['7:3', '7:9', '7:5'])
        self.assertEqual([], self.writes)
        self.assertEqual({n: '' for n in FILES}, self.contents())

    def test_nothing_written_on_cgroup_v2(self):
        self.make_v2()
        writeback.set_writeback(IO, ['7:3', '7:9'])
        self.assertEqual([], self.writes)
        self.assertEqual([], os.listdir(self.blkio))

    def test_a_refused_rule_raises(self):
        path = os.path.join(self.blkio, 'blkio.throttle.write_iops_device')
        os.unlink(path)
        os.mkdir(path)
        self.assertRaises(OSError, writeback.set_writeback, IO, ['7:3'])


class ClearWritebackTest(_Base):

    def setUp(self):
        super().setUp()
        self.loop('7:3', 'loop3', self.image)

    def test_every_kind_cleared(self):
        writeback.clear_writeback('7:3')
        self.assertEqual(limits.clear_rules('7:3'), self.writes)
        self.assertEqual({n: '7:3 0' for n in FILES}, self.contents())

    def test_nothing_written_on_cgroup_v2(self):
        self.make_v2()
        writeback.clear_writeback('7:3')
        self.assertEqual([], self.writes)
        self.assertEqual([], os.listdir(self.blkio))

    def test_a_refused_rule_raises(self):
        path = os.path.join(self.blkio, 'blkio.throttle.write_bps_device')
        os.unlink(path)
        os.mkdir(path)
        self.assertRaises(OSError, writeback.clear_writeback, '7:3')


class ClearAttachedTest(_Base):
    """clear_attached: the daemon's own call after an attach, unchecked."""

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.FakeLogger())
        rdev = os.stat('/dev/null').st_rdev
        self.number = '%d:%d' % (os.major(rdev), os.minor(rdev))

    def test_the_device_s_number_cleared(self):
        # /dev/null stands for the loop device: what counts is its st_rdev.
        writeback.clear_attached('/dev/null')
        self.assertEqual(limits.clear_rules(self.number), self.writes)
        self.assertEqual({n: self.number + ' 0' for n in FILES},
                         self.contents())
        self.assertEqual('', self.log.output)

    def test_a_missing_device_only_logged(self):
        writeback.clear_attached('/dev/loop-no-such-device')
        self.assertEqual([], self.writes)
        self.assertIn('Cannot clear the blkio throttles of '
                      '/dev/loop-no-such-device', self.log.output)

    def test_a_refused_rule_only_logged(self):
        path = os.path.join(self.blkio, 'blkio.throttle.read_iops_device')
        os.unlink(path)
        os.mkdir(path)
        writeback.clear_attached('/dev/null')
        self.assertIn('Cannot clear the blkio throttles of /dev/null',
                      self.log.output)
        # The rules before the refused one were written.
        self.assertEqual(limits.clear_rules(self.number)[:1], self.writes)

    def test_nothing_on_cgroup_v2(self):
        self.make_v2()
        writeback.clear_attached('/dev/null')
        writeback.clear_attached('/dev/loop-no-such-device')
        self.assertEqual([], self.writes)
        self.assertEqual([], os.listdir(self.blkio))
        self.assertEqual('', self.log.output)
