"""privsep.storage: its checks, syscalls, loop devices and namespaces.

Entry points run here in-process (client mode off) with the kernel's side
mocked: what is asserted is what each refuses before touching anything,
and the syscalls and ioctls it makes. Through a real daemon, with real
mounts: tests/functional/test_privsep.py, test_loop.py and
test_user_namespace.py.
"""

import errno
import os
import signal
from unittest import mock

import fixtures

from novalxcdriver import conf
from novalxcdriver import exception
from novalxcdriver import ids
from novalxcdriver import mount
from novalxcdriver import privsep
from novalxcdriver.privsep import storage
from novalxcdriver.privsep import writeback
from tests.unit import base
from tests.unit import test_mount

CONF = conf.CONF


class LoopConfigTest(base.TestCase):

    def unpack(self, data):
        return storage._LOOP_CONFIG.unpack(data)

    def test_the_kernel_s_struct_size(self):
        # sizeof(struct loop_config) in include/uapi/linux/loop.h.
        self.assertEqual(304, storage._LOOP_CONFIG.size)

    def test_fields(self):
        fields = self.unpack(storage._loop_config(9, '/x/root.img', 4096,
                                                  1 << 20, False))
        self.assertEqual((9, 0), fields[:2])
        # lo_offset, lo_sizelimit.
        self.assertEqual((4096, 1 << 20), fields[5:7])
        # lo_flags: autoclear, writable.
        self.assertEqual(storage._LO_FLAGS_AUTOCLEAR, fields[10])
        self.assertEqual(b'/x/root.img', fields[11].rstrip(b'\0'))
        self.assertEqual([0] * 8, list(fields[-8:]))

    def test_read_only_flag(self):
        fields = self.unpack(storage._loop_config(3, 'f', 0, 0, True))
        self.assertEqual(storage._LO_FLAGS_AUTOCLEAR |
                         storage._LO_FLAGS_READ_ONLY,
                         fields[10])

    def test_long_name_truncated_with_its_nul(self):
        fields = self.unpack(storage._loop_config(3, '/' + 'a' * 100, 0, 0,
                                                  False))
        self.assertEqual(63, len(fields[11].rstrip(b'\0')))


class LoopAttachTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.image = os.path.join(self.tmp, 'disk.img')
        open(self.image, 'wb').close()
        self.ioctl = self.patch('fcntl.ioctl', autospec=True)
        self.free = iter(range(3, 100))
        self.busy = set()
        self.opened = {}
        self.ioctl.side_effect = self._ioctl
        real_open = os.open
        self.closed = []
        real_close = os.close

        def fake_open(path, flags, *args):
            if path.startswith('/dev/'):
                fd = real_open(os.devnull, os.O_RDONLY)
                self.opened[fd] = path
                return fd
            return real_open(path, flags, *args)

        def fake_close(fd):
            self.closed.append(self.opened.get(fd, fd))
            real_close(fd)
        self.patch('os.open', side_effect=fake_open)
        self.patch('os.close', side_effect=fake_close)

    def _ioctl(self, fd, request, arg=0):
        if request == storage._LOOP_CTL_GET_FREE:
            return next(self.free)
        if request == storage._LOOP_CONFIGURE:
            if self.opened[fd] in self.busy:
                raise OSError(errno.EBUSY, 'Device or resource busy')
            return arg
        raise AssertionError('unexpected ioctl %x' % request)

    def test_attached_and_closed(self):
        with storage.loop_attached(self.image) as device:
            self.assertEqual('/dev/loop3', device)
            self.assertNotIn('/dev/loop3', self.closed)
        self.assertIn('/dev/loop3', self.closed)
        # The control device is closed, the backing file too.
        self.assertIn(storage.LOOP_CONTROL, self.closed)

    def test_closed_when_the_block_fails(self):
        self.assertRaises(RuntimeError, self._fail_in_block)
        self.assertIn('/dev/loop3', self.closed)

    def _fail_in_block(self):
        with storage.loop_attached(self.image):
            raise RuntimeError('mount failed')

    def test_device_taken_meanwhile_next_one(self):
        self.busy = {'/dev/loop3', '/dev/loop4'}
        with storage.loop_attached(self.image) as device:
            self.assertEqual('/dev/loop5', device)
        # The busy ones were closed again, the control device once.
        self.assertEqual(['/dev/loop3', '/dev/loop4'], self.closed[:2])
        self.assertEqual(1, self.closed.count(storage.LOOP_CONTROL))

    def test_gives_up_after_attempts(self):
        self.busy = {'/dev/loop%d' % n for n in range(3, 100)}
        e = self.assertRaises(exception.LoopFailed, self._attach)
        self.assertIn('16 tries', str(e))
        self.assertEqual(storage.LOOP_ATTEMPTS,
                         sum(1 for c in self.closed
                             if str(c).startswith('/dev/loop') and
                             c != storage.LOOP_CONTROL))

    def _attach(self):
        with storage.loop_attached(self.image):
            pass

    def test_other_ioctl_error_raised(self):
        self.ioctl.side_effect = OSError(errno.ENXIO, 'No such device')
        e = self.assertRaises(exception.LoopFailed, self._attach)
        self.assertIn('No such device', str(e))

    def test_missing_file(self):
        e = self.assertRaises(exception.LoopFailed, storage._loop_configure,
                              os.path.join(self.tmp, 'nope'), 0, 0, False)
        self.assertIn('No such file', str(e))
        self.ioctl.assert_not_called()

    def test_symlink_not_followed(self):
        link = os.path.join(self.tmp, 'link')
        os.symlink(self.image, link)
        self.assertRaises(exception.LoopFailed, storage._loop_configure,
                          link, 0, 0,
                          False)
        self.ioctl.assert_not_called()


class UnmountTest(test_mount._Processes):

    def setUp(self):
        super().setUp()
        privsep.storage_admin.set_client_mode(False)
        self.addCleanup(privsep.storage_admin.set_client_mode, True)
        self.libc = self.patch('novalxcdriver.privsep.storage._libc')
        self.errno = self.patch('ctypes.get_errno')

    def fail_plain_unmount(self, err):
        # A lazy detach (any flag) would succeed, as the kernel's does.
        self.libc.umount2.side_effect = lambda target, flags: (
            -1 if flags == 0 else 0)
        self.errno.return_value = err

    def test_unmounted(self):
        self.libc.umount2.return_value = 0
        storage._unmount('/a')
        self.libc.umount2.assert_called_once_with(b'/a', 0)

    def test_not_mounted_is_not_an_error(self):
        for err in (errno.EINVAL, errno.ENOENT):
            self.fail_plain_unmount(err)
            storage._unmount('/a')

    def test_busy_is_refused_and_names_the_holders(self):
        pid = self.sleeper(self.tmp)
        self.fail_plain_unmount(errno.EBUSY)
        e = self.assertRaises(exception.MountBusy, storage._unmount, self.tmp)
        self.assertIsInstance(e, exception.MountFailed)
        self.assertIn(self.tmp, str(e))
        self.assertIn('pid %d (sleep)' % pid, str(e))
        # Never detached lazily: every umount2 call had no flags.
        for call in self.libc.umount2.call_args_list:
            self.assertEqual(0, call.args[1])

    def test_busy_without_a_holder_found(self):
        sleep = self.patch('novalxcdriver.privsep.storage.time.sleep')
        self.fail_plain_unmount(errno.EBUSY)
        e = self.assertRaises(exception.MountBusy, storage._unmount,
                              os.path.join(self.tmp, 'nothing'))
        self.assertIn('no process', str(e))
        # Tried again while nothing holds it, then given up.
        self.assertEqual(storage._BUSY_RETRIES + 1,
                         self.libc.umount2.call_count)
        self.assertEqual(storage._BUSY_RETRIES, sleep.call_count)

    def test_busy_until_a_killed_holder_is_gone(self):
        # A process just killed and reaped may hold the mount a moment
        # longer (CI: a snapshot reader's unshare helper, cwd the stage).
        self.patch('novalxcdriver.privsep.storage.time.sleep')
        results = [-1, -1, 0]
        self.libc.umount2.side_effect = lambda target, flags: results.pop(0)
        self.errno.return_value = errno.EBUSY
        storage._unmount(os.path.join(self.tmp, 'nothing'))
        self.assertEqual(3, self.libc.umount2.call_count)

    def test_busy_with_a_holder_is_not_tried_again(self):
        self.sleeper(self.tmp)
        sleep = self.patch('novalxcdriver.privsep.storage.time.sleep')
        self.fail_plain_unmount(errno.EBUSY)
        self.assertRaises(exception.MountBusy, storage._unmount, self.tmp)
        self.assertEqual(1, self.libc.umount2.call_count)
        sleep.assert_not_called()

    def test_busy_names_ten_holders_at_most(self):
        self.patch('novalxcdriver.mount.holders',
                   return_value=[(p, 'sh') for p in range(100, 112)])
        self.fail_plain_unmount(errno.EBUSY)
        e = self.assertRaises(exception.MountBusy, storage._unmount, '/a')
        self.assertIn('pid 109 (sh) and 2 more', str(e))
        self.assertNotIn('pid 110', str(e))

    def test_other_errors(self):
        self.fail_plain_unmount(errno.EPERM)
        e = self.assertRaises(exception.MountFailed, storage._unmount, '/a')
        self.assertNotIsInstance(e, exception.MountBusy)
        self.assertIn(os.strerror(errno.EPERM), str(e))

    def test_detach_lazily_is_lazy_and_idempotent(self):
        # lxcfs's dead FUSE mount only: nothing is deleted under it.
        self.libc.umount2.return_value = 0
        storage.detach_lazily('/var/lib/lxcfs')
        self.libc.umount2.assert_called_once_with(b'/var/lib/lxcfs', 2)
        self.libc.umount2.return_value = -1
        self.errno.return_value = errno.EINVAL
        storage.detach_lazily('/var/lib/lxcfs')
        self.errno.return_value = errno.EPERM
        self.assertRaises(exception.MountFailed, storage.detach_lazily,
                          '/var/lib/lxcfs')


class MountTest(base.TestCase):

    def test_flags_and_options(self):
        libc = self.patch('novalxcdriver.privsep.storage._libc')
        libc.mount.return_value = 0
        storage._mount('/dev/loop5', '/c/mnt', 'xfs',
                       1 | 2 | 4 | 8, 'norecovery,nouuid', 'xfs /dev/loop5')
        # MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
        libc.mount.assert_called_once_with(b'/dev/loop5', b'/c/mnt', b'xfs',
                                           1 | 2 | 4 | 8,
                                           b'norecovery,nouuid')

    def test_failure(self):
        libc = self.patch('novalxcdriver.privsep.storage._libc')
        libc.mount.return_value = -1
        self.patch('ctypes.get_errno', return_value=errno.EUCLEAN)
        e = self.assertRaises(exception.MountFailed, storage._mount,
                              '/dev/loop5', '/c/mnt', 'ext4', 1, 'noload',
                              'ext4 /dev/loop5')
        self.assertIn('ext4 /dev/loop5', str(e))


class IsMountRootTest(base.TestCase):
    """storage.is_mount_root against this machine's own mounts (statx)."""

    def setUp(self):
        super().setUp()
        self.tmp = os.path.realpath(self.useFixture(fixtures.TempDir()).path)

    def test_agrees_with_the_mount_table(self):
        points = set(mount.mountpoints())
        for path in ('/', '/proc', '/sys', '/dev', '/proc/self', '/etc',
                     self.tmp):
            self.assertEqual(path in points, storage.is_mount_root(path),
                             path)
        self.assertTrue(storage.is_mount_root('/'))
        self.assertTrue(storage.is_mount_root('/proc'))
        self.assertFalse(storage.is_mount_root(self.tmp))

    def test_nothing_there_is_no_mount_root(self):
        self.assertFalse(storage.is_mount_root(os.path.join(self.tmp, 'x')))
        with open(os.path.join(self.tmp, 'f'), 'w'):
            pass
        self.assertFalse(storage.is_mount_root(os.path.join(self.tmp, 'f')))
        self.assertFalse(storage.is_mount_root(
            os.path.join(self.tmp, 'f', 'below')))

    def test_a_symlink_is_not_followed_a_parent_is(self):
        link = os.path.join(self.tmp, 'link')
        os.symlink('/proc', link)
        self.assertFalse(storage.is_mount_root(link))
        up = os.path.join(self.tmp, 'up')
        os.symlink('/', up)
        self.assertTrue(storage.is_mount_root(os.path.join(up, 'proc')))

    def _statx(self, attributes, mask):
        def statx(dirfd, path, flags, want, buf):
            raw = bytearray(len(buf.raw))
            raw[8:16] = attributes.to_bytes(8, 'little')
            raw[56:64] = mask.to_bytes(8, 'little')
            buf.raw = bytes(raw)
            return 0
        libc = self.patch('novalxcdriver.privsep.storage._libc')
        libc.statx.side_effect = statx
        return libc

    def test_the_attribute_is_what_counts(self):
        libc = self._statx(0x2000, 0x2000)
        self.assertTrue(storage.is_mount_root('/c/mnt'))
        # AT_FDCWD, the path, AT_SYMLINK_NOFOLLOW, no fields asked for.
        self.assertEqual((-100, b'/c/mnt', 0x100, 0),
                         libc.statx.call_args.args[:4])
        self._statx(0x2000 ^ 0xffff, 0xffff)
        self.assertFalse(storage.is_mount_root('/c/mnt'))

    def test_a_kernel_that_does_not_say_is_an_error(self):
        self._statx(0, 0xffff ^ 0x2000)
        e = self.assertRaises(OSError, storage.is_mount_root, '/c/mnt')
        self.assertEqual(errno.ENOTSUP, e.errno)

    def test_other_failures_raise(self):
        libc = self.patch('novalxcdriver.privsep.storage._libc')
        libc.statx.return_value = -1
        self.patch('ctypes.get_errno', return_value=errno.EACCES)
        e = self.assertRaises(OSError, storage.is_mount_root, '/c/mnt')
        self.assertEqual((errno.EACCES, '/c/mnt'), (e.errno, e.filename))


class IdmappedTest(base.TestCase):

    TREE = 9

    def setUp(self):
        super().setUp()
        self.libc = self.patch('novalxcdriver.privsep.storage._libc')
        self.attrs = []
        self.results = {storage._SYS_OPEN_TREE: self.TREE,
                        storage._SYS_MOUNT_SETATTR: 0,
                        storage._SYS_MOVE_MOUNT: 0}
        self.libc.syscall.side_effect = self._syscall
        self.close = self.patch('os.close')

    def _syscall(self, number, *args):
        if number == storage._SYS_MOUNT_SETATTR:
            # byref's object: what the kernel would read.
            attr = args[3]._obj
            self.attrs.append((attr.attr_set, attr.attr_clr,
                               attr.userns_fd))
        return self.results[number]

    def test_idmapped_bind_of_the_mount_on_itself(self):
        storage._idmapped('/s/root', '/s/root', 57, 0)
        calls = self.libc.syscall.call_args_list
        self.assertEqual([storage._SYS_OPEN_TREE, storage._SYS_MOUNT_SETATTR,
                          storage._SYS_MOVE_MOUNT],
                         [c.args[0] for c in calls])
        # A clone of the mount at /s/root...
        self.assertEqual((storage._AT_FDCWD, b'/s/root',
                          storage._OPEN_TREE_CLONE |
                          storage._OPEN_TREE_CLOEXEC),
                         calls[0].args[1:])
        # ...idmapped through the namespace, read-write...
        self.assertEqual([(storage._MOUNT_ATTR_IDMAP |
                           storage._MOUNT_ATTR_NODEV,
                           0, 57)], self.attrs)
        self.assertFalse(self.attrs[0][0] & storage._MOUNT_ATTR_RDONLY)
        self.assertEqual(self.TREE, calls[1].args[1])
        # ...moved on top of it.
        self.assertEqual((self.TREE, b'', storage._AT_FDCWD, b'/s/root',
                          storage._MOVE_MOUNT_F_EMPTY_PATH), calls[2].args[1:])
        self.close.assert_called_once_with(self.TREE)

    def test_failure_closes_the_tree(self):
        self.results[storage._SYS_MOUNT_SETATTR] = -1
        self.patch('ctypes.get_errno', return_value=errno.EINVAL)
        e = self.assertRaises(exception.MountFailed, storage._idmapped,
                              '/s/root', '/s/root', 57, 0)
        self.assertIn('/s/root', str(e))
        self.close.assert_called_once_with(self.TREE)
        self.assertEqual(2, self.libc.syscall.call_count)

    def test_open_tree_failure(self):
        self.results[storage._SYS_OPEN_TREE] = -1
        self.patch('ctypes.get_errno', return_value=errno.ENOENT)
        self.assertRaises(exception.MountFailed, storage._idmapped,
                          '/s/root', '/s/root', 57, 0)
        self.close.assert_not_called()


class HeldNamespaceTest(base.TestCase):
    """The idmaps' user namespaces: the daemon's holder gets its maps."""

    DISK = ids.Idmap(uid_start=296608, gid_start=496608, size=65536)
    OWN = ids.Idmap(uid_start=100000, gid_start=300000, size=65536)
    PID = 4321
    FD = 77

    def setUp(self):
        super().setUp()
        self.libc = self.patch('novalxcdriver.privsep.storage._libc')
        self.libc.clone.return_value = self.PID
        self.kill = self.patch('os.kill')
        self.waitpid = self.patch('os.waitpid', return_value=(self.PID, 9))
        self.written = {}
        self.fail_write = None

    def _open(self, path, mode='r'):
        if self.fail_write:
            raise OSError(errno.EPERM, 'Operation not permitted')
        # Killed and reaped only once the maps and the fd are done.
        self.kill.assert_not_called()
        f = mock.MagicMock()
        f.__enter__.return_value.write.side_effect = (
            lambda data: self.written.__setitem__(path, data))
        return f

    def enter(self, namespace):
        """Enter and leave it; the fd it yielded, os.open and os.close."""
        with mock.patch('builtins.open', side_effect=self._open), \
                mock.patch('os.open', return_value=self.FD) as os_open, \
                mock.patch('os.close') as os_close:
            with namespace as fd:
                os_close.assert_not_called()
            return fd, os_open, os_close

    def test_user_namespace_maps_the_range_to_zero(self):
        fd, os_open, os_close = self.enter(storage.user_namespace(self.OWN))
        fn, top, flags, arg = self.libc.clone.call_args.args
        self.assertEqual(storage._HOLDER_FN, fn)
        self.assertEqual(storage._CLONE_VM | storage._CLONE_NEWUSER |
                         signal.SIGCHLD, flags)
        self.assertEqual(0, top % 16)
        self.assertEqual(
            {'/proc/4321/uid_map': '0 100000 65536\n',
             '/proc/4321/gid_map': '0 300000 65536\n'}, self.written)
        self.assertEqual(self.FD, fd)
        self.assertEqual('/proc/%d/ns/user' % self.PID,
                         os_open.call_args.args[0])
        # The fd holds the namespace; the process goes, then the fd.
        self.kill.assert_called_once_with(self.PID, signal.SIGKILL)
        self.waitpid.assert_called_once_with(self.PID, 0)
        os_close.assert_called_once_with(self.FD)

    def test_holder_starts_with_every_signal_blocked(self):
        masks = []
        self.libc.clone.side_effect = lambda *a: masks.append(
            signal.pthread_sigmask(signal.SIG_BLOCK, [])) or self.PID
        before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        self.enter(storage.user_namespace(self.OWN))
        blockable = signal.valid_signals() - {signal.SIGKILL,
                                              signal.SIGSTOP}
        self.assertEqual(blockable, masks[0] & blockable)
        # This thread's own mask is given back.
        self.assertEqual(before, signal.pthread_sigmask(signal.SIG_BLOCK,
                                                        []))

    def test_shifting_namespace_two_extents(self):
        self.enter(storage.shifting_namespace(self.DISK, self.OWN))
        self.assertEqual(
            {'/proc/4321/uid_map': '296608 100000 65536\n0 0 1\n',
             '/proc/4321/gid_map': '496608 300000 65536\n0 0 1\n'},
            self.written)

    def test_map_failure_kills_the_holder(self):
        self.fail_write = True
        e = self.assertRaises(exception.CommandFailed, self.enter,
                              storage.user_namespace(self.OWN))
        self.assertIn('/proc/4321/uid_map', str(e))
        self.kill.assert_called_once_with(self.PID, signal.SIGKILL)
        self.waitpid.assert_called_once_with(self.PID, 0)

    def test_clone_failure_raised(self):
        self.libc.clone.return_value = -1
        self.patch('ctypes.get_errno', return_value=errno.ENOSPC)
        e = self.assertRaises(exception.CommandFailed, self.enter,
                              storage.user_namespace(self.OWN))
        self.assertIn('clone(CLONE_NEWUSER)', str(e))
        self.assertIn(os.strerror(errno.ENOSPC), str(e))
        self.assertEqual({}, self.written)
        self.kill.assert_not_called()


class EntryPointChecksTest(base.TestCase):
    """What each entry point refuses, before any syscall."""

    SUBUIDS = ((100000, 1000000), (300000, 1000000))

    def setUp(self):
        super().setUp()
        self.tmp = os.path.realpath(self.useFixture(fixtures.TempDir()).path)
        self.state = os.path.join(self.tmp, 'state')
        os.makedirs(os.path.join(self.state, 'rootfs', '3', 'root'))
        self.cfg = self.storage_admin_here(os.path.join(self.tmp, 'lxc'),
                                           self.state)
        self.libc = self.patch('novalxcdriver.privsep.storage._libc')
        self.libc.mount.return_value = 0
        self.libc.umount2.return_value = 0
        self.libc.syscall.return_value = 0
        self.ioctl = self.patch('fcntl.ioctl')
        # The idmapped mounts' user namespace holder (held_namespace).
        self.holder = self.patch(
            'novalxcdriver.privsep.storage._clone_holder')
        self.patch('novalxcdriver.ids.read_subordinate_ranges',
                   return_value=self.SUBUIDS)
        self.root = os.path.join(self.state, 'rootfs', '3')

    def refused(self, fn, *args):
        e = self.assertRaises(exception.PrivilegedCallRefused, fn, *args)
        self.libc.mount.assert_not_called()
        self.libc.umount2.assert_not_called()
        self.libc.syscall.assert_not_called()
        self.ioctl.assert_not_called()
        self.holder.assert_not_called()
        return str(e)

    def test_paths_outside_the_roots(self):
        for path in ('/etc', '/', self.tmp, self.state, '/proc/1/root/x'):
            self.refused(storage.unmount, path)
            self.refused(storage.overlay, path, self.root + '/u',
                         self.root + '/w', self.root + '/m')
            self.refused(storage.overlay, self.root + '/l', self.root + '/u',
                         self.root + '/w', path)
            self.refused(storage.mount_disk, self.root + '/root.img', path)
            self.refused(storage.mount_disk, path, self.root + '/root')

    def test_a_root_itself_only_for_unmount_tree(self):
        self.refused(storage.unmount, self.state)
        self.refused(storage.overlay, self.root + '/l', self.root + '/u',
                     self.root + '/w', self.state)
        storage.unmount_tree(self.state)

    def test_paths_not_normalized_or_relative(self):
        for path in (self.root + '/../../../../etc', self.root + '/./x',
                     self.root + '/', 'rootfs/3', self.root + '//x',
                     self.root + '/x\0', None, 3, [self.root]):
            msg = self.refused(storage.unmount_tree, path)
            self.assertIn('not an absolute normalized path', msg)

    def test_symlink_below_a_root(self):
        os.symlink('/etc', os.path.join(self.root, 'link'))
        msg = self.refused(storage.unmount,
                           os.path.join(self.root, 'link', 'x'))
        self.assertIn('goes through a symlink', msg)
        self.refused(storage.idmapped_bind, self.root + '/root',
                     os.path.join(self.root, 'link'), [100000, 300000, 65536])

    def test_symlink_loops_below_a_root(self):
        # realpath leaves a loop unresolved, equal to the path itself.
        one = os.path.join(self.root, 'loop')
        os.symlink('loop', one)
        a, b = os.path.join(self.root, 'a'), os.path.join(self.root, 'b')
        os.symlink('b', a)
        os.symlink('a', b)
        for path in (one, one + '/x', a, b + '/x/y'):
            msg = self.refused(storage.unmount, path)
            self.assertIn('goes through a symlink', msg)

    def test_what_does_not_exist_below_a_root(self):
        # Nothing below a missing component exists to be a symlink, nor
        # below a file.
        with open(os.path.join(self.root, 'file'), 'w'):
            pass
        for path in ('missing/x/y', 'file/x', 'root/missing'):
            storage.unmount(os.path.join(self.root, path))
        self.assertEqual(3, self.libc.umount2.call_count)

    def test_a_component_that_cannot_be_looked_at(self):
        real = os.lstat
        path = os.path.join(self.root, 'root', 'x')

        def lstat(p, *args, **kwargs):
            if p == os.path.join(self.root, 'root'):
                raise PermissionError(errno.EACCES, 'denied', p)
            return real(p, *args, **kwargs)

        with mock.patch('os.lstat', side_effect=lstat):
            msg = self.refused(storage.unmount, path)
        self.assertIn('cannot tell whether %s/root is a symlink'
                      % self.root, msg)

    def test_below_the_deepest_root(self):
        # A root the operator made a symlink, inside another root: paths
        # below it are checked from it, not from the outer root.
        target = os.path.join(self.tmp, 'elsewhere')
        os.mkdir(target)
        inner = os.path.join(self.state, 'inner')
        os.symlink(target, inner)
        self.refused(storage.unmount, os.path.join(inner, 'x'))
        self.cfg.config(group='lxc', extra_driver_roots=[inner])
        storage.unmount(os.path.join(inner, 'x'))
        self.libc.umount2.assert_called_once()
        self.libc.umount2.reset_mock()
        os.symlink('/etc', os.path.join(target, 'link'))
        self.assertIn('goes through a symlink', self.refused(
            storage.unmount, os.path.join(inner, 'link', 'x')))

    def test_a_root_reached_through_a_symlink_is_fine(self):
        alias = os.path.join(self.tmp, 'alias')
        os.symlink(self.state, alias)
        self.cfg.config(group='lxc', state_path=alias)
        storage.unmount(os.path.join(alias, 'rootfs', '3', 'root'))
        self.libc.umount2.assert_called_once()

    def test_idmaps(self):
        for idmap in ([0, 0, 65536], [100000, 0, 65536],
                      [100000, 300000, 2000000], [99999, 300000, 10],
                      [100000, 300000, 0], [100000, 300000], '1 2 3',
                      [100000.0, 300000, 10], None):
            msg = self.refused(storage.idmapped_bind, self.root + '/root',
                               self.root + '/lower', idmap)
        self.assertIn('not [uid_start, gid_start, size]', msg)
        self.refused(storage.idmapped_over, self.root + '/root',
                     [100000, 300000, 65536], [200000, 400000, 1000])

    def test_filesystems_and_sizes(self):
        img, mnt = self.root + '/root.img', self.root + '/root'
        # The daemon mounts a disk as what its superblock says, only ext4
        # or btrfs: anything else (an xfs written by a container, say) is
        # not attached.
        os.makedirs(self.root, exist_ok=True)
        with open(img, 'wb') as f:
            f.write(b'XFSB' + b'\0' * 0x20000)
        self.assertRaises(exception.DiskUnreadable, storage.mount_disk, img,
                          mnt)
        self.libc.mount.assert_not_called()
        self.ioctl.assert_not_called()
        for fs in ('vfat', 'ntfs', 'ext4 '):
            self.refused(storage.mount_untrusted, img, mnt, fs, 0, 0)
        for n in (-1, 1.5, '0', None):
            self.refused(storage.mount_untrusted, img, mnt, 'ext4', n, 0)
            self.refused(storage.mount_untrusted, img, mnt, 'ext4', 0, n)

    def test_a_disk_mounted_as_its_superblock_says(self):
        img, mnt = self.root + '/root.img', self.root + '/root'
        os.makedirs(self.root, exist_ok=True)
        with open(img, 'wb') as f:
            f.truncate(0x20000)
            f.seek(0x10040)
            f.write(b'_BHRfS_M')
        configure = self.patch(
            'novalxcdriver.privsep.storage._loop_configure',
            return_value=('/dev/loop4', os.open(os.devnull, os.O_RDONLY)))
        self.assertEqual('/dev/loop4', storage.mount_disk(img, mnt))
        configure.assert_called_once_with(img, 0, 0, False)
        self.libc.mount.assert_called_once_with(
            b'/dev/loop4', os.fsencode(mnt), b'btrfs', 4, None)

    def _btrfs_image(self):
        img = self.root + '/root.img'
        os.makedirs(self.root, exist_ok=True)
        with open(img, 'wb') as f:
            f.truncate(0x20000)
            f.seek(0x10040)
            f.write(b'_BHRfS_M')
        self.patch('novalxcdriver.privsep.storage._loop_configure',
                   return_value=('/dev/loop4',
                                 os.open(os.devnull, os.O_RDONLY)))
        return img

    def _sys_dev_block(self, counters):
        sys = os.path.join(self.tmp, 'sys-dev-block')
        os.makedirs(os.path.join(sys, '7:4'))
        with open(os.path.join(sys, '7:4', 'stat'), 'w') as f:
            f.write(counters)
        self.patch('novalxcdriver.privsep.storage.SYS_DEV_BLOCK', sys)
        real_stat = os.stat

        def stat(path, *args, **kwargs):
            if path == '/dev/loop4':
                return mock.Mock(st_rdev=os.makedev(7, 4))
            return real_stat(path, *args, **kwargs)
        return self.patch('os.stat', side_effect=stat)

    def test_a_mount_clears_its_device_s_root_throttles(self):
        # Loop devices are reused: an earlier user's write-back throttle
        # must not follow the device to this disk. After the mount (the
        # device is attached for good), before the baseline.
        img = self._btrfs_image()
        self._sys_dev_block('1 2 3\n')
        blkio = os.path.join(self.tmp, 'blkio')
        os.mkdir(blkio)
        for name in ('read_bps', 'write_bps', 'read_iops', 'write_iops'):
            with open(os.path.join(blkio, 'blkio.throttle.%s_device'
                                   % name), 'w') as f:
                f.write('7:4 100\n')
        self.patch('novalxcdriver.privsep.writeback.ROOT_BLKIO', blkio)
        calls = mock.Mock()
        calls.attach_mock(self.libc.mount, 'mount')
        calls.attach_mock(self.patch(
            'novalxcdriver.privsep.writeback.clear_attached',
            wraps=writeback.clear_attached), 'clear_attached')
        calls.attach_mock(self.patch(
            'novalxcdriver.privsep.storage._save_io_baseline',
            wraps=storage._save_io_baseline), 'baseline')
        storage.mount_disk(img, self.root + '/root')
        self.assertEqual(['mount', 'clear_attached', 'baseline'],
                         [c[0] for c in calls.mock_calls])
        calls.clear_attached.assert_called_once_with('/dev/loop4')
        for name in os.listdir(blkio):
            with open(os.path.join(blkio, name)) as f:
                self.assertEqual('7:4 0', f.read())

    def test_a_mount_saves_its_device_s_io_baseline(self):
        # Beside the image, 0644 (diagnostics reads it in nova-compute),
        # made anew: an earlier attachment's goes.
        img = self._btrfs_image()
        baseline = img + '.iostat'
        with open(baseline, 'w') as f:
            f.write('7:3 1 2 3\n')
        counters = '  10 0 80 1 20 0 160 2 0 3 3 0 0 0 0 0 0\n'
        self._sys_dev_block(counters)
        storage.mount_disk(img, self.root + '/root')
        with open(baseline) as f:
            self.assertEqual('7:4 ' + counters, f.read())
        self.assertEqual(0o644, os.lstat(baseline).st_mode & 0o7777)

    def test_a_baseline_never_written_through_a_link(self):
        img = self._btrfs_image()
        target = os.path.join(self.tmp, 'elsewhere')
        with open(target, 'w') as f:
            f.write('kept')
        os.symlink(target, img + '.iostat')
        self._sys_dev_block('1 2 3\n')
        storage.mount_disk(img, self.root + '/root')
        with open(target) as f:
            self.assertEqual('kept', f.read())
        self.assertFalse(os.path.islink(img + '.iostat'))

    def test_no_counters_no_baseline_and_still_mounted(self):
        # Bookkeeping only: the mount stands, an earlier baseline goes.
        img = self._btrfs_image()
        with open(img + '.iostat', 'w') as f:
            f.write('7:3 1 2 3\n')
        self._sys_dev_block('1\n')
        os.unlink(os.path.join(self.tmp, 'sys-dev-block', '7:4', 'stat'))
        log = self.patch('novalxcdriver.privsep.storage.LOG')
        self.assertEqual('/dev/loop4',
                         storage.mount_disk(img, self.root + '/root'))
        self.assertFalse(os.path.lexists(img + '.iostat'))
        self.assertIn('/dev/loop4', log.warning.call_args.args)
        self.libc.mount.assert_called_once()

    def test_overlay_lowers(self):
        for lowers in ([], None, self.root + '/l', ['/etc']):
            self.refused(storage.overlay_readonly, lowers, self.root + '/m')

    def test_detach_lazily_only_lxcfs(self):
        for target in (self.root + '/root', '/', '/var/lib/lxcfs/'):
            self.refused(storage.detach_lazily, target)
        storage.detach_lazily('/var/lib/lxcfs')
        self.libc.umount2.assert_called_once_with(b'/var/lib/lxcfs', 2)

    def test_loop_devices(self):
        for device in ('/dev/sda', '/dev/loop-control', '/dev/loop1/../sda',
                       'loop1', '/dev/loop', None):
            self.refused(storage.loop_detach, device)
            self.refused(storage.loop_set_capacity, device)

    def test_loop_device_backed_outside_the_roots(self):
        backing = {'/sys/block/loop7/loop/backing_file': '/etc/shadow\n',
                   '/sys/block/loop8/loop/backing_file':
                       self.root + '/root.img (deleted)\n'}
        # The device node itself need not exist on this host: a stand-in
        # fd receives the ioctl.
        fd = os.open(os.devnull, os.O_RDONLY)
        with mock.patch('builtins.open', side_effect=lambda p: mock.mock_open(
                read_data=backing[p])()), \
                mock.patch('os.open', return_value=fd) as os_open:
            msg = self.refused(storage.loop_detach, '/dev/loop7')
            self.assertIn('/etc/shadow', msg)
            os_open.assert_not_called()
            storage.loop_detach('/dev/loop8')
        os_open.assert_called_once_with('/dev/loop8', mock.ANY)
        self.ioctl.assert_called_once_with(fd, storage._LOOP_CLR_FD, 0)

    def test_unattached_loop_device(self):
        # Detached meanwhile: what callers expect of a detach, not a refusal.
        e = self.assertRaises(exception.LoopFailed, storage.loop_detach,
                              '/dev/loop1234567')
        self.assertIn('not attached', str(e))
        self.ioctl.assert_not_called()

    def test_what_passes_reaches_the_kernel(self):
        storage.overlay(self.root + '/lower', self.root + '/upper',
                        self.root + '/work', self.root + '/merged')
        self.libc.mount.assert_called_once_with(
            b'overlay', (self.root + '/merged').encode(), b'overlay', 0,
            ('lowerdir={0}/lower,upperdir={0}/upper,workdir={0}/work'
             .format(self.root)).encode())
        storage.unmount_tree(self.root)
