"""bench.idlookup: real allocators in a temporary root; the report's row."""

import os

import fixtures
from oslotest import base

from bench import idlookup
from bench import report
from bench import run


class MeasureTest(base.BaseTestCase):

    def test_samples_per_side_and_nothing_left(self):
        root = self.useFixture(fixtures.TempDir()).path
        logged = []
        out = idlookup.measure(root, counts=(3, 12), runs=5,
                               log=logged.append)
        self.assertEqual(['12', '3'], sorted(out))
        for n in ('3', '12'):
            self.assertEqual({'find': 5, 'scan': 5, 'allocate': 5},
                             {k: len(v) for k, v in out[n].items()})
            self.assertTrue(all(s > 0 for v in out[n].values() for s in v))
        self.assertEqual([], os.listdir(root))
        self.assertEqual(2, len(logged))

    def test_scan_finds_what_find_finds(self):
        root = self.useFixture(fixtures.TempDir()).path
        alloc = idlookup._allocator(root, 4)
        for i in range(4):
            alloc.allocate('u%d' % i, 'n')
        alloc.set_resize_source(2, 'u2', True)
        for i in range(4):
            self.assertEqual(alloc.find('u%d' % i),
                             idlookup._scan(alloc, 'u%d' % i))
        self.assertIsNone(idlookup._scan(alloc, 'u2'))

    def test_a_family_that_boots_no_image(self):
        self.assertIn('idlookup', run.DEFAULT_FAMILIES)
        self.assertEqual((), run.IMAGES.get('idlookup', ()))


class RowTest(base.BaseTestCase):

    def results(self, find_ms, scan_ms):
        return {'idlookup': {
            n: {'find': [f / 1e3] * 3, 'scan': [s / 1e3] * 3,
                'allocate': [1e-3] * 3}
            for n, f, s in zip(('10', '100', '1000'), find_ms, scan_ms)}}

    def test_below_the_scan_of_the_fewest_met(self):
        (row,) = report.idlookup_rows(self.results((0.08, 0.09, 0.12),
                                                   (0.2, 1.4, 14.0)))
        self.assertEqual(14, row['item'])
        self.assertEqual('yes', row['met'])
        self.assertIn('find at 1000 over the scan at 10: **0.60x**; from 10 '
                      'to 1000 find grows 1.5x, the scan 70.0x',
                      row['measured'])
        self.assertIn('1000 reservations: find 0.120 ms, scan 14.000 ms',
                      row['measured'])

    def test_growing_with_the_reservations_missed(self):
        (row,) = report.idlookup_rows(self.results((0.1, 1.0, 10.0),
                                                   (0.2, 1.4, 14.0)))
        self.assertEqual('no', row['met'])

    def test_not_run(self):
        (row,) = report.idlookup_rows({'errors': {}})
        self.assertEqual(('n/a', 'not run'), (row['met'], row['measured']))
