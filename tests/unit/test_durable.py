"""durable: atomic, fsync'd replacement of a file."""

import os

import fixtures

from novalxcdriver import durable
from tests.unit import base


class WriteTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.path = os.path.join(self.dir, 'record.json')

    def test_replaces_content_with_mode(self):
        with open(self.path, 'w') as f:
            f.write('old')
        durable.write(self.path, 'new', mode=0o600)
        with open(self.path) as f:
            self.assertEqual('new', f.read())
        self.assertEqual(0o600, os.stat(self.path).st_mode & 0o777)
        self.assertEqual(['record.json'], os.listdir(self.dir))

    def test_syncs_the_file_then_its_directory(self):
        synced = []
        real = os.fsync

        def fsync(fd):
            synced.append(os.path.basename(os.readlink(
                '/proc/self/fd/%d' % fd)))
            real(fd)

        self.patch('os.fsync', side_effect=fsync)
        durable.write(self.path, b'x')
        self.assertEqual(2, len(synced))
        self.assertTrue(synced[0].startswith('.record.json.'))
        self.assertEqual(os.path.basename(self.dir), synced[1])

    def test_unsynced_write_then_sync(self):
        synced = []
        real = os.fsync

        def fsync(fd):
            synced.append(os.readlink('/proc/self/fd/%d' % fd))
            real(fd)

        self.patch('os.fsync', side_effect=fsync)
        durable.write(self.path, b'x', sync=False)
        self.assertEqual([], synced)
        with open(self.path, 'rb') as f:
            self.assertEqual(b'x', f.read())
        durable.sync(self.path)
        self.assertEqual([self.path, self.dir], synced)

    def test_failed_write_keeps_old_content_and_leaves_no_temp(self):
        with open(self.path, 'w') as f:
            f.write('old')
        self.patch('os.fsync', side_effect=OSError(28, 'No space left'))
        self.assertRaises(OSError, durable.write, self.path, 'new')
        with open(self.path) as f:
            self.assertEqual('old', f.read())
        self.assertEqual(['record.json'], os.listdir(self.dir))
