"""Tests for novalxcdriver.diagnostics: parsers, and samples of fake trees.

The cgroup, /proc and /sys readers run over directory trees made in a
temporary directory with the files' real formats (copied from a cgroup v1
host running LXC 5 and from the kernel's documentation for cgroup v2).
"""

import os
from unittest import mock

import fixtures
import jsonschema
from nova.api.openstack.compute.schemas import server_diagnostics as schema
from nova.api.openstack.compute.views import server_diagnostics as views
from nova.compute import power_state
from nova import objects
from oslotest import base

from novalxcdriver import diagnostics
from novalxcdriver import rootfs

MiB = 1024 * 1024
NAME = 'instance-0000002a'
PID = 4242
# LXC's cgroup of the container: lxc.payload.<name> was taken (by a
# container of the same name in another lxcpath), so LXC added '-1'.
GROUP = 'lxc.payload.%s-1' % NAME

PROC_CGROUP_V1 = """\
12:pids:/{group}
9:name=systemd:/{group}/init.scope
4:memory:/{group}
3:cpuset:/{group}
2:cpu,cpuacct:/{group}
0::/{group}
""".format(group=GROUP)

NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    \
packets errs drop fifo colls carrier compressed
    lo:     840      12    0    0    0     0          0         0      840 \
     12    0    0    0     0       0          0
  eth0:123456789  98765    1    2    0     0          0         3 55443322 \
  4321    4    5    0     0       0          0
"""

# A comm with a space and a ')' inside: fields count after the last ')'.
PROC_STAT = ('4242 (my (odd) init) S 4241 4242 4242 0 -1 4194560 153 2311 '
             '0 0 0 0 2 1 20 0 1 0 384712 2322432 348 18446744073709551615 '
             '4198400 5785993 140733003189360 0 0 0 0 0 524288 1 0 0 17 0 0 '
             '0 0 0 0\n')

MEMORY_STAT_V1 = """\
cache 8482816
rss 114688
pgfault 4251
pgmajfault 0
hierarchical_memory_limit 134217728
total_cache 9482816
total_rss 214688
total_pgfault 5251
total_pgmajfault 7
"""

BLOCK_STAT = ('    3655        0    43936      636     7225     7045   207776'
              '     7436        0     6608    13217        0        0        '
              '0        0     4037     5144\n')

PROC_STAT_HOST = """\
cpu  468491 12 97425 160280 5217 30 2365 2366 0 0
cpu0 231160 0 44199 88875 2247 0 345 1165 0 0
cpu1 237331 0 53226 71404 2969 0 2019 1201 0 0
intr 1 2 3
"""

CPUINFO = """\
processor\t: 0
model name\t: Some CPU
cpu MHz\t\t: 2600.000

processor\t: 1
cpu MHz\t\t: 2000.500
"""


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)


class ParserTest(base.BaseTestCase):

    def test_int_and_limit(self):
        self.assertEqual(38787240, diagnostics.parse_int('38787240\n'))
        self.assertEqual(128 * MiB, diagnostics.parse_limit('134217728\n'))
        # cgroup v1 without a limit; cgroup v2 without one.
        self.assertIsNone(diagnostics.parse_limit('9223372036854771712\n'))
        self.assertIsNone(diagnostics.parse_limit('max\n'))

    def test_cpu_list(self):
        self.assertEqual((0,), diagnostics.parse_cpu_list('0\n'))
        self.assertEqual((0, 1, 2, 5, 7, 8),
                         diagnostics.parse_cpu_list('7-8,0-2,5\n'))
        self.assertEqual((), diagnostics.parse_cpu_list('\n'))

    def test_ints(self):
        self.assertEqual((38787240, 0),
                         diagnostics.parse_ints('38787240 0 \n'))

    def test_proc_cgroup(self):
        paths = diagnostics.parse_proc_cgroup(PROC_CGROUP_V1)
        self.assertEqual('/' + GROUP, paths['cpuacct'])
        self.assertEqual('/' + GROUP, paths['cpu'])
        self.assertEqual('/' + GROUP + '/init.scope', paths['name=systemd'])
        self.assertEqual('/' + GROUP, paths[''])

    def test_payload_cgroup(self):
        cut = diagnostics.payload_cgroup
        self.assertEqual('lxc.payload.' + NAME,
                         cut('/lxc.payload.' + NAME, NAME))
        self.assertEqual(GROUP, cut('/' + GROUP, NAME))
        # A process of the container in a cgroup of its own making.
        self.assertEqual(GROUP, cut('/%s/init.scope' % GROUP, NAME))
        self.assertEqual(GROUP, cut('/%s/lxc.payload.x' % GROUP, NAME))
        self.assertEqual('machine/lxc.payload.' + NAME,
                         cut('/machine/lxc.payload.%s/a' % NAME, NAME))
        # Another container's, or none: a pid reused meanwhile.
        self.assertIsNone(cut('/lxc.payload.%s0' % NAME, NAME))
        self.assertIsNone(cut('/lxc.payload.other/x', NAME))
        self.assertIsNone(cut('/user.slice', NAME))
        self.assertIsNone(cut('/', NAME))

    def test_flat_keyed(self):
        stat = diagnostics.parse_flat_keyed(MEMORY_STAT_V1 + 'odd line x\n')
        self.assertEqual(214688, stat['total_rss'])
        self.assertNotIn('odd', stat)

    def test_net_dev(self):
        nics = diagnostics.parse_net_dev(NET_DEV)
        self.assertEqual({'lo', 'eth0'}, set(nics))
        self.assertEqual(
            diagnostics.NicIO(name='eth0', rx_bytes=123456789,
                              rx_packets=98765, rx_errors=1, rx_drop=2,
                              tx_bytes=55443322, tx_packets=4321,
                              tx_errors=4, tx_drop=5),
            nics['eth0'])

    def test_start_ticks(self):
        self.assertEqual(384712, diagnostics.parse_start_ticks(PROC_STAT))

    def test_uptime(self):
        self.assertEqual(3848.43,
                         diagnostics.parse_uptime('3848.43 1657.79\n'))

    def test_block_stat_counts_512_byte_sectors(self):
        self.assertEqual((3655, 43936 * 512, 7225, 207776 * 512),
                         diagnostics.parse_block_stat(BLOCK_STAT))

    def test_io_baseline(self):
        self.assertEqual(
            ('7:1', (3655, 43936 * 512, 7225, 207776 * 512)),
            diagnostics.parse_io_baseline('7:1 ' + BLOCK_STAT))

    def test_host_cpu_times_grouped_as_libvirt(self):
        ns = 10 ** 9 // 100
        self.assertEqual({'kernel': (97425 + 30 + 2365) * ns,
                          'idle': 160280 * ns,
                          'user': (468491 + 12) * ns,
                          'iowait': 5217 * ns},
                         diagnostics.parse_host_cpu_times(PROC_STAT_HOST,
                                                          100))

    def test_host_cpu_times_need_the_cpu_line(self):
        self.assertRaises(ValueError, diagnostics.parse_host_cpu_times,
                          'intr 1\n', 100)

    def test_cpuinfo_mhz_is_the_mean(self):
        self.assertEqual(2300, diagnostics.parse_cpuinfo_mhz(CPUINFO))
        self.assertIsNone(diagnostics.parse_cpuinfo_mhz(
            'processor\t: 0\nBogoMIPS\t: 50.00\n'))


class FakeDisk:
    """What diagnostics reads of a disk.Disk."""

    def __init__(self, tmp, name, device, mounted=True):
        self.image_path = os.path.join(tmp, name + '.img')
        self.io_baseline_path = self.image_path + '.iostat'
        self._device = device
        self.mounted = mounted
        write(self.image_path, '')

    def is_mounted(self):
        return self.mounted

    def device(self):
        return self._device


class _TreeTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.cgroup = os.path.join(self.tmp, 'cgroup')
        self.proc = os.path.join(self.tmp, 'proc')
        self.sys = os.path.join(self.tmp, 'sys')
        self.useFixture(fixtures.MonkeyPatch(
            'os.sysconf', lambda name: 100 if name == 'SC_CLK_TCK'
            else os.sysconf(name)))

    def v1(self, controller, key, text, group=GROUP):
        write(os.path.join(self.cgroup, controller, group, key), text)

    def v2(self, key, text, group=GROUP):
        write(os.path.join(self.cgroup, group, key), text)

    def proc_files(self, proc_cgroup=PROC_CGROUP_V1):
        write(os.path.join(self.proc, str(PID), 'cgroup'), proc_cgroup)
        write(os.path.join(self.proc, str(PID), 'net', 'dev'), NET_DEV)
        write(os.path.join(self.proc, str(PID), 'stat'), PROC_STAT)
        # Init started 3847.12 s after boot (384712 ticks at 100 Hz).
        write(os.path.join(self.proc, 'uptime'), '3947.99 1657.79\n')

    def block(self, device, reads, read_sectors, writes, write_sectors):
        write(os.path.join(self.sys, 'dev', 'block', device, 'stat'),
              '%d 0 %d 5 %d 0 %d 7 0 1 2 0 0 0 0 0 0\n' % (
                  reads, read_sectors, writes, write_sectors))

    def sample(self, version=1, pid=PID, disks=()):
        return diagnostics.sample(NAME, pid, version, disks=disks,
                                  cgroup_root=self.cgroup,
                                  proc_root=self.proc, sys_root=self.sys)


class V1SampleTest(_TreeTest):

    def setUp(self):
        super().setUp()
        self.v1('cpuacct', 'cpuacct.usage', '3000\n')
        # Host CPUs 0..3; the container's cpuset is 1 and 3.
        self.v1('cpuacct', 'cpuacct.usage_percpu', '5 1000 7 2000 \n')
        self.v1('cpuset', 'cpuset.cpus', '1,3\n')
        self.v1('memory', 'memory.usage_in_bytes', str(9 * MiB + 1))
        self.v1('memory', 'memory.limit_in_bytes', str(256 * MiB))
        self.v1('memory', 'memory.stat', MEMORY_STAT_V1)
        self.proc_files()

    def test_sample(self):
        root = FakeDisk(self.tmp, 'root', '7:1')
        write(root.io_baseline_path, '7:1 10 0 100 0 20 0 400 0 0 0 0\n')
        self.block('7:1', 15, 164, 28, 2448)
        s = self.sample(disks=[('root', root)])
        self.assertEqual(3000, s.cpu_ns)
        self.assertEqual((1000, 2000), s.vcpu_ns)
        self.assertEqual(9 * MiB + 1, s.memory_used)
        self.assertEqual(256 * MiB, s.memory_limit)
        self.assertEqual({'rss': 214688, 'cache': 9482816, 'pgfault': 5251,
                          'pgmajfault': 7}, s.memory_stat)
        self.assertEqual(100, s.uptime)
        self.assertEqual(['eth0'], [n.name for n in s.nics])
        self.assertEqual(
            (diagnostics.DiskIO(name='root', read_requests=5,
                                read_bytes=64 * 512, write_requests=8,
                                write_bytes=2048 * 512),), s.disks)

    def test_not_the_cgroup_named_after_the_container(self):
        # Another container's cgroup has the unsuffixed name.
        for controller, key in (('cpuacct', 'cpuacct.usage'),
                                ('memory', 'memory.limit_in_bytes')):
            self.v1(controller, key, '1\n', group='lxc.payload.' + NAME)
        s = self.sample()
        self.assertEqual(3000, s.cpu_ns)
        self.assertEqual(256 * MiB, s.memory_limit)

    def test_stopped_container(self):
        # No init: nothing but the disks is known.
        self.assertEqual(diagnostics.Sample(), self.sample(pid=None))

    def test_init_gone_meanwhile(self):
        self.assertEqual(diagnostics.Sample(), self.sample(pid=PID + 1))

    def test_pid_of_another_process(self):
        # The pid was reused by a process out of the container: neither its
        # cgroups nor its network namespace are the container's.
        self.proc_files(proc_cgroup='4:memory:/user.slice\n'
                        '3:cpuset:/\n2:cpu,cpuacct:/\n0::/\n')
        self.assertEqual(diagnostics.Sample(), self.sample())

    def test_no_cpuset_no_vcpus(self):
        os.unlink(os.path.join(self.cgroup, 'cpuset', GROUP, 'cpuset.cpus'))
        s = self.sample()
        self.assertEqual((), s.vcpu_ns)
        self.assertEqual(3000, s.cpu_ns)

    def test_unlimited_memory(self):
        self.v1('memory', 'memory.limit_in_bytes', '9223372036854771712\n')
        self.assertIsNone(self.sample().memory_limit)

    def test_disk_without_baseline_is_left_out(self):
        root = FakeDisk(self.tmp, 'root', '7:1')
        self.block('7:1', 15, 164, 28, 2448)
        self.assertEqual((), self.sample(disks=[('root', root)]).disks)

    def test_disk_not_mounted_is_left_out(self):
        root = FakeDisk(self.tmp, 'root', '7:1', mounted=False)
        write(root.io_baseline_path, '7:1 ' + BLOCK_STAT)
        self.block('7:1', 15, 164, 28, 2448)
        self.assertEqual((), self.sample(disks=[('root', root)]).disks)

    def test_baseline_of_another_device_is_ignored(self):
        # A baseline is only good for the attachment that saved it.
        root = FakeDisk(self.tmp, 'root', '7:2')
        write(root.io_baseline_path, '7:1 ' + BLOCK_STAT)
        self.block('7:2', 15, 164, 28, 2448)
        self.assertEqual((), self.sample(disks=[('root', root)]).disks)

    def test_disks_in_order_given(self):
        disks = []
        for name, device in (('root', '7:1'), ('ephemeral', '7:9')):
            d = FakeDisk(self.tmp, name, device)
            write(d.io_baseline_path, device + ' 0 0 0 0 0 0 0 0 0 0 0\n')
            self.block(device, 1, 2, 3, 4)
            disks.append((name, d))
        self.assertEqual(['root', 'ephemeral'],
                         [d.name for d in self.sample(disks=disks).disks])


class V2SampleTest(_TreeTest):

    def setUp(self):
        super().setUp()
        self.v2('cpu.stat', 'usage_usec 1500\nuser_usec 1000\n'
                'system_usec 500\n')
        self.v2('memory.current', '%d\n' % (3 * MiB))
        self.v2('memory.max', 'max\n')
        self.v2('memory.stat', 'anon 4096\nfile 8192\npgfault 10\n'
                'pgmajfault 2\n')
        # systemd inside moved init to a cgroup below the container's.
        self.proc_files(proc_cgroup='0::/%s/init.scope\n' % GROUP)

    def test_sample(self):
        s = self.sample(version=2)
        self.assertEqual(1500000, s.cpu_ns)
        self.assertEqual((), s.vcpu_ns)
        self.assertEqual(3 * MiB, s.memory_used)
        self.assertIsNone(s.memory_limit)
        self.assertEqual({'rss': 4096, 'cache': 8192, 'pgfault': 10,
                          'pgmajfault': 2}, s.memory_stat)
        self.assertEqual(100, s.uptime)

    def test_memory_limit(self):
        self.v2('memory.max', '%d\n' % (512 * MiB))
        self.assertEqual(512 * MiB, self.sample(version=2).memory_limit)


class DisksOfTest(base.BaseTestCase):

    def test_disks_with_an_image(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        root = rootfs.Rootfs(tmp, 3)
        self.assertEqual([], diagnostics.disks_of(root))
        write(root.ephemeral_disk.image_path, '')
        self.assertEqual([('ephemeral', root.ephemeral_disk)],
                         diagnostics.disks_of(root))
        write(root.root_disk.image_path, '')
        self.assertEqual([('root', root.root_disk),
                          ('ephemeral', root.ephemeral_disk)],
                         diagnostics.disks_of(root))

    def test_no_rootfs(self):
        self.assertEqual([], diagnostics.disks_of(None))


def full_sample(**overrides):
    values = dict(
        cpu_ns=3000, vcpu_ns=(1000, 2000), memory_used=9 * MiB + 1,
        memory_limit=256 * MiB,
        memory_stat={'rss': 2048 * 1024, 'cache': 4096 * 1024,
                     'pgfault': 100, 'pgmajfault': 7},
        uptime=100,
        nics=(diagnostics.NicIO('eth0', 1, 2, 3, 4, 5, 6, 7, 8),),
        disks=(diagnostics.DiskIO('root', 1, 512, 2, 1024),
               diagnostics.DiskIO('ephemeral', 3, 4096, 4, 8192)))
    values.update(overrides)
    return diagnostics.Sample(**values)


class ToDiagnosticsTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        objects.register_all()

    def test_full(self):
        d = diagnostics.to_diagnostics(full_sample(), power_state.RUNNING)
        self.assertEqual('running', d.state)
        # The only Nova driver name the API takes that fits; see module.
        self.assertEqual('libvirt', d.driver)
        self.assertEqual('lxc', d.hypervisor)
        self.assertEqual('linux', d.hypervisor_os)
        self.assertEqual(100, d.uptime)
        self.assertFalse(d.config_drive)
        self.assertEqual([(0, 1000, None), (1, 2000, None)],
                         [(c.id, c.time, c.utilisation)
                          for c in d.cpu_details])
        self.assertEqual((2, 1, 2), (d.num_cpus, d.num_nics, d.num_disks))
        nic = d.nic_details[0]
        self.assertEqual(
            (None, 1, 2, 3, 4, None, 5, 6, 7, 8, None),
            (nic.mac_address, nic.rx_octets, nic.rx_packets, nic.rx_errors,
             nic.rx_drop, nic.rx_rate, nic.tx_octets, nic.tx_packets,
             nic.tx_errors, nic.tx_drop, nic.tx_rate))
        self.assertEqual(
            [(1, 512, 2, 1024, None), (3, 4096, 4, 8192, None)],
            [(k.read_requests, k.read_bytes, k.write_requests,
              k.write_bytes, k.errors_count) for k in d.disk_details])
        self.assertEqual(256, d.memory_details.maximum)
        # 9 MiB and a byte: rounded up.
        self.assertEqual(10, d.memory_details.used)

    def test_small_use_is_not_zero(self):
        d = diagnostics.to_diagnostics(full_sample(memory_used=761856),
                                       power_state.RUNNING)
        self.assertEqual(1, d.memory_details.used)

    def test_whole_cpu_time_without_per_cpu_figures(self):
        d = diagnostics.to_diagnostics(full_sample(vcpu_ns=()),
                                       power_state.PAUSED)
        self.assertEqual('paused', d.state)
        self.assertEqual([(None, 3000)],
                         [(c.id, c.time) for c in d.cpu_details])

    def test_nothing_known(self):
        d = diagnostics.to_diagnostics(diagnostics.Sample(),
                                       power_state.SHUTDOWN)
        self.assertEqual('shutdown', d.state)
        self.assertEqual((0, 0, 0), (d.num_cpus, d.num_nics, d.num_disks))
        self.assertIsNone(d.memory_details.maximum)
        self.assertIsNone(d.memory_details.used)
        self.assertIsNone(d.uptime)

    def test_api_view_passes_the_2_48_schema(self):
        # What GET /servers/{id}/diagnostics returns must pass Nova's
        # response schema (enforced in Nova's tests, logged in production).
        for sample in (full_sample(), diagnostics.Sample()):
            view = views.ViewBuilder().instance_diagnostics(
                diagnostics.to_diagnostics(sample, power_state.RUNNING))
            jsonschema.validate(view, schema.index_response_v248)


class ToDictTest(base.BaseTestCase):

    def test_full(self):
        self.assertEqual({
            'cpu0_time': 1000, 'cpu1_time': 2000,
            'memory': 256 * 1024, 'memory-actual': 256 * 1024,
            'memory-unused': (256 * MiB - 9 * MiB - 1) // 1024,
            'memory-rss': 2048, 'memory-disk_caches': 4096,
            'memory-major_fault': 7, 'memory-minor_fault': 93,
            'root_read': 512, 'root_read_req': 1, 'root_write': 1024,
            'root_write_req': 2,
            'ephemeral_read': 4096, 'ephemeral_read_req': 3,
            'ephemeral_write': 8192, 'ephemeral_write_req': 4,
            'eth0_rx': 1, 'eth0_rx_packets': 2, 'eth0_rx_errors': 3,
            'eth0_rx_drop': 4, 'eth0_tx': 5, 'eth0_tx_packets': 6,
            'eth0_tx_errors': 7, 'eth0_tx_drop': 8,
        }, diagnostics.to_dict(full_sample()))

    def test_whole_cpu_time_without_per_cpu_figures(self):
        out = diagnostics.to_dict(full_sample(vcpu_ns=()))
        self.assertEqual(3000, out['cpu_time'])
        self.assertNotIn('cpu0_time', out)

    def test_nothing_known(self):
        self.assertEqual({}, diagnostics.to_dict(diagnostics.Sample()))


class HostTest(_TreeTest):

    def test_cpu_stats(self):
        write(os.path.join(self.proc, 'stat'), PROC_STAT_HOST)
        write(os.path.join(self.proc, 'cpuinfo'), CPUINFO)
        stats = diagnostics.host_cpu_stats(self.proc, self.sys)
        self.assertEqual({'kernel', 'idle', 'user', 'iowait', 'frequency'},
                         set(stats))
        self.assertEqual(160280 * 10 ** 7, stats['idle'])
        self.assertEqual(2300, stats['frequency'])
        for value in stats.values():
            self.assertIsInstance(value, int)

    def test_frequency_from_cpufreq(self):
        write(os.path.join(self.proc, 'stat'), PROC_STAT_HOST)
        write(os.path.join(self.proc, 'cpuinfo'), 'processor\t: 0\n')
        write(os.path.join(self.sys, 'devices', 'system', 'cpu', 'cpu0',
                           'cpufreq', 'scaling_cur_freq'), '1799999\n')
        self.assertEqual(
            1800, diagnostics.host_cpu_stats(self.proc, self.sys)['frequency'])

    def test_frequency_unknown(self):
        write(os.path.join(self.proc, 'stat'), PROC_STAT_HOST)
        self.assertEqual(
            0, diagnostics.host_cpu_stats(self.proc, self.sys)['frequency'])

    def test_real_host(self):
        stats = diagnostics.host_cpu_stats()
        self.assertGreater(stats['idle'] + stats['user'], 0)

    def test_uptime_runs_uptime(self):
        line = (' 17:41:35 up  1:02,  0 users,  load average: 7.17, 9.01, '
                '7.33\n')
        with mock.patch('novalxcdriver.lxc.execute',
                        return_value=(line, '')) as execute:
            self.assertEqual(line, diagnostics.host_uptime())
        execute.assert_called_once_with('env', 'LANG=C', 'uptime')
