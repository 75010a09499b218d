"""bench.api_floor's pure parts, its report rows and options (goal 4)."""

from unittest import mock

from oslotest import base

from bench import api_floor
from bench import nova_api
from bench import report
from bench import run


class ScheduleTest(base.BaseTestCase):

    def test_abba_in_batches(self):
        self.assertEqual(
            [('driver', 10), ('fake', 10), ('fake', 10), ('driver', 10),
             ('driver', 10), ('fake', 10)],
            api_floor.schedule(30, 10))

    def test_each_side_gets_its_count_with_a_short_last_batch(self):
        plan = api_floor.schedule(25, 10)
        self.assertEqual(
            [('driver', 10), ('fake', 10), ('fake', 10), ('driver', 10),
             ('driver', 5), ('fake', 5)], plan)
        for side in api_floor.SIDES:
            self.assertEqual(25, sum(n for s, n in plan if s == side))

    def test_nothing_to_boot(self):
        self.assertEqual([], api_floor.schedule(0, 10))

    def test_batch_must_be_positive(self):
        self.assertRaises(ValueError, api_floor.schedule, 10, 0)


def _samples(seconds, build=None, spawn=None):
    out = []
    for i, s in enumerate(seconds):
        sample = {'seconds': s, 'post_seconds': 0.1 * (i + 1),
                  'server_id': 'id-%d' % i}
        if build is not None:
            sample['compute_build'] = build
            sample['compute_spawn'] = spawn
        out.append(sample)
    return out


class FiguresTest(base.BaseTestCase):

    def test_median_and_p90(self):
        f = api_floor.side_figures(_samples(
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]))
        self.assertEqual(11, f['n'])
        self.assertEqual(6.0, f['median'])
        self.assertAlmostEqual(10.0, f['p90'])
        self.assertAlmostEqual(0.6, f['post_median'])
        self.assertEqual(0, f['on_host'])
        self.assertIsNone(f['build_median'])

    def test_compute_timings_of_the_logged_servers(self):
        samples = _samples([2.0, 4.0], build=1.5, spawn=0.5)
        samples.append({'seconds': 3.0, 'post_seconds': 0.2,
                        'server_id': 'unlogged'})
        f = api_floor.side_figures(samples)
        self.assertEqual(2, f['on_host'])
        self.assertEqual(1.5, f['build_median'])
        self.assertEqual(0.5, f['spawn_median'])
        self.assertEqual(3.0, f['median'])

    def test_no_samples(self):
        f = api_floor.side_figures([])
        self.assertEqual(0, f['n'])
        self.assertIsNone(f['median'])
        self.assertIsNone(f['p90'])


def _meter(wall, busy, services, client=0.5, other=1.0):
    return {'wall': wall, 'cores': 2, 'host_busy': busy, 'client': client,
            'services': dict(services), 'other': other}


class AddCpuTest(base.BaseTestCase):

    def test_first_meter_is_copied(self):
        m = _meter(10.0, 15.0, {'nova-api': 3.0})
        total = api_floor.add_cpu(None, m)
        self.assertEqual(m, total)
        total['services']['nova-api'] = 99
        self.assertEqual(3.0, m['services']['nova-api'])

    def test_seconds_add_up_and_services_by_name(self):
        total = api_floor.add_cpu(
            _meter(10.0, 15.0, {'nova-api': 3.0, 'nova-compute': 2.0}),
            _meter(5.0, 8.0, {'nova-api': 1.5, 'nova-compute-fake': 0.5},
                   client=0.25, other=2.0))
        self.assertEqual(15.0, total['wall'])
        self.assertEqual(23.0, total['host_busy'])
        self.assertEqual(0.75, total['client'])
        self.assertEqual(3.0, total['other'])
        self.assertEqual(2, total['cores'])
        self.assertEqual({'nova-api': 4.5, 'nova-compute': 2.0,
                          'nova-compute-fake': 0.5}, total['services'])


class _Service:
    def __init__(self, host, state='up', status='enabled',
                 binary='nova-compute'):
        self.host, self.state, self.status = host, state, status
        self.binary = binary


class HostsTest(base.BaseTestCase):

    HOSTS = {'driver': 'vm', 'fake': 'vm-fake'}

    def _admin(self, *services):
        admin = mock.Mock()
        admin.compute.services.return_value = list(services)
        return admin

    def test_both_up(self):
        api_floor._check_hosts(self._admin(
            _Service('vm'), _Service('vm-fake'),
            _Service('vm', binary='nova-scheduler')), self.HOSTS)

    def test_fake_compute_absent_says_how_to_start_it(self):
        e = self.assertRaises(
            nova_api.Unavailable, api_floor._check_hosts,
            self._admin(_Service('vm')), self.HOSTS)
        self.assertIn('vm-fake', str(e))
        self.assertIn('up --fake-compute', str(e))

    def test_a_down_compute_is_unavailable(self):
        self.assertRaises(
            nova_api.Unavailable, api_floor._check_hosts,
            self._admin(_Service('vm', state='down'), _Service('vm-fake')),
            self.HOSTS)

    def test_no_cloud_is_a_skip(self):
        found = api_floor.measure(
            per_side=2, clouds_yaml='/nonexistent/clouds.yaml',
            hosts=self.HOSTS, log=lambda msg: None)
        self.assertIn('all-in-one cloud not running', found['skipped'])


class ForcedHostTest(base.BaseTestCase):

    def test_boot_series_forces_the_host(self):
        conn = mock.Mock()
        conn.compute.create_server.return_value = mock.Mock(id='s1')
        tracker = mock.Mock()
        tracker.wait_active.return_value = 1e9
        samples, errors = nova_api._boot_series(
            conn, tracker, 'img', 'flv', 1, 1, iter(['n1']),
            availability_zone='nova:vm-fake')
        self.assertEqual([], errors)
        self.assertEqual(1, len(samples))
        conn.compute.create_server.assert_called_once_with(
            name='n1', image_id='img', flavor_id='flv', networks='none',
            availability_zone='nova:vm-fake')
        conn.compute.delete_server.assert_called_once_with('s1')

    def test_unforced_boot_leaves_the_zone_out(self):
        conn = mock.Mock()
        conn.compute.create_server.return_value = mock.Mock(id='s1')
        tracker = mock.Mock()
        tracker.wait_active.return_value = 1e9
        nova_api._boot_series(conn, tracker, 'img', 'flv', 1, 1,
                              iter(['n1']))
        self.assertNotIn('availability_zone',
                         conn.compute.create_server.call_args.kwargs)


def _results(driver_seconds, fake_seconds, errors=(), per_side=None,
             only=('api-floor',)):
    def side(host, seconds, build, spawn, service):
        return {'host': host,
                'samples': _samples(seconds, build=build, spawn=spawn),
                'errors': [], 'cpu': _meter(
                    20.0, 30.0, {'nova-api': 10.0, service: 4.0})}
    fl = {'image': 'debian-12', 'flavor': 'lxc.tiny', 'concurrency': 10,
          'per_side': per_side or len(driver_seconds), 'batch': 10,
          'leftovers': [], 'host_leftovers': [],
          'sides': {
              'driver': side('vm', driver_seconds, 2.0, 0.6, 'nova-compute'),
              'fake': side('vm-fake', fake_seconds, 1.2, 0.01,
                           'nova-compute-fake')}}
    fl['sides']['driver']['errors'] = list(errors)
    return {'config': {'only': list(only)}, 'errors': {}, 'api-floor': fl}


class ReportTest(base.BaseTestCase):

    def test_within_the_goal_is_met(self):
        rows = report.api_floor_rows(_results([5.5, 5.5, 5.5],
                                              [5.0, 5.0, 5.0]))
        self.assertEqual('yes', rows[0]['met'])
        self.assertIn('**1.10x**', rows[0]['measured'])
        self.assertIn('driver median **5.50 s**', rows[0]['measured'])
        self.assertIn('fake driver median **5.00 s**', rows[0]['measured'])
        self.assertIn('≤ 1.15x', rows[0]['target'])

    def test_over_the_goal_is_missed(self):
        rows = report.api_floor_rows(_results([6.0, 6.0, 6.0],
                                              [5.0, 5.0, 5.0]))
        self.assertEqual('no', rows[0]['met'])
        self.assertIn('**1.20x**', rows[0]['measured'])

    def test_errors_or_missing_servers_miss_the_goal(self):
        rows = report.api_floor_rows(_results(
            [5.0, 5.0], [5.0, 5.0], errors=['boom']))
        self.assertEqual('no', rows[0]['met'])
        self.assertIn('1 errors', rows[0]['measured'])
        rows = report.api_floor_rows(_results([5.0, 5.0], [5.0, 5.0],
                                              per_side=3))
        self.assertEqual('no', rows[0]['met'])

    def test_where_the_time_goes(self):
        rows = report.api_floor_rows(_results([5.0], [4.0]))
        self.assertIn('build 2.00 s of which spawn 0.60 s',
                      rows[1]['measured'])
        self.assertIn('build 1.20 s of which spawn 0.01 s',
                      rows[1]['measured'])
        self.assertIn('left: none', rows[1]['measured'])

    def test_skipped(self):
        rows = report.api_floor_rows(
            {'config': {'only': ['api-floor']}, 'errors': {},
             'api-floor': {'skipped': 'the fake compute vm-fake is not up'}})
        self.assertEqual(1, len(rows))
        self.assertEqual('n/a', rows[0]['met'])
        self.assertIn('skipped: the fake compute', rows[0]['measured'])

    def test_not_asked_for_is_no_row(self):
        self.assertEqual([], report.api_floor_rows(
            {'config': {'only': ['spawn']}, 'errors': {}}))
        self.assertEqual([], report.api_floor_section(
            {'config': {'only': ['spawn']}, 'errors': {}}))

    def test_failed_is_a_row(self):
        rows = report.api_floor_rows(
            {'config': {'only': ['api-floor']},
             'errors': {'api-floor': 'Traceback\nRuntimeError: boom\n'}})
        self.assertEqual(['failed: RuntimeError: boom'],
                         [r['measured'] for r in rows])

    def test_cpu_table_per_side_and_per_server(self):
        section = '\n'.join(report.api_floor_section(
            _results([5.0, 5.0], [4.0, 4.0])))
        self.assertIn('| service | driver: vm (2 servers, 20 s) | '
                      'fake: vm-fake (2 servers, 20 s) |', section)
        self.assertIn('| nova-api | 10.0 s (5000 ms per server) | '
                      '10.0 s (5000 ms per server) |', section)
        self.assertIn('| nova-compute | 4.0 s (2000 ms per server) | '
                      '0.0 s (0 ms per server) |', section)
        self.assertIn('**30.0 s of 40.0 s** (75% of 2 cores)', section)

    def test_in_the_main_table(self):
        metrics = [r['metric'] for r in report.rows(
            _results([5.0], [4.0]))]
        self.assertTrue(any('issue 16 goal 4' in m for m in metrics))


class RunOptionsTest(base.BaseTestCase):

    def test_not_in_the_default_run(self):
        args = run.parse_args([])
        self.assertNotIn('api-floor', args.only)
        self.assertEqual(30, args.api_floor_runs)
        self.assertEqual(10, args.api_floor_batch)

    def test_chosen_with_only(self):
        args = run.parse_args(['--only', 'api-floor', '--api-floor-runs',
                               '20', '--api-floor-batch', '5'])
        self.assertEqual(['api-floor'], args.only)
        self.assertEqual((20, 5), (args.api_floor_runs,
                                   args.api_floor_batch))

    def test_zero_runs_is_refused(self):
        self.assertRaises(SystemExit, run.parse_args,
                          ['--only', 'api-floor', '--api-floor-batch', '0'])

    def test_hosts_default_to_the_aio_names(self):
        args = run.parse_args(['--only', 'api-floor'])
        self.assertEqual({'driver': 'vm', 'fake': 'vm-fake'},
                         run.floor_hosts(args, 'vm'))
        args = run.parse_args(['--only', 'api-floor', '--api-floor-host',
                               'a', '--api-floor-fake-host', 'b'])
        self.assertEqual({'driver': 'a', 'fake': 'b'},
                         run.floor_hosts(args, 'vm'))
