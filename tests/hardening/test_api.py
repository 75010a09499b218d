"""Through the Nova API: 10 rounds of 10 parallel boots and deletes.

Nova's in-process REST harness with LXCDriver as its compute driver, set
up as for the functional suite's API tests (api_base.LXCAPITestCase), but
with casts left asynchronous: each round boots 10 servers with one request
(min_count 10: the compute service builds them in parallel), waits for all
of them to be ACTIVE (their containers RUNNING), deletes them all, and
checks that nothing of them is left on the host.

One request rather than 10 concurrent ones: in native threading mode,
concurrent schedule_and_build_instances calls deadlock inside the
harness's own CellDatabases and DatabaseWriteLock fixtures (a thread
holding the cell read lock waits for the SQLite write lock, whose holder
waits behind a queued cell writer), before the driver is ever reached.
"""

import os
import threading
import time

from nova.tests.functional.api import client

from novalxcdriver import conf
from tests.functional.api import base as api_base
from tests.functional import base as func_base
from tests.hardening import base
from tests.hardening import images
from tests.hardening import summary

CONF = conf.CONF
ROUNDS = int(os.environ.get('NOVALXC_HARDENING_API_ROUNDS', '10'))
AT_ONCE = 10


class APIChurnTest(api_base.LXCAPITestCase):

    # Real parallelism: the API answers at once, builds run concurrently.
    CAST_AS_CALL = False

    def setUp(self):
        func_base.require_root(self)
        # A root of this process's own, cleaned up last (after services).
        self.api_root = base.test_root(self)
        super().setUp()

    def _api_root(self):
        return self.api_root

    def _compute_flags(self):
        # 10 one-vCPU servers at once on a small host: Nova's default
        # initial ratio (4.0) would not place them all.
        return dict(instance_name_template=base.NAME_PREFIX + 'api-%08x',
                    cpu_allocation_ratio=16.0)

    def _image(self):
        return self._rootfs_image(images.busybox_plus(
            os.path.join(self.api_root, 'bb.tar.gz')))

    def _wait_all(self, servers, status, timeout=300):
        """Wait until every server has status; return them, or fail."""
        deadline = time.monotonic() + timeout
        pending = {s['id']: s for s in servers}
        done = {}
        while pending and time.monotonic() < deadline:
            for server_id in list(pending):
                server = self.api.get_server(server_id)
                if server['status'] == status:
                    done[server_id] = server
                    del pending[server_id]
                elif server['status'] == 'ERROR':
                    self.fail('server %s went to ERROR: %s' % (
                        server_id, server.get('fault')))
            time.sleep(0.2)
        self.assertEqual({}, {k: v['status'] for k, v in pending.items()})
        return [done[s['id']] for s in servers]

    def _wait_all_deleted(self, servers, timeout=300):
        deadline = time.monotonic() + timeout
        pending = {s['id'] for s in servers}
        while pending and time.monotonic() < deadline:
            for server_id in list(pending):
                try:
                    server = self.api.get_server(server_id)
                except client.OpenStackApiNotFoundException:
                    pending.discard(server_id)
                    continue
                if server['status'] == 'ERROR':
                    self.fail('server %s went to ERROR while deleted: %s'
                              % (server_id, server.get('fault')))
            time.sleep(0.2)
        self.assertEqual(set(), pending)

    def _count_concurrent_spawns(self):
        """Wrap the driver's spawn; the returned dict gets the peak."""
        driver = self.compute.manager.driver
        real = driver.spawn
        counts = {'now': 0, 'peak': 0}
        lock = threading.Lock()

        def spawn(*args, **kwargs):
            with lock:
                counts['now'] += 1
                counts['peak'] = max(counts['peak'], counts['now'])
            try:
                return real(*args, **kwargs)
            finally:
                with lock:
                    counts['now'] -= 1

        driver.spawn = spawn
        return counts

    def test_rounds_of_parallel_boots_and_deletes(self):
        image_id = self._image()
        spawns = self._count_concurrent_spawns()
        lxc_path, state_path = CONF.lxc.lxc_path, CONF.lxc.state_path
        boots = 0
        leaks = []
        timings = []
        for i in range(ROUNDS):
            start = time.monotonic()
            server = self._build_server(
                name='hardening-%d' % i, image_uuid=image_id, flavor_id='1',
                networks='none')
            server.update(min_count=AT_ONCE, max_count=AT_ONCE,
                          return_reservation_id=True)
            reservation = self.api.post_server({'server': server})
            servers = self.api.get_servers(search_opts={
                'reservation_id': reservation['reservation_id']})
            self.assertEqual(AT_ONCE, len(servers))
            servers = self._wait_all(servers, 'ACTIVE')
            booted = time.monotonic() - start
            names = [s['OS-EXT-SRV-ATTR:instance_name'] for s in servers]
            states = [base.lxc_info(n, lxc_path)[0] for n in names]
            self.assertEqual(['RUNNING'] * AT_ONCE, states)
            boots += len(servers)
            veth_names = base.veth_pairs(lxc_path)

            start = time.monotonic()
            for server in servers:
                self.api.delete_server(server['id'])
            self._wait_all_deleted(servers)
            deleted = time.monotonic() - start
            found = base.leaks(lxc_path, state_path, names,
                               veth_names=veth_names)
            leaks += found
            timings.append((booted, deleted))
            print('HARDENING api round %d: %d servers ACTIVE in %.1fs, '
                  'deleted in %.1fs, %d leaks%s' % (
                      i + 1, len(servers), booted, deleted, len(found),
                      ''.join('\n    ' + x for x in found)))
        summary.record(
            'api', '%d rounds of %d parallel boots and deletes through the '
            'Nova API: %d servers ACTIVE (containers RUNNING), 0 errors, %d '
            'leaks; up to %d spawns at once in the driver; a round boots in '
            '%.1fs and deletes in %.1fs on average'
            % (ROUNDS, AT_ONCE, boots, len(leaks), spawns['peak'],
               sum(b for b, _d in timings) / len(timings),
               sum(d for _b, d in timings) / len(timings)),
            boots=boots, leaks=len(leaks), rounds=ROUNDS,
            peak_spawns=spawns['peak'])
        self.assertEqual([], leaks)
