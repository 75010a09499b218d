"""Tests for novalxcdriver.ids: subuid parsing, idmaps, ID reservations."""

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from unittest import mock

import fixtures
from oslo_concurrency import lockutils
from oslotest import base

from novalxcdriver import durable
from novalxcdriver import exception
from novalxcdriver import ids

SIZE = 65536
# The top of root's ranges that no container gets.
RESERVED = ids.UNPACK_IDS + ids.HELPER_IDS
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

# Run by each worker process of the cross-process race test. It signals
# that it is ready, waits for a common start signal so the workers really
# run concurrently, then allocates and prints its IDs as JSON.
CHILD_SCRIPT = """
import json, os, sys, time
from novalxcdriver import ids
state, subuid, subgid, worker, n, ready, go = sys.argv[1:]
alloc = ids.IdAllocator(state, subuid_path=subuid, subgid_path=subgid)
alloc.count
open(ready, 'w').close()
deadline = time.monotonic() + 30
while not os.path.exists(go):
    if time.monotonic() > deadline:
        sys.exit('no start signal')
    time.sleep(0.002)
got = [alloc.allocate('uuid-%s-%d' % (worker, i), 'inst-%s-%d' % (worker, i))
       for i in range(int(n))]
print(json.dumps({'pid': os.getpid(), 'ids': got}))
"""


class _Base(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.state = os.path.join(self.tmp, 'state')

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, 'w') as f:
            f.write(text)
        return path

    def ranges(self, subuid, subgid=None):
        """Write subuid/subgid files; return their paths."""
        return (self.write('subuid', subuid),
                self.write('subgid', subuid if subgid is None else subgid))

    def allocator(self, n_ids=256, artifact_ids=None, **kw):
        # n_ids containers' ranges, then the unpacker's.
        subuid, subgid = self.ranges(
            'root:100000:%d\n' % (n_ids * SIZE + RESERVED),
            'root:300000:%d\n' % (n_ids * SIZE + RESERVED))
        return ids.IdAllocator(self.state, subuid_path=subuid,
                               subgid_path=subgid,
                               artifact_ids=artifact_ids, **kw)


class ReadSubordinateRangesTest(_Base):

    def test_root_by_name(self):
        uid, gid = self.ranges('root:100000:655360\n',
                               'root:200000:131072\n')
        self.assertEqual(((100000, 655360), (200000, 131072)),
                         ids.read_subordinate_ranges(uid, gid))

    def test_root_by_uid_zero(self):
        uid, gid = self.ranges('0:100000:655360\n', 'root:7:65536\n')
        self.assertEqual(((100000, 655360), (7, 65536)),
                         ids.read_subordinate_ranges(uid, gid))

    def test_comments_blank_lines_and_other_users(self):
        text = ('# subordinate ids\n'
                '\n'
                'alice:100000:65536\n'
                '   \n'
                '1000:165536:65536\n'
                '  root:231072:1000000000  \n')
        uid, gid = self.ranges(text)
        self.assertEqual(((231072, 1000000000), (231072, 1000000000)),
                         ids.read_subordinate_ranges(uid, gid))

    def test_first_root_line_wins(self):
        uid, gid = self.ranges('root:100000:65536\n'
                               '0:900000:10000000\n'
                               'root:50000000:20000000\n')
        self.assertEqual(((100000, 65536), (100000, 65536)),
                         ids.read_subordinate_ranges(uid, gid))

    def test_malformed_lines_skipped(self):
        uid, gid = self.ranges('root:abc:65536\n'
                               'root:100000\n'
                               'root:100000:0\n'
                               'root:-5:65536\n'
                               'root:400000:131072\n')
        self.assertEqual(((400000, 131072), (400000, 131072)),
                         ids.read_subordinate_ranges(uid, gid))

    def test_other_user(self):
        uid, gid = self.ranges('root:1:65536\nnova:100000:65536\n')
        self.assertEqual(((100000, 65536), (100000, 65536)),
                         ids.read_subordinate_ranges(uid, gid, user='nova'))

    def test_missing_root_raises(self):
        uid, gid = self.ranges('root:100000:65536\n',
                               '# only others\nalice:100000:65536\n')
        e = self.assertRaises(exception.IdmapUnavailable,
                              ids.read_subordinate_ranges, uid, gid)
        self.assertIn(gid, str(e))
        self.assertIn('no range for', e.kwargs['reason'])

    def test_root_only_in_comment_raises(self):
        uid, gid = self.ranges('#root:100000:65536\n')
        self.assertRaises(exception.IdmapUnavailable,
                          ids.read_subordinate_ranges, uid, gid)

    def test_missing_file_raises(self):
        uid, _ = self.ranges('root:100000:65536\n')
        missing = os.path.join(self.tmp, 'nope')
        e = self.assertRaises(exception.IdmapUnavailable,
                              ids.read_subordinate_ranges, uid, missing)
        self.assertIn(missing, e.kwargs['reason'])

    def test_read_again_only_when_a_file_changed(self):
        uid, gid = self.ranges('root:100000:65536\n', 'root:7:65536\n')
        opened = []
        real = open

        def counting_open(path, mode='r', *args, **kwargs):
            if mode == 'r':
                opened.append(path)
            return real(path, mode, *args, **kwargs)

        with mock.patch('builtins.open', side_effect=counting_open):
            for _ in range(3):
                self.assertEqual(((100000, 65536), (7, 65536)),
                                 ids.read_subordinate_ranges(uid, gid))
            self.assertEqual([uid, gid], opened)
            # Rewritten in place, same size: the new range is read.
            self.write('subgid', 'root:8:65536\n')
            self.assertEqual(((100000, 65536), (8, 65536)),
                             ids.read_subordinate_ranges(uid, gid))
            # Replaced by a rename (shadow's tools do): read too.
            new = self.write('subuid.new', 'root:200000:65536\n')
            os.rename(new, uid)
            self.assertEqual(((200000, 65536), (8, 65536)),
                             ids.read_subordinate_ranges(uid, gid))
        self.assertEqual([uid, gid] * 3, opened)

    def test_a_failure_is_not_remembered(self):
        uid, gid = self.ranges('root:100000:65536\n', 'alice:7:65536\n')
        self.assertRaises(exception.IdmapUnavailable,
                          ids.read_subordinate_ranges, uid, gid)
        self.write('subgid', 'root:7:65536\n')
        self.assertEqual(((100000, 65536), (7, 65536)),
                         ids.read_subordinate_ranges(uid, gid))

    def test_count_from_smaller_range(self):
        # Less the unpacker's UNPACK_IDS at the top (unpack_idmap) and
        # the HELPER_IDS below them (helper_ids).
        small = 4 * SIZE + ids.HELPER_IDS
        for uid_count, gid_count in ((10 * SIZE, small), (small, 10 * SIZE),
                                     (10 * SIZE, small + SIZE - 1)):
            uid, gid = self.ranges('root:100000:%d\n' % uid_count,
                                   'root:100000:%d\n' % gid_count)
            alloc = ids.IdAllocator(self.state, subuid_path=uid,
                                    subgid_path=gid)
            self.assertEqual(3, alloc.count)

    def test_count_with_custom_size(self):
        uid, gid = self.ranges('root:100000:1000000000\n')
        alloc = ids.IdAllocator(self.state, range_size=10 ** 6,
                                subuid_path=uid, subgid_path=gid)
        self.assertEqual(999, alloc.count)

    def test_no_range_for_root_on_use(self):
        uid, gid = self.ranges('alice:100000:65536\n')
        alloc = ids.IdAllocator(self.state, subuid_path=uid, subgid_path=gid)
        self.assertRaises(exception.IdmapUnavailable, lambda: alloc.count)
        self.assertRaises(exception.IdmapUnavailable, alloc.allocate,
                          'u', 'n')


class IdmapTest(_Base):

    def test_arithmetic(self):
        alloc = self.allocator(n_ids=8)
        self.assertEqual(ids.Idmap(100000, 300000, SIZE), alloc.idmap(0))
        self.assertEqual(ids.Idmap(100000 + 3 * SIZE, 300000 + 3 * SIZE,
                                   SIZE), alloc.idmap(3))
        self.assertEqual(ids.Idmap(100000 + 7 * SIZE, 300000 + 7 * SIZE,
                                   SIZE), alloc.idmap(7))

    def test_frozen(self):
        m = self.allocator(n_ids=1).idmap(0)
        self.assertRaises(AttributeError, setattr, m, 'size', 1)

    def _check_disjoint_inside(self, alloc, uid_range, gid_range):
        maps = [alloc.idmap(c) for c in range(alloc.count)]
        for attr, (start, count) in (('uid_start', uid_range),
                                     ('gid_start', gid_range)):
            spans = sorted((getattr(m, attr), getattr(m, attr) + m.size)
                           for m in maps)
            # Sorted and each ending before the next begins: no two overlap.
            for (_, end), (nxt, _) in zip(spans, spans[1:]):
                self.assertLessEqual(end, nxt)
            self.assertGreaterEqual(spans[0][0], start)
            self.assertLessEqual(spans[-1][1], start + count)

    def test_no_overlap_real_sized_range(self):
        uid, gid = self.ranges('root:100000:1000000000\n',
                               'root:100000:999999999\n')
        alloc = ids.IdAllocator(self.state, subuid_path=uid, subgid_path=gid)
        self.assertEqual(15257, alloc.count)
        self._check_disjoint_inside(alloc, (100000, 1000000000),
                                    (100000, 999999999))

    def test_no_overlap_every_pair(self):
        # Odd size and count so no power-of-two arithmetic hides a bug.
        uid, gid = self.ranges(
            'root:1000:%d\n' % (150 * 70001 + 3 + RESERVED),
            'root:5:%d\n' % (150 * 70001 + 70000 + RESERVED))
        alloc = ids.IdAllocator(self.state, range_size=70001,
                                subuid_path=uid, subgid_path=gid)
        self.assertEqual(150, alloc.count)
        maps = [alloc.idmap(c) for c in range(alloc.count)]
        for i, a in enumerate(maps):
            self.assertEqual(70001, a.size)
            for b in maps[i + 1:]:
                for attr in ('uid_start', 'gid_start'):
                    lo, hi = sorted((getattr(a, attr), getattr(b, attr)))
                    self.assertGreaterEqual(hi, lo + 70001)
        self._check_disjoint_inside(alloc, (1000, 150 * 70001 + 3),
                                    (5, 150 * 70001 + 70000))
        unpack = ids.unpack_idmap(ids.read_subordinate_ranges(uid, gid))
        self.assertGreaterEqual(unpack.uid_start, maps[-1].uid_start + 70001)
        self.assertGreaterEqual(unpack.gid_start, maps[-1].gid_start + 70001)

    def test_unpack_range_is_the_top_of_root_s_and_no_container_s(self):
        uid, gid = self.ranges('root:100000:1000000000\n',
                               'root:200000:999999999\n')
        ranges = ids.read_subordinate_ranges(uid, gid)
        unpack = ids.unpack_idmap(ranges)
        self.assertEqual(ids.Idmap(100000 + 1000000000 - 65536,
                                   200000 + 999999999 - 65536, 65536),
                         unpack)
        alloc = ids.IdAllocator(self.state, subuid_path=uid, subgid_path=gid)
        last = alloc.idmap(alloc.count - 1)
        self.assertLessEqual(last.uid_start + last.size, unpack.uid_start)
        self.assertLessEqual(last.gid_start + last.size, unpack.gid_start)

    def test_count_one_short_of_the_helpers(self):
        uid, gid = self.ranges('root:100000:%d\n' % (
            4 * SIZE + ids.HELPER_IDS - 1))
        alloc = ids.IdAllocator(self.state, subuid_path=uid, subgid_path=gid)
        self.assertEqual(2, alloc.count)

    def test_helper_ids_below_the_unpack_range_and_no_container_s(self):
        uid, gid = self.ranges('root:100000:1000000000\n',
                               'root:200000:999999999\n')
        ranges = ids.read_subordinate_ranges(uid, gid)
        unpack = ids.unpack_idmap(ranges)
        helpers = ids.helper_ids(ranges)
        self.assertEqual(ids.Idmap(unpack.uid_start - 64,
                                   unpack.gid_start - 64, 64), helpers)
        self.assertEqual(64, ids.HELPER_IDS)
        alloc = ids.IdAllocator(self.state, subuid_path=uid, subgid_path=gid)
        last = alloc.idmap(alloc.count - 1)
        self.assertLessEqual(last.uid_start + last.size, helpers.uid_start)
        self.assertLessEqual(last.gid_start + last.size, helpers.gid_start)

    def test_helper_ids_need_their_ids(self):
        uid, gid = self.ranges('root:100000:%d\n' % (
            RESERVED - 1))
        ranges = ids.read_subordinate_ranges(uid, gid)
        ids.unpack_idmap(ranges)
        e = self.assertRaises(exception.IdmapUnavailable, ids.helper_ids,
                              ranges)
        self.assertIn('65600 ids', str(e))

    def test_unpack_range_needs_its_ids(self):
        uid, gid = self.ranges('root:100000:65535\n')
        self.assertRaises(exception.IdmapUnavailable, ids.unpack_idmap,
                          ids.read_subordinate_ranges(uid, gid))

    def test_out_of_range_raises(self):
        alloc = self.allocator(n_ids=4)
        for bad in (4, 5, -1, '1', None, True):
            self.assertRaises(exception.IdmapUnavailable, alloc.idmap, bad)


class AllocateTest(_Base):

    def owner(self, cid):
        with open(os.path.join(self.state, 'ids', str(cid),
                               'owner.json')) as f:
            return json.load(f)

    def test_lowest_free_and_owner_record(self):
        alloc = self.allocator()
        before = time.time()
        self.assertEqual(0, alloc.allocate('uuid-a', 'inst-a'))
        self.assertEqual(1, alloc.allocate('uuid-b', 'inst-b'))
        self.assertEqual(2, alloc.allocate('uuid-c', 'inst-c'))
        rec = self.owner(1)
        self.assertEqual('uuid-b', rec['instance_uuid'])
        self.assertEqual('inst-b', rec['instance_name'])
        self.assertEqual(os.getpid(), rec['pid'])
        self.assertTrue(before <= rec['created_at'] <= time.time())
        # Nothing but owner.json: temp files were renamed away.
        self.assertEqual(['owner.json'],
                         os.listdir(os.path.join(self.state, 'ids', '1')))
        res = alloc.reservations()
        self.assertEqual([0, 1, 2], sorted(res))
        self.assertEqual(ids.Reservation(1, 'uuid-b', 'inst-b', os.getpid(),
                                         rec['created_at'],
                                         owner=os.path.realpath(self.state),
                                         host=''), res[1])
        self.assertEqual(2, alloc.find('uuid-c'))
        self.assertIsNone(alloc.find('uuid-z'))

    def test_idempotent_for_same_instance(self):
        alloc = self.allocator()
        alloc.allocate('uuid-a', 'inst-a')
        cid = alloc.allocate('uuid-b', 'inst-b')
        self.assertEqual(cid, alloc.allocate('uuid-b', 'inst-b'))
        self.assertEqual(cid, alloc.allocate('uuid-b', 'renamed'))
        self.assertEqual([0, 1], sorted(alloc.reservations()))
        self.assertEqual('inst-b', self.owner(cid)['instance_name'])

    def test_release_then_reuse(self):
        alloc = self.allocator()
        for i in range(4):
            alloc.allocate('uuid-%d' % i, 'inst-%d' % i)
        alloc.release(1)
        self.assertFalse(os.path.exists(os.path.join(self.state, 'ids', '1')))
        self.assertIsNone(alloc.find('uuid-1'))
        self.assertEqual(1, alloc.allocate('uuid-new', 'inst-new'))
        self.assertEqual(4, alloc.allocate('uuid-next', 'inst-next'))

    def test_release_is_idempotent(self):
        alloc = self.allocator()
        alloc.release(3)
        cid = alloc.allocate('uuid-a', 'inst-a')
        alloc.release(cid)
        alloc.release(cid)
        self.assertEqual({}, alloc.reservations())

    def test_release_leaves_symlink_target_alone(self):
        alloc = self.allocator()
        target = os.path.join(self.tmp, 'precious')
        os.makedirs(os.path.join(target, 'sub'))
        os.makedirs(os.path.join(self.state, 'ids'))
        os.symlink(target, os.path.join(self.state, 'ids', '2'))
        alloc.release(2)
        self.assertTrue(os.path.isdir(os.path.join(target, 'sub')))
        self.assertFalse(os.path.lexists(
            os.path.join(self.state, 'ids', '2')))

    def test_remove_orphan_only_without_owner(self):
        alloc = self.allocator()
        owned = alloc.allocate('uuid-a', 'inst-a')
        # A process killed between the mkdir and owner.json.
        os.mkdir(os.path.join(self.state, 'ids', '1'))
        self.assertIsNone(alloc.reservations()[1].instance_uuid)
        self.assertFalse(alloc.remove_orphan(owned))
        self.assertTrue(alloc.remove_orphan(1))
        self.assertFalse(alloc.remove_orphan(1))
        self.assertEqual([owned], list(alloc.reservations()))
        self.assertEqual(1, alloc.allocate('uuid-b', 'inst-b'))

    def test_artifact_ids_skipped(self):
        leftovers = {0, 2}
        alloc = self.allocator(artifact_ids=lambda: iter(leftovers))
        self.assertEqual(1, alloc.allocate('uuid-a', 'inst-a'))
        self.assertEqual(3, alloc.allocate('uuid-b', 'inst-b'))
        # Artifacts are asked again each time, not cached.
        leftovers.clear()
        self.assertEqual(0, alloc.allocate('uuid-c', 'inst-c'))
        self.assertFalse(os.path.exists(os.path.join(self.state, 'ids', '2')))

    def test_dir_without_owner_is_taken(self):
        alloc = self.allocator()
        os.makedirs(os.path.join(self.state, 'ids', '0'))
        self.assertEqual(1, alloc.allocate('uuid-a', 'inst-a'))
        res = alloc.reservations()[0]
        self.assertEqual((0, None, None, None),
                         (res.cid, res.instance_uuid, res.instance_name,
                          res.pid))
        self.assertIsInstance(res.created_at, float)

    def test_half_written_owner_is_taken(self):
        alloc = self.allocator()
        os.makedirs(os.path.join(self.state, 'ids', '0'))
        with open(os.path.join(self.state, 'ids', '0', 'owner.json'),
                  'w') as f:
            f.write('{"instance_uuid": "uuid-x", "inst')
        self.assertEqual(1, alloc.allocate('uuid-a', 'inst-a'))
        self.assertIsNone(alloc.reservations()[0].instance_uuid)
        self.assertIsNone(alloc.find('uuid-x'))

    def test_non_canonical_entries_ignored(self):
        alloc = self.allocator()
        ids_dir = os.path.join(self.state, 'ids')
        for name in ('007', 'foo', '.owner.tmp'):
            os.makedirs(os.path.join(ids_dir, name))
        self.assertEqual(0, alloc.allocate('uuid-a', 'inst-a'))
        self.assertEqual([0], list(alloc.reservations()))

    def test_mkdir_collision_moves_on(self):
        alloc = self.allocator()
        real_mkdir = os.mkdir
        ids_dir = os.path.join(self.state, 'ids')
        calls = []

        def racing_mkdir(path, *args, **kwargs):
            # A process ignoring our lock grabs the ID under our feet.
            if os.path.dirname(path) == ids_dir and not calls:
                calls.append(path)
                real_mkdir(path)
            return real_mkdir(path, *args, **kwargs)

        with mock.patch.object(ids.os, 'mkdir', side_effect=racing_mkdir):
            self.assertEqual(1, alloc.allocate('uuid-a', 'inst-a'))
        self.assertEqual([os.path.join(ids_dir, '0')], calls)
        self.assertIsNone(alloc.reservations()[0].instance_uuid)

    def test_exhausted_raises_with_count(self):
        alloc = self.allocator(n_ids=3)
        self.assertEqual([0, 1, 2], [alloc.allocate('u%d' % i, 'n%d' % i)
                                     for i in range(3)])
        e = self.assertRaises(exception.IdRangeExhausted, alloc.allocate,
                              'u3', 'n3')
        self.assertEqual(3, e.kwargs['count'])
        self.assertIn('all 3 IDs', str(e))
        # The instances already holding IDs still get theirs.
        self.assertEqual(2, alloc.allocate('u2', 'n2'))

    def test_exhausted_by_artifacts(self):
        alloc = self.allocator(n_ids=2, artifact_ids=lambda: [1])
        alloc.allocate('u0', 'n0')
        e = self.assertRaises(exception.IdRangeExhausted, alloc.allocate,
                              'u1', 'n1')
        self.assertEqual(2, e.kwargs['count'])

    def test_range_smaller_than_one_id(self):
        uid, gid = self.ranges('root:100000:65535\n')
        alloc = ids.IdAllocator(self.state, subuid_path=uid, subgid_path=gid)
        self.assertEqual(0, alloc.count)
        e = self.assertRaises(exception.IdRangeExhausted, alloc.allocate,
                              'u', 'n')
        self.assertEqual(0, e.kwargs['count'])

    def test_failed_owner_write_frees_the_id(self):
        alloc = self.allocator()
        # A full disk shows at the latest when the record is synced.
        with mock.patch.object(os, 'fsync',
                               side_effect=OSError(errno.ENOSPC, 'full')):
            self.assertRaises(OSError, alloc.allocate, 'u', 'n')
        self.assertEqual({}, alloc.reservations())
        self.assertEqual(0, alloc.allocate('u', 'n'))

    def test_owner_record_is_durable(self):
        # The record, its rename and the reservation's mkdir are all
        # synced before allocate returns (fsync(2), "NOTES").
        alloc = self.allocator()
        with mock.patch.object(durable, 'write',
                               wraps=durable.write) as write, \
                mock.patch.object(durable, 'sync',
                                  wraps=durable.sync) as sync, \
                mock.patch.object(durable, 'fsync_dir',
                                  wraps=durable.fsync_dir) as fsync_dir:
            cid = alloc.allocate('u', 'n')
        path = os.path.join(self.state, 'ids', str(cid))
        owner = os.path.join(path, 'owner.json')
        write.assert_called_once_with(owner, mock.ANY, mode=0o644,
                                      sync=False)
        sync.assert_called_once_with(owner)
        fsync_dir.assert_any_call(path)
        fsync_dir.assert_any_call(os.path.join(self.state, 'ids'))
        self.assertEqual('u', self.owner(cid)['instance_uuid'])
        self.assertEqual(0o644, os.stat(os.path.join(
            path, 'owner.json')).st_mode & 0o777)

    def test_fsyncs_run_outside_the_lock(self):
        # An fsync waits behind every disk concurrent spawns are writing;
        # under the lock, ten spawns queued on each other's.
        alloc = self.allocator()
        held = []
        real_lock = alloc._lock

        @contextlib.contextmanager
        def lock():
            with real_lock():
                held.append(True)
                try:
                    yield
                finally:
                    held.pop()

        fsyncs = []
        real_fsync = os.fsync

        def fsync(fd):
            fsyncs.append(bool(held))
            real_fsync(fd)

        with mock.patch.object(alloc, '_lock', lock), \
                mock.patch.object(os, 'fsync', side_effect=fsync):
            alloc.allocate('u', 'n')
        self.assertEqual([False, False, False], fsyncs)

    def test_artifact_scan_runs_outside_the_lock(self):
        # It reads every container's record and config: the slowest part.
        held = []

        def artifacts():
            held.append('scanned')
            return [0]

        alloc = self.allocator(artifact_ids=artifacts)
        alloc.ensure_index()
        real_lock = alloc._lock

        @contextlib.contextmanager
        def lock():
            with real_lock():
                held.append('locked')
                yield

        with mock.patch.object(alloc, '_lock', lock):
            self.assertEqual(1, alloc.allocate('u', 'n'))
        self.assertEqual(['scanned', 'locked'], held)

    def test_concurrent_allocations_share_a_scan_begun_after_them(self):
        # A scan already running when an allocation begins may have
        # missed an artifact made since: the allocation waits for the
        # next scan, which serves every allocation waiting.
        first_in = threading.Event()
        release_first = threading.Event()
        calls = []
        leftovers = {0}

        def artifacts():
            seen = set(leftovers)
            calls.append(seen)
            if len(calls) == 1:
                first_in.set()
                release_first.wait(10)
            return seen

        alloc = self.allocator(artifact_ids=artifacts)
        alloc.ensure_index()
        got = {}

        def spawn(name):
            got[name] = alloc.allocate('uuid-' + name, name)

        early = threading.Thread(target=spawn, args=('early',))
        early.start()
        self.assertTrue(first_in.wait(10))
        # A leftover of ID 1 appears while the first scan runs.
        leftovers.add(1)
        late = [threading.Thread(target=spawn, args=('late%d' % i,))
                for i in range(4)]
        for t in late:
            t.start()
        deadline = time.monotonic() + 10
        while (len(alloc._artifact_ids._cond._waiters) < 4 and
               time.monotonic() < deadline):
            time.sleep(0.005)
        release_first.set()
        for t in [early] + late:
            t.join(10)
        # The early one saw only 0 (and took 1); the four late ones shared
        # one scan that saw 1 too.
        self.assertEqual([{0}, {0, 1}], calls)
        self.assertEqual(1, got['early'])
        self.assertEqual({2, 3, 4, 5},
                         {got['late%d' % i] for i in range(4)})

    def test_a_failed_shared_scan_is_not_handed_on(self):
        in_scan = threading.Event()
        go = threading.Event()
        calls = []

        def artifacts():
            calls.append(threading.current_thread().name)
            if len(calls) == 1:
                in_scan.set()
                go.wait(10)
            if len(calls) == 2:
                raise OSError(errno.EIO, 'scan failed')
            return []

        shared = ids._SharedCall(artifacts)
        out = {}

        def call(name):
            try:
                out[name] = shared()
            except OSError as e:
                out[name] = e

        threads = [threading.Thread(target=call, args=(n,), name=n)
                   for n in ('a', 'b', 'c')]
        threads[0].start()
        self.assertTrue(in_scan.wait(10))
        for t in threads[1:]:
            t.start()
        deadline = time.monotonic() + 10
        while len(shared._cond._waiters) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        go.set()
        for t in threads:
            t.join(10)
        # a's own scan; then one of b and c scans for both and fails: that
        # one gets the error, the other scans again itself.
        self.assertEqual(3, len(calls))
        self.assertEqual([], out['a'])
        errors = [n for n in 'bc' if isinstance(out[n], OSError)]
        self.assertEqual(1, len(errors), out)
        self.assertEqual(calls[1], errors[0])

    def test_sync_failure_releases_the_id(self):
        alloc = self.allocator()
        with mock.patch.object(durable, 'sync',
                               side_effect=OSError(errno.EIO, 'io')):
            self.assertRaises(OSError, alloc.allocate, 'u', 'n')
        self.assertEqual({}, alloc.reservations())

    def test_uses_external_lock(self):
        alloc = self.allocator()
        with mock.patch.object(ids.lockutils, 'lock',
                               wraps=lockutils.lock) as lock:
            alloc.allocate('u', 'n')
            alloc.release(0)
        lock.assert_called_with('novalxc-ids', external=True,
                                lock_path=os.path.join(self.state, 'locks'))
        # The index's rebuild on first use, the allocation, the release.
        self.assertEqual(3, lock.call_count)
        self.assertTrue(os.path.exists(
            os.path.join(self.state, 'locks', 'novalxc-ids')))


class RaceTest(_Base):

    def _run_threads(self, n_threads, work):
        results, errors = [], []
        barrier = threading.Barrier(n_threads)

        def run(t):
            try:
                barrier.wait()
                results.extend(work(t))
            except Exception as e:  # Surfaced below, not lost in a thread.
                errors.append(e)

        threads = [threading.Thread(target=run, args=(t,))
                   for t in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual([], errors)
        return results

    def test_threads_get_distinct_ids(self):
        alloc = self.allocator(n_ids=256)
        got = self._run_threads(8, lambda t: [
            (alloc.allocate('uuid-%d-%d' % (t, i), 'inst'), t, i)
            for i in range(25)])
        cids = [c for c, _, _ in got]
        self.assertEqual(200, len(cids))
        self.assertEqual(set(range(200)), set(cids))
        res = alloc.reservations()
        for cid, t, i in got:
            self.assertEqual('uuid-%d-%d' % (t, i), res[cid].instance_uuid)

    def test_threads_same_instance_get_one_id(self):
        alloc = self.allocator()
        got = self._run_threads(8, lambda t: [
            alloc.allocate('uuid-same', 'inst') for i in range(5)])
        self.assertEqual({0}, set(got))
        self.assertEqual([0], list(alloc.reservations()))

    def test_processes_get_distinct_ids(self):
        subuid, subgid = self.ranges('root:100000:%d\n' % (256 * SIZE))
        go = os.path.join(self.tmp, 'go')
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join(
            [REPO_ROOT] + [p for p in [env.get('PYTHONPATH')] if p])
        procs, ready = [], []
        for w in range(4):
            ready.append(os.path.join(self.tmp, 'ready-%d' % w))
            procs.append(subprocess.Popen(
                [sys.executable, '-c', CHILD_SCRIPT, self.state, subuid,
                 subgid, str(w), '25', ready[-1], go],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                cwd=REPO_ROOT, text=True))
        self.addCleanup(lambda: [p.kill() for p in procs
                                 if p.poll() is None])
        deadline = time.monotonic() + 30
        while not all(os.path.exists(r) for r in ready):
            self.assertTrue(all(p.poll() is None for p in procs),
                            'a worker died before starting')
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)
        open(go, 'w').close()

        by_pid = {}
        for p in procs:
            out, err = p.communicate(timeout=30)
            self.assertEqual(0, p.returncode, err)
            result = json.loads(out)
            self.assertEqual(25, len(result['ids']))
            by_pid[result['pid']] = result['ids']
        self.assertEqual(4, len(by_pid))
        cids = [c for got in by_pid.values() for c in got]
        self.assertEqual(100, len(cids))
        self.assertEqual(100, len(set(cids)), 'an ID was handed out twice')
        self.assertEqual(set(range(100)), set(cids))

        alloc = ids.IdAllocator(self.state, subuid_path=subuid,
                                subgid_path=subgid)
        res = alloc.reservations()
        self.assertEqual(set(cids), set(res))
        for pid, got in by_pid.items():
            for cid in got:
                self.assertEqual(pid, res[cid].pid)
                self.assertEqual(cid, alloc.find(res[cid].instance_uuid))


class MachineWideTest(_Base):
    """Two drivers of one machine: one reservation directory, two owners."""

    def two(self, n_ids=4):
        subuid, subgid = self.ranges('root:100000:%d\n' % (
            n_ids * SIZE + RESERVED))
        shared = os.path.join(self.tmp, 'machine', 'ids')
        return [ids.IdAllocator(os.path.join(self.tmp, name),
                                subuid_path=subuid, subgid_path=subgid,
                                ids_path=shared, host=name)
                for name in ('host1', 'host2')]

    def test_no_range_shared_between_drivers(self):
        a, b = self.two(n_ids=4)
        got = [a.allocate('uuid-a', 'a'), b.allocate('uuid-b', 'b'),
               a.allocate('uuid-c', 'c'), b.allocate('uuid-d', 'd')]
        self.assertEqual([0, 1, 2, 3], got)
        starts = {a.idmap(c).uid_start for c in got}
        self.assertEqual(4, len(starts))
        self.assertRaises(exception.IdRangeExhausted, a.allocate, 'e', 'e')
        self.assertRaises(exception.IdRangeExhausted, b.allocate, 'f', 'f')

    def test_same_instance_on_both_sides_holds_two_ids(self):
        # A migration between two computes of one machine.
        a, b = self.two()
        self.assertEqual(0, a.allocate('uuid-x', 'x'))
        self.assertEqual(1, b.allocate('uuid-x', 'x'))
        self.assertEqual(0, a.find('uuid-x'))
        self.assertEqual(1, b.find('uuid-x'))
        self.assertEqual([0], list(a.reservations(mine=True)))
        self.assertEqual([1], list(b.reservations(mine=True)))
        self.assertEqual([0, 1], sorted(a.reservations()))
        res = a.reservations()[1]
        self.assertEqual((os.path.realpath(b.state_path), 'host2'),
                         (res.owner, res.host))
        a.release(0)
        self.assertIsNone(a.find('uuid-x'))
        self.assertEqual(1, b.find('uuid-x'))

    def test_lock_beside_the_reservations(self):
        a, _b = self.two()
        a.allocate('uuid-a', 'a')
        self.assertEqual(os.path.join(self.tmp, 'machine', 'locks'),
                         a.lock_path)
        self.assertEqual(['0', ids.INDEX_DIR], sorted(os.listdir(a.ids_path)))

    def legacy(self, state_path, cid, uuid, name='old'):
        path = os.path.join(state_path, 'ids', str(cid))
        os.makedirs(path)
        with open(os.path.join(path, 'owner.json'), 'w') as f:
            json.dump({'instance_uuid': uuid, 'instance_name': name,
                       'pid': 1, 'created_at': 1000.0}, f)
        return path

    def test_adopt_moves_legacy_reservations(self):
        a, b = self.two(n_ids=8)
        old = self.legacy(a.state_path, 2, 'uuid-old')
        os.makedirs(os.path.join(a.state_path, 'ids', '3'))  # no owner
        self.assertEqual([2, 3], a.adopt(os.path.join(a.state_path, 'ids')))
        self.assertFalse(os.path.exists(old))
        self.assertEqual(2, a.find('uuid-old'))
        res = a.reservations()[2]
        self.assertEqual((os.path.realpath(a.state_path), 'host1', 1000.0),
                         (res.owner, res.host, res.created_at))
        self.assertIsNone(a.reservations()[3].instance_uuid)
        # Taken for the other driver too.
        self.assertEqual(0, b.allocate('uuid-new', 'new'))
        self.assertEqual(1, b.allocate('uuid-new2', 'new2'))
        self.assertEqual(4, b.allocate('uuid-new3', 'new3'))
        self.assertEqual([], a.adopt(os.path.join(a.state_path, 'ids')))

    def test_adopt_refuses_an_id_held_by_another_instance(self):
        a, b = self.two()
        self.assertEqual(0, b.allocate('uuid-b', 'b'))
        old = self.legacy(a.state_path, 0, 'uuid-a')
        e = self.assertRaises(exception.IdConflict, a.adopt,
                              os.path.join(a.state_path, 'ids'))
        self.assertIn('uuid-a', str(e))
        self.assertIn('uuid-b', str(e))
        # Nothing lost on either side.
        self.assertTrue(os.path.exists(os.path.join(old, 'owner.json')))
        self.assertEqual(0, b.find('uuid-b'))

    def test_legacy_entry_in_its_own_directory_is_the_drivers(self):
        subuid, subgid = self.ranges('root:100000:%d\n' % (4 * SIZE))
        self.legacy(self.state, 1, 'uuid-old')
        alloc = ids.IdAllocator(self.state, subuid_path=subuid,
                                subgid_path=subgid)
        self.assertEqual(1, alloc.find('uuid-old'))
        self.assertEqual([], alloc.adopt(os.path.join(self.state, 'ids')))


class ResizeSourceTest(_Base):
    """An instance holding a second ID during a resize on its own host."""

    def allocator(self):
        subuid, subgid = self.ranges('root:100000:%d\n'
                                     % (3 * SIZE + RESERVED))
        return ids.IdAllocator(os.path.join(self.tmp, 'state'),
                               subuid_path=subuid, subgid_path=subgid)

    def test_marked_id_is_kept_but_not_found(self):
        a = self.allocator()
        self.assertEqual(0, a.allocate('uuid-x', 'x'))
        a.set_resize_source(0, 'uuid-x', True)
        self.assertIsNone(a.find('uuid-x'))
        self.assertTrue(a.reservation(0).resize_source)
        self.assertEqual(1, a.allocate('uuid-x', 'x'))
        self.assertEqual(1, a.find('uuid-x'))
        self.assertEqual([0, 1], sorted(a.reservations(mine=True)))
        # Another instance gets neither.
        self.assertEqual(2, a.allocate('uuid-y', 'y'))

    def test_unmarked_again(self):
        a = self.allocator()
        a.allocate('uuid-x', 'x')
        created = a.reservation(0).created_at
        a.set_resize_source(0, 'uuid-x', True)
        a.set_resize_source(0, 'uuid-x', False)
        res = a.reservation(0)
        self.assertEqual((False, 'uuid-x', created),
                         (res.resize_source, res.instance_uuid,
                          res.created_at))
        self.assertEqual(0, a.find('uuid-x'))

    def test_only_the_instance_s_own_id(self):
        a = self.allocator()
        a.allocate('uuid-x', 'x')
        self.assertRaises(exception.IdNotHeld, a.set_resize_source, 0,
                          'uuid-y', True)
        self.assertRaises(exception.IdNotHeld, a.set_resize_source, 1,
                          'uuid-x', True)
        self.assertFalse(a.reservation(0).resize_source)


class IndexTest(_Base):
    """The by-instance index: one lookup reads one reservation."""

    def owner_reads(self, alloc, work):
        """Call work(); return the reservations' owner.json it opened."""
        opened = []
        real_open = open

        def counting_open(path, *args, **kwargs):
            if str(path).endswith(ids.OWNER_FILE):
                opened.append(path)
            return real_open(path, *args, **kwargs)

        with mock.patch('builtins.open', side_effect=counting_open):
            work()
        return opened

    def link(self, alloc, uuid):
        return os.path.join(alloc.index_path,
                            ids.index_key(alloc.owner, uuid))

    def test_find_reads_one_reservation(self):
        alloc = self.allocator(n_ids=64)
        for i in range(50):
            alloc.allocate('uuid-%d' % i, 'n')
        opened = self.owner_reads(alloc, lambda: self.assertEqual(
            37, alloc.find('uuid-37')))
        self.assertEqual([os.path.join(alloc.ids_path, '37', 'owner.json')],
                         opened)
        self.assertEqual([], self.owner_reads(
            alloc, lambda: self.assertIsNone(alloc.find('uuid-none'))))

    def test_allocate_reads_no_other_reservation(self):
        alloc = self.allocator(n_ids=64)
        for i in range(50):
            alloc.allocate('uuid-%d' % i, 'n')
        self.assertEqual([], self.owner_reads(
            alloc, lambda: self.assertEqual(50, alloc.allocate('new', 'n'))))

    def test_link_names_the_reservation_and_goes_with_it(self):
        alloc = self.allocator()
        alloc.allocate('uuid-a', 'a')
        self.assertEqual('../0', os.readlink(self.link(alloc, 'uuid-a')))
        self.assertEqual(os.path.join(alloc.ids_path, '0'),
                         os.path.realpath(self.link(alloc, 'uuid-a')))
        alloc.release(0)
        # Nothing left: an ids_path without reservations is empty.
        self.assertEqual([], os.listdir(alloc.ids_path))

    def test_link_written_before_the_owner(self):
        alloc = self.allocator()
        order = []
        real_link, real_write = alloc._link, alloc._write_owner

        def link(*args):
            order.append('link')
            return real_link(*args)

        def write(*args, **kwargs):
            order.append('owner')
            return real_write(*args, **kwargs)

        with mock.patch.object(alloc, '_link', side_effect=link), \
                mock.patch.object(alloc, '_write_owner', side_effect=write):
            alloc.allocate('uuid-a', 'a')
        self.assertEqual(['link', 'owner'], order)

    def test_crash_between_link_and_owner(self):
        # What a kill between the two writes leaves: the link, an
        # ownerless reservation.
        alloc = self.allocator()
        alloc.ensure_index()
        os.makedirs(os.path.join(alloc.ids_path, '0'))
        os.makedirs(alloc.index_path)
        os.symlink('../0', self.link(alloc, 'uuid-a'))
        self.assertIsNone(alloc.find('uuid-a'))
        # The ownerless ID stays taken; the link is made to name the new.
        self.assertEqual(1, alloc.allocate('uuid-a', 'a'))
        self.assertEqual(1, alloc.find('uuid-a'))
        # A new process's rebuild keeps it and drops nothing else.
        again = self.allocator()
        self.assertEqual((0, 0), again.rebuild_index())
        self.assertEqual(1, again.find('uuid-a'))

    def test_crash_between_release_and_unlink(self):
        alloc = self.allocator()
        alloc.allocate('uuid-a', 'a')
        with mock.patch.object(alloc, '_unindex',
                               side_effect=SystemExit('killed')):
            self.assertRaises(SystemExit, alloc.release, 0)
        self.assertTrue(os.path.islink(self.link(alloc, 'uuid-a')))
        self.assertIsNone(alloc.find('uuid-a'))
        # Another instance takes ID 0: the dangling link still says none.
        self.assertEqual(0, alloc.allocate('uuid-b', 'b'))
        self.assertIsNone(alloc.find('uuid-a'))
        self.assertEqual(1, alloc.allocate('uuid-a', 'a'))
        self.assertEqual((1, 0), (alloc.find('uuid-a'), alloc.find('uuid-b')))

    def test_reservations_without_links_found_on_first_use(self):
        # Made before the index existed, or links lost with a power cut.
        alloc = self.allocator()
        for i in range(3):
            alloc.allocate('uuid-%d' % i, 'n')
        alloc.allocate('uuid-1', 'n')
        shutil.rmtree(alloc.index_path)
        again = self.allocator()
        self.assertEqual(1, again.find('uuid-1'))
        self.assertEqual(1, again.allocate('uuid-1', 'n'))
        self.assertEqual(3, again.allocate('uuid-3', 'n'))
        self.assertEqual(4, len(os.listdir(again.index_path)))

    def test_rebuild_names_the_lowest_and_drops_stale_entries(self):
        alloc = self.allocator()
        alloc.allocate('uuid-a', 'a')
        alloc.allocate('uuid-b', 'b')
        # A corrupted state: uuid-a holds ID 2 as well, and its link
        # names that one; stale entries of all kinds beside.
        os.makedirs(os.path.join(alloc.ids_path, '2'))
        alloc._write_owner(os.path.join(alloc.ids_path, '2'), 'uuid-a',
                           'a', alloc.owner, '')
        os.unlink(self.link(alloc, 'uuid-a'))
        os.symlink('../2', self.link(alloc, 'uuid-a'))
        os.symlink('../9', os.path.join(alloc.index_path, 'dangling'))
        os.symlink('../1', os.path.join(alloc.index_path, 'not-its-name'))
        with open(os.path.join(alloc.index_path, 'file'), 'w'):
            pass
        os.mkdir(os.path.join(alloc.index_path, 'dir'))
        self.assertEqual((1, 3), alloc.rebuild_index())
        self.assertEqual(0, alloc.find('uuid-a'))
        self.assertEqual(1, alloc.find('uuid-b'))
        self.assertEqual(
            sorted([ids.index_key(alloc.owner, 'uuid-a'),
                    ids.index_key(alloc.owner, 'uuid-b'), 'dir']),
            sorted(os.listdir(alloc.index_path)))

    def test_hostile_names_stay_in_the_index(self):
        alloc = self.allocator()
        for uuid in ('../../etc/passwd', 'a/b', '$(reboot)', '\udcff'):
            cid = alloc.allocate(uuid, 'n')
            self.assertEqual(cid, alloc.find(uuid))
        for name in os.listdir(alloc.index_path):
            self.assertRegex(name, '^[0-9a-f]{64}$')
        self.assertEqual(['0', '1', '2', '3', ids.INDEX_DIR],
                         sorted(os.listdir(alloc.ids_path)))

    def test_another_owner_s_links_are_kept(self):
        subuid, subgid = self.ranges('root:100000:%d\n' % (
            4 * SIZE + RESERVED))
        shared = os.path.join(self.tmp, 'machine', 'ids')
        a, b = [ids.IdAllocator(os.path.join(self.tmp, name),
                                subuid_path=subuid, subgid_path=subgid,
                                ids_path=shared)
                for name in ('host1', 'host2')]
        self.assertEqual(0, b.allocate('uuid-x', 'x'))
        self.assertEqual((0, 0), a.rebuild_index())
        self.assertEqual(0, b.find('uuid-x'))
        self.assertIsNone(a.find('uuid-x'))

    def test_links_made_by_another_process_are_seen(self):
        # Two allocators of one owner (two processes): each keeps the
        # index for the other, which rebuilt it only once.
        a, b = self.allocator(), self.allocator()
        a.ensure_index()
        b.ensure_index()
        self.assertEqual(0, b.allocate('uuid-x', 'x'))
        self.assertEqual(0, a.find('uuid-x'))
        self.assertEqual(0, a.allocate('uuid-x', 'x'))
        a.release(0)
        self.assertIsNone(b.find('uuid-x'))

    def test_resize_source_and_back(self):
        alloc = self.allocator()
        alloc.allocate('uuid-x', 'x')
        alloc.set_resize_source(0, 'uuid-x', True)
        self.assertFalse(os.path.lexists(self.link(alloc, 'uuid-x')))
        self.assertEqual(1, alloc.allocate('uuid-x', 'x'))
        # A revert: the resize's ID goes, the source comes back.
        alloc.release(1)
        alloc.set_resize_source(0, 'uuid-x', False)
        self.assertEqual('../0', os.readlink(self.link(alloc, 'uuid-x')))
        self.assertEqual(0, alloc.find('uuid-x'))
        # A confirm: the source goes, the resize's ID stays found.
        alloc.set_resize_source(0, 'uuid-x', True)
        self.assertEqual(1, alloc.allocate('uuid-x', 'x'))
        alloc.release(0)
        self.assertEqual(1, alloc.find('uuid-x'))

    def test_unmark_keeps_a_lower_id_found(self):
        alloc = self.allocator()
        alloc.allocate('uuid-x', 'x')
        alloc.allocate('uuid-y', 'y')
        alloc.set_resize_source(1, 'uuid-y', True)
        # Corrupted: uuid-x's reservation 0, and 1 re-owned to it.
        alloc._write_owner(os.path.join(alloc.ids_path, '1'), 'uuid-x',
                           'x', alloc.owner, '', resize_source=True)
        alloc.set_resize_source(1, 'uuid-x', False)
        self.assertEqual(0, alloc.find('uuid-x'))
