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


class _Server:
    def __init__(self, sid, status='BUILD', task_state='spawning',
                 fault=None):
        self.id, self.status, self.task_state, self.fault = (
            sid, status, task_state, fault)


class _Cloud:
    """conn.compute.servers of a test: what each listing was asked."""

    def __init__(self):
        self.servers = {}  # id -> _Server
        self.calls = []

    def list(self, details, name, status=None):
        self.calls.append((details, status))
        assert name == '^' + nova_api.PREFIX
        return [s for s in self.servers.values()
                if status is None or s.status == status]


class TrackerTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.cloud = _Cloud()
        conn = mock.Mock()
        conn.compute.servers.side_effect = self.cloud.list
        self.tracker = nova_api.Tracker(conn, 0.15, detail_interval=1.0)
        self.clock = 100.0
        self.patch = mock.patch.object(nova_api.time, 'monotonic',
                                       side_effect=lambda: self.clock)
        self.patch.start()
        self.addCleanup(self.patch.stop)

    def poll(self, at):
        self.clock = at
        self.tracker._servers, active = self.tracker._list(
            self.tracker._detailed_due())
        return active

    def test_detailed_once_a_second_cheap_between(self):
        self.cloud.servers['a'] = _Server('a')
        self.poll(100.0)
        self.poll(100.2)
        self.poll(100.9)
        self.poll(101.1)
        self.assertEqual([(True, None), (False, 'ACTIVE'), (False, None),
                          (False, 'ACTIVE'), (False, None), (True, None)],
                         self.cloud.calls)

    def test_active_from_the_cheap_listing(self):
        self.cloud.servers['a'] = _Server('a')
        self.assertEqual(set(), self.poll(100.0))
        self.cloud.servers['a'] = _Server('a', 'ACTIVE', None)
        self.assertEqual({'a'}, self.poll(100.2))
        # Its state stays the last detailed one until the next.
        self.assertEqual(('BUILD', 'spawning', None),
                         self.tracker._servers['a'])

    def test_a_new_server_is_building_until_listed_in_detail(self):
        self.poll(100.0)
        self.cloud.servers['b'] = _Server('b')
        self.poll(100.2)
        self.assertEqual({'b': ('BUILD', None, None)}, self.tracker._servers)

    def test_gone_at_the_cheap_listing(self):
        self.cloud.servers['a'] = _Server('a', 'ACTIVE', None)
        self.poll(100.0)
        del self.cloud.servers['a']
        self.poll(100.2)
        self.assertEqual({}, self.tracker._servers)

    def test_error_and_fault_from_the_detailed_listing(self):
        self.poll(100.0)
        self.cloud.servers['a'] = _Server('a', 'ERROR', None,
                                          {'message': 'No valid host'})
        self.poll(100.2)
        self.assertEqual('BUILD', self.tracker._servers['a'][0])
        self.assertEqual(set(), self.poll(101.0))
        self.assertEqual(('ERROR', None, 'No valid host'),
                         self.tracker._servers['a'])

    def test_active_with_a_task_left_is_not_active_in_detail(self):
        self.cloud.servers['a'] = _Server('a', 'ACTIVE', 'deleting')
        self.assertEqual(set(), self.poll(100.0))
