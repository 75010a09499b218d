"""bench.nova_api's pure parts."""

import threading
from unittest import mock

from oslotest import base

from bench import nova_api


class ServerNamesTest(base.BaseTestCase):

    def test_numbered_after_the_prefix(self):
        names = nova_api.server_names('nlx-%d-')
        self.assertEqual(['nlx-%d-00001', 'nlx-%d-00002'],
                         [next(names), next(names)])

    def test_shared_by_threads_each_name_once(self):
        names = nova_api.server_names('x-')
        got, lock = [], threading.Lock()

        def worker():
            mine = [next(names) for _ in range(2000)]
            with lock:
                got.extend(mine)

        threads = [threading.Thread(target=worker) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(20000, len(set(got)))


class _Clock:
    """time.monotonic and time.sleep of a test: sleep advances it."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


class DeleteLeftoversTest(base.BaseTestCase):

    def _conn(self, listings):
        conn = mock.Mock()
        servers = iter(listings)

        def listing(**kwargs):
            found = []
            for name in next(servers):
                server = mock.Mock(id='id-' + name)
                server.name = name  # name= would name the mock itself
                found.append(server)
            return found
        conn.compute.servers.side_effect = listing
        return conn

    def _run(self, listings, timeout):
        clock = _Clock()
        conn = self._conn(listings)
        with mock.patch.object(nova_api.time, 'monotonic', clock.monotonic), \
                mock.patch.object(nova_api.time, 'sleep', clock.sleep):
            left = nova_api.delete_leftovers(conn, timeout=timeout)
        return left, clock.now, conn

    def test_slow_but_steady_deletes_are_waited_for(self):
        # 3 servers, one gone every 4 s: 12 s in all, past a 5 s timeout.
        names = ['a', 'b', 'c']
        listings = [names]  # the listing that is deleted
        for gone in range(len(names)):
            listings += [names[gone:]] * 4
        listings.append([])
        left, elapsed, conn = self._run(listings, timeout=5)
        self.assertEqual([], left)
        self.assertGreater(elapsed, 5)
        self.assertEqual(3, conn.compute.delete_server.call_count)

    def test_no_progress_gives_up_after_the_timeout(self):
        listings = [['a', 'b']] * 100
        left, elapsed, conn = self._run(listings, timeout=5)
        self.assertEqual(['a', 'b'], left)
        self.assertEqual(5, elapsed)
