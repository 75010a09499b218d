"""bench.nova_api's pure parts."""

import threading

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
