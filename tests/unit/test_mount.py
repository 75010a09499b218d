"""Tests for novalxcdriver.mount: unmount and holders."""

import errno
import os
import subprocess

import fixtures

from novalxcdriver import exception
from novalxcdriver import mount
from tests.unit import base


class _Processes(base.TestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path

    def sleeper(self, cwd):
        proc = subprocess.Popen(['sleep', '60'], cwd=cwd)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        return proc.pid


class HoldersTest(_Processes):

    def test_process_with_cwd_inside(self):
        inside = os.path.join(self.tmp, 'top', 'sub')
        os.makedirs(inside)
        pid = self.sleeper(inside)
        self.assertIn((pid, 'sleep'),
                      mount.holders(os.path.join(self.tmp, 'top')))
        self.assertIn((pid, 'sleep'), mount.holders(inside))

    def test_open_file_inside_even_deleted(self):
        top = os.path.join(self.tmp, 'top')
        os.mkdir(top)
        path = os.path.join(top, 'file')
        f = open(path, 'w')
        self.addCleanup(f.close)
        os.unlink(path)
        me = [h for h in mount.holders(top) if h[0] == os.getpid()]
        self.assertEqual(1, len(me))

    def test_sibling_with_same_prefix_is_not_inside(self):
        os.mkdir(os.path.join(self.tmp, 'top'))
        os.mkdir(os.path.join(self.tmp, 'top2'))
        pid = self.sleeper(os.path.join(self.tmp, 'top2'))
        self.assertNotIn(pid, [p for p, _ in mount.holders(
            os.path.join(self.tmp, 'top'))])
        self.assertEqual([], mount.holders(os.path.join(self.tmp, 'top')))


class UnmountTest(_Processes):

    def setUp(self):
        super().setUp()
        self.libc = self.patch('novalxcdriver.mount._libc')
        self.errno = self.patch('ctypes.get_errno')

    def fail_plain_unmount(self, err):
        # A lazy detach (any flag) would succeed, as the kernel's does.
        self.libc.umount2.side_effect = lambda target, flags: (
            -1 if flags == 0 else 0)
        self.errno.return_value = err

    def test_unmounted(self):
        self.libc.umount2.return_value = 0
        mount.unmount('/a')
        self.libc.umount2.assert_called_once_with(b'/a', 0)

    def test_not_mounted_is_not_an_error(self):
        for err in (errno.EINVAL, errno.ENOENT):
            self.fail_plain_unmount(err)
            mount.unmount('/a')

    def test_busy_is_refused_and_names_the_holders(self):
        pid = self.sleeper(self.tmp)
        self.fail_plain_unmount(errno.EBUSY)
        e = self.assertRaises(exception.MountBusy, mount.unmount, self.tmp)
        self.assertIsInstance(e, exception.MountFailed)
        self.assertIn(self.tmp, str(e))
        self.assertIn('pid %d (sleep)' % pid, str(e))
        # Never detached lazily: every umount2 call had no flags.
        for call in self.libc.umount2.call_args_list:
            self.assertEqual(0, call.args[1])

    def test_busy_without_a_holder_found(self):
        self.fail_plain_unmount(errno.EBUSY)
        e = self.assertRaises(exception.MountBusy, mount.unmount,
                              os.path.join(self.tmp, 'nothing'))
        self.assertIn('no process', str(e))

    def test_busy_names_ten_holders_at_most(self):
        self.patch('novalxcdriver.mount.holders',
                   return_value=[(p, 'sh') for p in range(100, 112)])
        self.fail_plain_unmount(errno.EBUSY)
        e = self.assertRaises(exception.MountBusy, mount.unmount, '/a')
        self.assertIn('pid 109 (sh) and 2 more', str(e))
        self.assertNotIn('pid 110', str(e))

    def test_other_errors(self):
        self.fail_plain_unmount(errno.EPERM)
        e = self.assertRaises(exception.MountFailed, mount.unmount, '/a')
        self.assertNotIsInstance(e, exception.MountBusy)
        self.assertIn(os.strerror(errno.EPERM), str(e))
