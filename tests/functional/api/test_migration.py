"""Cold migration, resize and evacuate through Nova's API.

Nova's harness runs two nova-compute services in this process, 'compute'
and 'host2', each an LXCDriver with its own lxc_path and state_path and
one machine-wide ids_path, as Nova's own multi-host functional tests run
two fake computes (_start_compute); or one, resizing servers on their own
host (allow_resize_to_same_host). Each move checks a file written inside
before it, and that nothing of the server is left where it left.
"""

import os
import subprocess

import fixtures
import nova.virt.node

from novalxcdriver import conf
from novalxcdriver import mount
from tests.functional.api import base

CONF = conf.CONF
HOSTS = ('compute', 'host2')


class _MoveTestBase(base.LXCAPITestCase):

    # Casts stay casts: a source's refusal must not reach the API's call.
    CAST_AS_CALL = False

    def _paths(self, host):
        root = self._api_root()
        suffix = '' if host == HOSTS[0] else '-' + host
        return (os.path.join(root, 'lxc' + suffix),
                os.path.join(root, 'state' + suffix))

    def setUp(self):
        super().setUp()
        self.image_id = self._busybox_image()
        self.small = self._create_flavor(memory_mb=256, vcpu=1, disk=1,
                                         ephemeral=0, name='lxc.small')
        self.big = self._create_flavor(memory_mb=512, vcpu=1, disk=2,
                                       ephemeral=1, name='lxc.big')

    # -- helpers --------------------------------------------------------

    def _cleanup_server(self, server_id):
        # Deletes are casts here: wait for the container to go before the
        # computes stop, or the next test meets it.
        try:
            self._delete_server({'id': server_id})
        except Exception:
            pass

    def _driver(self, host):
        return self.computes[host].manager.driver

    def _run(self, host, name, *argv, check=True):
        return subprocess.run(
            ['lxc-attach', '-n', name, '-P', self._paths(host)[0], '--']
            + list(argv), capture_output=True, text=True, check=check)

    def _lxc_state(self, host, name):
        return subprocess.run(
            ['lxc-info', '-n', name, '-P', self._paths(host)[0], '-s', '-H'],
            capture_output=True, text=True).stdout.strip()

    def _server_on(self, host, flavor):
        server = self._build_server(image_uuid=self.image_id,
                                    flavor_id=flavor, networks='none',
                                    az='nova:%s' % host)
        server = self.api.post_server({'server': server})
        self.addCleanup(self._cleanup_server, server['id'])
        server = self._wait_for_state_change(server, 'ACTIVE')
        self.assertEqual(host, server['OS-EXT-SRV-ATTR:host'])
        return server

    def _name(self, server):
        return server['OS-EXT-SRV-ATTR:instance_name']

    def _mark(self, host, server, text):
        self._run(host, self._name(server), 'sh', '-c',
                  'echo %s > /root/marker && sync' % text)

    def _marker(self, host, server):
        """The marker's text; '' when it is missing."""
        out = self._run(host, self._name(server), 'sh', '-c',
                        'cat /root/marker 2>/dev/null; echo "-$?"')
        text, _sep, status = out.stdout.strip().rpartition('-')
        self.assertIn(status, ('0', '1'), out)
        return text.strip()

    def _assert_big_disks(self, host, server):
        """Root grown to lxc.big's 2 GiB, its new ephemeral disk on /mnt."""
        df = self._run(host, self._name(server), 'df', '-k', '/',
                       '/mnt').stdout.splitlines()[1:]
        blocks = [int(line.split()[1]) for line in df]
        self.assertGreater(blocks[0], 1.5 * 1024 * 1024)
        self.assertGreater(blocks[1], 0.8 * 1024 * 1024)

    def _leftovers(self, host, server):
        """What of the server is still on host (list of str)."""
        drv = self._driver(host)
        name, uuid = self._name(server), server['id']
        found = [p for p in (
            os.path.join(drv._lxc_path, name),
            os.path.join(drv._state_path, 'instances', uuid + '.json'))
            if os.path.lexists(p)]
        for cid, res in drv._ids.reservations(mine=True).items():
            if res.instance_uuid == uuid:
                found.append('ID reservation %d' % cid)
                found += [p for p in [os.path.join(drv._state_path,
                                                   'rootfs', str(cid))]
                          if os.path.lexists(p)]
        rootfs = os.path.join(drv._state_path, 'rootfs')
        found += ['mount %s' % p for p in mount.mountpoints()
                  if p.startswith(rootfs + '/')
                  and any(p.startswith(os.path.join(rootfs, str(c)) + '/')
                          for c in self._cids_of(host, uuid))]
        return found

    def _cids_of(self, host, uuid):
        rec = self._driver(host)._records.get(uuid)
        return [rec.cid] if rec else []

    def _migration_seconds(self, server, action, status):
        self.api.post_server_action(server['id'], action)
        return self._wait_for_state_change(server, status)


class TwoComputesTest(_MoveTestBase):

    def _start_lxc_compute(self, host):
        lxc_path, state_path = self._paths(host)
        self.flags(group='lxc', lxc_path=lxc_path, state_path=state_path)
        # Each compute its own node UUID: the harness has no compute_id
        # files, and Nova caches the first one process-wide.
        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.node.LOCAL_NODE_UUID', None))
        return self._start_compute(host)

    def _setup_compute_service(self):
        compute = super()._setup_compute_service()
        self.assertEqual(self._paths(HOSTS[0]),
                         (CONF.lxc.lxc_path, CONF.lxc.state_path))
        self.compute2 = self._start_lxc_compute(HOSTS[1])
        drivers = [c.manager.driver for c in (compute, self.compute2)]
        self.assertNotEqual(drivers[0]._state_path, drivers[1]._state_path)
        self.assertIsNotNone(nova.virt.node.LOCAL_NODE_UUID)
        return compute

    def test_cold_migrate_and_confirm(self):
        server = self._server_on(HOSTS[0], self.small)
        self._mark(HOSTS[0], server, 'migrate-me')
        server = self._migrate_server(server)
        self.assertEqual(HOSTS[1], server['OS-EXT-SRV-ATTR:host'])
        self.assertEqual('RUNNING', self._lxc_state(HOSTS[1],
                                                    self._name(server)))
        self.assertEqual('migrate-me', self._marker(HOSTS[1], server))
        # Until confirmed, the source keeps its disks, stopped.
        self.assertEqual('STOPPED', self._lxc_state(HOSTS[0],
                                                    self._name(server)))
        server = self._confirm_resize(server)
        self.assertEqual([], self._leftovers(HOSTS[0], server))
        self.assertEqual('migrate-me', self._marker(HOSTS[1], server))
        self._delete_server(server)
        self.assertEqual([], self._leftovers(HOSTS[1], server))

    def test_resize_up_and_confirm(self):
        server = self._server_on(HOSTS[0], self.small)
        self._mark(HOSTS[0], server, 'resize-me')
        server = self._resize_server(server, self.big)
        self.assertEqual(HOSTS[1], server['OS-EXT-SRV-ATTR:host'])
        self.assertEqual('resize-me', self._marker(HOSTS[1], server))
        self._assert_big_disks(HOSTS[1], server)
        server = self._confirm_resize(server)
        self.assertEqual('lxc.big', server['flavor']['original_name'])
        self.assertEqual([], self._leftovers(HOSTS[0], server))
        # It lives on, and restarts, on its new host.
        server = self._stop_server(server)
        server = self._start_server(server)
        self.assertEqual('resize-me', self._marker(HOSTS[1], server))

    def test_resize_revert(self):
        server = self._server_on(HOSTS[0], self.small)
        self._mark(HOSTS[0], server, 'keep-me')
        server = self._resize_server(server, self.big)
        self._mark(HOSTS[1], server, 'written-on-host2')
        server = self._revert_resize(server)
        self.assertEqual(HOSTS[0], server['OS-EXT-SRV-ATTR:host'])
        self.assertEqual('lxc.small', server['flavor']['original_name'])
        self.assertEqual('RUNNING', self._lxc_state(HOSTS[0],
                                                    self._name(server)))
        self.assertEqual('keep-me', self._marker(HOSTS[0], server))
        self.assertEqual([], self._leftovers(HOSTS[1], server))

    def test_resize_down_refused_server_stays_active(self):
        server = self._server_on(HOSTS[0], self.big)
        self._mark(HOSTS[0], server, 'still-here')
        # Same root disk, smaller ephemeral disk: Nova's API lets it
        # through; the driver refuses before powering off.
        smaller = self._create_flavor(memory_mb=512, vcpu=1, disk=2,
                                      ephemeral=0, name='lxc.no-eph')
        self.api.post_server_action(server['id'],
                                    {'resize': {'flavorRef': smaller}})
        self._wait_for_migration_status(server, ['error'])
        server = self._wait_for_state_change(server, 'ACTIVE')
        self.assertEqual(HOSTS[0], server['OS-EXT-SRV-ATTR:host'])
        self.assertEqual('lxc.big', server['flavor']['original_name'])
        self.assertEqual('RUNNING', self._lxc_state(HOSTS[0],
                                                    self._name(server)))
        self.assertEqual('still-here', self._marker(HOSTS[0], server))
        self.assertEqual([], self._leftovers(HOSTS[1], server))

    def test_evacuate(self):
        server = self._server_on(HOSTS[0], self.small)
        self._mark(HOSTS[0], server, 'on-the-failed-host')
        source = self.computes[HOSTS[0]]
        source.stop()
        service = self.admin_api.get_services(host=HOSTS[0],
                                              binary='nova-compute')[0]
        self.admin_api.put_service_force_down(service['id'], True)
        # Microversion 2.95 on: an evacuated server arrives stopped.
        server = self._evacuate_server(server, expected_host=HOSTS[1])
        self.assertEqual('STOPPED', self._lxc_state(HOSTS[1],
                                                    self._name(server)))
        server = self._start_server(server)
        # Rebuilt from its image: local disks stayed on the failed host.
        self.assertEqual('', self._marker(HOSTS[1], server))
        self._mark(HOSTS[1], server, 'after-evacuate')
        # The failed host comes back: Nova destroys its copy there.
        self.computes[HOSTS[0]] = self.restart_compute_service(source)
        self.admin_api.put_service_force_down(service['id'], False)
        self.assertEqual([], self._leftovers(HOSTS[0], server))
        self.assertEqual('RUNNING', self._lxc_state(HOSTS[1],
                                                    self._name(server)))
        self.assertEqual('after-evacuate', self._marker(HOSTS[1], server))


class SameHostResizeTest(_MoveTestBase):
    """One compute: Nova's allow_resize_to_same_host."""

    def setUp(self):
        self.flags(allow_resize_to_same_host=True)
        super().setUp()

    def _set_aside(self, server, old_cid):
        """What of the server's former container is left (list of str)."""
        drv = self._driver(HOSTS[0])
        uuid = server['id']
        found = [p for p in (
            os.path.join(drv._state_path, 'resize-sources', uuid + '.json'),
            os.path.join(drv._state_path, 'rootfs', str(old_cid)))
            if os.path.lexists(p)]
        res = drv._ids.reservation(old_cid)
        if res is not None and res.instance_uuid == uuid:
            found.append('ID reservation %d' % old_cid)
        return found

    def _resized(self, server, flavor):
        """Resize; returns (server, ID of the container set aside)."""
        [old] = self._cids_of(HOSTS[0], server['id'])
        server = self._resize_server(server, flavor)
        self.assertEqual(HOSTS[0], server['OS-EXT-SRV-ATTR:host'])
        # Both containers until confirm or revert, the new one running.
        self.assertNotEqual([old], self._cids_of(HOSTS[0], server['id']))
        self.assertEqual(3, len(self._set_aside(server, old)))
        self.assertEqual('RUNNING', self._lxc_state(HOSTS[0],
                                                    self._name(server)))
        return server, old

    def test_resize_up_and_confirm(self):
        server = self._server_on(HOSTS[0], self.small)
        self._mark(HOSTS[0], server, 'resize-me-here')
        server, old = self._resized(server, self.big)
        self.assertEqual('resize-me-here', self._marker(HOSTS[0], server))
        self._assert_big_disks(HOSTS[0], server)
        server = self._confirm_resize(server)
        self.assertEqual('lxc.big', server['flavor']['original_name'])
        self.assertEqual([], self._set_aside(server, old))
        self.assertEqual('RUNNING', self._lxc_state(HOSTS[0],
                                                    self._name(server)))
        server = self._stop_server(server)
        server = self._start_server(server)
        self.assertEqual('resize-me-here', self._marker(HOSTS[0], server))
        self._delete_server(server)
        self.assertEqual([], self._leftovers(HOSTS[0], server))

    def test_resize_revert(self):
        server = self._server_on(HOSTS[0], self.small)
        self._mark(HOSTS[0], server, 'keep-me-here')
        server, old = self._resized(server, self.big)
        new = self._cids_of(HOSTS[0], server['id'])
        self._mark(HOSTS[0], server, 'written-in-the-resized-one')
        server = self._revert_resize(server)
        self.assertEqual('lxc.small', server['flavor']['original_name'])
        self.assertEqual([old], self._cids_of(HOSTS[0], server['id']))
        self.assertEqual('RUNNING', self._lxc_state(HOSTS[0],
                                                    self._name(server)))
        self.assertEqual('keep-me-here', self._marker(HOSTS[0], server))
        drv = self._driver(HOSTS[0])
        self.assertFalse(os.path.lexists(os.path.join(
            drv._state_path, 'rootfs', str(new[0]))))
        self.assertFalse(os.path.lexists(os.path.join(
            drv._state_path, 'resize-sources', server['id'] + '.json')))
        self.assertFalse(drv._ids.reservation(old).resize_source)
        self.assertEqual([old], [
            cid for cid, res in drv._ids.reservations(mine=True).items()
            if res.instance_uuid == server['id']])
