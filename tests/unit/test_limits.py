"""Tests for novalxcdriver.limits: flavor to cgroup limits, and rendering."""

import dataclasses

from nova import objects
from oslotest import base

from novalxcdriver import exception
from novalxcdriver import limits

MiB = 1024 * 1024
HOST_CPUS = list(range(8))


def flavor(memory_mb=512, swap=0, vcpus=2, extra_specs=None, root_gb=1):
    return objects.Flavor(memory_mb=memory_mb, swap=swap, vcpus=vcpus,
                          root_gb=root_gb, extra_specs=extra_specs or {})


def make_limits(**overrides):
    values = dict(memory_bytes=512 * MiB, memsw_bytes=768 * MiB,
                  cpus=(0, 1), cpu_period_us=100000, cpu_quota_us=200000,
                  cpu_shares=None, pids_max=4096)
    values.update(overrides)
    return limits.Limits(**values)


class MemoryTest(base.BaseTestCase):

    def test_without_swap(self):
        self.assertEqual((512 * MiB, 512 * MiB), limits.memory(flavor()))

    def test_swap_adds_to_memsw(self):
        self.assertEqual((512 * MiB, 768 * MiB),
                         limits.memory(flavor(swap=256)))

    def test_memory_mb_is_mib(self):
        self.assertEqual((MiB, 3 * MiB),
                         limits.memory(flavor(memory_mb=1, swap=2)))


class CpusTest(base.BaseTestCase):

    def test_round_robin_by_cid(self):
        self.assertEqual((0, 1), limits.cpus(2, HOST_CPUS, 0))
        self.assertEqual((2, 3), limits.cpus(2, HOST_CPUS, 1))
        self.assertEqual((4, 5), limits.cpus(2, HOST_CPUS, 2))
        self.assertEqual((6, 7), limits.cpus(2, HOST_CPUS, 3))
        self.assertEqual((0, 1), limits.cpus(2, HOST_CPUS, 4))

    def test_wraps_around(self):
        # cid 2 with 3 vCPUs starts at index 6 of 8: 6, 7, then 0.
        self.assertEqual((0, 6, 7), limits.cpus(3, HOST_CPUS, 2))
        self.assertEqual((0, 1, 2, 3, 4, 5, 6, 7),
                         limits.cpus(8, HOST_CPUS, 5))

    def test_consecutive_cids_do_not_overlap(self):
        for vcpus in (1, 2, 4, 8):
            for cid in range(20):
                here = set(limits.cpus(vcpus, HOST_CPUS, cid))
                following = set(limits.cpus(vcpus, HOST_CPUS, cid + 1))
                self.assertEqual(vcpus, len(here))
                if vcpus < len(HOST_CPUS):
                    self.assertEqual(set(), here & following,
                                     (vcpus, cid))

    def test_uses_host_cpu_ids_not_indexes(self):
        host = [2, 3, 8, 9]
        self.assertEqual((2, 3), limits.cpus(2, host, 0))
        self.assertEqual((8, 9), limits.cpus(2, host, 1))
        # cid 1 with 3 vCPUs starts at index 3 of 4 and wraps.
        self.assertEqual((2, 3, 9), limits.cpus(3, host, 1))

    def test_pinning_wins(self):
        self.assertEqual((5, 9), limits.cpus(2, HOST_CPUS, 0,
                                             pinning={9, 5}))
        # Even beyond the shared set, which dedicated CPUs are not in.
        self.assertEqual((10, 11, 12), limits.cpus(16, HOST_CPUS, 3,
                                                   pinning={12, 10, 11}))

    def test_empty_pinning_is_shared(self):
        self.assertEqual((2, 3), limits.cpus(2, HOST_CPUS, 1, pinning=set()))

    def test_too_many_vcpus(self):
        e = self.assertRaises(exception.InvalidFlavor, limits.cpus, 9,
                              HOST_CPUS, 0)
        self.assertIn('9 vCPUs', str(e))
        self.assertIn('8 CPUs', str(e))
        self.assertRaises(exception.InvalidFlavor, limits.cpus, 1, [], 0)


class CpuBandwidthTest(base.BaseTestCase):

    def test_default_is_vcpus_times_period(self):
        self.assertEqual((100000, 100000), limits.cpu_bandwidth(1, {}))
        self.assertEqual((100000, 400000), limits.cpu_bandwidth(4, {}))

    def test_period_honoured(self):
        self.assertEqual((50000, 100000), limits.cpu_bandwidth(
            2, {'quota:cpu_period': '50000'}))
        self.assertEqual((1000, 2000), limits.cpu_bandwidth(
            2, {'quota:cpu_period': '1000'}))
        self.assertEqual((1000000, 2000000), limits.cpu_bandwidth(
            2, {'quota:cpu_period': '1000000'}))

    def test_quota_honoured(self):
        self.assertEqual((100000, 50000), limits.cpu_bandwidth(
            2, {'quota:cpu_quota': '50000'}))
        self.assertEqual((20000, 10000), limits.cpu_bandwidth(
            4, {'quota:cpu_quota': '10000', 'quota:cpu_period': '20000'}))

    def test_quota_not_positive_is_unlimited(self):
        for quota in ('0', '-1'):
            self.assertEqual((100000, -1), limits.cpu_bandwidth(
                2, {'quota:cpu_quota': quota}), quota)

    def test_period_out_of_range_refused(self):
        for period in ('5', '999', '1000001', 'x', '1.5'):
            e = self.assertRaises(exception.InvalidFlavor,
                                  limits.cpu_bandwidth, 1,
                                  {'quota:cpu_period': period})
            self.assertIn('quota:cpu_period', str(e))

    def test_quota_not_integer_refused(self):
        self.assertRaises(exception.InvalidFlavor, limits.cpu_bandwidth, 1,
                          {'quota:cpu_quota': 'lots'})


class PidsMaxTest(base.BaseTestCase):

    def test_default(self):
        self.assertEqual(4096, limits.pids_max({}, 4096))
        self.assertEqual(100, limits.pids_max({'other': '5'}, 100))

    def test_override(self):
        self.assertEqual(64, limits.pids_max({'lxc:pids_max': '64'}, 4096))
        self.assertEqual(16, limits.pids_max({'lxc:pids_max': '16'}, 4096))
        self.assertEqual(100000, limits.pids_max(
            {'lxc:pids_max': '100000'}, 4096))

    def test_refused(self):
        for value in ('15', '0', '-1', 'abc', '', '64.0'):
            e = self.assertRaises(exception.InvalidFlavor, limits.pids_max,
                                  {'lxc:pids_max': value}, 4096)
            self.assertIn('lxc:pids_max', str(e))
            self.assertIn(repr(value), str(e))


class IoTest(base.BaseTestCase):

    def test_none(self):
        self.assertEqual((), limits.io({}))
        self.assertEqual((), limits.io({'quota:disk_read_bytes_sec': '0'}))

    def test_all_kinds_in_order(self):
        self.assertEqual((
            ('disk_read_bytes_sec', 1000),
            ('disk_write_bytes_sec', 2000),
            ('disk_read_iops_sec', 30),
            ('disk_write_iops_sec', 40),
        ), limits.io({
            'quota:disk_write_iops_sec': '40',
            'quota:disk_read_iops_sec': '30',
            'quota:disk_write_bytes_sec': '2000',
            'quota:disk_read_bytes_sec': '1000',
        }))

    def test_refused(self):
        for value in ('-1', 'fast'):
            self.assertRaises(exception.InvalidFlavor, limits.io,
                              {'quota:disk_read_iops_sec': value})


class ForInstanceTest(base.BaseTestCase):

    def test_defaults(self):
        got = limits.for_instance(flavor(swap=128), 1, HOST_CPUS, 4096)
        self.assertEqual(limits.Limits(
            memory_bytes=512 * MiB, memsw_bytes=640 * MiB, cpus=(2, 3),
            cpu_period_us=100000, cpu_quota_us=200000, cpu_shares=None,
            pids_max=4096, io=()), got)

    def test_extra_specs(self):
        got = limits.for_instance(
            flavor(vcpus=1, extra_specs={
                'quota:cpu_shares': '2048', 'quota:cpu_quota': '-1',
                'lxc:pids_max': '50', 'quota:disk_read_bytes_sec': '9'}),
            0, HOST_CPUS, 4096, pinning={7})
        self.assertEqual((7,), got.cpus)
        self.assertEqual(-1, got.cpu_quota_us)
        self.assertEqual(2048, got.cpu_shares)
        self.assertEqual(50, got.pids_max)
        self.assertEqual((('disk_read_bytes_sec', 9),), got.io)

    def test_io_throttles_need_a_root_disk(self):
        # root_gb 0: the root is on the host's own disk, shared by all.
        e = self.assertRaises(
            exception.InvalidFlavor, limits.for_instance,
            flavor(root_gb=0,
                   extra_specs={'quota:disk_write_bytes_sec': '1000'}),
            0, HOST_CPUS, 4096)
        self.assertIn('root_gb 0', str(e))
        got = limits.for_instance(flavor(root_gb=0), 0, HOST_CPUS, 4096)
        self.assertEqual((), got.io)

    def test_bad_shares_refused(self):
        for shares in ('1', '262145', 'many'):
            self.assertRaises(
                exception.InvalidFlavor, limits.for_instance,
                flavor(extra_specs={'quota:cpu_shares': shares}), 0,
                HOST_CPUS, 4096)

    def test_frozen(self):
        self.assertRaises(dataclasses.FrozenInstanceError, setattr,
                          make_limits(), 'pids_max', 1)


class RenderV1Test(base.BaseTestCase):

    def test_exact_keys(self):
        self.assertEqual([
            ('lxc.cgroup.memory.limit_in_bytes', str(512 * MiB)),
            ('lxc.cgroup.memory.memsw.limit_in_bytes', str(768 * MiB)),
            ('lxc.cgroup.cpuset.cpus', '0,1'),
            ('lxc.cgroup.cpu.cfs_period_us', '100000'),
            ('lxc.cgroup.cpu.cfs_quota_us', '200000'),
            ('lxc.cgroup.pids.max', '4096'),
        ], limits.render(make_limits(), 1))

    def test_unlimited_quota_shares_and_no_io(self):
        # Disk I/O throttles are render_io's: their devices change.
        got = limits.render(make_limits(
            cpus=(3,), cpu_quota_us=-1, cpu_shares=512,
            io=(('disk_read_bytes_sec', 1000),
                ('disk_write_iops_sec', 40))), 1)
        self.assertEqual([
            ('lxc.cgroup.memory.limit_in_bytes', str(512 * MiB)),
            ('lxc.cgroup.memory.memsw.limit_in_bytes', str(768 * MiB)),
            ('lxc.cgroup.cpuset.cpus', '3'),
            ('lxc.cgroup.cpu.cfs_period_us', '100000'),
            ('lxc.cgroup.cpu.cfs_quota_us', '-1'),
            ('lxc.cgroup.pids.max', '4096'),
            ('lxc.cgroup.cpu.shares', '512'),
        ], got)

    def test_memory_before_memsw(self):
        # The kernel refuses a memsw limit below the memory limit, so the
        # memory limit is written first.
        keys = [k for k, _v in limits.render(make_limits(), 1)]
        self.assertLess(keys.index('lxc.cgroup.memory.limit_in_bytes'),
                        keys.index('lxc.cgroup.memory.memsw.limit_in_bytes'))


class RenderV2Test(base.BaseTestCase):

    def test_exact_keys(self):
        self.assertEqual([
            ('lxc.cgroup2.memory.max', str(512 * MiB)),
            ('lxc.cgroup2.memory.swap.max', str(256 * MiB)),
            ('lxc.cgroup2.cpuset.cpus', '0,1'),
            ('lxc.cgroup2.cpu.max', '200000 100000'),
            ('lxc.cgroup2.pids.max', '4096'),
        ], limits.render(make_limits(), 2))

    def test_no_swap(self):
        got = dict(limits.render(make_limits(memsw_bytes=512 * MiB), 2))
        self.assertEqual('0', got['lxc.cgroup2.memory.swap.max'])

    def test_unlimited_quota(self):
        got = dict(limits.render(make_limits(cpu_quota_us=-1), 2))
        self.assertEqual('max 100000', got['lxc.cgroup2.cpu.max'])

    def test_cpu_weight(self):
        for shares, weight in ((2, '1'), (262144, '10000'),
                               (1024, '39')):
            got = dict(limits.render(make_limits(cpu_shares=shares), 2))
            self.assertEqual(weight, got['lxc.cgroup2.cpu.weight'], shares)
        got = dict(limits.render(make_limits(), 2))
        self.assertNotIn('lxc.cgroup2.cpu.weight', got)

    def test_no_v1_keys(self):
        for key, _value in limits.render(make_limits(
                cpu_shares=100, io=(('disk_read_iops_sec', 1),)), 2):
            self.assertTrue(key.startswith('lxc.cgroup2.'), key)


class RenderIoTest(base.BaseTestCase):

    IO = (('disk_read_bytes_sec', 1), ('disk_write_bytes_sec', 2),
          ('disk_read_iops_sec', 3), ('disk_write_iops_sec', 4))

    def test_v1_every_kind_on_every_device(self):
        self.assertEqual([
            ('lxc.cgroup.blkio.throttle.read_bps_device', '7:3 1'),
            ('lxc.cgroup.blkio.throttle.write_bps_device', '7:3 2'),
            ('lxc.cgroup.blkio.throttle.read_iops_device', '7:3 3'),
            ('lxc.cgroup.blkio.throttle.write_iops_device', '7:3 4'),
            ('lxc.cgroup.blkio.throttle.read_bps_device', '7:9 1'),
            ('lxc.cgroup.blkio.throttle.write_bps_device', '7:9 2'),
            ('lxc.cgroup.blkio.throttle.read_iops_device', '7:9 3'),
            ('lxc.cgroup.blkio.throttle.write_iops_device', '7:9 4'),
        ], limits.render_io(self.IO, ['7:3', '7:9'], 1))

    def test_v2_one_io_max_per_device(self):
        self.assertEqual([
            ('lxc.cgroup2.io.max', '7:3 rbps=1 wbps=2 riops=3 wiops=4'),
            ('lxc.cgroup2.io.max', '7:9 rbps=1 wbps=2 riops=3 wiops=4'),
        ], limits.render_io(self.IO, ['7:3', '7:9'], 2))

    def test_every_rendered_key_is_an_io_key(self):
        for version in (1, 2):
            for key, _v in limits.render_io(self.IO, ['7:3'], version):
                self.assertTrue(limits.is_io_key(key), key)
        for key, _v in limits.render(make_limits(cpu_shares=9), 1):
            self.assertFalse(limits.is_io_key(key), key)

    def test_writeback_rules_are_the_write_throttles(self):
        self.assertEqual([
            ('blkio.throttle.write_bps_device', '7:3 2'),
            ('blkio.throttle.write_iops_device', '7:3 4'),
        ], limits.writeback_rules(self.IO, '7:3'))
        self.assertEqual([], limits.writeback_rules(
            (('disk_read_bytes_sec', 1),), '7:3'))

    def test_clear_rules_zero_every_kind(self):
        self.assertEqual([
            ('blkio.throttle.read_bps_device', '7:3 0'),
            ('blkio.throttle.read_iops_device', '7:3 0'),
            ('blkio.throttle.write_bps_device', '7:3 0'),
            ('blkio.throttle.write_iops_device', '7:3 0'),
        ], limits.clear_rules('7:3'))

    def test_record_round_trip(self):
        text = limits.format_io(self.IO)
        self.assertNotIn(' ', text)
        self.assertEqual(self.IO, limits.parse_io(text))
        self.assertEqual((), limits.parse_io(''))
        self.assertEqual((), limits.parse_io(None))
        self.assertEqual((('disk_read_iops_sec', 3),), limits.parse_io(
            'disk_read_iops_sec=3,bogus=1,disk_write_bytes_sec=x,'
            'disk_read_bytes_sec=0'))


class NovaSemanticsTest(base.BaseTestCase):
    """quota: keys mean what Nova's extra-spec reference says."""

    def test_period_zero_means_default(self):
        self.assertEqual((100000, 200000), limits.cpu_bandwidth(
            2, {'quota:cpu_period': '0'}))

    def test_period_below_kernel_minimum_refused(self):
        self.assertRaises(exception.InvalidFlavor, limits.cpu_bandwidth,
                          1, {'quota:cpu_period': '999'})

    def test_any_negative_quota_is_unlimited(self):
        for value in ('-1', '-100', '0'):
            self.assertEqual(-1, limits.cpu_bandwidth(
                1, {'quota:cpu_quota': value})[1])

    def test_quota_below_kernel_minimum_refused(self):
        exc = self.assertRaises(exception.InvalidFlavor,
                                limits.cpu_bandwidth, 1,
                                {'quota:cpu_quota': '500'})
        self.assertIn('quota:cpu_quota=500', str(exc))

    def test_shares_zero_unset_one_refused(self):
        self.assertIsNone(limits.cpu_shares({'quota:cpu_shares': '0'}))
        self.assertEqual(1024, limits.cpu_shares({'quota:cpu_shares':
                                                  '1024'}))
        self.assertRaises(exception.InvalidFlavor, limits.cpu_shares,
                          {'quota:cpu_shares': '1'})

    def test_total_io_refused_not_ignored(self):
        for key in ('quota:disk_total_bytes_sec',
                    'quota:disk_total_iops_sec'):
            exc = self.assertRaises(exception.InvalidFlavor, limits.io,
                                    {key: '1000'})
            self.assertIn(key, str(exc))


class SwapAccountingTest(base.BaseTestCase):

    def test_v1_without_swap_accounting_has_no_memsw(self):
        keys = dict(limits.render(make_limits(), 1, swap_accounting=False))
        self.assertNotIn('lxc.cgroup.memory.memsw.limit_in_bytes', keys)
        self.assertEqual(str(512 * MiB),
                         keys['lxc.cgroup.memory.limit_in_bytes'])

    def test_v2_without_swap_accounting_has_no_swap_max(self):
        keys = dict(limits.render(make_limits(), 2, swap_accounting=False))
        self.assertNotIn('lxc.cgroup2.memory.swap.max', keys)
