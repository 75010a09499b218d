"""The config drive inside a real container (as root)."""

import json
import os
import subprocess

import fixtures
from nova import objects

from tests.functional import base
from tests.functional import test_networking

KEY = ('ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEi7Nq0bJ1s9YkCPo9mNr6pHzlg7'
       'bFq5p0uY0bqjvY1d novalxc-test')


class ConfigDriveTest(base.FunctionalTestCase):

    def setUp(self):
        super().setUp()
        self.image_id = self.busybox_image()
        # InstanceMetadata asks Neutron for the security groups.
        self.useFixture(fixtures.MonkeyPatch(
            'nova.network.security_group_api.get_instance_security_groups',
            lambda context, instance: []))
        # ... and the block device mappings of the database.
        self.useFixture(fixtures.MonkeyPatch(
            'nova.objects.BlockDeviceMappingList.get_by_instance_uuid',
            lambda cls, context, uuid: objects.BlockDeviceMappingList(
                objects=[])))

    def make_instance(self, **flavor):
        instance = super().make_instance(**flavor)
        # What nova-compute's instance carries, without a database.
        instance.config_drive = 'True'
        instance.system_metadata = {}
        instance.metadata = {'role': 'test'}
        instance.device_metadata = None
        instance.user_data = 'IyEvYmluL3NoCmVjaG8gaGkK'  # '#!/bin/sh...'
        instance.key_name = 'k1'
        instance.key_data = KEY
        instance.keypairs = objects.KeyPairList(objects=[objects.KeyPair(
            name='k1', public_key=KEY, type='ssh')])
        instance.ec2_ids = objects.EC2Ids(instance_id='i-00000001',
                                          ami_id='ami-00000001',
                                          kernel_id=None, ramdisk_id=None)
        return instance

    def test_read_only_metadata_for_cloud_init(self):
        bridge = 'nlxtd%d' % os.getpid()
        subprocess.run(['ip', 'link', 'add', bridge, 'type', 'bridge'],
                       check=True)
        self.addCleanup(subprocess.run, ['ip', 'link', 'delete', bridge])
        vif = test_networking.make_vif('bridge', bridge)
        instance = self.make_instance()
        self.driver.spawn(self.ctxt, instance,
                          self.image_meta(self.image_id),
                          [('/etc/motd', b'welcome')], 'sesame', {},
                          network_info=[vif])
        md = json.loads(self.attach(
            instance.name, 'cat',
            '/config-drive/openstack/latest/meta_data.json').stdout)
        self.assertEqual(instance.uuid, md['uuid'])
        self.assertEqual(instance.hostname, md['hostname'].split('.')[0])
        self.assertEqual({'k1': KEY}, md['public_keys'])
        self.assertEqual('sesame', md['admin_pass'])
        self.assertEqual(
            [{'path': '/etc/motd', 'content_path': '/content/0000'}],
            md['files'])
        self.assertEqual('#!/bin/sh\necho hi\n', self.attach(
            instance.name, 'cat',
            '/config-drive/openstack/latest/user_data').stdout)
        self.assertEqual('welcome', self.attach(
            instance.name, 'cat',
            '/config-drive/openstack/content/0000').stdout)
        network_data = json.loads(self.attach(
            instance.name, 'cat',
            '/config-drive/openstack/latest/network_data.json').stdout)
        self.assertEqual([vif['address']], [
            link['ethernet_mac_address'] for link in network_data['links']])
        # Read-only, and the container's root's alone.
        touch = self.attach(instance.name, 'touch', '/config-drive/x',
                            check=False)
        self.assertNotEqual(0, touch.returncode)
        self.assertIn('Read-only', touch.stderr)
        self.assertEqual('0 0 500', self.attach(
            instance.name, 'stat', '-c', '%u %g %a',
            '/config-drive').stdout.strip())
        # It stays across a restart; it goes with the container.
        self.driver.reboot(self.ctxt, instance, [vif], 'HARD')
        self.assertEqual(0, self.attach(
            instance.name, 'stat',
            '/config-drive/openstack/latest/meta_data.json',
            check=False).returncode)
        cid = self.driver._ids.find(instance.uuid)
        self.driver.destroy(self.ctxt, instance, [vif])
        self.assertEqual([], self.artifacts_of(instance, cid))

    def test_none_unless_asked(self):
        instance = super().make_instance()
        self.spawn(instance, self.image_id)
        self.assertNotEqual(0, self.attach(
            instance.name, 'stat', '/config-drive', check=False).returncode)
