"""Tests for novalxcdriver.initsystem: paths resolved inside a tree, init."""

import os

import fixtures
from oslotest import base

from novalxcdriver import initsystem


class _Tree(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.root = self.useFixture(fixtures.TempDir()).path

    def file(self, rel, mode=0o755, data=b'x'):
        path = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as f:
            f.write(data)
        os.chmod(path, mode)
        return path

    def link(self, rel, target):
        path = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.symlink(target, path)
        return path


class ResolveInRootTest(_Tree):

    def test_plain_file(self):
        busybox = self.file('bin/busybox')
        self.assertEqual(busybox,
                         initsystem.resolve_in_root(self.root, '/bin/busybox'))

    def test_absolute_symlink(self):
        busybox = self.file('bin/busybox')
        self.link('sbin/init', '/bin/busybox')
        self.assertEqual(busybox,
                         initsystem.resolve_in_root(self.root, '/sbin/init'))

    def test_relative_symlink(self):
        systemd = self.file('lib/systemd/systemd')
        self.link('sbin/init', '../lib/systemd/systemd')
        self.assertEqual(systemd,
                         initsystem.resolve_in_root(self.root, '/sbin/init'))

    def test_climbing_symlink_stays_in_root(self):
        busybox = self.file('bin/busybox')
        self.link('sbin/init', '../../../../../../bin/busybox')
        self.assertEqual(busybox,
                         initsystem.resolve_in_root(self.root, '/sbin/init'))

    def test_absolute_symlink_to_host_file_not_followed(self):
        # /etc/passwd exists on the host, not in the root.
        self.link('etc/passwd-link', '/etc/passwd')
        self.assertTrue(os.path.exists('/etc/passwd'))
        self.assertIsNone(initsystem.resolve_in_root(
            self.root, '/etc/passwd-link'))

    def test_climbing_symlink_to_host_file_not_followed(self):
        self.link('sbin/init', '../../../../../../../etc/passwd')
        self.assertIsNone(initsystem.resolve_in_root(self.root, '/sbin/init'))

    def test_symlinked_directory(self):
        systemd = self.file('usr/lib/systemd/systemd')
        self.link('lib', 'usr/lib')
        self.link('sbin/init', '/lib/systemd/systemd')
        self.assertEqual(systemd,
                         initsystem.resolve_in_root(self.root, '/sbin/init'))

    def test_chain_of_links(self):
        target = self.file('bin/real')
        self.link('bin/b', 'real')
        self.link('bin/a', '/bin/b')
        self.assertEqual(target,
                         initsystem.resolve_in_root(self.root, 'bin/a'))

    def test_loop(self):
        self.link('sbin/a', 'b')
        self.link('sbin/b', '/sbin/a')
        self.assertIsNone(initsystem.resolve_in_root(self.root, '/sbin/a'))

    def test_self_loop(self):
        self.link('sbin/init', 'init')
        self.assertIsNone(initsystem.resolve_in_root(self.root, '/sbin/init'))

    def test_missing(self):
        self.assertIsNone(initsystem.resolve_in_root(self.root, '/sbin/init'))
        os.mkdir(os.path.join(self.root, 'sbin'))
        self.assertIsNone(initsystem.resolve_in_root(self.root, '/sbin/init'))

    def test_dangling_link(self):
        self.link('sbin/init', '/bin/nothing')
        self.assertIsNone(initsystem.resolve_in_root(self.root, '/sbin/init'))

    def test_dot_and_dotdot_in_path(self):
        busybox = self.file('bin/busybox')
        os.mkdir(os.path.join(self.root, 'sbin'))
        self.assertEqual(busybox, initsystem.resolve_in_root(
            self.root, '/../sbin/../bin/./busybox'))
        # As in path_resolution(7), a missing directory before '..' fails.
        self.assertIsNone(initsystem.resolve_in_root(
            self.root, '/nothing/../bin/busybox'))


class DetectInitTest(_Tree):

    def test_systemd(self):
        self.file('lib/systemd/systemd')
        self.link('sbin/init', '/lib/systemd/systemd')
        self.assertEqual('systemd', initsystem.detect_init(self.root))

    def test_busybox(self):
        self.file('bin/busybox')
        self.link('sbin/init', '../bin/busybox')
        self.assertEqual('busybox', initsystem.detect_init(self.root))

    def test_sysvinit(self):
        self.file('sbin/init')
        self.assertEqual('sysvinit', initsystem.detect_init(self.root))

    def test_no_init(self):
        self.file('bin/sh')
        self.assertIsNone(initsystem.detect_init(self.root))

    def test_not_executable(self):
        self.file('sbin/init', mode=0o644)
        self.assertIsNone(initsystem.detect_init(self.root))

    def test_directory(self):
        os.makedirs(os.path.join(self.root, 'sbin/init'))
        self.assertIsNone(initsystem.detect_init(self.root))

    def test_link_out_of_root_ignored(self):
        # Resolved inside the root, where it does not exist.
        self.link('sbin/init', '/bin/sh')
        self.assertTrue(os.path.exists('/bin/sh'))
        self.assertIsNone(initsystem.detect_init(self.root))
