"""Tests for novalxcdriver.loop with the ioctls mocked.

The real kernel's side (sysfs, autoclear, a mount holding the device) is
tested in tests/functional/test_loop.py.
"""

import errno
import os

import fixtures

from novalxcdriver import exception
from novalxcdriver import loop
from tests.unit import base


class ConfigTest(base.TestCase):

    def unpack(self, data):
        return loop._LOOP_CONFIG.unpack(data)

    def test_the_kernel_s_struct_size(self):
        # sizeof(struct loop_config) in include/uapi/linux/loop.h.
        self.assertEqual(304, loop._LOOP_CONFIG.size)

    def test_fields(self):
        fields = self.unpack(loop._config(9, '/x/root.img', 4096, 1 << 20,
                                          False))
        self.assertEqual((9, 0), fields[:2])
        # lo_offset, lo_sizelimit.
        self.assertEqual((4096, 1 << 20), fields[5:7])
        # lo_flags: autoclear, writable.
        self.assertEqual(loop._LO_FLAGS_AUTOCLEAR, fields[10])
        self.assertEqual(b'/x/root.img', fields[11].rstrip(b'\0'))
        self.assertEqual([0] * 8, list(fields[-8:]))

    def test_read_only_flag(self):
        fields = self.unpack(loop._config(3, 'f', 0, 0, True))
        self.assertEqual(loop._LO_FLAGS_AUTOCLEAR | loop._LO_FLAGS_READ_ONLY,
                         fields[10])

    def test_long_name_truncated_with_its_nul(self):
        fields = self.unpack(loop._config(3, '/' + 'a' * 100, 0, 0, False))
        self.assertEqual(63, len(fields[11].rstrip(b'\0')))


class AttachTest(base.TestCase):

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
        if request == loop._LOOP_CTL_GET_FREE:
            return next(self.free)
        if request == loop._LOOP_CONFIGURE:
            if self.opened[fd] in self.busy:
                raise OSError(errno.EBUSY, 'Device or resource busy')
            return arg
        raise AssertionError('unexpected ioctl %x' % request)

    def test_attached_and_closed(self):
        with loop.attached(self.image) as device:
            self.assertEqual('/dev/loop3', device)
            self.assertNotIn('/dev/loop3', self.closed)
        self.assertIn('/dev/loop3', self.closed)
        # The control device is closed, the backing file too.
        self.assertIn(loop.LOOP_CONTROL, self.closed)

    def test_closed_when_the_block_fails(self):
        self.assertRaises(RuntimeError, self._fail_in_block)
        self.assertIn('/dev/loop3', self.closed)

    def _fail_in_block(self):
        with loop.attached(self.image):
            raise RuntimeError('mount failed')

    def test_device_taken_meanwhile_next_one(self):
        self.busy = {'/dev/loop3', '/dev/loop4'}
        with loop.attached(self.image) as device:
            self.assertEqual('/dev/loop5', device)
        # The busy ones were closed again, the control device once.
        self.assertEqual(['/dev/loop3', '/dev/loop4'], self.closed[:2])
        self.assertEqual(1, self.closed.count(loop.LOOP_CONTROL))

    def test_gives_up_after_attempts(self):
        self.busy = {'/dev/loop%d' % n for n in range(3, 100)}
        e = self.assertRaises(exception.LoopFailed, self._attach)
        self.assertIn('16 tries', str(e))
        self.assertEqual(loop.ATTEMPTS,
                         sum(1 for c in self.closed
                             if str(c).startswith('/dev/loop') and
                             c != loop.LOOP_CONTROL))

    def _attach(self):
        with loop.attached(self.image):
            pass

    def test_other_ioctl_error_raised(self):
        self.ioctl.side_effect = OSError(errno.ENXIO, 'No such device')
        e = self.assertRaises(exception.LoopFailed, self._attach)
        self.assertIn('No such device', str(e))

    def test_missing_file(self):
        e = self.assertRaises(exception.LoopFailed, loop._configure,
                              os.path.join(self.tmp, 'nope'), 0, 0, False)
        self.assertIn('No such file', str(e))
        self.ioctl.assert_not_called()

    def test_symlink_not_followed(self):
        link = os.path.join(self.tmp, 'link')
        os.symlink(self.image, link)
        self.assertRaises(exception.LoopFailed, loop._configure, link, 0, 0,
                          False)
        self.ioctl.assert_not_called()
