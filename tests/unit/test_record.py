"""record: the durable per-instance record."""

import dataclasses
import json
import os
from unittest import mock

import fixtures

from novalxcdriver import ids
from novalxcdriver import record
from tests.unit import base

UUID = '0d7c2b1e-5a3f-4c9b-8e21-7f6a5b4c3d2e'


class RecordStoreTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.state_path = self.useFixture(fixtures.TempDir()).path
        self.store = record.RecordStore(self.state_path)
        self.record = record.InstanceRecord(
            instance_uuid=UUID, name='instance-00000001', host='compute-1',
            cid=3, idmap=ids.Idmap(296608, 496608, 65536),
            image_id='a1b2c3d4-0000-4000-8000-000000000001',
            container_dir='/lxc/instance-00000001', rootfs='/state/rootfs/3',
            pid=42)
        self.path = os.path.join(self.state_path, 'instances',
                                 UUID + '.json')

    def test_round_trip_through_a_durable_write(self):
        with mock.patch('novalxcdriver.durable.write',
                        wraps=record.durable.write) as write:
            self.store.write(self.record)
        write.assert_called_once_with(self.path, self.record.to_json(),
                                      mode=0o600)
        self.assertEqual(self.record, self.store.get(UUID))
        self.assertEqual({UUID: self.record}, self.store.all())
        self.assertEqual(record.SPAWNING, self.store.get(UUID).state)

    def test_missing_is_none(self):
        self.assertIsNone(self.store.get(UUID))
        self.assertEqual({}, self.store.all())
        self.store.remove(UUID)

    def test_torn_or_foreign_records_read_as_none(self):
        self.store.write(self.record)
        text = self.record.to_json()
        bad = ['', text[:len(text) // 2], '[]', '{}',
               json.dumps(dict(json.loads(text), cid='3')),
               json.dumps(dict(json.loads(text), state='odd')),
               text.replace(UUID, 'ffffffff-5a3f-4c9b-8e21-7f6a5b4c3d2e')]
        for content in bad:
            with open(self.path, 'w') as f:
                f.write(content)
            self.assertIsNone(self.store.get(UUID), content)
            self.assertEqual({}, self.store.all(), content)

    def test_other_files_ignored(self):
        self.store.write(self.record)
        for name in ('notes.txt', 'x.json', '.%s.json.tmp' % UUID):
            with open(os.path.join(self.store.path, name), 'w') as f:
                f.write('{}')
        self.assertEqual([UUID], list(self.store.all()))

    def test_remove(self):
        self.store.write(dataclasses.replace(self.record,
                                             state=record.READY))
        self.store.remove(UUID)
        self.assertIsNone(self.store.get(UUID))
        self.assertEqual([], os.listdir(self.store.path))

    def test_non_uuid_refused_as_a_file_name(self):
        bad = dataclasses.replace(self.record, instance_uuid='../x')
        self.assertRaises(ValueError, self.store.write, bad)
        self.assertRaises(ValueError, self.store.get, '../x')

    def test_rescue_image_only_in_records_of_rescued_servers(self):
        # A server never rescued keeps the JSON of earlier versions.
        data = json.loads(self.record.to_json())
        self.assertNotIn('rescue_image_id', data)
        self.assertEqual('', record.InstanceRecord.from_json(
            json.dumps(data)).rescue_image_id)
        rescued = dataclasses.replace(self.record,
                                      rescue_image_id='rescue-image')
        self.store.write(rescued)
        with open(self.path) as f:
            self.assertEqual('rescue-image',
                             json.load(f)['rescue_image_id'])
        self.assertEqual(rescued, self.store.get(UUID))
        with open(self.path, 'w') as f:
            f.write(json.dumps(dict(data, rescue_image_id=7)))
        self.assertIsNone(self.store.get(UUID))

    def test_disk_idmap_round_trip(self):
        # Disks a migration brought keep their source's owners.
        moved = dataclasses.replace(
            self.record, state=record.READY,
            disk_idmap=ids.Idmap(165536, 365536, 65536))
        self.store.write(moved)
        with open(self.path) as f:
            self.assertEqual({'uid_start': 165536, 'gid_start': 365536,
                              'size': 65536}, json.load(f)['disk_idmap'])
        got = self.store.get(UUID)
        self.assertEqual(moved, got)
        self.assertEqual(ids.Idmap(165536, 365536, 65536), got.disks_idmap)

    def test_disk_idmap_left_out_when_none_or_own(self):
        # Records of servers that never moved keep earlier versions' JSON.
        for disk_idmap in (None, self.record.idmap):
            rec = dataclasses.replace(self.record, disk_idmap=disk_idmap)
            self.assertNotIn('disk_idmap', json.loads(rec.to_json()))
            back = record.InstanceRecord.from_json(rec.to_json())
            self.assertIsNone(back.disk_idmap)
            self.assertEqual(self.record.idmap, back.disks_idmap)

    def test_disks_idmap_is_own_without_disk_idmap(self):
        self.assertIs(self.record.idmap, self.record.disks_idmap)
        other = ids.Idmap(165536, 365536, 65536)
        self.assertEqual(other, dataclasses.replace(
            self.record, disk_idmap=other).disks_idmap)

    def test_disk_idmap_of_another_size_refused(self):
        data = json.loads(self.record.to_json())
        data['disk_idmap'] = {'uid_start': 165536, 'gid_start': 365536,
                              'size': 1000}
        self.assertRaises(ValueError, record.InstanceRecord.from_json,
                          json.dumps(data))
        os.makedirs(self.store.path)
        with open(self.path, 'w') as f:
            f.write(json.dumps(data))
        self.assertIsNone(self.store.get(UUID))

    def test_disk_idmap_mistyped_refused(self):
        data = json.loads(self.record.to_json())
        for bad in ([1, 2, 3], 'x', {'uid_start': '165536',
                                     'gid_start': 365536, 'size': 65536},
                    {'uid_start': 1}):
            self.assertRaises(ValueError, record.InstanceRecord.from_json,
                              json.dumps(dict(data, disk_idmap=bad)))

    def test_migrating_state_accepted(self):
        migrating = dataclasses.replace(self.record, state=record.MIGRATING)
        self.assertEqual('migrating', record.MIGRATING)
        self.store.write(migrating)
        self.assertEqual(migrating, self.store.get(UUID))
        self.assertEqual(record.MIGRATING, self.store.get(UUID).state)
