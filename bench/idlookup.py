"""Container ID lookups against the number of reservations (issue 16 goal 1).

Every spawn asks the ID allocator, under the machine-wide lock, whether
the instance holds an ID already (IdAllocator.allocate → find), and the
driver asks the same question on destroy and in its state checks. Before
the by-instance index that question read every reservation's owner.json.
This family measures, on one allocator with N reservations, in the same
run and alternating:

- ``find``: the index's lookup (IdAllocator.find), an instance that holds
  one of the N;
- ``scan``: the scan that find was, reading every reservation
  (IdAllocator.reservations, filtered as find filtered);
- ``allocate``: a new instance's allocate, its fsyncs included, each
  released again (not timed).

It runs on a directory of its own under --root, with subuid and subgid
files of its own: the machine's ``[lxc] ids_path`` is not touched.
"""

import os
import shutil
import time

from novalxcdriver import ids

COUNTS = (10, 100, 1000)
SIDES = ('find', 'scan', 'allocate')


def _scan(alloc, instance_uuid):
    """The lookup before the index: every reservation read."""
    found = [cid for cid, res in alloc.reservations().items()
             if alloc._findable(res, instance_uuid)]
    return min(found) if found else None


def _allocator(top, n):
    size = ids.DEFAULT_RANGE_SIZE
    subuid = os.path.join(top, 'subuid')
    with open(subuid, 'w') as f:
        f.write('root:100000:%d\n' % (
            (n + 1) * size + ids.UNPACK_IDS + ids.HELPER_IDS))
    return ids.IdAllocator(os.path.join(top, 'state'), subuid_path=subuid,
                           subgid_path=subuid)


def measure(root, counts=COUNTS, runs=200, log=print):
    """Lookup and allocation times at each number of reservations.

    :param root: a directory for the allocators' files (removed after).
    :param counts: numbers of reservations held while measuring.
    :param runs: samples per side and count.
    :returns: ``{str(n): {'find': [s], 'scan': [s], 'allocate': [s]}}``,
        seconds per call.
    :raises AssertionError: find and the scan disagree.
    """
    out = {}
    for n in counts:
        top = os.path.join(root, 'idlookup-%d' % n)
        shutil.rmtree(top, ignore_errors=True)
        os.makedirs(top)
        try:
            alloc = _allocator(top, n)
            for i in range(n):
                alloc.allocate('held-%d' % i, 'held')
            samples = {side: [] for side in SIDES}
            for run in range(runs):
                uuid = 'held-%d' % (run * 7919 % n)
                order = SIDES if run % 2 == 0 else SIDES[::-1]
                for side in order:
                    start = time.perf_counter()
                    if side == 'find':
                        got = alloc.find(uuid)
                    elif side == 'scan':
                        got = _scan(alloc, uuid)
                    else:
                        got = alloc.allocate('new-%d' % run, 'new')
                    samples[side].append(time.perf_counter() - start)
                    if side == 'allocate':
                        alloc.release(got)
                    elif got is None:
                        raise AssertionError('%s found no ID for %s' % (
                            side, uuid))
            if alloc.find(uuid) != _scan(alloc, uuid):
                raise AssertionError('find and the scan disagree')
            out[str(n)] = samples
            log('idlookup: %d reservations done' % n)
        finally:
            shutil.rmtree(top, ignore_errors=True)
    return out
