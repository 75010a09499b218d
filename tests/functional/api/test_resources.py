"""Placement sees what the host has and what the servers' flavors use.

Through Nova's in-process API with LXCDriver on real containers: the
compute node's provider inventory matches the host (VCPU from
cpu_shared_set, PCPU from cpu_dedicated_set, MEMORY_MB, DISK_GB), usages
equal the sum of the servers' flavors, and a hw:cpu_policy=dedicated
server runs on the host CPU Nova pinned it to.
"""

import os
import subprocess

from novalxcdriver import conf
from novalxcdriver import host
from tests.functional.api import base as api_base
from tests import host_cleanup

CONF = conf.CONF


class PlacementTest(api_base.LXCAPITestCase):

    def _setup_compute_service(self):
        # CPU 0 for shared instances, CPU 1 for dedicated ones.
        self.flags(cpu_shared_set='0', cpu_dedicated_set='1',
                   group='compute')
        return super()._setup_compute_service()

    def _cpuset(self, name):
        path = os.path.join(host_cleanup.payload_cgroup('cpuset', name),
                            'cpuset.cpus')
        with open(path) as f:
            return f.read().strip()

    def test_inventory_usages_and_pinning(self):
        rp = self._get_provider_uuid_by_host(self.compute.host)
        inventory = self._get_provider_inventory(rp)
        memory_mb, _used = host.memory_mb()
        disk_gb = host.disk_gb(CONF.lxc.state_path)[0]
        self.assertEqual(1, inventory['VCPU']['total'])
        self.assertEqual(1, inventory['PCPU']['total'])
        self.assertEqual(memory_mb, inventory['MEMORY_MB']['total'])
        self.assertEqual(disk_gb, inventory['DISK_GB']['total'])

        shared = self._create_flavor(memory_mb=128, vcpu=1, disk=1,
                                     ephemeral=0)
        dedicated = self._create_flavor(
            memory_mb=192, vcpu=1, disk=2, ephemeral=1,
            extra_spec={'hw:cpu_policy': 'dedicated'})
        image_id = self._busybox_image()
        servers = []
        for flavor in (shared, dedicated):
            server = self._build_server(image_uuid=image_id, flavor_id=flavor,
                                        networks='none')
            server = self.api.post_server({'server': server})
            servers.append(self._wait_for_state_change(server, 'ACTIVE'))

        self.assertEqual({'VCPU': 1, 'PCPU': 1, 'MEMORY_MB': 128 + 192,
                          'DISK_GB': 1 + 2 + 1},
                         self._get_provider_usages(rp))
        names = [s['OS-EXT-SRV-ATTR:instance_name'] for s in servers]
        self.assertEqual('0', self._cpuset(names[0]))
        self.assertEqual('1', self._cpuset(names[1]))
        # The flavor's ephemeral GiB is a disk of its own on /mnt.
        df = subprocess.run(
            ['lxc-attach', '-n', names[1], '-P', CONF.lxc.lxc_path, '--',
             'df', '-k', '/mnt'], capture_output=True, text=True,
            check=True).stdout
        self.assertGreater(int(df.splitlines()[-1].split()[1]), 900 * 1024)

        for server in servers:
            self._delete_server(server)
        self.assertEqual({'VCPU': 0, 'PCPU': 0, 'MEMORY_MB': 0,
                          'DISK_GB': 0}, self._get_provider_usages(rp))
        for name in names:
            self.assertFalse(os.path.exists(
                os.path.join(CONF.lxc.lxc_path, name)))
