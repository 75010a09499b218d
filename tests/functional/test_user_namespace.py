"""privsep.storage's user namespaces against the real kernel: maps, no child.

Root only (writing another process's maps needs CAP_SETUID/CAP_SETGID in
the parent namespace).
"""

import os
import subprocess
import threading

from oslotest import base as oslo_base

from novalxcdriver import exception
from novalxcdriver import ids
from novalxcdriver.privsep import storage
from tests.functional import base

IDMAP = ids.Idmap(100000 + 7 * 65536, 100000 + 9 * 65536, 65536)
DISK_IDMAP = ids.Idmap(100000 + 3 * 65536, 100000 + 5 * 65536, 65536)


class UserNamespaceTest(oslo_base.BaseTestCase):

    def setUp(self):
        super().setUp()
        base.require_root(self)
        before = self._children()
        self.addCleanup(lambda: self.assertEqual(
            set(), self._children() - before))

    @staticmethod
    def _children():
        # This process's children, zombies included, from every thread:
        # earlier tests in this worker may have left helpers of their own
        # (dnsmasq, relays), so only new ones count.
        pids = set()
        for tid in os.listdir('/proc/self/task'):
            try:
                with open('/proc/self/task/%s/children' % tid) as f:
                    pids.update(f.read().split())
            except FileNotFoundError:
                pass
        return pids

    def _maps(self, fd):
        # What a process entering the namespace sees.
        path = '/proc/%d/fd/%d' % (os.getpid(), fd)
        return [subprocess.run(
            ['nsenter', '--user=%s' % path, 'cat', '/proc/self/' + name],
            check=True, capture_output=True, text=True).stdout.split()
            for name in ('uid_map', 'gid_map')]

    def test_maps_the_idmap_to_root(self):
        with storage.user_namespace(IDMAP) as fd:
            self.assertTrue(os.readlink('/proc/self/fd/%d' % fd)
                            .startswith('user:['))
            self.assertNotEqual(os.stat('/proc/self/ns/user').st_ino,
                                os.fstat(fd).st_ino)
            self.assertEqual(
                [['0', str(IDMAP.uid_start), '65536'],
                 ['0', str(IDMAP.gid_start), '65536']], self._maps(fd))
        self.assertRaises(OSError, os.fstat, fd)

    def test_shifting_namespace_two_extents(self):
        with storage.shifting_namespace(DISK_IDMAP, IDMAP) as fd:
            self.assertEqual(
                [[str(DISK_IDMAP.uid_start), str(IDMAP.uid_start), '65536',
                  '0', '0', '1'],
                 [str(DISK_IDMAP.gid_start), str(IDMAP.gid_start), '65536',
                  '0', '0', '1']], self._maps(fd))

    def test_each_call_a_new_namespace(self):
        with storage.user_namespace(IDMAP) as a, \
                storage.user_namespace(IDMAP) as b:
            self.assertNotEqual(os.fstat(a).st_ino, os.fstat(b).st_ino)

    def test_concurrent_threads(self):
        errors = []

        def worker():
            try:
                for _ in range(20):
                    with storage.user_namespace(IDMAP):
                        pass
            except Exception as e:
                errors.append(e)
        threads = [threading.Thread(target=worker, daemon=True)
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual([], [t for t in threads if t.is_alive()])
        self.assertEqual([], errors)

    def test_refused_map_is_an_error_and_leaves_nothing(self):
        # A range no uid can have (beyond 2**32 - 1): the kernel refuses.
        bad = ids.Idmap(2 ** 32 - 10, IDMAP.gid_start, 65536)
        fds = set(os.listdir('/proc/self/fd'))
        e = self.assertRaises(exception.CommandFailed,
                              storage.user_namespace(bad).__enter__)
        self.assertIn('uid_map', str(e))
        self.assertEqual(fds, set(os.listdir('/proc/self/fd')))
