"""Servers through Nova's REST API, with LXCDriver as the compute driver.

Nova's in-process harness (integrated_helpers._IntegratedTestBase) runs the
API, conductor, scheduler, placement and a nova-compute that loads
``compute_driver = novalxc.LXCDriver`` through the nova.virt.novalxc shim.
Glance is Nova's fixture serving a real busybox rootfs tarball. Each step is
checked on the real container, not only in the API's answer.
"""

import os
import subprocess
import tarfile
import time
from unittest import mock

from nova.api.validation.extra_specs import validators
from nova.tests.functional.api import client
from nova import utils

from novalxcdriver import conf
from novalxcdriver import extra_specs
from tests.functional.api import base as api_base
from tests.functional import base

CONF = conf.CONF


class LXCServersTest(api_base.LXCAPITestCase):

    def test_server_lifecycle_on_real_container(self):
        image_id = self._busybox_image()
        server = self._wait_for_state_change(self._boot(image_id), 'ACTIVE')
        name = server['OS-EXT-SRV-ATTR:instance_name']
        self.assertEqual('RUNNING', self._state(name))
        driver = self.compute.manager.driver
        cid = driver._ids.find(server['id'])
        self.assertIsNotNone(cid)

        console = self.api.post_server_action(
            server['id'], {'os-getConsoleOutput': {'length': 50}})
        self.assertIn('busybox booted', console['output'])

        pid = self._pid(name)
        self._action(server, {'reboot': {'type': 'SOFT'}}, 'ACTIVE')
        self.assertEqual('RUNNING', self._state(name))
        self.assertNotEqual(pid, self._pid(name))
        pid = self._pid(name)
        self._action(server, {'reboot': {'type': 'HARD'}}, 'ACTIVE')
        self.assertNotEqual(pid, self._pid(name))

        server = self._action(server, {'os-stop': None}, 'SHUTOFF')
        self.assertEqual('STOPPED', self._state(name))
        self.assertEqual(4, server['OS-EXT-STS:power_state'])
        self._action(server, {'os-start': None}, 'ACTIVE')
        self.assertEqual('RUNNING', self._state(name))

        server = self._action(server, {'pause': None}, 'PAUSED')
        self.assertEqual('FROZEN', self._state(name))
        self._action(server, {'unpause': None}, 'ACTIVE')
        self.assertEqual('RUNNING', self._state(name))

        server = self._action(server, {'suspend': None}, 'SUSPENDED')
        self.assertEqual('FROZEN', self._state(name))
        self.assertEqual(7, server['OS-EXT-STS:power_state'])
        self._action(server, {'resume': None}, 'ACTIVE')
        self.assertEqual('RUNNING', self._state(name))

        self._delete_server(server)
        self.assertEqual('', self._state(name))
        self.assertEqual([], self._leftovers(name, cid))

    def test_poweroff_inside_container_stops_the_server(self):
        server = self._wait_for_state_change(
            self._boot(self._busybox_image()), 'ACTIVE')
        name = server['OS-EXT-SRV-ATTR:instance_name']
        # Give the watcher a baseline scan with the container running.
        time.sleep(1)
        # poweroff may be killed by the very halt it starts: its exit
        # status says nothing; the server's state does.
        subprocess.run(['lxc-attach', '-n', name, '-P', CONF.lxc.lxc_path,
                        '--', 'poweroff'])
        server = self._wait_for_state_change(server, 'SHUTOFF')
        self.assertEqual('STOPPED', self._state(name))

    def test_hostile_image_fails_the_boot_cleanly(self):
        tmp = self.useFixture(base.fixtures.TempDir()).path
        path = os.path.join(tmp, 'evil.tar')
        with tarfile.open(path, 'w') as tar:
            tar.addfile(tarfile.TarInfo('../../../etc/cron.d/evil'))
        server = self._wait_for_state_change(
            self._boot(self._rootfs_image(path)), 'ERROR')
        self.assertIn('../../../etc/cron.d/evil',
                      server['fault']['message'])
        name = server['OS-EXT-SRV-ATTR:instance_name']
        self.assertFalse(os.path.exists(
            os.path.join(CONF.lxc.lxc_path, name)))
        self.assertIsNone(
            self.compute.manager.driver._ids.find(server['id']))

    def test_server_diagnostics(self):
        server = self._wait_for_state_change(
            self._boot(self._busybox_image()), 'ACTIVE')
        name = server['OS-EXT-SRV-ATTR:instance_name']
        flavor = server['flavor']  # Its figures, from microversion 2.47.
        self._lxc('lxc-attach', name, '--', 'dd', 'if=/dev/zero',
                  'of=/root/d', 'bs=64k', 'count=16', 'oflag=direct')

        diags = self.api.get_server_diagnostics(server['id'])
        self.assertEqual('running', diags['state'])
        self.assertEqual(('libvirt', 'lxc', 'linux'),
                         (diags['driver'], diags['hypervisor'],
                          diags['hypervisor_os']))
        self.assertEqual(flavor['ram'], diags['memory_details']['maximum'])
        # The container's cgroup: named after it, but with a suffix when
        # another test process runs a container of the same name.
        with open('/proc/%d/cgroup' % self._pid(name)) as f:
            memcg = [line.split(':')[2].strip() for line in f
                     if line.split(':')[1] == 'memory'][0]
        with open('/sys/fs/cgroup/memory%s/memory.limit_in_bytes' %
                  memcg) as f:
            self.assertEqual(flavor['ram'] << 20, int(f.read()))
        self.assertGreater(diags['memory_details']['used'], 0)
        self.assertEqual(flavor['vcpus'], diags['num_cpus'])
        self.assertEqual(list(range(flavor['vcpus'])),
                         [c['id'] for c in diags['cpu_details']])
        self.assertGreater(sum(c['time'] for c in diags['cpu_details']), 0)
        self.assertEqual([], diags['nic_details'])  # --nic none
        # The root disk, when the flavor gives one.
        self.assertEqual(1 if flavor['disk'] else 0, diags['num_disks'])
        if flavor['disk']:
            self.assertGreaterEqual(
                diags['disk_details'][0]['write_bytes'], 1 << 20)

        # Before 2.48: the driver's dict, libvirt's keys.
        with utils.temporary_mutation(self.api, microversion='2.47'):
            old = self.api.get_server_diagnostics(server['id'])
        self.assertEqual(flavor['ram'] * 1024, old['memory'])
        self.assertIn('cpu0_time', old)

        # Nova asks only running servers.
        server = self._action(server, {'os-stop': None}, 'SHUTOFF')
        ex = self.assertRaises(client.OpenStackApiException,
                               self.api.get_server_diagnostics, server['id'])
        self.assertEqual(409, ex.response.status_code)

    def test_bad_lxc_extra_spec_refused_when_set(self):
        # An installed novalxcdriver registers its validators through the
        # nova.api.extra_spec_validators entry point; from a source tree,
        # register them as Nova's loader would.
        registered = {v.name: v for v in extra_specs.register()}
        self.useFixture(base.fixtures.MockPatchObject(
            validators, 'NAMESPACES', validators.NAMESPACES | {'lxc'}))
        patcher = mock.patch.dict(validators.VALIDATORS, registered)
        patcher.start()
        self.addCleanup(patcher.stop)

        flavor_id = self._create_flavor(memory_mb=128, vcpu=1, disk=1,
                                        ephemeral=0)
        for spec in ({'lxc:pids_max': '8'}, {'lxc:pids_max': 'many'},
                     {'lxc:pid_max': '64'}):
            ex = self.assertRaises(
                client.OpenStackApiException, self.api.post_extra_spec,
                flavor_id, {'extra_specs': spec})
            self.assertEqual(400, ex.response.status_code)
        self.api.post_extra_spec(flavor_id,
                                 {'extra_specs': {'lxc:pids_max': '64'}})
        self.assertEqual({'lxc:pids_max': '64'},
                         self.api.get_extra_specs(flavor_id))
