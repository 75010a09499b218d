"""bench.snapshot's helpers and the snapshot family's report rows."""

import io
import os
import shutil
import subprocess
import tempfile

from oslotest import base

from bench import report
from bench import snapshot

MIB = snapshot.MIB


class SizeTest(base.BaseTestCase):

    def test_parse_size(self):
        self.assertEqual(10 * MIB, snapshot.parse_size('10M'))
        self.assertEqual(500 * MIB, snapshot.parse_size('500MiB'))
        self.assertEqual(2 << 30, snapshot.parse_size(' 2g '))
        self.assertEqual(3 << 29, snapshot.parse_size('1.5G'))
        self.assertEqual(64 << 10, snapshot.parse_size('64KB'))
        self.assertEqual(4096, snapshot.parse_size('4096'))
        for bad in ('', 'M', '10X', '-1M', '0', 'tenM'):
            self.assertRaises(ValueError, snapshot.parse_size, bad)

    def test_parse_sizes_keeps_the_order(self):
        self.assertEqual([500 * MIB, 10 * MIB, 2 << 30],
                         snapshot.parse_sizes('500M, 10M,2G,'))
        self.assertEqual([10 * MIB, 500 * MIB, 2 << 30],
                         snapshot.parse_sizes(snapshot.DEFAULT_SIZES))

    def test_size_label(self):
        self.assertEqual('10 MiB', snapshot.size_label(10 * MIB))
        self.assertEqual('2 GiB', snapshot.size_label(2 << 30))
        self.assertEqual('1.5 GiB', snapshot.size_label(3 << 29))
        self.assertEqual('64 KiB', snapshot.size_label(64 << 10))
        self.assertEqual('100 B', snapshot.size_label(100))

    def test_root_disk_holds_the_data_with_room(self):
        self.assertEqual(2, snapshot.root_gb_for(10 * MIB))
        self.assertEqual(2, snapshot.root_gb_for(500 * MIB))
        self.assertEqual(4, snapshot.root_gb_for(2 << 30))
        for n in (MIB, 800 * MIB, 5 << 30):
            self.assertGreaterEqual(snapshot.root_gb_for(n) << 30,
                                    n * 1.25 + (1 << 30) - 1)


class FilePlanTest(base.BaseTestCase):

    def _check(self, nbytes):
        plan = snapshot.file_plan(nbytes)
        self.assertEqual(nbytes, sum(size * count for size, count in plan))
        self.assertTrue(all(size > 0 and count > 0 for size, count in plan))
        return plan

    def test_a_mix_of_sizes(self):
        plan = self._check(2 << 30)
        self.assertEqual([(64 << 10, 3276), (MIB, 614), (16 * MIB, 76),
                          (13 * MIB + (256 << 10), 1)], plan)

    def test_small_and_odd_sizes_add_up(self):
        self.assertEqual([(64 << 10, 16), (MIB, 3), (6 * MIB, 1)],
                         self._check(10 * MIB))
        self._check(500 * MIB)
        self._check(12345)
        self.assertEqual([(1, 1)], self._check(1))

    def test_fill_script_writes_the_plan(self):
        if not shutil.which('head'):
            self.skipTest('no head(1)')
        plan = snapshot.file_plan(3 * MIB + 5, classes=(
            (64 << 10, 0.1), (MIB, None)))
        with tempfile.TemporaryDirectory() as tmp:
            top = os.path.join(tmp, 'fill')
            subprocess.run(['sh', '-c', snapshot.fill_script(plan, top)],
                           check=True)
            sizes = sorted(os.path.getsize(os.path.join(top, n))
                           for n in os.listdir(top))
        self.assertEqual(sorted(size for size, count in plan
                                for _ in range(count)), sizes)
        self.assertEqual(3 * MIB + 5, sum(sizes))


class TicksTest(base.BaseTestCase):

    def test_parse_ticks_sorts_and_skips_torn_lines(self):
        text = '10.020000 \n10.000000 \n10.01\n\n1x.3 \n10.030000'
        self.assertEqual([10.0, 10.01, 10.02, 10.03],
                         snapshot.parse_ticks(text))

    def test_longest_gap_inside_the_window(self):
        ticks = [0.0, 0.01, 0.02, 0.1, 0.11, 0.12, 0.13]
        found = snapshot.longest_gap(ticks, 0.015, 0.115)
        self.assertAlmostEqual(0.08, found['gap'])
        self.assertAlmostEqual(0.005, found['at'])

    def test_a_gap_across_the_whole_window_counts(self):
        # Blocked before the window began until after it ended.
        ticks = [0.0, 0.01, 0.5, 0.51]
        found = snapshot.longest_gap(ticks, 0.1, 0.2)
        self.assertAlmostEqual(0.49, found['gap'])
        self.assertAlmostEqual(-0.09, found['at'])

    def test_no_tick_on_one_side(self):
        self.assertIsNone(snapshot.longest_gap([0.0, 0.01], 0.005, 0.02))
        self.assertIsNone(snapshot.longest_gap([0.3, 0.4], 0.1, 0.2))
        self.assertIsNone(snapshot.longest_gap([], 0.1, 0.2))

    def test_baseline(self):
        ticks = [0.0, 0.5, 1.0, 1.01, 1.03, 1.04, 2.0]
        b = snapshot.baseline(ticks, 1.045, seconds=0.1)
        self.assertEqual(3, b['n'])
        self.assertAlmostEqual(0.01, b['median'])
        self.assertAlmostEqual(0.02, b['max'])
        self.assertIsNone(snapshot.baseline(ticks, 0.4, seconds=0.1))


class FakeImageAPITest(base.BaseTestCase):

    def test_counts_or_keeps_an_upload(self):
        with snapshot._fake_glance() as glance:
            pass
        self.assertIs(glance, glance())
        self.assertEqual('bench-snap-12345678',
                         glance.get(None, '12345678-aaaa')['name'])
        glance.update(None, 'a', {}, data=io.BytesIO(b'x' * 100000))
        self.assertEqual({'bytes': 100000, 'path': None},
                         glance.uploads['a'])
        with tempfile.TemporaryDirectory() as tmp:
            glance.directory = tmp
            glance.update(None, 'b', {}, data=io.BytesIO(b'yz'))
            path = os.path.join(tmp, 'b.tar.zst')
            self.assertEqual({'bytes': 2, 'path': path},
                             glance.uploads['b'])
            with open(path, 'rb') as f:
                self.assertEqual(b'yz', f.read())

    def test_tar_zstd(self):
        if not shutil.which('zstd'):
            self.skipTest('no zstd(1)')
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, 'f'), 'wb') as f:
                f.write(os.urandom(200000))
            seconds, nbytes, code = snapshot.tar_zstd(tmp)
        self.assertEqual(0, code)
        self.assertGreater(nbytes, 200000)
        self.assertLess(nbytes, 220000)
        self.assertGreater(seconds, 0)
        self.assertRaises(RuntimeError, snapshot.tar_zstd, '/nonexistent')


def _gap(seconds, baseline=0.012):
    return {'gap': seconds, 'at': 0.1,
            'baseline': {'median': baseline, 'max': 0.02, 'n': 90}}


def _size(nbytes, snaps, plains, stall=0.03):
    return {
        'bytes': nbytes, 'label': snapshot.size_label(nbytes), 'root_gb': 2,
        'snapshot': [{'seconds': s, 'bytes': 5 * MIB, 'stall': _gap(stall),
                      'take_stall': _gap(0.02), 'driver_stall': 0.008,
                      'method': 'btrfs', 'just_written': i == 0}
                     for i, s in enumerate(snaps)],
        'plain': [{'seconds': p, 'bytes': 5 * MIB, 'stall': _gap(0.04)}
                  for p in plains],
        'stop_tar_start': {'seconds': 9.0, 'stop': 2.0, 'tar': 6.5,
                           'start': 0.5, 'downtime': 9.1},
        'unshelve': {'seconds': 7.5, 'first_tick': 7.6,
                     'tarball_bytes': 500 * MIB,
                     'phases': {'image fetch': 1.0, 'image unpack': 5.0}},
    }


class ReportTest(base.BaseTestCase):

    def _results(self, sizes):
        return {'snapshot': {'runs': 3, 'tick_interval': 0.01,
                             'sizes': sizes},
                'config': {'only': ['snapshot']}, 'errors': {}}

    def test_goals(self):
        results = self._results([
            _size(10 * MIB, [0.5, 0.7, 0.6], [0.2, 0.3, 0.2]),
            _size(500 * MIB, [10.0, 12.0, 11.0], [6.0, 5.0, 7.0],
                  stall=0.15)])
        rows = report.snapshot_rows(results)
        self.assertEqual([8, 8, 9, 8, 8, 9], [r['item'] for r in rows])
        stall_small, time_small, _, stall_big, time_big, unshelve = rows
        self.assertEqual('yes', stall_small['met'])
        self.assertEqual('no', stall_big['met'])
        self.assertIn('**150 ms**', stall_big['measured'])
        # The 2x goal is the 500 MiB server's only.
        self.assertEqual('n/a', time_small['met'])
        self.assertEqual('yes', time_big['met'])
        self.assertIn('**1.83x**', time_big['measured'])
        self.assertIn('fetch 1.00 s, unpack 5.00 s', unshelve['measured'])
        f = report.snapshot_figures(results['snapshot']['sizes'][1])
        self.assertEqual(11.0, f['snapshot'])
        self.assertEqual(6.0, f['plain'])
        self.assertEqual(0.15, f['stall'])
        self.assertEqual(0.04, f['control'])
        self.assertEqual(9.1, f['downtime'])

    def test_ratio_goal_missed(self):
        rows = report.snapshot_rows(self._results([
            _size(500 * MIB, [13.0], [6.0])]))
        self.assertEqual('no', rows[1]['met'])

    def test_markdown_and_console(self):
        results = self._results([_size(500 * MIB, [10.0], [6.0])])
        section = '\n'.join(report.snapshot_section(results))
        self.assertIn('| 500 MiB | 10.00 s |', section)
        # Escaped in markdown tables only, plain on the terminal.
        self.assertIn('| plain tar \\| zstd |', section)
        self.assertIn('`tar -cf - -C <merged root> . | zstd -T0 -3`',
                      section)
        results['machine'] = {}
        console = report.console_table(results)
        self.assertNotIn('\\|', console)
        self.assertIn('plain tar | zstd', console)

    def test_results_without_the_family(self):
        # An older results.json: no rows, no section, as before.
        old = {'config': {'only': ['spawn']}, 'errors': {}}
        self.assertEqual([], report.snapshot_rows(old))
        self.assertEqual([], report.snapshot_section(old))
        self.assertEqual([], report.snapshot_rows({}))
        failed = {'config': {'only': ['snapshot']},
                  'errors': {'snapshot': 'Traceback\nRuntimeError: boom\n'}}
        (row,) = report.snapshot_rows(failed)
        self.assertEqual('failed: RuntimeError: boom', row['measured'])
