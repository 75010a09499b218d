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
from novalxcdriver import exception
from novalxcdriver import ids
from tests.unit import base as unit_base


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
    """write_tree through ownership.write_config_drive, in this process.

    (Its checks: test_privsep_ownership; through the daemon:
    tests/functional/test_privsep_ownership.py.)
    """

    IDMAP = ids.Idmap(100000, 200000, 65536)

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.path = os.path.join(self.tmp, 'config-drive')
        self.own = self.useFixture(unit_base.OwnershipInProcess(self.tmp))

    def owners(self):
        return [c.args[1:3] for c in (self.own.chown.call_args_list +
                                      self.own.fchown.call_args_list)]

    def test_files_for_root_only(self):
        configdrive.write_tree(self.path, [
            ('openstack/latest/meta_data.json', '{"uuid": "u"}'),
            ('openstack/latest/user_data', b'\x00#!/bin/sh'),
            ('ec2/latest/meta-data.json', '{}'),
        ], self.IDMAP)
        # str data goes as UTF-8 bytes, the idmap as its fields.
        self.own.write_config_drive.assert_called_once_with(self.path, [
            ['openstack/latest/meta_data.json', b'{"uuid": "u"}'],
            ['openstack/latest/user_data', b'\x00#!/bin/sh'],
            ['ec2/latest/meta-data.json', b'{}'],
        ], [100000, 200000, 65536])
        with open(os.path.join(self.path, 'openstack/latest/user_data'),
                  'rb') as f:
            self.assertEqual(b'\x00#!/bin/sh', f.read())
        for dirpath, dirs, files in os.walk(self.path):
            self.assertEqual(0o500, stat.S_IMODE(os.stat(dirpath).st_mode))
            for name in files:
                self.assertEqual(0o400, stat.S_IMODE(
                    os.stat(os.path.join(dirpath, name)).st_mode))
        # Every directory and file goes to the container's root.
        self.assertEqual(8, len(self.owners()))
        self.assertEqual({(100000, 200000)}, set(self.owners()))

    def test_escaping_paths_refused(self):
        for rel in ('../x', '/etc/passwd', 'a/../../x', 'a//b', 'a/./b'):
            path = os.path.join(self.tmp, 'cd-%d' % len(os.listdir(self.tmp)))
            self.assertRaises(exception.PrivilegedCallRefused,
                              configdrive.write_tree, path,
                              [('ok', 'x'), (rel, 'x')], self.IDMAP)
            # Refused before anything is made.
            self.assertFalse(os.path.lexists(path))
        self.assertFalse(os.path.exists(os.path.join(self.tmp, 'x')))
        self.assertEqual([], self.owners())

    def test_existing_directory_refused(self):
        os.mkdir(self.path)
        self.assertRaises(FileExistsError, configdrive.write_tree,
                          self.path, [], self.IDMAP)


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
            md.return_value.metadata_for_config_drive.return_value, idmap)
        configdrive.write('/p', 'inst', [], None, [], idmap)
        self.assertEqual({}, md.call_args.kwargs['extra_md'])

    def test_path_for(self):
        self.assertEqual('/s/rootfs/3/config-drive',
                         configdrive.path_for('/s/rootfs/3'))
