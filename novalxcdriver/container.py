"""Container: the model of one LXC container and every artifact it owns.

Artifacts of a container named N with container ID C:

- ``<state_path>/ids/C``           its ID reservation (ids.IdAllocator)
- ``<state_path>/rootfs/C``        its copy-on-write root (rootfs.Rootfs)
- ``<lxc_path>/N/config``          lxc.conf, carrying the driver's record
- ``<lxc_path>/N/*.log``           console and LXC logs
- ``<lxc_path>/N/suspended``       marks a freeze made by Nova's suspend
- cgroups                          made and removed by LXC itself

They are created in that order and removed in the reverse one, so any
crash leaves a state that ``destroy`` recognises and finishes cleaning.
The veth pairs of its NICs are the driver's (vif.py): the config only
names them (``nics``), and LXC moves them in and out at start and stop.
"""

import math
import os
import shutil
import time

from oslo_concurrency import lockutils
from oslo_log import log as logging
from oslo_utils import excutils

from novalxcdriver import conf
from novalxcdriver import exception
from novalxcdriver import host
from novalxcdriver import limits as limits_mod
from novalxcdriver import lxc
from novalxcdriver import rootfs as rootfs_mod
from novalxcdriver import spec as spec_mod
from novalxcdriver import throttle

CONF = conf.CONF
LOG = logging.getLogger(__name__)

CONSOLE_OUTPUT_MAX = 100 * 1024  # bytes, like libvirt's console log tail.


class Container:
    """One container, named after its Nova instance.

    :param name: the LXC name (instance.name); checked by spec.check_name.
    :param instance_uuid: the Nova instance it belongs to.
    :param ids: the host's ids.IdAllocator.
    """

    def __init__(self, name, instance_uuid, lxc_path, state_path, ids):
        self.name = spec_mod.check_name(name)
        self.instance_uuid = instance_uuid
        self.lxc_path = lxc_path
        self.state_path = state_path
        self.ids = ids
        self.dir = os.path.join(lxc_path, name)
        self.config_path = os.path.join(self.dir, 'config')
        self._suspended_path = os.path.join(self.dir, 'suspended')

    # -- what exists --------------------------------------------------

    def record(self):
        """The driver's record from the config ({} when there is none)."""
        try:
            with open(self.config_path) as f:
                return spec_mod.parse_record(f.read())
        except FileNotFoundError:
            return {}

    def exists(self):
        """True once create() has written the config (until destroy)."""
        return os.path.exists(self.config_path)

    def cid(self):
        """This container's ID: from its record, else its reservation."""
        return self.record().get('id', self.ids.find(self.instance_uuid))

    def nics(self):
        """The NICs its config gives it: tuple of spec.NicSpec."""
        try:
            with open(self.config_path) as f:
                return spec_mod.parse_nics(f.read())
        except FileNotFoundError:
            return ()

    def set_nics(self, nics):
        """Rewrite the config with these NICs (renumbered, names kept).

        LXC reads them at the container's next start; a running
        container's NICs are the caller's business (vif.hot_plug).
        """
        with open(self.config_path) as f:
            text = spec_mod.with_nics(f.read(), nics)
        tmp = self.config_path + '.tmp'
        with open(tmp, 'w') as f:
            f.write(text)
        os.rename(tmp, self.config_path)

    def rootfs(self):
        cid = self.cid()
        return None if cid is None else rootfs_mod.Rootfs(self.state_path,
                                                          cid)

    # -- creation -------------------------------------------------------

    def create(self, spec, image, root_gb=0, ephemeral_gb=0):
        """Build the rootfs and write the config; the container stays stopped.

        On any failure everything made so far is removed.

        :param spec: the spec.ContainerSpec (its cid already reserved).
        :param image: images.CachedImage the rootfs is built on.
        :param root_gb: GiB of the root disk (0: unbounded, no disk).
        :param ephemeral_gb: GiB of the ephemeral disk (0: none).
        :raises ContainerExists: a container of that name exists already.
        """
        os.makedirs(self.lxc_path, mode=0o711, exist_ok=True)
        try:
            os.mkdir(self.dir, 0o700)
        except FileExistsError:
            raise exception.ContainerExists(name=self.name)
        root = rootfs_mod.Rootfs(self.state_path, spec.cid)
        try:
            root.create(image.rootfs, spec.idmap, root_gb, ephemeral_gb)
            # systemd sets the hostname from /etc/hostname over lxc.uts.name;
            # an image carries its build host's.
            root.write_etc_file('hostname', spec.hostname + '\n',
                                spec.idmap)
            tmp = self.config_path + '.tmp'
            with open(tmp, 'w') as f:
                f.write(spec_mod.render_config(spec))
            os.rename(tmp, self.config_path)
        except BaseException:
            self._remove_quietly(root)
            raise

    def _remove_quietly(self, root):
        try:
            root.destroy()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def ensure_rootfs(self, image_cache):
        """Remount the rootfs if missing (after a host reboot).

        :raises ContainerNotFound: the container or its image is gone
            (a destroy may run meanwhile in another process).
        """
        cid = self.record().get('id')
        if cid is None:
            raise exception.ContainerNotFound(name=self.name)
        with self._lock(cid):
            # Read again: a destroy that held the lock may have finished.
            record = self.record()
            if record.get('id') != cid or 'image_id' not in record:
                raise exception.ContainerNotFound(name=self.name)
            image = image_cache.lookup(record['image_id'])
            if image is None:
                raise exception.ContainerNotFound(name=self.name)
            try:
                rootfs_mod.Rootfs(self.state_path, cid).mount(
                    image.rootfs, self.ids.idmap(cid))
            except exception.NovaLXCError:
                # Its disks went without the lock (a crash, by hand).
                if not self.exists():
                    raise exception.ContainerNotFound(name=self.name)
                raise

    def _lock(self, cid):
        """External lock of container ID cid: its destroy and remount.

        Another driver process's init_host remounts the roots of the
        records it finds; without the lock it could remount one that a
        destroy here is taking apart. Keyed by ID: a bounded set of files.
        """
        return lockutils.lock('novalxc-container-%d' % cid, external=True,
                              lock_path=os.path.join(self.state_path,
                                                     'locks'))

    # -- state ----------------------------------------------------------

    def state(self):
        """(LXC state, init pid or None).

        :raises ContainerNotFound: no config for this container.
        """
        if not self.exists():
            raise exception.ContainerNotFound(name=self.name)
        return lxc.info(self.name, self.lxc_path)

    def is_suspended(self):
        return os.path.exists(self._suspended_path)

    # -- lifecycle --------------------------------------------------------

    def start(self, created=False):
        """Start init (lxc-start -d); a running container is left as is.

        :param created: create() has just made it, so it cannot be
            running: its state is not read (an lxc-info process less).
        """
        if not created and self.state()[0] == 'RUNNING':
            return
        self._clear_suspended()
        self._place_io_throttles()
        lxc.start(self.name, self.lxc_path)

    def _place_io_throttles(self):
        """Aim the record's disk I/O throttles at the disks' devices.

        Loop device numbers change whenever the disks are attached again
        (host boot), so the keys are rewritten before each start.
        """
        with open(self.config_path) as f:
            text = f.read()
        record = spec_mod.parse_record(text)
        io_throttles = limits_mod.parse_io(record.get('io'))
        if not io_throttles:
            return
        devices = rootfs_mod.Rootfs(self.state_path,
                                    record['id']).disk_devices()
        if not devices:
            raise exception.DisksNotMounted(name=self.name)
        new = spec_mod.with_io(text, limits_mod.render_io(
            io_throttles, devices, host.cgroup_version()))
        if new != text:
            tmp = self.config_path + '.tmp'
            with open(tmp, 'w') as f:
                f.write(new)
            os.rename(tmp, self.config_path)
        throttle.set_writeback(io_throttles, devices)

    def stop(self, timeout=0, retry_interval=0):
        """Halt cleanly within timeout seconds, else kill (Nova power_off).

        The halt signal (lxc.signal.halt) is sent again every
        retry_interval seconds, as libvirt resends ACPI power button
        presses. timeout 0 kills at once.

        :raises ContainerNotFound: no config for this container.
        """
        if self._thawed_state() == 'STOPPED':
            return
        deadline = time.monotonic() + timeout
        while timeout > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            step = min(retry_interval or remaining, remaining)
            if lxc.request_halt(self.name, self.lxc_path,
                                max(1, math.ceil(step))):
                return
            # lxc-stop also fails at once when a halt is already under way.
            if self.state()[0] == 'STOPPED':
                return
            time.sleep(min(0.1, max(0, deadline - time.monotonic())))
        if timeout > 0:
            LOG.info('Container %s did not halt within %ss; killing it',
                     self.name, timeout)
        self._kill_running()

    def kill(self):
        """SIGKILL init (a frozen container is thawed first).

        :raises ContainerNotFound: no config for this container.
        """
        if self._thawed_state() != 'STOPPED':
            self._kill_running()

    def _kill_running(self):
        # Known running a moment ago: no lxc-info first (one process less
        # per destroy); init may have exited meanwhile, which is no error.
        try:
            lxc.kill(self.name, self.lxc_path)
        except exception.CommandFailed:
            with excutils.save_and_reraise_exception() as ctx:
                if self.state()[0] == 'STOPPED':
                    ctx.reraise = False

    def reboot(self, soft, timeout, before_start=None):
        """Reboot, soft (clean) or hard (kill and start).

        A soft reboot that does not complete within timeout seconds, or of
        a container that is not running, becomes a hard one.

        :param before_start: called, if given, between the kill and the
            start of a hard reboot (to make what the start needs).
        """
        if soft and self.state()[0] == 'RUNNING':
            if lxc.reboot(self.name, self.lxc_path, timeout):
                if self.state()[0] == 'RUNNING':
                    return
            LOG.warning('Soft reboot of %s did not complete in %ss; '
                        'rebooting hard', self.name, timeout)
        self.kill()
        if before_start:
            before_start()
        self.start()

    def freeze(self, suspend=False):
        """Freeze every process (cgroup freezer); suspend marks it so."""
        if suspend:
            open(self._suspended_path, 'w').close()
        if self.state()[0] != 'FROZEN':
            lxc.freeze(self.name, self.lxc_path)

    def thaw(self):
        self._clear_suspended()
        if self.state()[0] in ('FROZEN', 'FREEZING'):
            lxc.unfreeze(self.name, self.lxc_path)

    def _thawed_state(self):
        """LXC state, once a frozen container is thawed; unmarks suspend.

        A frozen task cannot act on a signal, not even SIGKILL, so stop
        and kill thaw first.

        :raises ContainerNotFound: no config for this container.
        """
        state, _pid = self.state()
        if state in ('FROZEN', 'FREEZING'):
            lxc.unfreeze(self.name, self.lxc_path)
            state = 'RUNNING'
        self._clear_suspended()
        return state

    def _clear_suspended(self):
        try:
            os.unlink(self._suspended_path)
        except FileNotFoundError:
            pass

    def destroy(self, timeout=0):
        """Stop the container and remove every artifact.

        Idempotent; finishes the job after a failed or interrupted create
        or destroy.

        :param timeout: seconds for a clean halt before the kill.
        """
        if self.exists():
            self.stop(timeout)
        cid = self.cid()
        if cid is None:
            if os.path.lexists(self.dir):
                shutil.rmtree(self.dir)
            return
        with self._lock(cid):
            # Rootfs first: the config still names the ID meanwhile.
            rootfs_mod.Rootfs(self.state_path, cid).destroy()
            if os.path.lexists(self.dir):
                shutil.rmtree(self.dir)
            if self.ids.find(self.instance_uuid) == cid:
                self.ids.release(cid)

    # -- output ---------------------------------------------------------

    def console_output(self, max_bytes=CONSOLE_OUTPUT_MAX):
        """The last max_bytes of the console log (and its rotation).

        :returns: bytes (empty before the container first started).
        """
        data = b''
        for path in (self.dir + '/console.log.1', self.dir + '/console.log'):
            try:
                with open(path, 'rb') as f:
                    size = os.fstat(f.fileno()).st_size
                    f.seek(max(0, size - max_bytes))
                    data += f.read()
            except FileNotFoundError:
                pass
        return data[-max_bytes:]


def all_records(lxc_path):
    """Records of every container of ours under lxc_path.

    :returns: dict of container name to its record (spec.parse_record).
    """
    records = {}
    try:
        names = os.listdir(lxc_path)
    except FileNotFoundError:
        return records
    for name in names:
        try:
            with open(os.path.join(lxc_path, name, 'config')) as f:
                record = spec_mod.parse_record(f.read())
        except (FileNotFoundError, NotADirectoryError):
            continue
        if record:
            records[name] = record
    return records


def artifact_ids(lxc_path, state_path):
    """IDs still held by a container config or a rootfs directory."""
    ids = rootfs_mod.existing_ids(state_path)
    ids.update(r['id'] for r in all_records(lxc_path).values() if 'id' in r)
    return ids
