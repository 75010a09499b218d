"""Rescue and unrescue through Nova's REST API, on real containers.

``openstack server rescue`` boots a rescue image in the server's
container with the server's own root on /mnt; unrescue boots the server
from its root again. Each step is checked on the real container: what
runs, what /mnt and the config drive hold, the idmap, the container ID,
the server's disk on the host, and what is left on the host.
"""

import hashlib
import json
import os
import stat

from novalxcdriver import conf
from novalxcdriver import mount
from novalxcdriver import rescue
from novalxcdriver import rootfs
from tests.functional.api import base as api_base
from tests.functional import base

CONF = conf.CONF
MARKER = 'rescue-marker'


def _tree(top):
    """Everything under top, as sorted tuples.

    :returns: (path, mode, uid, gid, size, mtime, sha256 of the content
        of a file) of each entry.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            digest = None
            if stat.S_ISREG(st.st_mode):
                with open(path, 'rb') as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            found.append((os.path.relpath(path, top), st.st_mode, st.st_uid,
                          st.st_gid, st.st_size, st.st_mtime_ns, digest))
    return sorted(found)


class LXCRescueTest(api_base.LXCAPITestCase):
    """Rescue and unrescue of busybox servers through the API.

    Each test deletes its server itself and checks the host: the
    harness's cleanup neither waits for a delete nor checks it, then
    removes its directories, through a root still mounted if the delete
    never reached the driver.
    """

    def setUp(self):
        super().setUp()
        self.image_id = self._busybox_image()

    def _boot_with_data(self, config_drive=False):
        """An ACTIVE server with /root/keep written from inside.

        :returns: (server, its container name, its container ID).
        """
        server = self._build_server(image_uuid=self.image_id, flavor_id='1',
                                    networks='none')
        server['config_drive'] = config_drive
        server = self.api.post_server({'server': server})
        self.addCleanup(self._cleanup_server, server['id'])
        self.admin_pass = server.get('adminPass')
        server = self._wait_for_state_change(server, 'ACTIVE')
        name = server['OS-EXT-SRV-ATTR:instance_name']
        self._run(name, 'echo data > /root/keep && chmod 640 /root/keep')
        return (server, name,
                self.compute.manager.driver._ids.find(server['id']))

    def _run(self, name, script):
        """stdout of script run by sh in the container; fails on error."""
        result = self._lxc('lxc-attach', name, '--', 'sh', '-c', script)
        self.assertEqual(0, result.returncode, result.stderr)
        return result.stdout

    def _uid_map(self, name):
        with open('/proc/%d/uid_map' % self._pid(name)) as f:
            return f.read().split()

    def _rescue(self, server, **body):
        self.api.post_server_action(server['id'], {'rescue': body})
        return self._wait_for_state_change(server, 'RESCUE')

    def _rescue_artifacts(self, cid):
        """The rescue root and mounts below it, if any."""
        path = rescue.root_of(rootfs.Rootfs(CONF.lxc.state_path, cid)).path
        found = [path] if os.path.lexists(path) else []
        return found + [p for p in mount.mountpoints()
                        if p.startswith(path + '/')]

    def test_rescue_and_unrescue(self):
        server, name, cid = self._boot_with_data(config_drive=True)
        rescue_image = self._marked_busybox_image(MARKER, 'rescue\n')
        root = rootfs.Rootfs(CONF.lxc.state_path, cid)
        uid_map = self._uid_map(name)
        # The server's own disk as its last boot left it.
        upper = _tree(root.upper)
        config_drive = _tree(os.path.join(root.path, 'config-drive'))

        server = self._rescue(server, adminPass='rescue-pw',
                              rescue_image_ref=rescue_image)
        self.assertEqual('RUNNING', self._state(name))
        self.assertEqual(cid,
                         self.compute.manager.driver._ids.find(server['id']))
        self.assertEqual(uid_map, self._uid_map(name))
        # The rescue image runs, on a root of its own.
        self.assertEqual('rescue\n', self._run(name, 'cat /' + MARKER))
        self._run(name, '! test -e /root/keep')
        # The server's root on /mnt, owners as the server sees them.
        self.assertEqual('data\n0 0 640\n', self._run(
            name, 'cat /mnt/root/keep; stat -c "%u %g %a" /mnt/root/keep'))
        # Nova's rescue password, in the rescue's config drive.
        meta = json.loads(self._run(
            name, 'cat /config-drive/openstack/latest/meta_data.json'))
        self.assertEqual('rescue-pw', meta['admin_pass'])
        self.assertEqual(server['id'], meta['uuid'])
        self._run(name, 'echo scratch > /root/scratch')

        server = self._action(server, {'unrescue': None}, 'ACTIVE')
        self.assertEqual('RUNNING', self._state(name))
        self.assertEqual(cid,
                         self.compute.manager.driver._ids.find(server['id']))
        self.assertEqual(uid_map, self._uid_map(name))
        self.assertEqual('data\n', self._run(name, 'cat /root/keep'))
        self._run(name, '! test -e /%s && ! test -e /root/scratch' % MARKER)
        # Entering and leaving changed nothing of the server's disk.
        self.assertEqual(upper, _tree(root.upper))
        self.assertEqual(config_drive,
                         _tree(os.path.join(root.path, 'config-drive')))
        meta = json.loads(self._run(
            name, 'cat /config-drive/openstack/latest/meta_data.json'))
        self.assertEqual(self.admin_pass, meta.get('admin_pass'))
        self.assertEqual([], self._rescue_artifacts(cid))
        record = self.compute.manager.driver._records.get(server['id'])
        self.assertEqual('', record.rescue_image_id)
        self._delete_server(server)
        self.assertEqual([], self._leftovers(name, cid))

    def test_rescue_then_delete_leaves_nothing(self):
        server, name, cid = self._boot_with_data()
        # No image asked: Nova picks the server's own.
        self._rescue(server)
        self.assertEqual('RUNNING', self._state(name))
        self.assertEqual('data\n', self._run(name, 'cat /mnt/root/keep'))
        self._run(name, '! test -e /root/keep')
        self.assertNotEqual([], self._rescue_artifacts(cid))
        self._delete_server(server)
        self.assertEqual('', self._state(name))
        self.assertEqual([], self._leftovers(name, cid))

    def test_restart_while_rescued(self):
        server, name, cid = self._boot_with_data()
        rescue_image = self._marked_busybox_image(MARKER, 'rescue\n')
        server = self._rescue(server, rescue_image_ref=rescue_image)
        # A host reboot: the container is gone, and so are its mounts.
        # Nova must not hear of the stop before its restart (it would
        # record the server shut off and not resume it). The running
        # compute registered its listener at init_host: the flag alone
        # only keeps the restarted one from registering again.
        self.compute.manager.driver.register_event_listener(None)
        self.flags(handle_virt_lifecycle_events=False, group='workarounds')
        self.flags(resume_guests_state_on_host_boot=True)
        self._lxc('lxc-stop', name, '-k')
        rootfs.Rootfs(CONF.lxc.state_path, cid).unmount()
        self.assertEqual([], [p for p in mount.mountpoints()
                              if p.startswith(CONF.lxc.state_path + '/')])

        self.compute = self.restart_compute_service(self.compute)
        # init_host remounted both roots; Nova resumed the rescue.
        self.assertEqual('RUNNING',
                         base.poll(lambda: self._state(name) == 'RUNNING' and
                                   'RUNNING'))
        self.assertEqual('RESCUE', self.api.get_server(server['id'])[
            'status'])
        self.assertEqual('rescue\n', self._run(name, 'cat /' + MARKER))
        self.assertEqual('data\n', self._run(name, 'cat /mnt/root/keep'))

        self._action(server, {'unrescue': None}, 'ACTIVE')
        self.assertEqual('data\n', self._run(name, 'cat /root/keep'))
        self._run(name, '! test -e /' + MARKER)
        self.assertEqual([], self._rescue_artifacts(cid))
        self._delete_server(server)
        self.assertEqual([], self._leftovers(name, cid))
