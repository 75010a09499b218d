"""bench.privsep: alternating sides, contexts restored, the report's row."""

from unittest import mock

from oslotest import base

from bench import privsep as bench_privsep
from bench import report
from novalxcdriver import privsep


def sample(spawn, destroy):
    return {'spawn': spawn, 'destroy': destroy, 'phases': {},
            'destroy_phases': {}}


class MeasureTest(base.BaseTestCase):

    def test_sides_alternate_and_in_process_means_no_client(self):
        seen = []

        def driver_sample(h, image):
            seen.append(privsep.lxc_admin.client_mode)
            return sample(0.1, 0.05)
        with mock.patch.object(bench_privsep.spawn, 'driver_sample',
                               side_effect=driver_sample), \
                mock.patch.object(privsep, 'start_daemons') as start:
            out = bench_privsep.measure(None, None, 3, settle=0,
                                        log=lambda m: None)
        start.assert_called_once_with()
        # daemon first, then in-process first, then daemon first.
        self.assertEqual([True, False, False, True, True, False], seen)
        self.assertEqual([0, 1, 2], [s['run'] for s in out['daemon']])
        self.assertEqual([True, False, True],
                         [s['first'] for s in out['daemon']])
        for ctx in privsep.CONTEXTS:
            self.assertTrue(ctx.client_mode)

    def test_client_mode_back_after_a_failure(self):
        def fails():
            with bench_privsep.in_process():
                for ctx in privsep.CONTEXTS:
                    self.assertFalse(ctx.client_mode)
                raise RuntimeError('boom')
        self.assertRaises(RuntimeError, fails)
        for ctx in privsep.CONTEXTS:
            self.assertTrue(ctx.client_mode)


class RowTest(base.BaseTestCase):

    def results(self, daemon_ms, in_process_ms):
        return {'privsep': {
            'daemon': [sample(daemon_ms / 1e3, 0.030)] * 3,
            'in_process': [sample(in_process_ms / 1e3, 0.028)] * 3}}

    def test_within_10_ms_met(self):
        (row,) = report.privsep_rows(self.results(105, 97))
        self.assertEqual(12, row['item'])
        self.assertEqual('yes', row['met'])
        self.assertIn('**+8.0 ms**', row['measured'])
        self.assertIn('destroy 30 ms vs 28 ms: +2.0 ms', row['measured'])

    def test_over_10_ms_missed(self):
        (row,) = report.privsep_rows(self.results(120, 100))
        self.assertEqual('no', row['met'])

    def test_not_run(self):
        (row,) = report.privsep_rows({'errors': {}})
        self.assertEqual('n/a', row['met'])
        self.assertEqual('not run', row['measured'])
