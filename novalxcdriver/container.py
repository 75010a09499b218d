"""Container: the model of one LXC container and every artifact it owns.

Artifacts of a container named N with container ID C, instance U:

- ``<ids_path>/C``                 its ID reservation, and the entry
                                   naming it in ``<ids_path>/by-instance``
                                   (ids.IdAllocator)
- ``<state_path>/instances/U.json`` its durable record (record.py)
- ``<lxc_path>/N/config``          lxc.conf, with a copy of the record
- ``<state_path>/rootfs/C``        its disks and copy-on-write root (and
                                   its rescue root while rescued: rescue.py)
- ``<state_path>/resize-sources/U.json`` the record of its former
                                   container (another C) while a resize on
                                   this host awaits confirm or revert
- ``<lxc_path>/N/*.log``           console and LXC logs
- ``<lxc_path>/N/suspended``       marks a freeze made by Nova's suspend
- ``<lxc_path>/N/serial-console.*`` its serial console relay's state and
                                   log; the relay process (serialconsole)
- cgroups                          made and removed by LXC itself

They are created in that order (the record, in state ``spawning``, names
everything the spawn is about to make) and removed in the reverse one, so
any crash leaves a state that ``destroy`` recognises and finishes
cleaning. The disks and the record are the truth; the config, the mounts
and the cgroups are derived and ``rebuild`` makes them again from a spec.

Nothing is removed that cannot be shown to be this instance's: the ID
and its root through the reservation or the record naming the instance,
the container directory through its config naming the instance (or, torn
beyond reading, holding nothing but what LXC and the driver put there).
A directory in the way that is someone else's is left alone and named in
a ContainerExists fault.

The veth pairs of its NICs are the driver's (vif.py): the config only
names them (``nics``), and LXC moves them in and out at start and stop.
"""

import dataclasses
import functools
import glob
import math
import os
import time

from oslo_concurrency import lockutils
from oslo_log import log as logging
from oslo_utils import excutils
from oslo_utils import uuidutils

from novalxcdriver import conf
from novalxcdriver import exception
from novalxcdriver import host
from novalxcdriver import limits as limits_mod
from novalxcdriver import lxc
from novalxcdriver.privsep import console as console_ps
from novalxcdriver.privsep import lxctools
from novalxcdriver import record as record_mod
from novalxcdriver import rescue as rescue_mod
from novalxcdriver import rootfs as rootfs_mod
from novalxcdriver import serialconsole
from novalxcdriver import snapshot as snapshot_mod
from novalxcdriver import spec as spec_mod
from novalxcdriver import throttle

CONF = conf.CONF
LOG = logging.getLogger(__name__)

CONSOLE_OUTPUT_MAX = lxctools.MAX_CONSOLE_OUTPUT  # bytes
CGROUP_ROOT = '/sys/fs/cgroup'
PROC_ROOT = '/proc'
SUSPENDED_MARKER = 'suspended'   # one of lxctools.MARKERS


class Container:
    """One container, named after its Nova instance.

    :param name: the LXC name (instance.name); checked by spec.check_name.
    :param instance_uuid: the Nova instance it belongs to (None: only its
        config is read, e.g. by the state watcher).
    :param ids: the host's ids.IdAllocator.
    :param records: the host's record.RecordStore.
    """

    def __init__(self, name, instance_uuid, lxc_path, state_path, ids,
                 records):
        self.name = spec_mod.check_name(name)
        self.instance_uuid = instance_uuid
        self.lxc_path = lxc_path
        self.state_path = state_path
        self.ids = ids
        self.records = records
        self.dir = os.path.join(lxc_path, name)
        self.config_path = os.path.join(self.dir, 'config')
        self._suspended_path = os.path.join(self.dir, SUSPENDED_MARKER)

    # -- what exists --------------------------------------------------

    def record(self):
        """The durable record.InstanceRecord, or None."""
        if self.instance_uuid is None:
            return None
        return self.records.get(self.instance_uuid)

    def _config_text(self):
        """The config's text, or None when missing or not text."""
        try:
            with open(self.config_path, 'rb') as f:
                return f.read().decode('utf-8')
        except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
            return None

    def config_record(self):
        """The record copied into the config ({} when it has none)."""
        text = self._config_text()
        return spec_mod.parse_record(text) if text else {}

    def has_config(self):
        """True when the config names this container's instance."""
        record = self.config_record()
        return bool(record) and (
            self.instance_uuid is None or
            record.get('instance_uuid') == self.instance_uuid)

    def exists(self):
        """True from the start of create() until destroy() finishes."""
        return (self.record() is not None or self.has_config() or
                self.ids.find(self.instance_uuid) is not None)

    def cid(self):
        """Its container ID: from its record, reservation or config."""
        record = self.record()
        if record is not None:
            return record.cid
        cid = self.ids.find(self.instance_uuid)
        if cid is None and self.has_config():
            cid = self.config_record().get('id')
        return cid

    def dir_owner(self):
        """Whose <lxc_path>/<name> is: 'none' (absent), 'us' or 'other'.

        Ours when its config names this instance, or, when the config
        names no one (missing, empty, torn within the driver's header),
        when the instance's record names this directory and nothing but
        what LXC and the driver make is in it. A config naming another
        instance, or any LXC key without a record, is someone else's.
        """
        try:
            entries = os.listdir(self.dir)
        except FileNotFoundError:
            return 'none'
        except NotADirectoryError:
            return 'other'
        text = self._config_text()
        if text is None and 'config' in entries:
            return 'other'
        record = spec_mod.parse_record(text or '')
        owner = record.get('instance_uuid')
        if owner == self.instance_uuid:
            return 'us'
        # A torn last line can hold part of a UUID: that names no one.
        if (uuidutils.is_uuid_like(owner) or
                any(line.startswith('lxc.')
                    for line in (text or '').splitlines())):
            return 'other'
        if not entries:
            # Removing an empty directory loses nothing.
            return 'us'
        record = self.record()
        ours = (record is not None and record.container_dir == self.dir and
                lxctools.only_own_files(entries))
        return 'us' if ours else 'other'

    def nics(self):
        """The NICs its config gives it: tuple of spec.NicSpec."""
        text = self._config_text()
        return spec_mod.parse_nics(text) if text else ()

    def set_nics(self, nics):
        """Rewrite the config with these NICs (renumbered, names kept).

        LXC reads them at the container's next start; a running
        container's NICs are the caller's business (vif.hot_plug).
        """
        with open(self.config_path) as f:
            text = spec_mod.with_nics(f.read(), nics)
        lxc.write_config(self.name, self.lxc_path, spec_mod.with_cgroup_parent(
            text, CONF.lxc.cgroup_parent))

    def rootfs(self):
        cid = self.cid()
        return None if cid is None else rootfs_mod.Rootfs(self.state_path,
                                                          cid)

    # -- creation -------------------------------------------------------

    def create(self, spec, image, root_gb=0, ephemeral_gb=0):
        """Record it, then make its directory, config and rootfs; stopped.

        The record (state spawning) is written first: it names what this
        spawn makes. On any failure what this call made is removed, and
        nothing it did not make.

        :param spec: the spec.ContainerSpec (its cid already reserved).
        :param image: images.CachedImage the rootfs is built on.
        :param root_gb: GiB of the root disk (0: unbounded, no disk).
        :param ephemeral_gb: GiB of the ephemeral disk (0: none).
        :raises ContainerExists: <lxc_path>/<name> exists already.
        :raises RootfsExists: the ID's rootfs directory exists already.
        """
        def make_root(root):
            root.create(image.rootfs, spec.idmap, root_gb, ephemeral_gb,
                        root_fs=CONF.lxc.root_disk_fs,
                        hostname=spec.hostname)
        self._make(spec, None, make_root, 'it existed before this spawn')

    def _make(self, spec, disk_idmap, make_root, exists_reason):
        """create's and receive's steps: record, directory, config, root.

        :param make_root: callable(rootfs.Rootfs) making the root.
        """
        root = rootfs_mod.Rootfs(self.state_path, spec.cid)
        self.records.write(self._record_of(spec, root,
                                           disk_idmap=disk_idmap))
        made = []
        try:
            try:
                lxc.make_dir(self.name, self.lxc_path)
            except FileExistsError:
                raise exception.ContainerExists(
                    name=self.name, path=self.dir, reason=exists_reason)
            made.append((self.dir, functools.partial(
                lxc.remove_dir, self.name, self.lxc_path,
                self.instance_uuid)))
            # Written before the rootfs: it claims the directory.
            lxc.write_config(self.name, self.lxc_path,
                             spec_mod.render_config(spec))
            try:
                make_root(root)
            except exception.RootfsExists:
                raise
            except BaseException:
                made.append((root.path, root.destroy))
                raise
        except BaseException:
            with excutils.save_and_reraise_exception():
                self._unmake(made)

    def _unmake(self, made):
        """Undo what a failed create made, last first; then its record.

        :param made: list of (path, callable removing it).
        """
        for path, undo in reversed(made):
            try:
                undo()
            except Exception:
                # The record stays: destroy can finish the job later.
                LOG.exception('Cannot remove %s after a failed spawn', path)
                return
        self.records.remove(self.instance_uuid)

    _KEEP = object()

    def _record_of(self, spec, root, state=record_mod.SPAWNING,
                   disk_idmap=_KEEP):
        """The record of spec; disk_idmap by default the current one's."""
        if disk_idmap is self._KEEP:
            current = self.record()
            disk_idmap = current.disk_idmap if current else None
        return record_mod.InstanceRecord(
            instance_uuid=spec.instance_uuid, name=spec.name, host=spec.host,
            cid=spec.cid, idmap=spec.idmap, image_id=spec.image_id,
            container_dir=self.dir, rootfs=root.path, state=state,
            pid=os.getpid(),
            rescue_image_id=spec.rescue.image_id if spec.rescue else '',
            disk_idmap=disk_idmap if disk_idmap != spec.idmap else None)

    def _disk_idmap(self):
        record = self.record()
        return record.disk_idmap if record else None

    def receive(self, spec, image, fetch, disk_idmap, root_gb,
                ephemeral_gb):
        """Make it, stopped, from the disks a migration brings.

        As create, in the same order and with the same cleanup on
        failure; the record names the disks' idmap (migration.py).

        :param spec: the spec.ContainerSpec here (its cid reserved here).
        :param image: images.CachedImage its root overlays.
        :param fetch: callable(dest_dir) copying the source's disks.
        :param disk_idmap: ids.Idmap the disks' files are owned in.
        :param root_gb, ephemeral_gb: GiB of the disks here.
        :raises ContainerExists, RootfsExists: as create.
        """
        self._make(
            spec, disk_idmap,
            lambda root: root.receive(fetch, image.rootfs, spec.idmap,
                                      disk_idmap, root_gb, ephemeral_gb),
            'it existed before this migration')

    def hand_over(self, timeout=0, retry_interval=0):
        """Stop it and leave its disks to a migration's destination.

        Stopped as power_off stops it; its serial console relay goes, its
        record says ``migrating`` (so no restart of the driver mounts the
        disks while the destination copies them) and its root is
        unmounted, its disks' images whole for the copy
        (Rootfs.unmount_for_copy). Everything else stays: a revert is a
        rebuild, a confirm a destroy.

        :returns: its record.InstanceRecord (as written).
        :raises ContainerNotFound: it has no record.
        :raises ContainerNotStopped: it did not stop.
        :raises MountBusy, MountFailed: a mount of its disks stays.
        """
        record = self.record()
        if record is None:
            raise exception.ContainerNotFound(name=self.name)
        if self.has_config():
            self.stop(timeout, retry_interval)
        with self._lock(record.cid):
            self._check_stopped()
            if self.dir_owner() == 'us':
                console_ps.stop_relay(self.name, self.lxc_path)
            record = dataclasses.replace(record, state=record_mod.MIGRATING,
                                         pid=os.getpid())
            self.records.write(record)
            rootfs_mod.Rootfs(self.state_path, record.cid).unmount_for_copy()
        return record

    def shut_down(self):
        """Kill it and unmount its disks; keep them, its record and ID.

        Destroy without its disks (Nova's destroy_disks=False). Its next
        hard reboot or start mounts them again; a destroy removes them.

        :raises MountBusy, MountFailed: a mount of its disks stays.
        """
        if self.has_config():
            self.kill()
        if self.dir_owner() == 'us':
            console_ps.stop_relay(self.name, self.lxc_path)
        cid = self.cid()
        if cid is None:
            return
        with self._lock(cid):
            self._check_stopped()
            root = rootfs_mod.Rootfs(self.state_path, cid)
            rescue_mod.root_of(root).unmount()
            root.unmount()

    # -- a resize on its own host: the former container set aside -------

    def _resize_sources(self):
        return record_mod.RecordStore(self.state_path,
                                      record_mod.RESIZE_SOURCES)

    def resize_source(self):
        """The record of its former container a resize here set aside.

        :returns: record.InstanceRecord, or None when there is none.
        """
        if self.instance_uuid is None:
            return None
        return self._resize_sources().get(self.instance_uuid)

    def park_resize_source(self):
        """Set it aside for a resize on this host, disks untouched.

        The resize's new container takes its name (``<lxc_path>/<name>``)
        and instance record under an ID of its own. This one's disks stay
        in ``<state_path>/rootfs/<cid>`` as hand_over left them, its
        record moves to ``<state_path>/resize-sources`` and its ID stays
        reserved for the instance, marked as a resize source
        (ids.IdAllocator.set_resize_source). Its directory goes: config
        and logs are derived, and a revert writes the config again.

        In this order a crash leaves the instance record naming this
        container (with or without the set-aside copy of it) or only the
        set-aside record: take_back_resize_source and
        destroy_resize_source finish from either.

        :returns: the record set aside.
        :raises ContainerNotFound: it has no record.
        :raises ContainerNotStopped: it was not handed over (stopped,
            record ``migrating``).
        """
        record = self.record()
        if record is None:
            raise exception.ContainerNotFound(name=self.name)
        if record.state != record_mod.MIGRATING:
            raise exception.ContainerNotStopped(name=self.name,
                                                state=record.state)
        with self._lock(record.cid):
            self._resize_sources().write(record)
            self.ids.set_resize_source(record.cid, self.instance_uuid, True)
            self._remove_dir()
            self.records.remove(self.instance_uuid)
        LOG.info('Container %s (ID %d) set aside until the resize on this '
                 'host is confirmed or reverted', self.name, record.cid)
        return record

    def take_back_resize_source(self):
        """Make the container set aside by park_resize_source this one's.

        The resize's container, if still here (its destroy failed or was
        skipped), is destroyed first: a revert discards it. Then the set
        aside record becomes the instance record again and its ID is no
        longer marked; the caller rebuilds the config and mounts (the
        record still says ``migrating``).

        :returns: the record taken back, or None when none was set aside.
        :raises MountBusy, MountFailed: as destroy, for the resize's one.
        """
        parked = self.resize_source()
        if parked is None:
            return None
        current = self.record()
        if current is not None and current.cid != parked.cid:
            LOG.info('Destroying container %s (ID %d), the resize\'s: the '
                     'one set aside (ID %d) comes back', self.name,
                     current.cid, parked.cid)
            self.destroy()
        with self._lock(parked.cid):
            self.records.write(parked)
            self.ids.set_resize_source(parked.cid, self.instance_uuid,
                                       False)
            self._resize_sources().remove(self.instance_uuid)
        return parked

    def destroy_resize_source(self, instance_deleted=False):
        """Remove the container set aside by park_resize_source.

        Its disks, its ID reservation and its set-aside record go; the
        instance's current container is not touched (should the set-aside
        record name the current container's own ID, a park interrupted
        before it finished, only that record goes). Unless the instance
        is being deleted, the set-aside disks go only when the instance
        has a current container: otherwise they are its only copy, and
        everything is kept (logged).

        :param instance_deleted: Nova is deleting the instance (its
            current container was destroyed already).
        Nor does anything go while the set-aside ID is reserved for
        another instance or driver: its rootfs is theirs then.

        :returns: True when something set aside is no longer.
        :raises MountBusy, MountFailed: as Rootfs.destroy; nothing more
            is removed and the ID stays reserved.
        """
        parked = self.resize_source()
        if parked is None:
            return False
        current = self.record()
        if current is None and not instance_deleted:
            LOG.error('Container %s has no record, so the one set aside by '
                      'its resize (ID %d, %s) is its only copy: kept',
                      self.name, parked.cid,
                      rootfs_mod.Rootfs(self.state_path, parked.cid).path)
            return False
        with self._lock(parked.cid):
            if current is None or current.cid != parked.cid:
                res = self.ids.reservation(parked.cid)
                if res is not None and (
                        res.instance_uuid != self.instance_uuid or
                        res.owner != self.ids.owner):
                    # The ID, and so its rootfs, is another's now.
                    LOG.error('Container ID %d, set aside by the resize of '
                              '%s, is held by instance %s: its rootfs is '
                              'kept', parked.cid, self.name,
                              res.instance_uuid)
                    return False
                rootfs_mod.Rootfs(self.state_path, parked.cid).destroy()
                if res is not None and res.resize_source:
                    self.ids.release(parked.cid)
            self._resize_sources().remove(self.instance_uuid)
        LOG.info('Removed container ID %d, set aside by the resize of %s',
                 parked.cid, self.name)
        return True

    def mark_ready(self):
        """Record that its spawn finished (the record leaves spawning)."""
        record = self.record()
        if record is not None and record.state != record_mod.READY:
            self.records.write(dataclasses.replace(
                record, state=record_mod.READY, pid=os.getpid()))

    def rebuild(self, spec, image, rescue_image=None):
        """Make the derived parts again from spec: config, record, mounts.

        The disks are kept as they are, unless a rebuild committed the
        stopped container to a new root (begin_replacing_root): its new
        layers are made first (rootfs.Rootfs.replace_layers). The config
        is written anew (a missing, empty or torn one included), the
        record too when it is missing or differs, and the root is mounted
        where it is not. A running container keeps running (its config is
        read at start).

        A rescue's spec (spec.rescue) mounts its rescue root too, which
        rescue() made. Any other spec first removes a rescue root left in
        place (rescue.py: only a rescue makes it), before the record stops
        naming it; the container must be stopped then.

        :param spec: spec.ContainerSpec of the instance (its recorded ID
            and idmap; the image of a replacement under way).
        :param image: images.CachedImage of its root's lower layer.
        :param rescue_image: images.CachedImage of the rescue root's lower
            layer, with a rescue's spec.
        :raises ContainerExists: <lxc_path>/<name> is someone else's.
        :raises ContainerNotStopped, ContainerRunningElsewhere: a
            replacement is under way and the container runs all the same.
        :raises ReplacementUnreadable: that replacement's record is torn.
        :raises MountFailed: its disks cannot be mounted.
        :raises MountBusy: a rescue root to remove is in use.
        :raises RescueUnavailable: a rescue's spec, and no rescue root.
        """
        root = rootfs_mod.Rootfs(self.state_path, spec.cid)
        rescue_root = rescue_mod.root_of(root)
        with self._lock(spec.cid):
            owner = self.dir_owner()
            if owner == 'other':
                raise exception.ContainerExists(
                    name=self.name, path=self.dir,
                    reason='its config does not name instance %s'
                    % self.instance_uuid)
            if spec.rescue is None:
                rescue_root.destroy()
            elif not rescue_root.exists():
                raise exception.RescueUnavailable(
                    instance_uuid=self.instance_uuid, rootfs=root.path,
                    reason='its rescue root %s is gone' % rescue_root.path)
            # A rebuild committed to a new root (begin_replacing_root):
            # its layers are made here, before the record names its image.
            replacement = root.replacement()
            if replacement is not None:
                if replacement.image_id != spec.image_id:
                    raise ValueError(
                        'the root of %s is being rebuilt on image %s, not '
                        '%s' % (self.name, replacement.image_id,
                                spec.image_id))
                self._check_stopped()
                root.replace_layers(spec.idmap, self._disk_idmap())
            record = self._record_of(spec, root, record_mod.READY)
            current = self.record()
            # Its writer's pid alone differing is no reason for a write.
            if (current is None or
                    dataclasses.replace(current, pid=record.pid) != record):
                self.records.write(record)
            if owner == 'none':
                lxc.make_dir(self.name, self.lxc_path)
            config = spec_mod.render_config(spec)
            if self._config_text() != config:
                LOG.info('Writing the config of container %s anew',
                         self.name)
                lxc.write_config(self.name, self.lxc_path, config)
            root.mount(image.rootfs, spec.idmap, record.disk_idmap)
            if spec.rescue is not None:
                rescue_root.mount(rescue_image.rootfs, spec.idmap)
            if replacement is not None:
                # As create: systemd prefers /etc/hostname to lxc.uts.name.
                root.write_etc_file('hostname', replacement.hostname + '\n',
                                    spec.idmap)
                root.end_replacement()

    def begin_replacing_root(self, replacement):
        """Commit the stopped container to a new root (Nova's rebuild).

        Its own layers (upper, work, the ephemeral disk unless kept, the
        config drive) are as good as gone once this returns: the next
        rebuild() makes the new ones on replacement's image, and so does
        any hard reboot or start after a crash cut that short. Its ID,
        idmap, record, config and NICs stay. Nothing is touched when this
        raises.

        :param replacement: rootfs.Replacement to make.
        :raises ContainerExists: <lxc_path>/<name> is someone else's.
        :raises ContainerNotStopped: it is not stopped.
        :raises ContainerRunningElsewhere: it runs from another lxc_path.
        :raises MountBusy, MountFailed: its overlay or a disk to replace
            cannot be unmounted.
        """
        cid = self.cid()
        with self._lock(cid):
            if self.dir_owner() == 'other':
                raise exception.ContainerExists(
                    name=self.name, path=self.dir,
                    reason='its config does not name instance %s'
                    % self.instance_uuid)
            self._check_stopped()
            rootfs_mod.Rootfs(self.state_path, cid).begin_replacement(
                replacement)

    def _check_stopped(self):
        """Raise unless nothing runs on its disks.

        :raises ContainerNotStopped: LXC does not show it STOPPED.
        :raises ContainerRunningElsewhere: it runs from another lxc_path.
        """
        state, _pid = self.state()
        if state != 'STOPPED':
            raise exception.ContainerNotStopped(name=self.name, state=state)
        pids = self._running_elsewhere()
        if pids:
            raise exception.ContainerRunningElsewhere(
                name=self.name, pid=pids[0], lxc_path=self.lxc_path)

    def rescue(self, spec, image, rescue_image, root_gb=0):
        """Make the stopped container its server's rescue (rescue.py).

        In this order, so that a crash anywhere leaves what the record
        names: the record names the rescue; a rescue root left by an
        earlier rescue that was cut short goes (scratch, see rescue.py); a
        fresh one is made and mounted; rebuild writes the rescue's config
        and mounts the server's root for /mnt. The server's root is only
        mounted. On failure the caller rebuilds the server's own spec,
        which removes the rescue root again.

        :param spec: spec.ContainerSpec of the rescue (rescue.spec_of).
        :param image: images.CachedImage of the server's own root.
        :param rescue_image: images.CachedImage of the rescue image.
        :param root_gb: GiB of the rescue root's disk (the flavor's
            root_gb); 0 for none (unbounded, as the server's then).
        :raises ContainerExists: <lxc_path>/<name> is someone else's.
        :raises MountFailed, MountBusy, CommandFailed: the rescue root
            could not be made or mounted.
        """
        root = rootfs_mod.Rootfs(self.state_path, spec.cid)
        rescue_root = rescue_mod.root_of(root)
        with self._lock(spec.cid):
            if self.dir_owner() == 'other':
                raise exception.ContainerExists(
                    name=self.name, path=self.dir,
                    reason='its config does not name instance %s'
                    % self.instance_uuid)
            self.records.write(self._record_of(spec, root, record_mod.READY))
            rescue_root.destroy()
            # ext4 (create's default) whatever [lxc] root_disk_fs says: a
            # scratch root is never snapshotted, and ext4 formats fastest.
            rescue_root.create(rescue_image.rootfs, spec.idmap, root_gb,
                               hostname=spec.hostname)
        self.rebuild(spec, image, rescue_image)

    def remount(self, image_cache):
        """Mount the rootfs where missing, if its image is cached.

        After a host reboot; nothing is fetched (init_host must not wait
        on Glance).

        :returns: True if the root is mounted.
        :raises MountFailed: the mounts failed.
        """
        record = self.record()
        # A spawn under way (or cut short) makes its own mounts; disks
        # handed to a migration's destination stay as they are.
        if record is None or record.state in (record_mod.SPAWNING,
                                              record_mod.MIGRATING):
            return False
        with self._lock(record.cid):
            root = rootfs_mod.Rootfs(self.state_path, record.cid)
            if self.record() is None or not root.exists():
                return False
            if root.replacement() is not None:
                # Finishing it deletes the old layers: for Nova's request
                # (a hard reboot or start, or the next rebuild), never at
                # nova-compute's start.
                LOG.warning('The rebuild of container %s was cut short; '
                            'its next hard reboot, start or rebuild '
                            'finishes it', self.name)
                return False
            image = image_cache.lookup(record.image_id)
            if image is None:
                return False
            root.mount(image.rootfs, record.idmap, record.disk_idmap)
            for path in snapshot_mod.recover(root, self.dir):
                LOG.warning('Removed %s, left by a snapshot cut short',
                            path)
            if record.rescue_image_id:
                self._remount_rescue(root, record, image_cache)
        return True

    def _remount_rescue(self, root, record, image_cache):
        """Mount the rescue root of a rescued container, if it can be."""
        rescue_root = rescue_mod.root_of(root)
        rescue_image = image_cache.lookup(record.rescue_image_id)
        if rescue_root.exists() and rescue_image is not None:
            rescue_root.mount(rescue_image.rootfs, record.idmap)
            return
        # Its next start (host boot, hard reboot) fetches the image again;
        # a lost rescue root is for unrescue (RescueUnavailable).
        LOG.warning('The rescue root %s of container %s is not mounted: %s',
                    rescue_root.path, self.name,
                    'its image %s is not cached' % record.rescue_image_id
                    if rescue_root.exists() else 'it is gone')

    # -- snapshots ------------------------------------------------------

    def take_snapshot(self, image_id):
        """Take a point-in-time copy of its root for image image_id.

        Under the container's lock, so a destroy waits for the instant
        the copy takes and never finds half-made mounts; the upload that
        follows runs without it (snapshot.cancel_all lets a destroy stop
        it).

        :returns: the snapshot.Snapshot, its view mounted; the caller
            streams it, then calls end_snapshot.
        :raises InstanceNotFound: no record, or its root is gone.
        :raises SnapshotFailed, MountFailed: nothing of it is left.
        """
        record = self.record()
        if record is None:
            raise exception.ContainerNotFound(name=self.name)
        with self._lock(record.cid):
            root = rootfs_mod.Rootfs(self.state_path, record.cid)
            if self.record() is None or not root.exists():
                raise exception.ContainerNotFound(name=self.name)
            if not root.is_mounted():
                raise exception.SnapshotFailed(
                    name=self.name, reason='its root is not mounted; a hard '
                    'reboot or power on mounts it again')
            snap = snapshot_mod.Snapshot(
                root, record.idmap, image_id, self.dir,
                os.path.join(self.state_path, snapshot_mod.SPOOL))
            try:
                state = self.state()[0]
            except exception.ContainerNotFound:
                state = 'STOPPED'
            snap.take(state)
        return snap

    def end_snapshot(self, snap):
        """Remove a snapshot's artifacts (under the container's lock)."""
        with self._lock(snap.root.cid):
            snap.cleanup()

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

        A container whose config is gone or torn (a crash, lxc_path not
        mounted) cannot have been started by LXC: ('STOPPED', None) until
        rebuild writes its config again.

        :raises ContainerNotFound: no record and no config.
        """
        if not self.has_config():
            if self.instance_uuid is not None and self.exists():
                pids = self._running_elsewhere()
                return ('RUNNING', pids[0]) if pids else ('STOPPED', None)
            raise exception.ContainerNotFound(name=self.name)
        return lxc.info(self.name, self.lxc_path)

    def _running_elsewhere(self):
        """PIDs of a container of this name running on this one's disks.

        LXC of this lxc_path cannot see a container started from another
        one (lxc_path renamed or remounted under it): its processes are
        still in a cgroup LXC named lxc.payload.<name>[-N] (at the root
        of a hierarchy, or under ``[lxc] cgroup_parent``), and their root
        is an overlay whose upper layer is this container's. Starting
        this container then would run two on one disk.

        :returns: list of int, empty when none runs.
        """
        record = self.record()
        if record is None:
            return []
        upper = 'upperdir=%s,' % rootfs_mod.Rootfs(self.state_path,
                                                   record.cid).upper
        found = []
        pattern = 'lxc.payload.%s*' % glob.escape(self.name)
        # cgroup v2's single hierarchy, then v1's one per controller; the
        # root as well as the parent: a container started before the
        # parent was set (or changed) stays where it was until it stops.
        # A set: on v2, <root>/*/ matches the parent too.
        parents = ['']
        if CONF.lxc.cgroup_parent:
            parents.append(glob.escape(CONF.lxc.cgroup_parent))
        for procs in sorted(set(
                path for top in ((), ('*',)) for parent in parents
                for path in glob.glob(os.path.join(
                    CGROUP_ROOT, *top, parent, pattern, 'cgroup.procs')))):
            group = os.path.basename(os.path.dirname(procs))
            suffix = group[len('lxc.payload.' + self.name):]
            if suffix and not (suffix[0] == '-' and suffix[1:].isdigit()):
                continue
            try:
                with open(procs) as f:
                    pids = [int(p) for p in f.read().split()]
                if not pids:
                    continue
                with open(os.path.join(PROC_ROOT, str(pids[0]),
                                       'mountinfo')) as f:
                    # Its root mount (field 5 '/'), not any mount: a
                    # container of the same name still starting has a
                    # copy of the host's mounts, this one's overlay too.
                    if any(line.split(' ')[4:5] == ['/'] and upper in line
                           for line in f) and pids[0] not in found:
                        found.append(pids[0])
            except (OSError, ValueError):
                continue
        return found

    def is_suspended(self):
        return os.path.exists(self._suspended_path)

    # -- lifecycle --------------------------------------------------------

    def start(self, created=False):
        """Start init (lxc-start -d); a running container is left as is.

        :param created: create() has just made it, so it cannot be
            running: its state is not read (an lxc-info process less).
        :raises ContainerRunningElsewhere: it runs from another lxc_path.
        """
        if not created:
            if self.state()[0] == 'RUNNING':
                return
            pids = self._running_elsewhere()
            if pids:
                raise exception.ContainerRunningElsewhere(
                    name=self.name, pid=pids[0], lxc_path=self.lxc_path)
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
        new = spec_mod.with_cgroup_parent(spec_mod.with_io(
            text, limits_mod.render_io(io_throttles, devices,
                                       host.cgroup_version())),
            CONF.lxc.cgroup_parent)
        if new != text:
            lxc.write_config(self.name, self.lxc_path, new)
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

    def reboot_soft(self, timeout):
        """Reboot cleanly (lxc.signal.reboot) within timeout seconds.

        :returns: True once it runs again; False when it was not running
            or did not come back in time (the caller reboots it hard).
        """
        if self.state()[0] != 'RUNNING':
            return False
        if lxc.reboot(self.name, self.lxc_path, timeout):
            if self.state()[0] == 'RUNNING':
                return True
        LOG.warning('Soft reboot of %s did not complete in %ss; rebooting '
                    'hard', self.name, timeout)
        return False

    def freeze(self, suspend=False):
        """Freeze every process (cgroup freezer); suspend marks it so."""
        if suspend:
            lxc.set_marker(self.name, self.lxc_path, SUSPENDED_MARKER)
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
        # Read first: most thaws and stops have no marker to clear, and
        # reading needs no round trip to the daemon.
        if os.path.lexists(self._suspended_path):
            lxc.clear_marker(self.name, self.lxc_path, SUSPENDED_MARKER)

    def destroy(self, timeout=0):
        """Stop the container and remove every artifact that is its own.

        Idempotent; finishes the job after a failed or interrupted create
        or destroy. A container directory that is someone else's
        (dir_owner) is left in place and logged. The record goes last, so
        an interrupted destroy can always be finished.

        :param timeout: seconds for a clean halt before the kill.
        :raises MountBusy, MountFailed: a mount of its disks cannot be
            undone; nothing of it is deleted and its ID stays reserved.
        """
        if self.has_config():
            self.stop(timeout)
        # It would follow its monitor out; gone before the dir it writes.
        if self.dir_owner() == 'us':
            console_ps.stop_relay(self.name, self.lxc_path)
        cid = self.cid()
        if cid is None:
            self._remove_dir()
            self.records.remove(self.instance_uuid)
            return
        with self._lock(cid):
            root = rootfs_mod.Rootfs(self.state_path, cid)
            # A snapshot's readers hold its staging mount.
            snapshot_mod.cancel_all(root.path)
            # Its rescue root first: it may hold a loop device of its own.
            rescue_mod.root_of(root).destroy()
            # Rootfs first: the reservation still names the ID meanwhile.
            root.destroy()
            self._remove_dir()
            if self.ids.find(self.instance_uuid) == cid:
                self.ids.release(cid)
            # Under the lock: a remount waiting for it finds no record.
            self.records.remove(self.instance_uuid)
            # A park interrupted before it finished set this one aside.
            parked = self.resize_source()
            if parked is not None and parked.cid == cid:
                self._resize_sources().remove(self.instance_uuid)

    def _remove_dir(self):
        owner = self.dir_owner()
        if owner == 'us':
            lxc.remove_dir(self.name, self.lxc_path, self.instance_uuid)
        elif owner == 'other':
            LOG.warning('Leaving %s in place: it is not the container of '
                        'instance %s', self.dir, self.instance_uuid)

    # -- serial console -------------------------------------------------

    def serial_console(self, address, port_range):
        """The relay serving this container's console, started if needed.

        Started by the lxc_admin daemon (privsep.console): it runs
        lxc-console as root.

        :param address: IP address to listen on.
        :param port_range: "START:STOP" ([serial_console] port_range).
        :returns: serialconsole.Relay.
        :raises ContainerNotRunning: neither running nor paused (a
            paused container's console is served; it answers once
            unpaused).
        :raises ConsolePortsExhausted, InvalidPortRange: see
            serialconsole.ensure.
        """
        return self._relay(address, port_range, restart_only=False)

    def restart_serial_console(self, address, port_range):
        """Start again the relay of a running container that had one.

        init_host calls it: a relay killed with nova-compute's process
        group (a service manager's stop) comes back on its port, so the
        console URLs handed out stay valid.

        :returns: the serialconsole.Relay, or None when the container had
            no relay, has a live one, or does not run.
        """
        try:
            return self._relay(address, port_range, restart_only=True)
        except exception.ContainerNotRunning:
            return None

    def _relay(self, address, port_range, restart_only):
        state, pid = self.state()
        monitor = lxc.monitor_pid(pid) if pid else None
        if state not in ('RUNNING', 'FROZEN') or monitor is None:
            raise exception.ContainerNotRunning(name=self.name, state=state)
        with lockutils.lock('novalxc-console-' + self.dir):
            relay = console_ps.ensure_relay(
                self.name, self.lxc_path, monitor, address, port_range,
                restart_only=restart_only)
        return None if relay is None else serialconsole.Relay(*relay)

    # -- output ---------------------------------------------------------

    def console_output(self, max_bytes=CONSOLE_OUTPUT_MAX):
        """The last max_bytes of the console log (and its rotation).

        Read by the lxc_admin daemon: LXC writes it root's 0600.

        :returns: bytes (empty before the container first started).
        """
        return lxc.console_output(self.name, self.lxc_path, max_bytes)


def config_records(lxc_path):
    """Records copied into the configs of the containers under lxc_path.

    A config this process may not read is not one the driver wrote
    (_scan_ids): skipped, logged once.

    :returns: dict of container name to its record (spec.parse_record).
    """
    records = {}
    try:
        names = os.listdir(lxc_path)
    except FileNotFoundError:
        return records
    for name in names:
        path = os.path.join(lxc_path, name, 'config')
        try:
            with open(path, 'rb') as f:
                record = spec_mod.parse_record(f.read().decode('utf-8'))
        except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
            continue
        except PermissionError:
            _unreadable(path)
            continue
        if record:
            records[name] = record
    return records


# {directory: {file name: ((st_ino, st_size, st_mtime_ns), ID or None)}}
_SCANNED = {}
# Paths _scan_ids could not read, each logged once.
_UNREADABLE = set()


def _record_id(data):
    try:
        return record_mod.InstanceRecord.from_json(data).cid
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        return None


def _config_id(data):
    try:
        return spec_mod.parse_record(data.decode('utf-8')).get('id')
    except UnicodeDecodeError:
        return None


def _scan_ids(directory, names, path_of, parse):
    """The IDs parse() finds in each name's file, re-read only if changed.

    Every spawn scans every container's record and config (the ID
    allocator's artifact_ids): reading and parsing them all cost about
    7 ms of CPU per spawn with 100 containers. Records and configs are
    replaced by rename (durable.write), so a new content has a new
    inode; a file edited in place changes its size or mtime.

    A file this process may not read (a directory in lxc_path of
    someone else's, 0700, while the driver runs unprivileged) is skipped
    and logged once: the driver can read what it writes, and an ID of
    its own is also held by its record and rootfs directory.
    """
    old = _SCANNED.get(directory, {})
    new = {}
    found = set()
    for name in names:
        path = path_of(name)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError:
            _unreadable(path)
            continue
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        hit = old.get(name)
        if hit is not None and hit[0] == key:
            cid = hit[1]
        else:
            # Replaced between stat and read: the next scan sees a new
            # key and reads it again.
            try:
                with open(path, 'rb') as f:
                    cid = parse(f.read())
            except (FileNotFoundError, NotADirectoryError):
                continue
            except PermissionError:
                _unreadable(path)
                continue
        new[name] = (key, cid)
        if cid is not None:
            found.add(cid)
    _SCANNED[directory] = new
    return found


def _unreadable(path):
    if path not in _UNREADABLE:
        _UNREADABLE.add(path)
        LOG.warning('Cannot read %s: not a file of this driver; any '
                    'container ID it names is not counted', path)


def artifact_ids(lxc_path, state_path, records):
    """IDs still held by a record, a config or a rootfs directory (set).

    Any record counts, even a torn or foreign one whose ID can be read:
    holding an ID back wrongly costs nothing, handing one out wrongly
    shares a uid range.
    """
    ids = rootfs_mod.existing_ids(state_path)
    try:
        names = os.listdir(records.path)
    except FileNotFoundError:
        names = []
    ids |= _scan_ids(records.path,
                     [n for n in names if n.endswith('.json')],
                     lambda n: os.path.join(records.path, n), _record_id)
    try:
        names = os.listdir(lxc_path)
    except FileNotFoundError:
        names = []
    ids |= _scan_ids(lxc_path, names,
                     lambda n: os.path.join(lxc_path, n, 'config'),
                     _config_id)
    return ids
