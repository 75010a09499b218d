"""Tests for novalxcdriver.migration: disk info, resize checks, transport."""

import json
import logging
import os
from unittest import mock

import fixtures
from nova import objects
from oslo_config import fixture as config_fixture
from oslo_utils import units

from novalxcdriver import conf
from novalxcdriver import exception
from novalxcdriver import ids
from novalxcdriver import migration
from tests.unit import base as unit_base

UUID = '0d7c2b1e-5a3f-4c9b-8e21-7f6a5b4c3d2e'
IDMAP = ids.Idmap(uid_start=165536, gid_start=265536, size=65536)
ROOTFS = '/var/lib/novalxc/rootfs/3'
IMAGE_CACHE = '/var/lib/novalxc/images/c8e0b7a4-2d1f-4e3a-9b5c-6d7e8f9a0b1c'
TOKEN = '5f3c1e0a-9b8d-4c7e-8f2a-1b0c9d8e7f6a'


def disk_info(**updates):
    fields = dict(
        instance_uuid=UUID, source_host='compute-1', source_ip='192.0.2.10',
        token=TOKEN, rootfs=ROOTFS,
        files=(migration.ROOT_DISK, migration.EPHEMERAL_DISK), idmap=IDMAP,
        image_id='c8e0b7a4-2d1f-4e3a-9b5c-6d7e8f9a0b1c',
        image_cache=IMAGE_CACHE, root_gb=2, ephemeral_gb=1)
    fields.update(updates)
    return migration.DiskInfo(**fields)


def as_dict(info, **updates):
    data = json.loads(info.to_json())
    data.update(updates)
    return data


class DiskInfoTest(unit_base.TestCase):

    def test_round_trip(self):
        info = disk_info()
        text = info.to_json()
        self.assertIsInstance(text, str)
        self.assertEqual(info, migration.DiskInfo.from_json(text))

    def test_round_trip_root_directory(self):
        info = disk_info(files=(migration.ROOT_DIR,), root_gb=0,
                         ephemeral_gb=0)
        self.assertEqual(info, migration.DiskInfo.from_json(info.to_json()))

    def test_json_is_versioned_and_plain(self):
        data = json.loads(disk_info().to_json())
        self.assertEqual(1, data['version'])
        self.assertEqual(['root.img', 'ephemeral.img'], data['files'])
        self.assertEqual({'uid_start': 165536, 'gid_start': 265536,
                          'size': 65536}, data['idmap'])

    def assert_unreadable(self, text):
        return self.assertRaises(exception.MigrationUnreadable,
                                 migration.DiskInfo.from_json, text)

    def test_wrong_version_refused(self):
        self.assert_unreadable(json.dumps(as_dict(disk_info(), version=2)))

    def test_missing_version_refused(self):
        data = as_dict(disk_info())
        del data['version']
        self.assert_unreadable(json.dumps(data))

    def test_unknown_file_refused(self):
        for files in (['root.img', 'etc'], ['../root.img'], ['/etc/shadow'],
                      ['root.img.iostat']):
            self.assert_unreadable(json.dumps(as_dict(disk_info(),
                                                      files=files)))

    def test_duplicate_file_refused(self):
        self.assert_unreadable(json.dumps(as_dict(
            disk_info(), files=['root.img', 'root.img'])))

    def test_source_ip_must_be_an_address(self):
        for ip in ('host:/etc', '-oProxyCommand=x', 'example.org', ''):
            e = self.assert_unreadable(json.dumps(as_dict(disk_info(),
                                                          source_ip=ip)))
            self.assertIn('no IP address', str(e))
        for ip in ('192.0.2.10', '2001:db8::10'):
            self.assertEqual(ip, migration.DiskInfo.from_json(json.dumps(
                as_dict(disk_info(), source_ip=ip))).source_ip)

    def test_relative_rootfs_refused(self):
        for rootfs in ('var/lib/novalxc/rootfs/3', '/var/lib/../../etc',
                       '/var/lib/novalxc/rootfs/..', '..'):
            self.assert_unreadable(json.dumps(as_dict(disk_info(),
                                                      rootfs=rootfs)))

    def test_relative_image_cache_refused(self):
        for path in ('images/x', '/var/lib/novalxc/images/../../../etc'):
            self.assert_unreadable(json.dumps(as_dict(disk_info(),
                                                      image_cache=path)))

    def test_negative_sizes_refused(self):
        for field in ('root_gb', 'ephemeral_gb'):
            self.assert_unreadable(json.dumps(as_dict(disk_info(),
                                                      **{field: -1})))

    def test_non_integer_sizes_refused(self):
        for field in ('root_gb', 'ephemeral_gb'):
            self.assert_unreadable(json.dumps(as_dict(disk_info(),
                                                      **{field: '1'})))

    def test_unknown_field_refused(self):
        self.assert_unreadable(json.dumps(as_dict(disk_info(), extra=1)))

    def test_missing_field_refused(self):
        data = as_dict(disk_info())
        del data['rootfs']
        self.assert_unreadable(json.dumps(data))

    def test_garbage_refused(self):
        for text in ('', 'not json', '[]', '"text"', '42', 'null', '{}',
                     '{"version": 1}', None, b'\xff'):
            self.assert_unreadable(text)

    def test_bad_idmap_refused(self):
        for idmap in (None, [1, 2, 3], {'uid_start': 1}):
            self.assert_unreadable(json.dumps(as_dict(disk_info(),
                                                      idmap=idmap)))

    def test_mistyped_rootfs_refused(self):
        # Garbage of the right shape: still MigrationUnreadable, not a
        # TypeError from the path checks.
        for rootfs in (5, None, ['/a']):
            self.assert_unreadable(json.dumps(as_dict(disk_info(),
                                                      rootfs=rootfs)))

    def test_mistyped_idmap_refused(self):
        # Its numbers become uid_map lines and the record's disk_idmap,
        # which record.py refuses to read unless they are ints.
        for idmap in ({'uid_start': '165536', 'gid_start': 265536,
                       'size': 65536},
                      {'uid_start': -1, 'gid_start': 265536, 'size': 65536},
                      {'uid_start': 165536, 'gid_start': 265536,
                       'size': 0}):
            self.assert_unreadable(json.dumps(as_dict(disk_info(),
                                                      idmap=idmap)))

    def test_mistyped_files_refused(self):
        for files in ([['root.img']], [{}], None, 'root.img'):
            self.assert_unreadable(json.dumps(as_dict(disk_info(),
                                                      files=files)))


def flavor(root_gb, ephemeral_gb=0):
    return objects.Flavor(root_gb=root_gb, ephemeral_gb=ephemeral_gb)


class CheckResizeTest(unit_base.TestCase):

    def setUp(self):
        super().setUp()
        objects.register_all()

    def test_grow_accepted(self):
        self.assertIsNone(migration.check_resize(flavor(1, 0), flavor(5, 2)))

    def test_equal_accepted(self):
        self.assertIsNone(migration.check_resize(flavor(1, 1), flavor(1, 1)))
        self.assertIsNone(migration.check_resize(flavor(0, 0), flavor(0, 0)))

    def test_root_shrink_refused(self):
        e = self.assertRaises(exception.ResizeRefused,
                              migration.check_resize, flavor(5), flavor(2))
        self.assertIn('root disk cannot shrink from 5 GiB to 2 GiB', str(e))

    def test_ephemeral_shrink_refused(self):
        e = self.assertRaises(exception.ResizeRefused,
                              migration.check_resize, flavor(1, 3),
                              flavor(2, 1))
        self.assertIn('ephemeral disk cannot shrink from 3 GiB to 1 GiB',
                      str(e))

    def test_ephemeral_dropped_refused(self):
        self.assertRaises(exception.ResizeRefused, migration.check_resize,
                          flavor(1, 1), flavor(1, 0))

    def test_root_disk_cannot_come(self):
        e = self.assertRaises(exception.ResizeRefused,
                              migration.check_resize, flavor(0), flavor(1))
        self.assertIn('root_gb 0', str(e))
        self.assertIn('between 0 GiB and 1 GiB', str(e))

    def test_root_disk_cannot_go(self):
        e = self.assertRaises(exception.ResizeRefused,
                              migration.check_resize, flavor(1), flavor(0))
        self.assertIn('from 1 GiB to 0 GiB', str(e))

    def test_message_says_resize(self):
        e = self.assertRaises(exception.ResizeRefused,
                              migration.check_resize, flavor(5), flavor(2))
        self.assertTrue(str(e).startswith('Cannot resize: '), str(e))


class TokenTest(unit_base.TestCase):
    """A token beside the disks proves they are on this machine.

    The storage_admin daemon writes and reads it (privsep.rootdirs), here
    in this process with its checks.
    """

    def setUp(self):
        super().setUp()
        top = self.useFixture(fixtures.TempDir()).path
        self.rootdirs = self.useFixture(unit_base.RootDirsInProcess(top))
        self.rootfs = os.path.join(top, 'rootfs', '3')
        os.makedirs(self.rootfs)
        self.token_file = os.path.join(self.rootfs, migration.TOKEN_FILE)

    def test_new_token_written_beside_the_disks(self):
        token = migration.new_token(self.rootfs)
        with open(self.token_file) as f:
            self.assertEqual(token, f.read().strip())
        self.assertEqual(0o600, os.stat(self.token_file).st_mode & 0o777)
        # Fresh each time.
        self.assertNotEqual(token, migration.new_token(self.rootfs))

    def test_token_found_means_local(self):
        token = migration.new_token(self.rootfs)
        self.assertTrue(migration.is_local(disk_info(rootfs=self.rootfs,
                                                     token=token)))

    def test_other_token_means_remote(self):
        # Another host's directory of the same name, or a cloned disk.
        migration.new_token(self.rootfs)
        self.assertFalse(migration.is_local(disk_info(rootfs=self.rootfs)))

    def test_no_token_file_means_remote(self):
        self.assertFalse(migration.is_local(disk_info(rootfs=self.rootfs)))
        self.assertFalse(migration.is_local(disk_info(
            rootfs=os.path.join(os.path.dirname(self.rootfs), '4'))))

    def test_another_driver_s_root_on_this_machine_is_local(self):
        # A second nova-compute service of the machine: its roots are
        # not this daemon's, its token proves the disks are here.
        other = os.path.join(self.useFixture(fixtures.TempDir()).path,
                             'rootfs', '5')
        os.makedirs(other)
        with open(os.path.join(other, migration.TOKEN_FILE), 'w') as f:
            f.write(TOKEN + '\n')
        self.assertTrue(migration.is_local(disk_info(rootfs=other)))
        self.assertFalse(migration.is_local(disk_info(rootfs=other,
                                                      token='other')))

    def test_path_of_no_root_here_means_remote(self):
        # The daemon refuses to read a path that is no root's directory
        # of its own (another host's layout): not local, not an error.
        token = migration.new_token(self.rootfs)
        for path in ('/elsewhere/rootfs/3', self.rootfs + '/x',
                     os.path.dirname(self.rootfs)):
            self.assertFalse(migration.is_local(disk_info(rootfs=path,
                                                          token=token)))
        self.assertEqual(3, self.rootdirs.has_token.call_count)

    def test_empty_tokens_never_match(self):
        open(self.token_file, 'w').close()
        self.assertFalse(migration.is_local(disk_info(rootfs=self.rootfs,
                                                      token='')))

    def test_remove_token(self):
        token = migration.new_token(self.rootfs)
        migration.remove_token(self.rootfs)
        self.assertFalse(os.path.exists(self.token_file))
        self.assertFalse(migration.is_local(disk_info(rootfs=self.rootfs,
                                                      token=token)))
        # Idempotent.
        migration.remove_token(self.rootfs)


class FetchTest(unit_base.TestCase):

    def setUp(self):
        super().setUp()
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        self.cfg.config(group='lxc', migration_timeout=123)
        self.is_local = self.patch('novalxcdriver.migration.is_local',
                                   return_value=False)
        self.receive = self.patch(
            'novalxcdriver.migration.migrationcopy.receive_disks')
        self.upper = self.patch(
            'novalxcdriver.migration.migrationcopy.receive_upper')
        self.statvfs = self.patch(
            'os.statvfs', return_value=mock.Mock(f_bavail=10, f_frsize=4096))

    def test_disk_images_through_the_daemon(self):
        info = disk_info(root_gb=3, ephemeral_gb=5)
        made = migration.fetch(info, '/dst')
        self.assertEqual(['/dst/root.img', '/dst/ephemeral.img'], made)
        self.receive.assert_called_once_with(
            '/dst', ['root.img', 'ephemeral.img'], info.rootfs, info.token,
            info.source_ip, 'ssh', 5 * units.Gi, 123)
        self.upper.assert_not_called()

    def test_local_disk_images(self):
        self.is_local.return_value = True
        migration.fetch(disk_info(), '/dst')
        self.assertEqual('local', self.receive.call_args.args[5])

    def test_root_without_disk_its_upper_layer(self):
        info = disk_info(files=('root', 'ephemeral.img'), root_gb=0,
                         ephemeral_gb=2)
        made = migration.fetch(info, '/dst')
        self.assertEqual(['/dst/ephemeral.img', '/dst/root'], made)
        self.receive.assert_called_once_with(
            '/dst', ['ephemeral.img'], info.rootfs, info.token,
            info.source_ip, 'ssh', 2 * units.Gi, 123)
        # At most what is free where it goes; owned in the disks' range.
        self.upper.assert_called_once_with(
            '/dst', info.rootfs, info.token, info.source_ip, 'ssh',
            IDMAP.fields(), 40960, 123)
        self.statvfs.assert_called_once_with('/dst')

    def test_local_root_without_disk(self):
        self.is_local.return_value = True
        migration.fetch(disk_info(files=('root',), root_gb=0), '/dst')
        self.assertEqual('local', self.upper.call_args.args[4])
        self.receive.assert_not_called()

    def test_unprivileged_copies_everything(self):
        self.patch('os.geteuid', return_value=990)
        migration.fetch(disk_info(files=('root', 'ephemeral.img')), '/dst')
        self.receive.assert_called_once()
        self.upper.assert_called_once()

    def test_the_log_names_the_transport(self):
        # aio/novalxc_aio/smoke2.py checks a move's transport with it.
        log = self.useFixture(fixtures.FakeLogger(level=logging.INFO))
        self.is_local.return_value = True
        migration.fetch(disk_info(), '/dst')
        self.assertIn('(local copy)', log.output)
        self.is_local.return_value = False
        migration.fetch(disk_info(), '/dst')
        self.assertIn('(over SSH)', log.output)

    def test_failure_stops_and_raises(self):
        self.receive.side_effect = exception.CommandTimedOut(
            cmd='ssh', timeout=123)
        self.assertRaises(exception.CommandTimedOut, migration.fetch,
                          disk_info(files=('ephemeral.img', 'root')),
                          '/dst')
        self.upper.assert_not_called()


class FetchImageTest(unit_base.TestCase):
    """fetch_image: the source's cache entry, for an image Glance lost."""

    def setUp(self):
        super().setUp()
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        self.cfg.config(group='lxc', migration_timeout=77)
        self.is_local = self.patch('novalxcdriver.migration.is_local',
                                   return_value=False)
        self.receive = self.patch(
            'novalxcdriver.migration.migrationcopy.receive_image',
            return_value=1234)

    def test_entry_through_the_daemon_over_ssh(self):
        info = disk_info()
        self.assertEqual(1234, migration.fetch_image(
            info, '/cache/.partial-x/rootfs', 999))
        self.receive.assert_called_once_with(
            '/cache/.partial-x/rootfs', IMAGE_CACHE, info.image_id,
            info.source_ip, 'ssh', 999, 77)

    def test_local_copy(self):
        self.is_local.return_value = True
        migration.fetch_image(disk_info(), '/cache/.partial-x/rootfs', 999)
        self.assertEqual('local', self.receive.call_args.args[4])

    def test_unprivileged_too(self):
        self.patch('os.geteuid', return_value=990)
        migration.fetch_image(disk_info(), '/cache/.partial-x/rootfs', 999)
        self.receive.assert_called_once()
