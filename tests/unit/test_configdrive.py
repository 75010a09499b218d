"""Tests for novalxcdriver.configdrive: the config drive's files."""

import os
import stat
from unittest import mock

import fixtures
from nova import context as nova_context
from nova import objects
from nova.tests.unit import fake_instance
from oslo_config import fixture as config_fixture
from oslotest import base

from novalxcdriver import conf
from novalxcdriver import configdrive
from novalxcdriver import ids


class RequiredByTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        objects.register_all()
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        self.context = nova_context.get_admin_context()

    def check(self, expected, config_drive='', launched_at=None,
              policy=None, force=False):
        self.cfg.config(force_config_drive=force)
        instance = fake_instance.fake_instance_obj(
            self.context, config_drive=config_drive, launched_at=launched_at)
        props = {'img_config_drive': policy} if policy else {}
        meta = objects.ImageMeta.from_dict({'id': 'i', 'properties': props})
        self.assertIs(expected, configdrive.required_by(instance, meta))

    def test_nova_rule(self):
        self.check(False)
        self.check(True, config_drive='True')
        self.check(True, policy='mandatory')
        self.check(False, policy='optional')
        self.check(True, force=True)
        # Forced only for servers being built, not relaunched ones.
        self.check(False, force=True, launched_at='2026-01-01T00:00:00Z')


class WriteTreeTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.path = os.path.join(self.tmp, 'config-drive')
        self.chowns = []
        self.useFixture(fixtures.MonkeyPatch(
            'os.chown', lambda p, u, g: self.chowns.append((p, u, g))))
        self.useFixture(fixtures.MonkeyPatch(
            'os.fchown', lambda fd, u, g: self.chowns.append((fd, u, g))))

    def test_files_for_root_only(self):
        configdrive.write_tree(self.path, [
            ('openstack/latest/meta_data.json', '{"uuid": "u"}'),
            ('openstack/latest/user_data', b'\x00#!/bin/sh'),
            ('ec2/latest/meta-data.json', '{}'),
        ], 100000, 100000)
        with open(os.path.join(self.path, 'openstack/latest/user_data'),
                  'rb') as f:
            self.assertEqual(b'\x00#!/bin/sh', f.read())
        for dirpath, dirs, files in os.walk(self.path):
            self.assertEqual(0o500, stat.S_IMODE(os.stat(dirpath).st_mode))
            for name in files:
                self.assertEqual(0o400, stat.S_IMODE(
                    os.stat(os.path.join(dirpath, name)).st_mode))
        # Every directory and file goes to the container's root.
        self.assertEqual(8, len(self.chowns))
        self.assertEqual({(100000, 100000)},
                         {(u, g) for _p, u, g in self.chowns})

    def test_escaping_paths_refused(self):
        for rel in ('../x', '/etc/passwd', 'a/../../x', 'a//b', 'a/./b'):
            path = os.path.join(self.tmp, 'cd-%d' % len(os.listdir(self.tmp)))
            self.assertRaises(ValueError, configdrive.write_tree, path,
                              [(rel, 'x')], 1, 1)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, 'x')))

    def test_existing_directory_refused(self):
        os.mkdir(self.path)
        self.assertRaises(FileExistsError, configdrive.write_tree,
                          self.path, [], 1, 1)


class WriteTest(base.BaseTestCase):

    @mock.patch.object(configdrive, 'write_tree')
    @mock.patch.object(configdrive.instance_metadata, 'InstanceMetadata')
    def test_nova_metadata_with_admin_pass(self, md, write_tree):
        idmap = ids.Idmap(100000, 200000, 65536)
        configdrive.write('/s/rootfs/3/config-drive', 'inst', [('/a', 'b')],
                          'secret', ['vif'], idmap)
        md.assert_called_once_with('inst', content=[('/a', 'b')],
                                   extra_md={'admin_pass': 'secret'},
                                   network_info=['vif'])
        write_tree.assert_called_once_with(
            '/s/rootfs/3/config-drive',
            md.return_value.metadata_for_config_drive.return_value,
            100000, 200000)
        configdrive.write('/p', 'inst', [], None, [], idmap)
        self.assertEqual({}, md.call_args.kwargs['extra_md'])

    def test_path_for(self):
        self.assertEqual('/s/rootfs/3/config-drive',
                         configdrive.path_for('/s/rootfs/3'))
