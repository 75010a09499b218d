"""bench.api_density's pure parts and its report rows (issue 16 goal 5)."""

import os
import shutil
import tempfile

from oslotest import base

from bench import api_density
from bench import report
from bench import run

MIB = 2 ** 20
MEMINFO = ('MemTotal:       24683520 kB\n'
           'MemFree:        22201344 kB\n'
           'MemAvailable:   23926784 kB\n'
           'HugePages_Total:       0\n')


class HostTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.proc = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.proc)
        # Two processes, three threads; entries that are not processes.
        for pid, tids in (('1', ('1',)), ('42', ('42', '43'))):
            for tid in tids:
                os.makedirs(os.path.join(self.proc, pid, 'task', tid))
        os.makedirs(os.path.join(self.proc, 'sys'))
        with open(os.path.join(self.proc, 'meminfo'), 'w') as f:
            f.write(MEMINFO)

    def test_memory_used_is_total_less_available(self):
        self.assertEqual(24683520 - 23926784,
                         api_density.memory_used_kib(MEMINFO))

    def test_counts_processes_and_their_threads(self):
        self.assertEqual({'processes': 2, 'threads': 3},
                         api_density.task_count(self.proc))

    def test_a_process_gone_meanwhile_is_skipped(self):
        os.makedirs(os.path.join(self.proc, '7'))  # no task directory
        self.assertEqual({'processes': 2, 'threads': 3},
                         api_density.task_count(self.proc))

    def test_snapshot(self):
        snap = api_density.host_snapshot(self.proc)
        self.assertEqual(756736, snap['mem_used_kib'])
        self.assertEqual(2, snap['processes'])
        self.assertEqual(3, snap['threads'])
        self.assertIn('time', snap)


class RoomTest(base.BaseTestCase):

    NEED = {'VCPU': 1, 'MEMORY_MB': 64, 'DISK_GB': 1}

    def _inventory(self, cpu_ratio):
        # This 2-core, 24 GiB machine with Nova's default reservation.
        return {'VCPU': {'total': 2, 'reserved': 0,
                         'allocation_ratio': cpu_ratio},
                'MEMORY_MB': {'total': 24105, 'reserved': 512,
                              'allocation_ratio': 1.0},
                'DISK_GB': {'total': 251, 'reserved': 0,
                            'allocation_ratio': 1.0}}

    def test_a_ratio_of_16_holds_32_servers(self):
        self.assertEqual({'VCPU': 32, 'MEMORY_MB': 368, 'DISK_GB': 251},
                         api_density.room(self._inventory(16.0), {},
                                          self.NEED))

    def test_allocations_take_room(self):
        fits = api_density.room(self._inventory(128.0),
                                {'VCPU': 6, 'MEMORY_MB': 1536, 'DISK_GB': 6},
                                self.NEED)
        self.assertEqual({'VCPU': 250, 'MEMORY_MB': 344, 'DISK_GB': 245},
                         fits)

    def test_absent_or_full_classes_hold_none(self):
        inv = self._inventory(1.0)
        del inv['DISK_GB']
        fits = api_density.room(inv, {'VCPU': 5}, self.NEED)
        self.assertEqual(0, fits['DISK_GB'])
        self.assertEqual(0, fits['VCPU'])


class QuotaTest(base.BaseTestCase):

    DEFAULTS = {'instances': 10, 'cores': 20, 'ram': 51200, 'key_pairs': 100,
                'metadata_items': 128, 'injected_files': 5,
                'injected_file_content_bytes': 10240,
                'injected_file_path_bytes': 255, 'server_groups': 10,
                'server_group_members': 10}

    def test_a_project_on_the_defaults_goes_back_to_them(self):
        self.assertEqual(('revert', {}), api_density.quota_restore(
            dict(self.DEFAULTS), self.DEFAULTS))

    def test_a_project_of_its_own_gets_its_values_back(self):
        before = dict(self.DEFAULTS, instances=40, key_pairs=3)
        self.assertEqual(
            ('update', {'instances': 40, 'cores': 20, 'ram': 51200}),
            api_density.quota_restore(before, self.DEFAULTS))


class SkipTest(base.BaseTestCase):

    def test_no_cloud_is_a_skip(self):
        found = api_density.measure(
            {'busybox': 2, 'debian': 1},
            clouds_yaml='/nonexistent/clouds.yaml', log=lambda msg: None)
        self.assertIn('all-in-one cloud not running', found['skipped'])


def _phase(count, active, mem_kib, processes, threads, usage_mib,
           errors=()):
    return {
        'count': count,
        'samples': [{'seconds': 2.0 + i % 3, 'server_id': str(i)}
                    for i in range(active)],
        'errors': list(errors),
        'boot_seconds': active / 2.0,
        'before': {'mem_used_kib': 1000000, 'processes': 300,
                   'threads': 900},
        'after': {'mem_used_kib': 1000000 + mem_kib,
                  'processes': 300 + processes, 'threads': 900 + threads},
        'after_delete': {'mem_used_kib': 1000000 + 2048, 'processes': 300,
                         'threads': 900},
        'cgroups': [{'name': 'instance-%08x' % i, 'usage': usage_mib * MIB,
                     'max_usage': 2 * usage_mib * MIB, 'failcnt': 0}
                    for i in range(active)],
        'cgroup_errors': [],
        'listings': [{'seconds': s, 'servers': active}
                     for s in (0.5, 0.4, 0.6, 0.45, 0.9)],
        'delete_seconds': 30.0,
        'leftovers': [], 'host_leftovers': [],
        'idle_cpu': {'wall': 10.0, 'cores': 2, 'host_busy': 4.0,
                     'client': 0.0, 'services': {}, 'other': 4.0},
    }


def _results(debian_mem_kib=50 * 20 * 1024, only=('api-density',)):
    return {
        'config': {'only': list(only)}, 'errors': {},
        'api-density': {
            'flavor': dict(api_density.FLAVOR), 'concurrency': 10,
            'settle_seconds': 10, 'poll_interval': 1.0,
            'placement': {'room': 250}, 'leftovers': [],
            'images': {
                'busybox': _phase(200, 200, 200 * 1024, 600, 800, 1),
                'debian': _phase(50, 50, debian_mem_kib, 500, 550, 8)}}}


class ReportTest(base.BaseTestCase):

    def test_figures_per_server(self):
        f = report.api_density_figures(
            _results()['api-density']['images']['busybox'])
        self.assertEqual(200 * MIB, f['memory'])
        self.assertEqual(MIB, f['memory_per_server'])
        self.assertEqual(3.0, f['processes_per_server'])
        self.assertEqual(4.0, f['threads_per_server'])
        self.assertEqual(200 * MIB, f['cgroup_sum'])
        self.assertEqual(MIB, f['cgroup_median'])
        self.assertEqual(2 * MIB, f['cgroup_peak'])
        self.assertEqual(0.5, f['list_median'])
        self.assertEqual(0.9, f['list_max'])
        self.assertEqual(200, f['listed'])
        self.assertEqual(2.0, f['boot_rate'])
        self.assertEqual(2 * MIB, f['mem_not_returned'])
        self.assertEqual(20.0, f['idle_cpu'])

    def test_debian_within_the_goal_is_met(self):
        rows = report.api_density_rows(_results())
        self.assertEqual([5] * 4, [r['item'] for r in rows])
        busybox_mem, busybox_host, debian_mem, debian_host = rows
        self.assertEqual('≤ 24 MiB', debian_mem['target'])
        self.assertEqual('yes', debian_mem['met'])
        self.assertIn('**20.0 MiB** per server', debian_mem['measured'])
        self.assertIn('50 of 50 ACTIVE', debian_mem['metric'])
        self.assertEqual('n/a', busybox_mem['met'])
        self.assertEqual('—', busybox_mem['target'])
        self.assertIn('**1.0 MiB** per server', busybox_mem['measured'])
        self.assertIn('**3.0 per server**', busybox_host['measured'])
        self.assertIn('median **0.50 s**, max 0.90 s',
                      busybox_host['measured'])
        self.assertIn('left: none', debian_host['measured'])

    def test_debian_over_the_goal_is_not_met(self):
        rows = report.api_density_rows(_results(50 * 25 * 1024))
        self.assertEqual('no', rows[2]['met'])

    def test_servers_missing_is_not_met(self):
        results = _results()
        results['api-density']['images']['debian'] = _phase(
            50, 48, 48 * 10 * 1024, 400, 400, 8,
            errors=['RuntimeError("server x went to ERROR: No valid host '
                    'was found.")'] * 2)
        row = report.api_density_rows(results)[2]
        self.assertEqual('no', row['met'])
        self.assertIn('48 of 50 ACTIVE', row['metric'])
        self.assertIn('2 errors', row['measured'])

    def test_skipped_when_the_cloud_is_down(self):
        results = {'config': {'only': ['api-density']}, 'errors': {},
                   'api-density': {'skipped': 'all-in-one cloud not '
                                   'running (no /etc/x)'}}
        rows = report.api_density_rows(results)
        self.assertEqual(1, len(rows))
        self.assertEqual('n/a', rows[0]['met'])
        self.assertIn('skipped: all-in-one cloud not running',
                      rows[0]['measured'])
        self.assertEqual([], report.api_density_section(results))

    def test_not_asked_for_is_no_row(self):
        self.assertEqual([], report.api_density_rows(
            {'config': {'only': ['spawn']}, 'errors': {}}))

    def test_failed_is_a_row(self):
        rows = report.api_density_rows(
            {'config': {'only': ['api-density']},
             'errors': {'api-density': 'Traceback\nRuntimeError: boom\n'}})
        self.assertEqual(['failed: RuntimeError: boom'],
                         [r['measured'] for r in rows])

    def test_section_and_the_main_table(self):
        results = _results()
        section = '\n'.join(report.api_density_section(results))
        self.assertIn('## Density through the Nova API', section)
        self.assertIn('| busybox | 200/200 | 2.0/s |', section)
        self.assertIn('| debian | 50/50 |', section)
        self.assertIn('room for 250', section)
        metrics = [r['metric'] for r in report.rows(results)]
        self.assertTrue(any('idle Debian 12 server' in m for m in metrics))


class RunOptionsTest(base.BaseTestCase):

    def test_not_in_the_default_run(self):
        args = run.parse_args([])
        self.assertNotIn('api-density', args.only)
        self.assertIn('api', args.only)
        self.assertEqual(200, args.api_density_busybox)
        self.assertEqual(50, args.api_density_debian)

    def test_chosen_with_only(self):
        args = run.parse_args(['--only', 'api-density',
                               '--api-density-busybox', '20',
                               '--api-density-debian', '5'])
        self.assertEqual(['api-density'], args.only)
        self.assertEqual((20, 5), (args.api_density_busybox,
                                   args.api_density_debian))

    def test_warns_of_few_inotify_instances(self):
        args = run.parse_args(['--only', 'api-density'])
        facts = {'sysctls': {'fs.inotify.max_user_instances': '128'}}
        warnings = run.host_warnings(args, facts)
        self.assertEqual(1, len(warnings))
        self.assertIn('api-density starts 50', warnings[0])
        facts['sysctls']['fs.inotify.max_user_instances'] = '8192'
        self.assertEqual([], run.host_warnings(args, facts))
