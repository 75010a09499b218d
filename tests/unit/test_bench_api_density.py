"""bench.api_density's pure parts and its report rows (issue 16 goal 5)."""

import os
import shutil
import tempfile

from oslotest import base

from bench import api_density
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
