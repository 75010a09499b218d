"""One LXCDriver on the benchmark's own paths, and raw LXC beside it.

``Harness`` is what nova-compute would hold: one driver, shared by every
thread, with ``[lxc]`` paths under the benchmark root (never an operator's
/var/lib/novalxc nor the functional tests' root) and Glance replaced by a
copy of a local tarball. ``RawContainer`` is the physical floor: the same
container (made by driver.spawn(power_on=False) before the clock starts, so
the same lxc.conf, root disk and idmapped overlay root) started with a bare
``lxc-start -d``, so the difference between the two is what the driver
adds.
"""

import contextlib
import functools
import importlib
import itertools
import os
import re
import shutil
import subprocess
import threading
import time
import uuid

from nova import context as nova_context
from nova import objects
from nova.tests.unit import fake_instance
from nova.virt import fake as fake_virt
import nova.virt.images
from oslo_privsep import daemon as privsep_daemon

from novalxcdriver import conf
from novalxcdriver import container as container_mod
from novalxcdriver import download
from novalxcdriver import driver as driver_mod
from novalxcdriver import lxc
from novalxcdriver import mount
from novalxcdriver import rootfs as rootfs_mod
from tests import host_cleanup

CONF = conf.CONF
HOST = 'novalxc-bench'
# Every container of the benchmark is named with this prefix, so its
# cgroups and any leftover can be told from anyone else's.
PREFIX = 'nlxbench-'
# systemctl is-system-running answers these once boot has finished.
BOOTED_STATES = ('running', 'degraded')


class PhaseTimer:
    """Seconds spent in chosen driver functions, per calling thread.

    Wrapping costs about a microsecond per call; it lets the report say
    where a spawn's time goes without a profiler's distortion.
    """

    def __init__(self):
        self._local = threading.local()
        self._undo = []

    def _add(self, label, seconds):
        phases = getattr(self._local, 'phases', None)
        if phases is not None:
            phases[label] = phases.get(label, 0.0) + seconds

    def wrap(self, owner, attr, label):
        """Time every call of owner.attr (a module or class attribute)."""
        orig = getattr(owner, attr)

        @functools.wraps(orig)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return orig(*args, **kwargs)
            finally:
                self._add(label, time.perf_counter() - start)
        setattr(owner, attr, timed)
        self._undo.append((owner, attr, orig))

    def wrap_counted(self, owner, attr, label_of):
        """Time and count every call of owner.attr by its label.

        :param label_of: callable(args) naming the call from its
            positional arguments; 'calls <label>' counts them.
        """
        orig = getattr(owner, attr)

        @functools.wraps(orig)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return orig(*args, **kwargs)
            finally:
                label = label_of(args)
                self._add(label, time.perf_counter() - start)
                self._add('calls ' + label, 1)
        setattr(owner, attr, timed)
        self._undo.append((owner, attr, orig))

    def wrap_commands(self, owner, attr):
        """Time each external command by name: 'command <argv[0]>'."""
        self.wrap_counted(owner, attr, lambda argv: (
            'command ' + os.path.basename(str(argv[0]))))

    def wrap_privsep(self, owner, attr):
        """Time each privsep call by entry point: 'privsep <name>'.

        owner.attr is oslo.privsep's client channel's remote_call(self,
        name, ...), which every entry point's call goes through, named by
        its qualified name.
        """
        self.wrap_counted(owner, attr, lambda args: (
            'privsep ' + str(args[1]).rpartition('.')[2]))

    @contextlib.contextmanager
    def collect(self):
        """Yield a dict that fills with label -> seconds for this thread."""
        phases = {}
        self._local.phases = phases
        try:
            yield phases
        finally:
            self._local.phases = None

    def unwrap(self):
        for owner, attr, orig in reversed(self._undo):
            setattr(owner, attr, orig)
        self._undo = []


# What a spawn and a destroy are made of. The leaves do not overlap;
# 'rootfs' contains the disk and mount leaves; 'idmapped mount' includes
# the user namespace the storage daemon makes for it.
SPAWN_LEAVES = ('image lookup', 'ID reservation', 'root disk',
                'idmapped mount', 'overlay mount',
                'lxc-info', 'lxc-start')
DESTROY_LEAVES = ('lxc-info', 'lxc-stop -k', 'rootfs unmount+delete',
                  'ID lookup', 'ID release')
# (owner, attribute, label); owners the driver does not have (yet) are
# skipped, so the benchmark follows the driver as it changes.
_TIMED = (
    ('novalxcdriver.images', 'ImageCache.get', 'image lookup'),
    ('novalxcdriver.ids', 'IdAllocator.allocate', 'ID reservation'),
    ('novalxcdriver.disk', 'Disk.create', 'root disk'),
    ('novalxcdriver.mount', 'idmapped_bind', 'idmapped mount'),
    ('novalxcdriver.mount', 'overlay', 'overlay mount'),
    ('novalxcdriver.rootfs', 'Rootfs.create', 'rootfs'),
    ('novalxcdriver.lxc', 'info', 'lxc-info'),
    ('novalxcdriver.lxc', 'start', 'lxc-start'),
    ('novalxcdriver.lxc', 'kill', 'lxc-stop -k'),
    ('novalxcdriver.rootfs', 'Rootfs.destroy', 'rootfs unmount+delete'),
    ('novalxcdriver.ids', 'IdAllocator.find', 'ID lookup'),
    ('novalxcdriver.ids', 'IdAllocator.release', 'ID release'),
    # A snapshot (bench.snapshot) and the unpack of a new image.
    ('novalxcdriver.snapshot', 'Snapshot.take', 'snapshot take'),
    ('novalxcdriver.privsep.disks', 'sync_filesystem', 'syncfs'),
    ('novalxcdriver.privsep.disks', 'snapshot_subvolume', 'btrfs snapshot'),
    ('novalxcdriver.mount', 'overlay_readonly', 'snapshot view mount'),
    ('novalxcdriver.snapshot', 'Snapshot.cleanup', 'snapshot cleanup'),
    # A fetched image's unpack: by the storage_admin daemon's confined
    # child (tarballs), timed around nova-compute's side of it.
    ('novalxcdriver.images', 'ImageCache._unpack', 'image unpack'),
    # A cold migration (bench.migration).
    ('novalxcdriver.container', 'Container.stop', 'container stop'),
    ('novalxcdriver.rootfs', 'Rootfs.unmount', 'rootfs unmount'),
    ('novalxcdriver.migration', 'fetch', 'migration copy'),
    ('novalxcdriver.rootfs', 'Rootfs.mount', 'rootfs mount'),
    ('novalxcdriver.disk', 'Disk.grow', 'disk grow'),
    ('novalxcdriver.container', 'Container.start', 'container start'),
)


def _instrument(timer):
    for module_name, path, label in _TIMED:
        try:
            owner = importlib.import_module(module_name)
        except ImportError:
            continue
        *owners, attr = path.split('.')
        for name in owners:
            owner = getattr(owner, name, None)
        if owner is not None and hasattr(owner, attr):
            timer.wrap(owner, attr, label)
    # What nova-compute's process still runs itself goes through
    # lxc.execute; every root operation is a call to a privsep daemon.
    timer.wrap_commands(lxc, 'execute')
    timer.wrap_privsep(privsep_daemon._ClientChannel, 'remote_call')


def run(argv, timeout=120, check=True):
    """Run argv (no shell); return stdout as text."""
    return subprocess.run(argv, capture_output=True, text=True,
                          timeout=timeout, check=check).stdout


# Checks of a container by name under any lxc_path: the Harness's own, or
# an all-in-one nova-compute's (bench.api_density).

def system_state(name, lxc_path):
    """systemctl is-system-running inside the container ('' if none)."""
    return run(['lxc-attach', '-n', name, '-P', lxc_path, '--',
                'systemctl', 'is-system-running'], check=False).strip()


def cgroup_memory(name, lxc_path):
    """The running container's memory cgroup figures, bytes.

    Read through lxc-cgroup, which asks the container's monitor for its
    cgroup (cgroup v1 keys).

    :returns: dict with usage (memory.usage_in_bytes) and memory.stat's
        total_rss, total_cache, total_shmem, total_mapped_file.
    :raises subprocess.CalledProcessError: no such running container.
    """
    def read(key):
        return run(['lxc-cgroup', '-n', name, '-P', lxc_path, key])
    result = {'usage': int(read('memory.usage_in_bytes'))}
    for line in read('memory.stat').splitlines():
        key, _sep, value = line.partition(' ')
        if key in ('total_rss', 'total_cache', 'total_shmem',
                   'total_mapped_file'):
            result[key[len('total_'):]] = int(value)
    return result


class Harness:
    """An LXCDriver under root, and raw LXC containers on the same paths.

    :param root: the benchmark's directory ([lxc] lxc_path is root/lxc,
        state_path root/state).
    :param images: the bench.images.BenchImage list the fake Glance
        serves.
    """

    def __init__(self, root, images):
        self.root = root
        self.lxc_path = os.path.join(root, 'lxc')
        self.state_path = os.path.join(root, 'state')
        self.images = {i.image_id: i for i in images}
        objects.register_all()
        CONF.set_override('host', HOST)
        CONF.set_override('instance_name_template', PREFIX + '%08x')
        CONF.set_override('lxc_path', self.lxc_path, group='lxc')
        CONF.set_override('state_path', self.state_path, group='lxc')
        # No state watcher: its lxc-ls scans would load the host.
        CONF.set_override('state_poll_interval', 0, group='lxc')
        self._orig_fetch = nova.virt.images.fetch
        nova.virt.images.fetch = self._fetch
        self._orig_chunks = download.chunks
        download.chunks = self._chunks
        # bench.firstboot's HTTP stand-in for Glance while it measures;
        # None: images come from their tarballs, untimed.
        self.glance = None
        self.context = nova_context.get_admin_context()
        self.driver = driver_mod.LXCDriver(fake_virt.FakeVirtAPI())
        self.driver.init_host(HOST)
        self.timer = PhaseTimer()
        _instrument(self.timer)
        # The fake Glance download, for spawns of an image not cached.
        self.timer.wrap(nova.virt.images, 'fetch', 'image fetch')
        # Instance ids (and so names) unique within a run; leftovers of an
        # earlier run are destroyed before anything starts.
        self._ids = itertools.count(1)

    def close(self):
        self.timer.unwrap()
        self.driver.cleanup_host(HOST)
        nova.virt.images.fetch = self._orig_fetch
        download.chunks = self._orig_chunks

    def _fetch(self, context, image_id, path, trusted_certs=None):
        # What Glance would do: the tarball's bytes at path (untimed: the
        # image is cached before any measurement).
        if self.glance is not None:
            return self.glance.fetch(image_id, path)
        shutil.copyfile(self.images[image_id].tarball, path)

    def _chunks(self, context, image_id):
        # No stream unless bench.firstboot serves one: _fetch then.
        if self.glance is not None:
            return self.glance.chunks(image_id)
        return None

    # -- images ----

    def cache(self, image):
        """Fetch and unpack image into the driver's cache (if not yet).

        :returns: images.CachedImage (its size is the unpacked bytes).
        """
        return self.driver._images.get(
            image.image_id,
            lambda dest: self._fetch(None, image.image_id, dest))

    def drop_stale_images(self, keep=None):
        """Remove cached images the current tarballs no longer produce.

        :param keep: image ids to keep (default: those of self.images).
        """
        keep = set(self.images) if keep is None else set(keep)
        top = os.path.join(self.state_path, 'images')
        if not os.path.isdir(top):
            return
        for name in os.listdir(top):
            if name not in keep and not name.startswith('.'):
                shutil.rmtree(os.path.join(top, name), ignore_errors=True)

    def image_meta(self, image):
        return objects.ImageMeta.from_dict({
            'id': image.image_id, 'container_format': 'bare',
            'disk_format': 'raw', 'properties': {}})

    # -- the driver ----

    def make_instance(self, root_gb=1):
        """A Nova instance of the aio's lxc.tiny flavor (no database).

        256 MiB, 1 vCPU, a 1 GiB root disk: what a cloud user boots.

        :param root_gb: GiB of its root disk, for servers that hold more.
        """
        inst_id = next(self._ids)
        flavor = objects.Flavor(
            flavorid='bench', name='bench', memory_mb=256, vcpus=1,
            root_gb=root_gb, ephemeral_gb=0, swap=0, extra_specs={})
        instance = fake_instance.fake_instance_obj(
            self.context, id=inst_id, uuid=str(uuid.uuid4()),
            hostname='bench-%d' % inst_id, host=HOST, flavor=flavor)
        # Not in the fake's database row; a real instance loads None.
        instance.numa_topology = None
        return instance

    def spawn(self, instance, image):
        """driver.spawn, timed.

        :returns: (seconds, phases dict of label -> seconds).
        """
        with self.timer.collect() as phases:
            start = time.perf_counter()
            self.driver.spawn(self.context, instance, self.image_meta(image),
                              [], None, {}, network_info=[])
            seconds = time.perf_counter() - start
        return seconds, phases

    def destroy(self, instance):
        """driver.destroy (kill and remove every artifact), timed.

        :returns: (seconds, phases dict).
        """
        with self.timer.collect() as phases:
            start = time.perf_counter()
            self.driver.destroy(self.context, instance, [])
            seconds = time.perf_counter() - start
        return seconds, phases

    # -- raw LXC ----

    def prepare_raw(self, image):
        """A RawContainer for image, ready to start (untimed set-up)."""
        return RawContainer(self, image)

    # -- checks on the host ----

    def state(self, name):
        """lxc-info's state of the container, or None."""
        return run(['lxc-info', '-n', name, '-P', self.lxc_path, '-s', '-H'],
                   check=False).strip() or None

    def system_state(self, name):
        """systemctl is-system-running inside the container ('' if none)."""
        return system_state(name, self.lxc_path)

    def wait_booted(self, name, timeout=120, interval=0.05):
        """Poll until systemd reports running or degraded.

        Polls as tests/functional DebianTest does (lxc-attach every
        interval seconds).

        :returns: monotonic time at which it was seen booted.
        :raises TimeoutError: not booted within timeout seconds.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.system_state(name) in BOOTED_STATES:
                return time.perf_counter()
            time.sleep(interval)
        raise TimeoutError('%s: systemd not running after %ss'
                           % (name, timeout))

    def cgroup_memory(self, name):
        """The container's memory cgroup figures (see cgroup_memory)."""
        return cgroup_memory(name, self.lxc_path)

    # -- cleanup ----

    def destroy_everything(self):
        """Destroy every container and artifact under the benchmark root.

        Used before a run (leftovers of a killed one) and after it, even on
        failure. Goes through the driver's own Container.destroy, which
        knows every artifact; the image cache is kept.
        """
        destroy_all(self.driver, self.lxc_path, self.state_path)

    def leaks(self):
        """Whatever of the benchmark's containers is left on the host.

        :returns: dict of kind -> list (all empty when nothing leaked):
            containers LXC knows, container directories, rootfs
            directories, ID reservations, instance records, snapshot
            uploads, mounts under the root, cgroups named after the
            benchmark's containers.
        """
        found = {
            'containers': run(['lxc-ls', '-P', self.lxc_path],
                              check=False).split(),
            'container dirs': _listdir(self.lxc_path),
            'rootfs dirs': _listdir(os.path.join(self.state_path,
                                                 'rootfs')),
            # The machine's directory ([lxc] ids_path): the driver's own.
            'reservations': sorted(
                str(cid) for cid, res in
                self.driver._ids.reservations(mine=True).items()
                if res.instance_uuid is not None),
            'records': _listdir(os.path.join(self.state_path, 'instances')),
            # bench.snapshot's kept uploads (shelved images).
            'snapshot uploads': _listdir(os.path.join(self.root,
                                                      'snapshot-uploads')),
            'mounts': sorted(p for p in mount.mountpoints()
                             if p.startswith(self.root + '/')),
            # At the root and under [lxc] cgroup_parent (lxc.cgroup.dir).
            'cgroups': host_cleanup.cgroups_matching(
                re.escape(PREFIX) + '.*'),
        }
        return found


def driver_on(lxc_path, state_path, host):
    """Another LXCDriver in this process, on its own paths (init_host'ed).

    Another host's driver, as Nova would run one there; it shares the
    machine's ids_path. CONF keeps the Harness's paths afterwards.
    """
    own = CONF.lxc.lxc_path, CONF.lxc.state_path
    CONF.set_override('lxc_path', lxc_path, group='lxc')
    CONF.set_override('state_path', state_path, group='lxc')
    try:
        drv = driver_mod.LXCDriver(fake_virt.FakeVirtAPI())
        drv.init_host(host)
    finally:
        CONF.set_override('lxc_path', own[0], group='lxc')
        CONF.set_override('state_path', own[1], group='lxc')
    return drv


def destroy_all(drv, lxc_path, state_path):
    """Destroy every container and root of drv's (its paths given).

    Through the driver's own Container.destroy, which knows every
    artifact; only drv's own ID reservations (ids_path is machine-wide,
    and another service's, an all-in-one's, are not the bench's). The
    image cache is kept.
    """
    container = drv._container_of
    for instance_uuid, record in drv._records.all().items():
        container(record.name, instance_uuid).destroy()
    for name, record in container_mod.config_records(lxc_path).items():
        if record.get('instance_uuid'):
            container(name, record['instance_uuid']).destroy()
    for cid, res in drv._ids.reservations(mine=True).items():
        if res.instance_name:
            container(res.instance_name, res.instance_uuid).destroy()
        rootfs_mod.Rootfs(state_path, cid).destroy()
        drv._ids.release(cid)
    for cid in rootfs_mod.existing_ids(state_path):
        rootfs_mod.Rootfs(state_path, cid).destroy()
    for name in _listdir(lxc_path):
        # A directory without config: lxc-stop cannot know it.
        shutil.rmtree(os.path.join(lxc_path, name))


def retire_driver(drv, lxc_path, state_path, host):
    """End a driver_on driver: destroy_all, then cleanup_host(host).

    cleanup_host runs whatever destroy_all raised.
    """
    try:
        destroy_all(drv, lxc_path, state_path)
    finally:
        drv.cleanup_host(host)


def _listdir(path):
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


class RawContainer:
    """The same container as the driver's, prepared ahead, started raw.

    driver.spawn(power_on=False) makes it before the clock starts, so its
    lxc.conf, root disk and idmapped overlay root are exactly what the
    driver's own spawn makes; only ``lxc-start -d`` and ``lxc-stop -k``
    are timed, run directly with subprocess.
    """

    def __init__(self, harness, image):
        self.h = harness
        self.instance = harness.make_instance()
        self.name = self.instance.name
        try:
            harness.driver.spawn(harness.context, self.instance,
                                 harness.image_meta(image), [], None, {},
                                 network_info=[], power_on=False)
        except Exception:
            self.remove()
            raise

    def start(self):
        """lxc-start -d; returns seconds."""
        start = time.perf_counter()
        run(['lxc-start', '-n', self.name, '-P', self.h.lxc_path, '-d'])
        return time.perf_counter() - start

    def kill(self):
        """lxc-stop -k; returns seconds."""
        start = time.perf_counter()
        run(['lxc-stop', '-n', self.name, '-P', self.h.lxc_path, '-k'])
        return time.perf_counter() - start

    def remove(self):
        """Remove everything through driver.destroy (untimed)."""
        self.h.driver.destroy(self.h.context, self.instance, [])
