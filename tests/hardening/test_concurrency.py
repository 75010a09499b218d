"""Two nova-compute services on one node spawn 100 containers, 10 at a time.

Two driver processes (tests.hardening.worker), each with its own CONF.host
and the same [lxc] state_path and lxc_path, boot from one new image: it is
fetched and unpacked once for both; every container gets its own ID and a
uid/gid range no other one overlaps; all run; deleting them all leaves
nothing behind.
"""

import os
import subprocess
import threading
import time
import uuid

from oslotest import base as oslo_base

from tests.functional import base as func_base
from tests.hardening import base
from tests.hardening import images
from tests.hardening import summary

SPAWNS = int(os.environ.get('NOVALXC_HARDENING_SPAWNS', '100'))
AT_ONCE = 10


class TwoComputeServicesTest(oslo_base.BaseTestCase):

    def setUp(self):
        super().setUp()
        func_base.require_root(self)
        self.root = base.test_root(self)
        self.image_id = str(uuid.uuid4())
        tarball = images.busybox_plus(os.path.join(self.root, 'bb.tar.gz'))
        # Both services know the image before either boots from it; the
        # slow fetch makes them really race for it.
        self.workers = [
            base.Worker(self, self.root, 'hardening-%s-%d' % (x, os.getpid()),
                        images={self.image_id: tarball}, fetch_delay=1.0,
                        state_poll_interval=1.0)
            for x in 'ab']

    def _in_rounds(self, op, specs, **kwargs):
        """op on every spec, AT_ONCE at a time, split over both workers.

        :returns: (list of (worker, spec, result), seconds).
        """
        done = []
        start = time.monotonic()
        half = AT_ONCE // len(self.workers)
        for first in range(0, len(specs), AT_ONCE):
            batch = specs[first:first + AT_ONCE]
            shares = [batch[i * half:(i + 1) * half]
                      for i in range(len(self.workers))]
            for worker, share in zip(self.workers, shares):
                worker.send(op, instances=share, **kwargs)
            for worker, share in zip(self.workers, shares):
                results = worker.receive()
                done += [(worker, s, r) for s, r in zip(share, results)]
        return done, time.monotonic() - start

    def test_spawns_on_two_services_sharing_a_node(self):
        specs = [base.instance_spec(0x1000 + i) for i in range(SPAWNS)]
        names = [base.instance_name(s) for s in specs]
        spawned, spawn_seconds = self._in_rounds('spawn', specs,
                                                 image_id=self.image_id)
        self.assertEqual([], [(s['uuid'], r['error'], r.get('message'))
                              for _w, s, r in spawned if r['error']])

        lxc_path = self.workers[0].lxc_path
        # Every instance RUNNING, as LXC itself says, on its own service.
        states = {name: base.lxc_info(name, lxc_path) for name in names}
        self.assertEqual({n: 'RUNNING' for n in names},
                         {n: s for n, (s, _pid) in states.items()})
        for worker in self.workers:
            mine = sorted(base.instance_name(s) for w, s, _r in spawned
                          if w is worker)
            self.assertEqual(mine, sorted(worker.call('list_instances')))

        # The image: one download and one unpack for both services.
        counts = [w.call('counts') for w in self.workers]
        fetches = sum(c['fetch'] for c in counts)
        unpacks = sum(c['unpack'] for c in counts)

        # IDs and ranges: unique, disjoint, and what the kernel applies.
        cids = [r['value']['cid'] for _w, _s, r in spawned]
        ranges = []
        uid_base, gid_base = base.subordinate_ranges()
        for name, cid in zip([r['value']['name'] for _w, _s, r in spawned],
                             cids):
            uid_start, gid_start, size = base.idmap_of(lxc_path, name)
            self.assertEqual((uid_base + cid * size, gid_base + cid * size),
                             (uid_start, gid_start))
            pid = states[name][1]
            self.assertEqual([['0', str(uid_start), str(size)]],
                             base.proc_map(pid, 'uid_map'))
            self.assertEqual([['0', str(gid_start), str(size)]],
                             base.proc_map(pid, 'gid_map'))
            ranges.append((uid_start, uid_start + size, name))
        ranges.sort()
        overlaps = [(a[2], b[2]) for a, b in zip(ranges, ranges[1:])
                    if b[0] < a[1]]
        collisions = (len(cids) - len(set(cids))) + len(overlaps) + (
            len(names) - len(set(names)))

        veth_names = base.veth_pairs(lxc_path)
        destroyed, destroy_seconds = self._in_rounds('destroy', specs)
        self.assertEqual([], [(s['uuid'], r['error'], r.get('message'))
                              for _w, s, r in destroyed if r['error']])
        leaks = base.leaks(lxc_path, self.workers[0].state_path, names,
                           veth_names=veth_names)

        summary.record(
            'concurrency',
            '%d spawns on 2 driver processes, %d at a time: %d RUNNING; '
            'collisions %d (%d IDs, %d disjoint uid/gid ranges); image '
            'fetched %d and unpacked %d time(s); %d leaks after deleting '
            'all; spawning %.1fs, deleting %.1fs' % (
                len(specs), AT_ONCE,
                sum(1 for s, _p in states.values() if s == 'RUNNING'),
                collisions, len(set(cids)), len(ranges) - len(overlaps),
                fetches, unpacks, len(leaks), spawn_seconds,
                destroy_seconds),
            spawns=len(specs), collisions=collisions, fetches=fetches,
            unpacks=unpacks, leaks=len(leaks))
        self.assertEqual(0, collisions, overlaps)
        self.assertEqual((1, 1), (fetches, unpacks), counts)
        self.assertEqual([], leaks)

    def test_lxc_tools_racing_destroy_leave_nothing(self):
        """lxc-ls -f, as the state watcher runs it, while containers go.

        Every lxc-* tool that loads a container's config opens the log
        file the config names, creating its directory: with lxc.log.file
        in the config, a tool racing a destroy made its rmtree fail
        (OSError: directory not empty) or recreated the removed container
        directory afterwards (both seen in every run of this test then).
        """
        worker = self.workers[0]
        stop = threading.Event()
        runs = []

        def lister():
            while not stop.is_set():
                subprocess.run(['lxc-ls', '-f', '-P', worker.lxc_path],
                               capture_output=True)
                runs.append(1)

        leftovers, errors = [], []
        for round_ in range(3):
            specs = [base.instance_spec(0x4000 + 100 * round_ + i,
                                        root_gb=0) for i in range(30)]
            results = worker.call('spawn', instances=specs,
                                  image_id=self.image_id)
            self.assertEqual([None] * 30, [r['error'] for r in results])
            threads = [threading.Thread(target=lister) for _ in range(3)]
            for t in threads:
                t.start()
            try:
                results = worker.call('destroy', instances=specs)
            finally:
                stop.set()
                for t in threads:
                    t.join()
                stop.clear()
            errors += ['%s: %s' % (r['error'], r['message'])
                       for r in results if r['error']]
            leftovers += os.listdir(worker.lxc_path)
        summary.record(
            'concurrency.destroy-race', '90 destroys with 3 lxc-ls -f loops '
            'running (%d listings): %d failed, %d container directories '
            'came back' % (len(runs), len(errors), len(leftovers)),
            errors=len(errors), leftovers=len(leftovers))
        self.assertEqual([], errors)
        self.assertEqual([], leftovers)
