"""Flavor limits hold inside real containers (issue: resources and limits).

Each test starts a container with a small flavor, makes a process inside
it misbehave, and checks that the limit stopped it there, while the
container (and the host) carry on.
"""

import os
import time

from novalxcdriver import conf
from novalxcdriver import rootfs as rootfs_mod
from tests.functional import base
from tests.functional import rootfs_images
from tests import host_cleanup

CONF = conf.CONF
CGROUP = '/sys/fs/cgroup'


class LimitsTest(base.FunctionalTestCase):

    def _cgroup(self, name, controller, key):
        path = os.path.join(host_cleanup.payload_cgroup(controller, name),
                            key)
        with open(path) as f:
            return f.read().strip()

    def _busybox_container(self, **flavor):
        instance = self.make_instance(**flavor)
        self.spawn(instance, self.busybox_image())
        return instance

    def test_every_container_under_the_cgroup_parent(self):
        # [lxc] cgroup_parent: the instances weigh as one group against
        # the host's processes, whatever their number.
        self.assertEqual('novalxc', CONF.lxc.cgroup_parent)
        for instance in (self._busybox_container(),
                         self._busybox_container()):
            paths = {}
            with open('/proc/%d/cgroup' % self.lxc_pid(instance.name)) as f:
                for line in f:
                    _n, controllers, path = line.strip().split(':', 2)
                    for c in controllers.split(','):
                        paths[c] = path
            for controller in ('cpu', 'memory', 'pids'):
                self.assertEqual('/novalxc/lxc.payload.' + instance.name,
                                 paths[controller], controller)
                self.assertFalse(os.path.exists(os.path.join(
                    CGROUP, controller, 'lxc.payload.' + instance.name)))
        # The kernel's default weight: the operator's to change.
        with open(os.path.join(CGROUP, 'cpu', 'novalxc', 'cpu.shares')) as f:
            self.assertEqual('1024', f.read().strip())

    def test_memory_hog_is_killed_inside_only(self):
        instance = self._busybox_container(memory_mb=128)
        self.assertEqual(str(128 << 20), self._cgroup(
            instance.name, 'memory', 'memory.limit_in_bytes'))
        init_pid = self.lxc_pid(instance.name)
        # dd touches its whole 300 MiB buffer: far past the 128 MiB limit.
        hog = self.attach(instance.name, 'dd', 'if=/dev/zero',
                          'of=/dev/null', 'bs=300M', 'count=1', check=False)
        self.assertEqual(137, hog.returncode)  # SIGKILL from the OOM killer
        oom = dict(line.split() for line in self._cgroup(
            instance.name, 'memory', 'memory.oom_control').splitlines())
        self.assertGreater(int(oom['oom_kill']), 0)
        # Only the hog died: init and the container live on.
        self.assertEqual('RUNNING', self.lxc_state(instance.name))
        self.assertEqual(init_pid, self.lxc_pid(instance.name))
        self.assertEqual('ok', self.attach(instance.name, 'echo',
                                           'ok').stdout.strip())

    def test_fork_bomb_stops_at_pids_max(self):
        instance = self.make_instance()
        instance.flavor.extra_specs = {'lxc:pids_max': '64'}
        self.spawn(instance, self.busybox_image())
        self.assertEqual('64', self._cgroup(instance.name, 'pids',
                                            'pids.max'))
        bomb = self.attach(
            instance.name, 'sh', '-c',
            # Children keep no pipe of ours open, or run() would wait.
            'i=0; while [ $i -lt 300 ]; do sleep 60 >/dev/null 2>&1 & '
            'i=$((i+1)); done; echo started', check=False)
        self.assertIn("can't fork", bomb.stderr)
        self.assertLessEqual(int(self._cgroup(instance.name, 'pids',
                                              'pids.current')), 64)
        self.assertGreater(int(self._cgroup(instance.name, 'pids',
                                            'pids.events').split()[-1]), 0)
        # The host still forks; the driver still controls the container.
        self.driver.power_off(instance)
        self.assertEqual('STOPPED', self.lxc_state(instance.name))

    def test_root_disk_full_at_root_gb_and_ephemeral_on_mnt(self):
        instance = self._busybox_container(root_gb=1, ephemeral_gb=1)
        fill = self.attach(instance.name, 'dd', 'if=/dev/zero',
                           'of=/root/fill', 'bs=1M', check=False)
        self.assertNotEqual(0, fill.returncode)
        self.assertIn('No space left on device', fill.stderr)
        written = int(self.attach(instance.name, 'stat', '-c', '%s',
                                  '/root/fill').stdout)
        # Filesystem metadata takes a little of the 1 GiB.
        self.assertGreater(written, 900 << 20)
        self.assertLessEqual(written, 1 << 30)
        # The writes went to the sparse disk image, which cannot hold more
        # than the flavor's 1 GiB of the host's space. (The host's free
        # space is no measure: the other test worker writes too.)
        image = rootfs_mod.Rootfs(
            CONF.lxc.state_path,
            self.driver._container(instance).cid()).root_disk.image_path
        allocated = os.stat(image).st_blocks * 512
        self.assertGreaterEqual(allocated, written)
        self.assertLessEqual(allocated, 1 << 30)
        # A neighbour's disk of its own is untouched and writable.
        df = self.attach(instance.name, 'df', '-k', '/mnt').stdout
        size_kib = int(df.splitlines()[-1].split()[1])
        self.assertGreater(size_kib, 900 * 1024)
        self.assertLessEqual(size_kib, 1024 * 1024)
        self.attach(instance.name, 'touch', '/mnt/ephemeral-ok')

    def _timed(self, name, *argv):
        start = time.monotonic()
        self.attach(name, *argv)
        return time.monotonic() - start

    def test_disk_io_throttles_hold(self):
        mib_s = 4
        throttled = self.make_instance(root_gb=1)
        throttled.flavor.extra_specs = {
            'quota:disk_read_bytes_sec': str(mib_s << 20),
            'quota:disk_write_bytes_sec': str(mib_s << 20)}
        self.spawn(throttled, self.busybox_image())
        free = self._busybox_container(root_gb=1)
        # The loop device's number: on btrfs st_dev is an anonymous one.
        device = rootfs_mod.Rootfs(
            CONF.lxc.state_path,
            self.driver._container(throttled).cid()).root_disk.device()
        self.assertTrue(device.startswith('7:'), device)
        rule = '%s %d' % (device, mib_s << 20)
        self.assertIn(rule, self._cgroup(
            throttled.name, 'blkio', 'blkio.throttle.read_bps_device'))
        self.assertIn(rule, self._cgroup(
            throttled.name, 'blkio', 'blkio.throttle.write_bps_device'))
        root_rules = os.path.join(CGROUP, 'blkio',
                                  'blkio.throttle.write_bps_device')
        with open(root_rules) as f:
            self.assertIn(rule, f.read().splitlines())

        size_mib = 3 * mib_s   # 3 s at the throttle
        floor = 2.0            # the throttle allows short bursts
        figures = {}
        for label, inst in (('throttled', throttled), ('free', free)):
            # Buffered: the kernel's flusher writes it back, from the
            # host's root cgroup on cgroup v1.
            writeback = self._timed(
                inst.name, 'sh', '-c',
                'dd if=/dev/zero of=/root/wb bs=1M count=%d 2>/dev/null '
                '&& sync' % size_mib)
            # fsync: written back by the container's own task.
            fsync = self._timed(
                inst.name, 'dd', 'if=/dev/zero', 'of=/root/fs', 'bs=1M',
                'count=%d' % size_mib, 'conv=fsync')
            with open('/proc/sys/vm/drop_caches', 'w') as f:
                f.write('3')
            read = self._timed(inst.name, 'dd', 'if=/root/fs',
                               'of=/dev/null', 'bs=1M')
            figures[label] = (writeback, fsync, read)
            print('%s container (%s), %d MiB: write+sync %.1f s, '
                  'write with fsync %.1f s, read %.1f s'
                  % ((label, '%d MiB/s' % mib_s if inst is throttled
                      else 'no throttle', size_mib) + figures[label]))
        for seconds in figures['throttled']:
            self.assertGreater(seconds, floor)

        self.driver.destroy(self.ctxt, throttled, [])
        with open(root_rules) as f:
            self.assertNotIn(device, f.read())

    def test_cpu_time_bounded_by_vcpus(self):
        instance = self._busybox_container(vcpus=1)
        self.assertEqual('1', self.attach(instance.name,
                                          'nproc').stdout.strip())
        # Two busy loops want two CPUs; the flavor sells one.
        self.attach(instance.name, 'sh', '-c',
                    'yes >/dev/null 2>&1 & yes >/dev/null 2>&1 & sleep 0.2')
        start_ns = int(self._cgroup(instance.name, 'cpuacct',
                                    'cpuacct.usage'))
        start = time.monotonic()
        time.sleep(3)
        used_ns = int(self._cgroup(instance.name, 'cpuacct',
                                   'cpuacct.usage')) - start_ns
        wall_ns = (time.monotonic() - start) * 1e9
        print('CPU used by a 1-vCPU container running 2 busy loops: '
              '%.2f CPUs' % (used_ns / wall_ns))
        self.assertLess(used_ns / wall_ns, 1.1)
        self.assertGreater(used_ns / wall_ns, 0.3)


class DebianViewTest(base.FunctionalTestCase):
    """lxcfs: free, nproc, uptime and /proc inside show the flavor."""

    def test_free_nproc_uptime_show_the_flavor(self):
        instance = self.make_instance(memory_mb=512, vcpus=1)
        self.spawn(instance, self.add_image(rootfs_images.debian_tarball()))
        self.wait_for(lambda: self.attach(instance.name, 'true',
                                          check=False).returncode == 0)
        free = self.attach(instance.name, 'free', '-m').stdout
        total_mib = int(free.splitlines()[1].split()[1])
        self.assertEqual(512, total_mib)
        self.assertEqual('1', self.attach(instance.name,
                                          'nproc').stdout.strip())
        cpuinfo = self.attach(instance.name, 'cat', '/proc/cpuinfo').stdout
        self.assertEqual(1, cpuinfo.count('processor\t:'))
        stat = self.attach(instance.name, 'cat', '/proc/stat').stdout
        self.assertEqual(1, len([line for line in stat.splitlines()
                                 if line.startswith('cpu') and
                                 not line.startswith('cpu ')]))
        with open('/proc/uptime') as f:
            host_uptime = float(f.read().split()[0])
        uptime = float(self.attach(instance.name, 'cat',
                                   '/proc/uptime').stdout.split()[0])
        self.assertLess(uptime, 120)
        self.assertLess(uptime, host_uptime)
