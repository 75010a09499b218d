"""A noisy container leaves its neighbour responsive.

One container (memory 128 MiB, pids_max 128, root_gb 1) runs a memory hog
that the OOM killer keeps killing, a disk filler that fills its root disk
again and again, and a fork bomb whose every process forks for ever (all
three from hh.c). Its neighbour's latency for a small command is measured
before and during the noise inside it (hh lat: fork and exec of /bin/true,
many times), and bounded. Host-side figures are reported too: lxc-attach
echo into the neighbour, and the driver spawning one more instance.
"""

import os
import re
import statistics
import subprocess
import time

from novalxcdriver import disk
from tests.hardening import base
from tests.hardening import images
from tests.hardening import summary
from tests import host_cleanup

# Generous: the host also runs other work; the figure is what matters.
MAX_RATIO = float(os.environ.get('NOVALXC_HARDENING_MAX_LATENCY_RATIO',
                                 '5'))


class NoisyNeighbourTest(base.HardeningTestCase):

    def _cgroup(self, name, controller, key):
        with open(os.path.join(host_cleanup.payload_cgroup(controller, name),
                               key)) as f:
            return f.read()

    def _inside_latency(self, name, rounds=5, n=100):
        """Median of the median fork+exec time (µs) over rounds."""
        medians = []
        for _ in range(rounds):
            out = self.attach(name, '/hh', 'lat', str(n), timeout=300).stdout
            medians.append(int(re.search(r'median=(\d+)', out).group(1)))
        return statistics.median(medians)

    def _attach_latency(self, name, n=10):
        """Median wall time (ms) of lxc-attach -- echo ok from the host."""
        times = []
        for _ in range(n):
            start = time.monotonic()
            out = self.attach(name, 'echo', 'ok', timeout=300)
            times.append((time.monotonic() - start) * 1000)
            self.assertEqual('ok', out.stdout.strip())
        return statistics.median(times)

    def _disk_writes(self, instance):
        """Bytes written to the instance's root disk (its loop device)."""
        cid = self.driver._ids.find(instance.uuid)
        image = os.path.realpath(os.path.join(
            self.state_path, 'rootfs', str(cid), 'root.img'))
        total = 0
        for device in disk.loop_devices_of(image):
            with open('/sys/block/%s/stat' % os.path.basename(device)) as f:
                total += int(f.read().split()[6]) * 512
        return total

    def _spawn_time(self, image_id):
        """Seconds the driver takes to spawn one more container."""
        instance = self.make_instance(root_gb=1)
        start = time.monotonic()
        self.spawn(instance, image_id)
        seconds = time.monotonic() - start
        self.driver.destroy(self.ctxt, instance, [])
        return seconds

    def test_noisy_neighbour(self):
        image_id = self.add_image(images.helper_image(
            os.path.join(self.root, 'noise.tar.gz'), base.CACHE))
        noisy = self.make_instance(memory_mb=128, root_gb=1)
        noisy.flavor.extra_specs = {'lxc:pids_max': '128'}
        quiet = self.make_instance(memory_mb=128, root_gb=1)
        self.spawn(noisy, image_id)
        self.spawn(quiet, image_id)
        cpus = {i.name: self._cgroup(i.name, 'cpuset', 'cpuset.cpus').strip()
                for i in (noisy, quiet)}
        self.assertEqual('128', self._cgroup(noisy.name, 'pids',
                                             'pids.max').strip())

        before = self._inside_latency(quiet.name)
        attach_before = self._attach_latency(quiet.name)
        spawn_before = self._spawn_time(image_id)

        # Background jobs outlive the sh that lxc-attach waits for.
        for job in ('/hh fill /root/fill', '/hh hog 300', '/hh bomb'):
            subprocess.run(
                ['lxc-attach', '-n', noisy.name, '-P', self.lxc_path, '--',
                 'sh', '-c', '(%s) >/dev/null 2>&1 &' % job],
                timeout=60, check=True)
        time.sleep(5)
        during = self._inside_latency(quiet.name)
        attach_during = self._attach_latency(quiet.name)
        spawn_during = self._spawn_time(image_id)
        pids = int(self._cgroup(noisy.name, 'pids', 'pids.current'))
        oom = dict(line.split() for line in self._cgroup(
            noisy.name, 'memory', 'memory.oom_control').splitlines())
        forks_refused = int(self._cgroup(noisy.name, 'pids',
                                         'pids.events').split()[-1])
        written_mib = self._disk_writes(noisy) >> 20

        # The noisy one is still the driver's to stop; the quiet one runs.
        start = time.monotonic()
        self.driver.destroy(self.ctxt, noisy, [])
        stop_seconds = time.monotonic() - start
        self.assertEqual('RUNNING', self.lxc_state(quiet.name))
        after = self._inside_latency(quiet.name, rounds=3)

        ratio = during / before
        attach_ratio = attach_during / attach_before
        summary.record(
            'neighbour',
            'neighbour fork+exec of true: median %d us before, %d us during '
            'the noise (ratio %.2f), %d us after; host side: lxc-attach echo '
            '%.0f ms before, %.0f ms during (ratio %.2f, not bounded), '
            'spawning another instance %.2fs before, %.2fs during; noisy: '
            '%d/128 tasks, %s forks refused, %s OOM kills, %d MiB written to '
            'its 1 GiB root disk; deleted in %.1fs; cpusets noisy %s, '
            'neighbour %s' % (
                before, during, ratio, after, attach_before, attach_during,
                attach_ratio, spawn_before, spawn_during, pids,
                forks_refused, oom.get('oom_kill', '?'), written_mib,
                stop_seconds,
                cpus[noisy.name], cpus[quiet.name]),
            ratio=ratio, attach_ratio=attach_ratio, before_us=before,
            during_us=during, spawn_before=spawn_before,
            spawn_during=spawn_during)
        self.assertGreater(forks_refused, 0)
        self.assertGreater(int(oom.get('oom_kill', 0)), 0)
        self.assertLessEqual(pids, 128)
        self.assertGreater(written_mib, 100)
        # The neighbour's own work. Host-side operations that move tasks
        # between cgroups (lxc-attach, lxc-start) wait on the kernel's
        # cgroup_threadgroup_rwsem, which every fork takes, even a fork
        # the pids cgroup refuses: a fork bomb held at pids.max slows them
        # down several times over (reported above, not bounded).
        self.assertLess(ratio, MAX_RATIO)
