"""Snapshot, boot from snapshot, shelve and unshelve through Nova's API.

Real containers; Glance is Nova's fixture, made to keep what an update
uploads (as Glance does), so a server boots from the snapshot the driver
streamed. The Debian server checks the issue's cases: a process writing
every 10 ms while the snapshot is taken, a setuid binary, a file
capability read back with getcap, and root-owned files as uid 0.
"""

import io
import subprocess
import tarfile
import time

import fixtures
import zstandard

from novalxcdriver import conf
from tests.functional.api import base as api_base
from tests.functional import base
from tests.functional import rootfs_images

CONF = conf.CONF
TICKER = ('i=0; while :; do i=$((i+1)); echo "$i $(date +%s.%N)" '
          '>> /root/ticks; sleep 0.01; done')


class SnapshotAPITest(api_base.LXCAPITestCase):

    def setUp(self):
        super().setUp()
        update = self.glance.update

        def keeping_update(context, image_id, metadata, data=None,
                           purge_props=False):
            if data is not None:
                chunks = []
                while True:
                    chunk = data.read(1 << 20)
                    if not chunk:
                        break
                    chunks.append(chunk)
                self.glance._imagedata[image_id] = b''.join(chunks)
            return update(context, image_id, metadata,
                          purge_props=purge_props)
        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.GlanceFixture.update',
            lambda fixture, *args, **kwargs: keeping_update(*args,
                                                            **kwargs)))

    def _sh(self, name, script, check=True):
        out = subprocess.run(
            ['lxc-attach', '-n', name, '-P', CONF.lxc.lxc_path, '--',
             'sh', '-c', script], capture_output=True, text=True)
        if check:
            self.assertEqual(0, out.returncode, out.stderr)
        return out.stdout

    def _wait_attachable(self, name):
        base.poll(lambda: self._lxc('lxc-attach', name, '--', 'true')
                  .returncode == 0, timeout=60)

    def _create_image(self, server, name):
        self.api.post_server_action(server['id'],
                                    {'createImage': {'name': name}})
        image = self._wait_for_image(name)
        return image

    def _wait_for_image(self, name):
        for _ in range(600):
            images = [i for i in self.glance.images.values()
                      if i.get('name') == name]
            if images and images[0]['id'] in self.glance._imagedata:
                return images[0]
            time.sleep(0.1)
        self.fail('snapshot %s not uploaded' % name)

    def _members(self, image_id):
        data = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(self.glance._imagedata[image_id])).read()
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            return {m.name.rstrip('/').removeprefix('./'): m
                    for m in tar.getmembers()}

    def _boot_image(self, image_id, flavor_id='1'):
        server = self._build_server(image_uuid=image_id,
                                    flavor_id=flavor_id, networks='none')
        server = self.api.post_server({'server': server})
        self.addCleanup(self._cleanup_server, server['id'])
        # A first Debian boot unpacks 250 MB: up to 2 minutes here.
        return self._wait_for_state_change(server, 'ACTIVE',
                                           max_retries=240)

    def test_snapshot_of_a_running_debian_server(self):
        debian = self._rootfs_image(rootfs_images.debian_tarball())
        server = self._boot_image(debian)
        name = server['OS-EXT-SRV-ATTR:instance_name']
        self._wait_attachable(name)
        self._sh(name, 'echo kept > /root/data; '
                 'cp /usr/bin/true /usr/local/bin/suid; '
                 'chmod 4755 /usr/local/bin/suid; '
                 'cp /usr/bin/true /usr/local/bin/capped; '
                 'setcap cap_net_raw+ep /usr/local/bin/capped')
        ticker = subprocess.Popen(
            ['lxc-attach', '-n', name, '-P', CONF.lxc.lxc_path, '--',
             'sh', '-c', TICKER])
        self.addCleanup(ticker.kill)
        time.sleep(1)
        pid = self._pid(name)
        started = time.time()
        image = self._create_image(server, 'snap-of-debian')
        ended = time.time()
        time.sleep(0.5)
        ticker.kill()
        ticker.wait()
        # No downtime: same init, still ACTIVE.
        self.assertEqual(pid, self._pid(name))
        self.assertEqual('ACTIVE',
                         self.api.get_server(server['id'])['status'])
        ticks = [line.split() for line in
                 self._sh(name, 'cat /root/ticks').splitlines()]
        stamps = [float(t[1]) for t in ticks if len(t) == 2]
        around = [t for t in stamps if started - 0.5 <= t <= ended + 0.5]
        gap = max(b - a for a, b in zip(around, around[1:]))
        print('Debian server snapshot through the API: %.1f s; longest '
              'gap between 10 ms counter writes meanwhile: %.0f ms'
              % (ended - started, gap * 1000))
        self.assertLess(gap, 1.0)

        meta = self.glance.show(None, image['id'])
        self.assertEqual(('raw', 'bare', 'lxc'),
                         (meta['disk_format'], meta['container_format'],
                          meta['properties']['hypervisor_type']))
        members = self._members(image['id'])
        for path in ('usr/bin/true', 'etc/passwd', 'root/data'):
            self.assertEqual((0, 0), (members[path].uid, members[path].gid),
                             path)
        self.assertEqual(0o4755,
                         members['usr/local/bin/suid'].mode & 0o7777)
        # Written before the snapshot began: all in it.
        self.assertGreater(members['root/ticks'].size, 0)

        clone = self._boot_image(image['id'])
        clone_name = clone['OS-EXT-SRV-ATTR:instance_name']
        self._wait_attachable(clone_name)
        self.assertEqual(
            'kept\n4755 0\n',
            self._sh(clone_name, 'cat /root/data; '
                     'stat -c "%a %u" /usr/local/bin/suid'))
        self.assertIn('cap_net_raw=ep',
                      self._sh(clone_name,
                               'getcap /usr/local/bin/capped'))

    def test_shelve_and_unshelve_keep_the_data(self):
        server = self._boot_image(self._busybox_image())
        name = server['OS-EXT-SRV-ATTR:instance_name']
        driver = self.compute.manager.driver
        cid = driver._ids.find(server['id'])
        self._sh(name, 'echo shelved-data > /root/data')

        # shelved_offload_time = 0 (Nova's default): offloaded at once.
        self.api.post_server_action(server['id'], {'shelve': {}})
        server = self._wait_for_state_change(server, 'SHELVED_OFFLOADED',
                                             max_retries=120)
        self.assertEqual('', self._state(name))
        self.assertEqual([], self._leftovers(name, cid))
        shelved_image = self._wait_for_server_parameter(
            server, {'status': 'SHELVED_OFFLOADED'})
        image_ids = [i for i in self.glance.images
                     if self.glance.images[i].get('name', '').endswith(
                         '-shelved')]
        self.assertEqual(1, len(image_ids), shelved_image)

        self.api.post_server_action(server['id'], {'unshelve': None})
        server = self._wait_for_state_change(server, 'ACTIVE',
                                             max_retries=120)
        name = server['OS-EXT-SRV-ATTR:instance_name']
        self.assertEqual('RUNNING', self._state(name))
        self.assertEqual('shelved-data\n',
                         self._sh(name, 'cat /root/data'))
        # Nova deletes the shelve snapshot once unshelved.
        self.assertNotIn(image_ids[0], self.glance.images)
