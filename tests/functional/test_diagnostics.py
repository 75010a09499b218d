"""Diagnostics of real containers (issue: resources and limits).

Each test makes a busybox container use CPU, memory, its disks or a NIC,
then checks what get_instance_diagnostics and get_diagnostics report
against the flavor and against the kernel's own files (cgroups,
/proc/<pid>/net/dev, /sys/block).
"""

import os
import random
import socket
import subprocess
import time

from novalxcdriver import conf
from tests.functional import base
from tests import host_cleanup

CONF = conf.CONF
MiB = 1024 * 1024


class DiagnosticsTest(base.FunctionalTestCase):

    def _cgroup(self, name, controller, key):
        path = os.path.join(host_cleanup.payload_cgroup(controller, name),
                            key)
        with open(path) as f:
            return f.read().strip()

    def _container(self, **flavor):
        instance = self.make_instance(**flavor)
        started = time.monotonic()
        self.spawn(instance, self.busybox_image())
        return instance, started

    def _disk(self, diags, index):
        d = diags.disk_details[index]
        return d.read_bytes, d.write_bytes

    def test_cpu_memory_uptime_and_state(self):
        vcpus = min(2, len(os.sched_getaffinity(0)))
        instance, started = self._container(memory_mb=128, vcpus=vcpus)
        # Burn a little CPU on every vCPU, and touch some memory.
        self.attach(instance.name, 'sh', '-c',
                    'for c in $(seq %d); do (i=0; while [ $i -lt 100000 ]; '
                    'do i=$((i+1)); done) & done; wait; '
                    'dd if=/dev/zero of=/dev/null bs=8M count=1' % vcpus)
        diags = self.driver.get_instance_diagnostics(instance)
        usage_ns = int(self._cgroup(instance.name, 'cpuacct',
                                    'cpuacct.usage'))
        percpu = [int(v) for v in self._cgroup(
            instance.name, 'cpuacct', 'cpuacct.usage_percpu').split()]
        cpus = sorted(int(c) for c in self._cgroup(
            instance.name, 'cpuset', 'cpuset.cpus').replace(
                '-', ',').split(','))

        self.assertEqual('running', diags.state)
        self.assertEqual(('libvirt', 'lxc', 'linux'),
                         (diags.driver, diags.hypervisor,
                          diags.hypervisor_os))
        # One entry per vCPU: the CPUs of the cpuset, in order.
        self.assertEqual(list(range(vcpus)),
                         [c.id for c in diags.cpu_details])
        self.assertEqual(vcpus, diags.num_cpus)
        # Each vCPU's figure is its host CPU's (the scheduler may have run
        # both loops on one CPU while the other was busy: one can be 0).
        for cpu, host_cpu in zip(diags.cpu_details, cpus):
            self.assertGreaterEqual(cpu.time, 0)
            self.assertLessEqual(cpu.time, percpu[host_cpu])
        self.assertGreater(sum(c.time for c in diags.cpu_details),
                           0.1 * 1e9)
        self.assertLessEqual(sum(c.time for c in diags.cpu_details),
                             usage_ns)
        # Memory: the flavor's MiB is the limit; some of it is used.
        self.assertEqual(128, diags.memory_details.maximum)
        self.assertGreater(diags.memory_details.used, 0)
        self.assertLessEqual(diags.memory_details.used, 128)
        self.assertLessEqual(
            diags.memory_details.used * MiB - MiB,
            int(self._cgroup(instance.name, 'memory',
                             'memory.max_usage_in_bytes')))
        # Uptime: since the container's init started.
        self.assertGreaterEqual(diags.uptime, 0)
        self.assertLessEqual(diags.uptime, time.monotonic() - started + 1)

        old = self.driver.get_diagnostics(instance)
        self.assertEqual(128 * 1024, old['memory'])
        self.assertEqual(vcpus, len([k for k in old if k.startswith('cpu')
                                     and k.endswith('_time')]))
        self.assertGreater(old['memory-rss'] + old['memory-disk_caches'],
                           0)

        self.driver.pause(instance)
        self.assertEqual('paused',
                         self.driver.get_instance_diagnostics(instance).state)
        self.driver.suspend(self.ctxt, instance)
        self.assertEqual('suspended',
                         self.driver.get_instance_diagnostics(instance).state)

    def test_disk_io_of_root_and_ephemeral(self):
        instance, _started = self._container(root_gb=1, ephemeral_gb=1)
        diags = self.driver.get_instance_diagnostics(instance)
        # Root disk first, then the ephemeral one.
        self.assertEqual(2, diags.num_disks)
        root_read, root_written = self._disk(diags, 0)
        eph_read, eph_written = self._disk(diags, 1)

        # Direct I/O, then buffered writes the kernel writes back later:
        # both reach the root disk's loop device.
        self.attach(instance.name, 'dd', 'if=/dev/zero', 'of=/root/direct',
                    'bs=1M', 'count=8', 'oflag=direct')
        self.attach(instance.name, 'sh', '-c', 'dd if=/dev/zero '
                    'of=/root/buffered bs=1M count=8 2>/dev/null && sync')
        self.attach(instance.name, 'dd', 'if=/root/direct', 'of=/dev/null',
                    'bs=1M', 'iflag=direct')
        self.attach(instance.name, 'dd', 'if=/dev/zero', 'of=/mnt/eph',
                    'bs=1M', 'count=4', 'oflag=direct')
        diags = self.driver.get_instance_diagnostics(instance)
        print('blkio.throttle.io_service_bytes of the container: %r' %
              self._cgroup(instance.name, 'blkio',
                           'blkio.throttle.io_service_bytes'))
        read, written = self._disk(diags, 0)
        self.assertGreaterEqual(written - root_written, 16 * MiB)
        self.assertLess(written - root_written, 20 * MiB)
        self.assertGreaterEqual(read - root_read, 8 * MiB)
        read, written = self._disk(diags, 1)
        self.assertGreaterEqual(written - eph_written, 4 * MiB)
        self.assertLess(written - eph_written, 6 * MiB)
        self.assertGreater(diags.disk_details[0].write_requests, 0)

        old = self.driver.get_diagnostics(instance)
        self.assertEqual(diags.disk_details[0].write_bytes,
                         old['root_write'])
        self.assertEqual(diags.disk_details[1].read_bytes,
                         old['ephemeral_read'])

    def test_disk_figures_start_at_zero_on_a_reused_loop_device(self):
        # Loop devices keep their counters from earlier disks: a new
        # container's figures are its own.
        first, _started = self._container(root_gb=1)
        self.attach(first.name, 'dd', 'if=/dev/zero', 'of=/root/big',
                    'bs=1M', 'count=32', 'oflag=direct')
        self.driver.destroy(self.ctxt, first, [])
        second, _started = self._container(root_gb=1)
        device = self.driver._container(second).rootfs().root_disk.device()
        with open('/sys/dev/block/%s/stat' % device) as f:
            device_written = int(f.read().split()[6]) * 512
        if device_written < 32 * MiB:
            self.skipTest('the second disk got a fresh loop device')
        _read, written = self._disk(
            self.driver.get_instance_diagnostics(second), 0)
        self.assertLess(written, 32 * MiB)

    def test_no_disk_of_its_own_no_disk_details(self):
        instance, _started = self._container(root_gb=0)
        self.assertEqual(
            [], self.driver.get_instance_diagnostics(instance).disk_details)

    def test_nic_counters_from_the_container_namespace(self):
        instance, _started = self._container()
        # No VIFs are plugged yet: only the loopback, not reported.
        self.assertEqual(
            [], self.driver.get_instance_diagnostics(instance).nic_details)

        # A veth pair by hand, one end in the container's namespace.
        pid = self.lxc_pid(instance.name)
        suffix = '%05d' % random.randrange(100000)
        host_if, guest_if = 'vdh' + suffix, 'vdc' + suffix
        # A /30 of the benchmarking range (RFC 2544), random per test run.
        prefix = '198.18.%d.' % random.randrange(256)
        first = random.randrange(0, 256, 4)
        host_ip = prefix + str(first + 1)
        guest_ip = prefix + str(first + 2)
        subprocess.run(['ip', 'link', 'add', host_if, 'type', 'veth', 'peer',
                        'name', guest_if], check=True)
        self.addCleanup(subprocess.run, ['ip', 'link', 'del', host_if],
                        capture_output=True)
        for argv in (['ip', 'link', 'set', guest_if, 'netns', str(pid)],
                     ['ip', 'addr', 'add', host_ip + '/30', 'dev', host_if],
                     ['ip', 'link', 'set', host_if, 'up'],
                     ['nsenter', '-t', str(pid), '-n', 'ip', 'addr', 'add',
                      guest_ip + '/30', 'dev', guest_if],
                     ['nsenter', '-t', str(pid), '-n', 'ip', 'link', 'set',
                      guest_if, 'up']):
            subprocess.run(argv, check=True)
        # UDP to a closed port: ARP, the datagram, ICMP port unreachable.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _i in range(5):
                s.sendto(b'x' * 1000, (guest_ip, 9))
                time.sleep(0.05)

        def counters():
            diags = self.driver.get_instance_diagnostics(instance)
            return diags if diags.nic_details and \
                diags.nic_details[0].rx_packets >= 5 else None
        diags = self.wait_for(counters, timeout=5)
        (nic,) = diags.nic_details
        self.assertGreaterEqual(nic.rx_octets, 5 * 1000)
        self.assertGreater(nic.tx_packets, 0)
        self.assertGreater(nic.tx_octets, 0)
        self.assertIsNone(nic.mac_address)
        # The host end saw what the container sent.
        with open('/sys/class/net/%s/statistics/rx_packets' % host_if) as f:
            self.assertGreaterEqual(int(f.read()), nic.tx_packets)
        old = self.driver.get_diagnostics(instance)
        self.assertGreaterEqual(old[guest_if + '_rx'], 5 * 1000)
        self.assertNotIn('lo_rx', old)

    def test_host_figures(self):
        stats = self.driver.get_host_cpu_stats()
        self.assertEqual({'kernel', 'idle', 'user', 'iowait', 'frequency'},
                         set(stats))
        with open('/proc/uptime') as f:
            uptime_s = float(f.read().split()[0])
        ns = 1e9
        busy_and_idle = stats['kernel'] + stats['user'] + stats['idle'] + \
            stats['iowait']
        # At most every CPU's time since boot.
        self.assertLessEqual(busy_and_idle,
                             (uptime_s + 1) * ns * os.cpu_count())
        self.assertGreater(busy_and_idle, 0)
        self.assertIn(' up ', self.driver.get_host_uptime())
        self.assertIn('load average:', self.driver.get_host_uptime())
