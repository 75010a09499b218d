"""Rebuild through Nova's REST API, on real containers.

``openstack server rebuild --image X``: the container's own writes and its
ephemeral disk's content go (unless preserve_ephemeral), its root now
overlays X, and it keeps its name, container ID and idmap. Each check reads
the real container (files seen through lxc-attach, /proc/PID/uid_map), not
only the API's answer.
"""

import os
import tarfile
from unittest import mock

from nova import exception as nova_exc
from nova.tests.functional.api import client

from novalxcdriver import conf
from novalxcdriver import rootfs
from tests.functional.api import base as api_base
from tests.functional import base

CONF = conf.CONF


class LXCRebuildTest(api_base.LXCAPITestCase):

    def setUp(self):
        super().setUp()
        self.driver = self.compute.manager.driver
        # A root disk and an ephemeral disk (on /mnt), both loop-mounted.
        self.flavor_id = self._create_flavor(memory_mb=128, vcpu=1, disk=1,
                                             ephemeral=1)

    def _boot_with_ephemeral(self, image_id):
        server = self.api.post_server({'server': self._build_server(
            image_uuid=image_id, flavor_id=self.flavor_id,
            networks='none')})
        self.addCleanup(self._cleanup_server, server['id'])
        return self._wait_for_state_change(server, 'ACTIVE')

    def _rebuild(self, server, image_id, status='ACTIVE', **options):
        try:
            self.api.post_server_action(server['id'], {'rebuild': dict(
                imageRef=image_id, **options)})
        except client.OpenStackApiException:
            # The harness runs the compute's cast within the API call: a
            # failure reaches the API's answer, not only the server.
            if status != 'ERROR':
                raise
        # The API leaves it in REBUILD until the compute is done.
        return self._wait_for_state_change(server, status, max_retries=60)

    def _sh(self, server, script):
        """(exit status, stdout) of script run by sh in the container."""
        result = self._lxc('lxc-attach',
                           server['OS-EXT-SRV-ATTR:instance_name'], '--',
                           'sh', '-c', script)
        return result.returncode, result.stdout

    def _write_data(self, server):
        self.assertEqual(
            (0, ''), self._sh(server, 'echo data > /root/f && '
                                      'echo eph > /mnt/f && sync'))

    def _identity(self, server):
        """(container ID, recorded idmap, host uid_map of its init)."""
        name = server['OS-EXT-SRV-ATTR:instance_name']
        with open('/proc/%d/uid_map' % self._pid(name)) as f:
            uid_map = f.read().split()
        return (self.driver._ids.find(server['id']),
                self.driver._records.get(server['id']).idmap, uid_map)

    def assert_fresh_root_of(self, server, marker):
        self.assertEqual('RUNNING',
                         self._state(server['OS-EXT-SRV-ATTR:instance_name']))
        self.assertEqual((0, marker), self._sh(server, 'cat /marker'))
        self.assertNotEqual(0, self._sh(server, 'cat /root/f')[0])
        # Written into the new root, as spawn does.
        self.assertEqual(
            (0, server['OS-EXT-SRV-ATTR:hostname'] + '\n'),
            self._sh(server, 'cat /etc/hostname'))
        rec = self.driver._records.get(server['id'])
        self.assertEqual(server['image']['id'], rec.image_id)
        self.assertIsNone(rootfs.Rootfs(CONF.lxc.state_path,
                                        rec.cid).replacement())

    def test_rebuild_fresh_root_same_container(self):
        image_a = self._busybox_image()
        image_b = self._marked_busybox_image('marker', 'image b')
        server = self._boot_with_ephemeral(image_a)
        self._write_data(server)
        identity = self._identity(server)
        self.assertIsNotNone(identity[0])
        names = (server['name'], server['OS-EXT-SRV-ATTR:instance_name'])

        server = self._rebuild(server, image_b)
        self.assertEqual(image_b, server['image']['id'])
        self.assertEqual(names, (server['name'],
                                 server['OS-EXT-SRV-ATTR:instance_name']))
        self.assert_fresh_root_of(server, 'image b')
        # The ephemeral disk is made anew: empty, and mounted on /mnt.
        self.assertEqual((0, ''), self._sh(server, 'ls /mnt'))
        self.assertEqual(0, self._sh(server, 'echo x > /mnt/g')[0])
        self.assertEqual(identity, self._identity(server))

        # preserve_ephemeral keeps /mnt; the root is fresh all the same.
        self._write_data(server)
        server = self._rebuild(server, image_a, preserve_ephemeral=True)
        self.assertEqual((0, 'eph\n'), self._sh(server, 'cat /mnt/f'))
        self.assertNotEqual(0, self._sh(server, 'cat /root/f')[0])
        self.assertNotEqual(0, self._sh(server, 'cat /marker')[0])
        self.assertEqual(identity, self._identity(server))

        name = server['OS-EXT-SRV-ATTR:instance_name']
        cid = identity[0]
        self._delete_server(server)
        self.assertEqual([], self._leftovers(name, cid))

    def test_rebuild_with_images_gone_from_glance(self):
        image_a = self._busybox_image()
        image_b = self._marked_busybox_image('marker', 'image b')
        server = self._boot_with_ephemeral(image_a)
        # The server's first image is not needed to rebuild it.
        self.glance.delete(None, image_a)
        server = self._rebuild(server, image_b)
        self.assert_fresh_root_of(server, 'image b')

        # Glance lost image b's data: the host's cache serves the rebuild.
        self._write_data(server)
        with mock.patch.object(self.glance, 'download', side_effect=(
                nova_exc.ImageNotFound(image_id=image_b))) as download:
            server = self._rebuild(server, image_b)
        download.assert_not_called()
        self.assert_fresh_root_of(server, 'image b')

        # Gone from Glance entirely: a hard reboot starts the rebuilt
        # root (the record names image b; image a is still cached too).
        self._write_data(server)
        self.glance.delete(None, image_b)
        server = self._reboot_server(server, hard=True)
        self.assertEqual((0, 'image b'), self._sh(server, 'cat /marker'))
        self.assertEqual((0, 'data\n'), self._sh(server, 'cat /root/f'))

    def test_rebuild_of_stopped_server_stays_stopped(self):
        server = self._boot_with_ephemeral(self._busybox_image())
        self._write_data(server)
        server = self._action(server, {'os-stop': None}, 'SHUTOFF')
        # The harness answers once the compute is done: SHUTOFF, without
        # the progress Nova's rebuild response schema asks for (a real
        # API answers REBUILD, before the compute acts).
        self.flags(response_validation='warn', group='api')
        image_b = self._marked_busybox_image('marker', 'image b')
        server = self._rebuild(server, image_b, status='SHUTOFF')
        name = server['OS-EXT-SRV-ATTR:instance_name']
        self.assertEqual('STOPPED', self._state(name))
        server = self._action(server, {'os-start': None}, 'ACTIVE')
        self.assert_fresh_root_of(server, 'image b')

    def test_bad_image_leaves_the_old_root(self):
        tmp = self.useFixture(base.fixtures.TempDir()).path
        path = os.path.join(tmp, 'evil.tar')
        with tarfile.open(path, 'w') as tar:
            tar.addfile(tarfile.TarInfo('../../../etc/cron.d/evil'))
        image_a = self._marked_busybox_image('marker', 'image a')
        server = self._boot_with_ephemeral(image_a)
        self._write_data(server)
        pid = self._pid(server['OS-EXT-SRV-ATTR:instance_name'])
        server = self._rebuild(server, self._rootfs_image(path),
                               status='ERROR')
        self.assertIn('../../../etc/cron.d/evil',
                      server['fault']['message'])
        # Untouched: never stopped, its data and its image in place.
        self.assertEqual(pid,
                         self._pid(server['OS-EXT-SRV-ATTR:instance_name']))
        self.assertEqual((0, 'data\n'), self._sh(server, 'cat /root/f'))
        self.assertEqual(image_a,
                         self.driver._records.get(server['id']).image_id)
        # Nova's way out of ERROR: the hard reboot starts the old root.
        server = self._reboot_server(server, hard=True)
        self.assertEqual((0, 'image a'), self._sh(server, 'cat /marker'))
        self.assertEqual((0, 'eph\n'), self._sh(server, 'cat /mnt/f'))

    def test_rebuild_cut_short_finished_by_hard_reboot(self):
        server = self._boot_with_ephemeral(self._busybox_image())
        self._write_data(server)
        identity = self._identity(server)
        # Cut short between setting the old upper aside and making the
        # new one, on the real disks.
        image_b = self._marked_busybox_image('marker', 'image b')
        with mock.patch.object(rootfs, '_make_dir',
                               side_effect=OSError('crash')):
            server = self._rebuild(server, image_b, status='ERROR')
        root = rootfs.Rootfs(CONF.lxc.state_path, identity[0])
        self.assertTrue(os.path.isdir(root.upper + '.rebuild-old'))
        self.assertFalse(os.path.exists(root.upper))
        self.assertIsNotNone(root.replacement())

        server = self._reboot_server(server, hard=True)
        self.assert_fresh_root_of(server, 'image b')
        self.assertEqual((0, ''), self._sh(server, 'ls /mnt'))
        self.assertFalse(os.path.exists(root.upper + '.rebuild-old'))
        self.assertEqual(identity, self._identity(server))
