"""LXCAPITestCase: Nova's REST API harness with LXCDriver as its driver.

Nova's in-process harness (integrated_helpers._IntegratedTestBase) runs the
API, conductor, scheduler, placement and a nova-compute that loads
``compute_driver = novalxc.LXCDriver`` through the nova.virt.novalxc shim,
on the real host: real containers, as root.
"""

import io
import os
import subprocess
import sys
import tarfile

from nova.tests.functional import integrated_helpers
from vif_plug_ovs import privsep as vif_plug_privsep

from novalxcdriver import conf
from novalxcdriver import mount
from novalxcdriver import privsep
from tests.functional import base
from tests.functional import rootfs_images
from tests import host_cleanup

CONF = conf.CONF
# Per test process: concurrent workers each run their own nova-compute.
API_ROOT = os.path.join(base.FUNC_ROOT, 'api-%d' % os.getpid())


class LXCAPITestCase(integrated_helpers._IntegratedTestBase):
    """Nova's API and services, nova-compute running LXCDriver."""

    ADMIN_API = True
    microversion = 'latest'
    # Real threads (the driver's state watcher) and real commands.
    REQUIRES_LOCKING = True

    def setUp(self):
        base.require_root(self)
        # nova.test poisons /sys reads; this test runs real containers on
        # the real host, whose cgroups and namespaces the driver checks.
        self.useFixture(base.fixtures.MockPatch(
            'nova.tests.fixtures.SysFsPoisonFixture.inject_poison'))
        # Nova's harness refuses to start privsep helpers
        # (PrivsepNoHelperFixture): this root process runs the NIC
        # contexts' entry points itself.
        for context in privsep.CONTEXTS + (vif_plug_privsep.vif_plug,):
            context.set_client_mode(False)
            self.addCleanup(context.set_client_mode, True)
        # Registered first, so it runs last: after nova-compute stopped.
        # Containers stopped and mounts undone first: never a delete
        # through the mounts a failed test left (a plain rmtree did).
        self.addCleanup(host_cleanup.force_clean, self._api_root())
        super().setUp()

    def _setup_services(self):
        # nova's wheel installs its paste config under the environment's
        # prefix, not beside the package where nova.test looks for it.
        self.flags(group='wsgi', api_paste_config=os.path.join(
            sys.prefix, 'etc', 'nova', 'api-paste.ini'))
        super()._setup_services()

    def _api_root(self):
        """Directory of the driver's lxc_path and state_path."""
        return API_ROOT

    def _compute_flags(self):
        """Extra [DEFAULT] options of nova-compute (dict)."""
        return {}

    def _setup_compute_service(self):
        # Container names, and so LXC's cgroups (lxc.payload.<name>), are
        # host-wide, and every test numbers its instances from 1: two
        # test processes at once would both make instance-00000001.
        flags = {'instance_name_template': 'api%d-%%08x' % os.getpid()}
        flags.update(self._compute_flags())
        self.flags(compute_driver='novalxc.LXCDriver', **flags)
        root = self._api_root()
        self.flags(group='lxc', lxc_path=os.path.join(root, 'lxc'),
                   state_path=os.path.join(root, 'state'),
                   ids_path=os.path.join(root, 'ids'),
                   state_poll_interval=0.5, soft_reboot_timeout=20)
        return super()._setup_compute_service()

    def _rootfs_image(self, path):
        with open(path, 'rb') as f:
            image = self.glance.create(None, {
                'name': 'busybox-rootfs', 'container_format': 'bare',
                'disk_format': 'raw', 'status': 'active',
                'properties': {}}, data=io.BytesIO(f.read()))
        return image['id']

    def _busybox_image(self):
        tmp = self.useFixture(base.fixtures.TempDir()).path
        return self._rootfs_image(rootfs_images.busybox_tarball(
            os.path.join(tmp, 'busybox.tar.gz')))

    def _marked_busybox_image(self, name, content):
        """Upload a busybox rootfs with one file more; its image id.

        :param name: the file's path in the root.
        :param content: its text (str).
        """
        tmp = self.useFixture(base.fixtures.TempDir()).path
        plain = rootfs_images.busybox_tarball(os.path.join(tmp, 'bb.tar.gz'))
        path = os.path.join(tmp, 'marked.tar.gz')
        data = content.encode()
        with tarfile.open(plain) as src, tarfile.open(path, 'w:gz') as dst:
            for member in src.getmembers():
                dst.addfile(member, src.extractfile(member)
                            if member.isfile() else None)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
        return self._rootfs_image(path)

    def _lxc(self, tool, name, *args):
        return subprocess.run(
            [tool, '-n', name, '-P', CONF.lxc.lxc_path] + list(args),
            capture_output=True, text=True)

    def _state(self, name):
        return self._lxc('lxc-info', name, '-s', '-H').stdout.strip()

    def _pid(self, name):
        return int(self._lxc('lxc-info', name, '-p', '-H').stdout.strip())

    def _boot(self, image_id):
        server = self._build_server(image_uuid=image_id, flavor_id='1',
                                    networks='none')
        server = self.api.post_server({'server': server})
        self.addCleanup(self._cleanup_server, server['id'])
        return server

    def _cleanup_server(self, server_id):
        try:
            self.api.delete_server(server_id)
        except Exception:
            pass

    def _action(self, server, action, status):
        self.api.post_server_action(server['id'], action)
        return self._wait_for_state_change(server, status)

    def _leftovers(self, name, cid):
        state = CONF.lxc.state_path
        paths = [os.path.join(CONF.lxc.lxc_path, name),
                 os.path.join(state, 'rootfs', str(cid)),
                 os.path.join(CONF.lxc.ids_path, str(cid))]
        found = [p for p in paths if os.path.lexists(p)]
        found += [p for p in mount.mountpoints()
                  if p.startswith(os.path.join(state, 'rootfs', str(cid)))]
        return found
