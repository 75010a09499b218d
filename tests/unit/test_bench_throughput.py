"""bench.throughput's rounds and the goal row bench.report makes of them."""

from unittest import mock

import fixtures
from oslotest import base

from bench import report
from bench import throughput

CONFIG = {'concurrency': 10, 'batch': 10}


def figures(rate):
    return {'rate': rate, 'spawn_seconds': [0.1] * 4, 'errors': [],
            'total_seconds': 1.0, 'batch_rates': [rate, rate],
            'destroy_rate': rate, 'running': 4}


class RoundsRatioTest(base.BaseTestCase):

    def test_median_of_raw_over_driver(self):
        self.assertEqual(2.0, throughput.rounds_ratio([
            {'driver': 10, 'raw': 30}, {'driver': 10, 'raw': 20},
            {'driver': 20, 'raw': 30}]))
        self.assertEqual(1.75, throughput.rounds_ratio([
            {'driver': 10, 'raw': 20}, {'driver': 10, 'raw': 15}]))

    def test_a_round_without_a_rate_is_left_out(self):
        self.assertEqual(3.0, throughput.rounds_ratio([
            {'driver': None, 'raw': 30}, {'driver': 10, 'raw': 30}]))
        self.assertIsNone(throughput.rounds_ratio([{'driver': 0,
                                                    'raw': 30}]))
        self.assertIsNone(throughput.rounds_ratio([]))


class MeasureTest(base.BaseTestCase):

    def test_rounds_alternate_and_the_first_is_kept_whole(self):
        calls = []
        rates = iter([40, 80, 50, 70, 30, 90])

        def runner(side):
            def run(h, image, count, concurrency, batch):
                calls.append(side)
                return figures(next(rates))
            return run
        self.useFixture(self._patch('_driver', runner('driver')))
        self.useFixture(self._patch('_raw', runner('raw')))
        self.useFixture(self._patch('time.sleep', None))
        image = mock.Mock(key='busybox')
        out = throughput.measure(None, image, 4, 10, rounds=3,
                                 log=lambda msg: None)
        self.assertEqual(['driver', 'raw'] * 3, calls)
        self.assertEqual(40, out['driver']['rate'])
        self.assertEqual(80, out['raw']['rate'])
        self.assertEqual([{'driver': 40, 'raw': 80},
                          {'driver': 50, 'raw': 70},
                          {'driver': 30, 'raw': 90}], out['rounds'])
        self.assertEqual(2.0, throughput.rounds_ratio(out['rounds']))

    @staticmethod
    def _patch(name, side_effect):
        owner = throughput.time if name == 'time.sleep' else throughput
        return fixtures.MockPatchObject(owner, name.rpartition('.')[2],
                                        side_effect=side_effect)


class GoalRowTest(base.BaseTestCase):

    def row(self, rounds):
        t = {'driver': figures(rounds[0]['driver']),
             'raw': figures(rounds[0]['raw']), 'rounds': rounds}
        return report._throughput_goal_row('busybox', t, CONFIG)

    def test_met_at_the_median(self):
        row = self.row([{'driver': 50, 'raw': 90},
                        {'driver': 60, 'raw': 84},
                        {'driver': 60, 'raw': 87}])
        self.assertEqual('yes', row['met'])
        self.assertIn('**1.45x**', row['measured'])
        self.assertIn('50.0 vs 90.0/s (1.80x)', row['measured'])
        self.assertEqual('≤ 1.5x', row['target'])

    def test_missed(self):
        row = self.row([{'driver': 50, 'raw': 90}])
        self.assertEqual('no', row['met'])
        self.assertIn('**1.80x**', row['measured'])

    def test_a_run_before_rounds_has_its_one_pair(self):
        t = {'driver': figures(47), 'raw': figures(94)}
        row = report._throughput_goal_row('busybox', t, CONFIG)
        self.assertIn('**2.00x**', row['measured'])
        self.assertIn('median of 1 round,', row['metric'])


class PoolTest(base.BaseTestCase):

    def test_garbage_is_collected_before_the_clock(self):
        events = []
        self.useFixture(fixtures.MockPatch(
            'gc.collect', side_effect=lambda: events.append('collect')))
        real = throughput.time.perf_counter

        def clock():
            events.append('clock')
            return real()

        self.useFixture(fixtures.MockPatchObject(
            throughput.time, 'perf_counter', side_effect=clock))
        start, results, errors = throughput._pool(
            2, lambda n: events.append('work') or n * 2, [1, 2, 3])
        self.assertEqual(['collect', 'clock'], events[:2])
        self.assertEqual(1, events.count('collect'))
        self.assertEqual([2, 4, 6], sorted(results))
        self.assertEqual([], errors)
