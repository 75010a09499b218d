"""Shared set-up for functional tests: real LXC, as root, on this host.

Containers live under FUNC_ROOT so that a run never touches an operator's
/var/lib/novalxc; the image cache there is kept between runs.
"""

import os
import shutil
import subprocess
import threading
import time
import uuid

import fixtures
from nova import context as nova_context
from nova import exception as nova_exc
from nova import objects
from nova.tests.unit import fake_instance
from nova.virt import fake as fake_virt
from oslo_config import fixture as config_fixture
from oslotest import base

from novalxcdriver import conf
from novalxcdriver import driver
from novalxcdriver import mount
from tests import fake_glance
from tests.functional import rootfs_images
from tests import host_cleanup
from tests import unprivileged

CONF = conf.CONF
FUNC_ROOT = os.environ.get('NOVALXC_FUNC_ROOT', '/var/lib/novalxc-functional')
HOST = 'novalxc-functional'


def poll(predicate, timeout=30, interval=0.05):
    """predicate()'s first true value within timeout s, else its last."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def require_root(testcase):
    if os.geteuid() != 0:
        testcase.skipTest('functional tests need root and real LXC')


def new_driver(virtapi):
    """An LXCDriver on CONF's [lxc] paths, as the suite runs drivers.

    With NOVALXC_TEST_USER (tests/unprivileged.py): its directories
    given to that user as novalxc-prepare-host would, and every call
    into it made as that user.
    """
    account = unprivileged.user()
    if not account:
        return driver.LXCDriver(virtapi)
    unprivileged.prepare(account, CONF.lxc.lxc_path, CONF.lxc.state_path,
                         CONF.lxc.ids_path)
    unprivileged.refresh()
    return unprivileged.Driver(unprivileged.call_as(
        account, driver.LXCDriver, virtapi), account)


class DriverFixture(fixtures.Fixture):
    """An LXCDriver on FUNC_ROOT whose image fetch copies local tarballs.

    :ivar images: dict image id -> tarball path served by the fake fetch.
    :ivar fetches: list of image ids fetched (to count downloads).
    """

    def __init__(self, watch_interval=0, host=HOST, root=FUNC_ROOT):
        super().__init__()
        self.watch_interval = watch_interval
        self.host = host
        self.root = root

    def _setUp(self):
        objects.register_all()
        cfg = self.useFixture(config_fixture.Config(CONF))
        cfg.config(host=self.host)
        cfg.config(group='lxc', lxc_path=os.path.join(self.root, 'lxc'),
                   state_path=os.path.join(self.root, 'state'),
                   ids_path=os.path.join(self.root, 'state', 'ids'),
                   state_poll_interval=self.watch_interval,
                   soft_reboot_timeout=20)
        self.images = {}
        self.fetches = []
        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.images.fetch', self.fetch))
        # Glance's checked iterator: tarballs unpack as they download.
        self.useFixture(fixtures.MonkeyPatch(
            'novalxcdriver.download.chunks', self.chunks))
        self.events = []
        account = unprivileged.user()
        if account:
            # As nova-compute run by that user: its daemons through sudo.
            unprivileged.install()
            unprivileged.configure(
                lambda group, name, value: cfg.config(
                    group=group, **{name: value}))
            # oslotest's per-test TMPDIR is root's 0700.
            self.useFixture(fixtures.MonkeyPatch('tempfile.tempdir', None))
            self.addCleanup(shutil.rmtree, unprivileged.user_tempdir(
                account), ignore_errors=True)
        self.driver = new_driver(fake_virt.FakeVirtAPI())
        self.driver.register_event_listener(self.events.append)
        self.driver.init_host(self.host)
        self.addCleanup(self.driver.cleanup_host, self.host)

    def fetch(self, context, image_id, path, trusted_certs=None):
        self.fetches.append(image_id)
        if image_id not in self.images:
            raise nova_exc.ImageNotFound(image_id=image_id)
        # Glance's side (root's test files), then the driver's.
        with unprivileged.as_root():
            src = open(self.images[image_id], 'rb')
        with src, open(path, 'wb') as dst:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                dst.write(chunk)

    def chunks(self, context, image_id):
        self.fetches.append(image_id)
        if image_id not in self.images:
            raise nova_exc.ImageNotFound(image_id=image_id)
        # Opened now, as Glance's side (root's test files).
        with unprivileged.as_root():
            src = open(self.images[image_id], 'rb')
        return fake_glance.file_chunks(src)


class FunctionalTestCase(base.BaseTestCase):
    """Gives a driver, a context and helpers that check the real host."""

    watch_interval = 0
    host = HOST
    # True: a driver root of this test's own (for tests that act on the
    # whole state, which other tests share), removed after it.
    private_root = False
    # True (with private_root): that root is a symlink to a directory
    # beside it, as /var/lib/nova -> /srv/nova on a host.
    symlinked_root = False

    def setUp(self):
        super().setUp()
        require_root(self)
        root = FUNC_ROOT
        if self.private_root:
            root = os.path.join(FUNC_ROOT, 'private-%d' % os.getpid())
            real = root
            if self.symlinked_root:
                real = root + '-real'
                os.makedirs(real, mode=0o755, exist_ok=True)
                os.symlink(real, root)
                self.addCleanup(os.unlink, root)
            # Containers stopped and mounts undone first: never a delete
            # through a mount a failed test left.
            self.addCleanup(host_cleanup.force_clean, real)
        self.fx = self.useFixture(DriverFixture(self.watch_interval,
                                                self.host, root))
        self.driver = self.fx.driver
        self.ctxt = nova_context.get_admin_context()

    def add_image(self, path):
        image_id = str(uuid.uuid4())
        self.fx.images[image_id] = path
        return image_id

    def busybox_image(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        return self.add_image(
            rootfs_images.busybox_tarball(os.path.join(tmp, 'bb.tar.gz')))

    def image_meta(self, image_id, container_format='bare',
                   disk_format='raw'):
        return objects.ImageMeta.from_dict({
            'id': image_id, 'container_format': container_format,
            'disk_format': disk_format, 'properties': {}})

    def make_instance(self, **flavor):
        values = {'memory_mb': 256, 'vcpus': 1, 'root_gb': 1,
                  'ephemeral_gb': 0, 'swap': 0}
        values.update(flavor)
        inst_id = int(uuid.uuid4().int % 10 ** 8)
        instance = fake_instance.fake_instance_obj(
            self.ctxt, id=inst_id, uuid=str(uuid.uuid4()),
            hostname='server-%d' % inst_id, host=self.host,
            flavor=objects.Flavor(flavorid='1', name='test', extra_specs={},
                                  **values))
        instance.numa_topology = None
        # Make sure a failing test leaves nothing behind.
        self.addCleanup(self.driver.destroy, self.ctxt, instance, [])
        return instance

    def spawn(self, instance, image_id, power_on=True):
        self.driver.spawn(self.ctxt, instance, self.image_meta(image_id), [],
                          None, {}, network_info=[], power_on=power_on)

    def spawn_concurrently(self, instances, image_id, power_on=True):
        """Spawn every instance at once, one thread each; fail on errors."""
        errors = []

        def boot(instance):
            try:
                self.spawn(instance, image_id, power_on=power_on)
            except Exception as e:  # asserted below, in the test's thread
                errors.append(e)

        threads = [threading.Thread(target=boot, args=(i,))
                   for i in instances]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual([], errors)

    # -- checks on the real host ------------------------------------------

    def lxc_state(self, name):
        out = subprocess.run(
            ['lxc-info', '-n', name, '-P', CONF.lxc.lxc_path, '-s', '-H'],
            capture_output=True, text=True)
        return out.stdout.strip() or None

    def lxc_pid(self, name):
        out = subprocess.run(
            ['lxc-info', '-n', name, '-P', CONF.lxc.lxc_path, '-p', '-H'],
            capture_output=True, text=True, check=True)
        # Nothing while it is not running (a reboot from inside: between
        # its stop and its start, whatever the state read just before).
        return int(out.stdout.strip()) if out.stdout.strip() else None

    def attach(self, name, *argv, check=True):
        return subprocess.run(
            ['lxc-attach', '-n', name, '-P', CONF.lxc.lxc_path, '--']
            + list(argv), capture_output=True, text=True, check=check)

    def wait_for(self, predicate, timeout=30, interval=0.05):
        value = poll(predicate, timeout, interval)
        if not value:
            self.fail('condition not met within %ss' % timeout)
        return value

    def artifacts_of(self, instance, cid):
        """Every artifact of the container that still exists (list)."""
        state = CONF.lxc.state_path
        found = [p for p in (
            os.path.join(CONF.lxc.lxc_path, instance.name),
            os.path.join(state, 'rootfs', str(cid)),
            os.path.join(CONF.lxc.ids_path, str(cid))) if os.path.lexists(p)]
        found += mount.below(os.path.join(state, 'rootfs', str(cid)))
        found += host_cleanup.cgroups_of([instance.name])
        return found
