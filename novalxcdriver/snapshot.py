"""Snapshot: a container's root as a rootfs tarball, taken while it runs.

A snapshot is a point-in-time copy of the root's own writes (the overlay
upper layer), overlaid read-only on the image it was built on and read
through a user namespace mapping the container's range to 0, so the
tarball holds owners, file capabilities and ACLs as the container sees
them (container root is uid 0), without a chown walk. Plan and figures:
docs/design/snapshot.md.

How the point in time is taken, by the root's storage:

- btrfs root disk (``[lxc] root_disk_fs = btrfs``): syncfs, then a
  read-only snapshot of the disk's top-level subvolume, atomic and O(1)
  in data. Writers never wait on the snapshot itself; the syncfs flushes
  dirty data first (without it a snapshot can miss recent writes).
- ext4 root disk: FIFREEZE blocks writers (processes and network keep
  running) while the upper layer is copied; the stall grows with the
  bytes written.
- root_gb 0 (upper layer on the host's filesystem, which must not be
  frozen): the cgroup freezer stops the container's processes while the
  upper layer is copied; the stall grows with the bytes written.
- a stopped or paused container: nothing writes, nothing is copied.

Every artifact is named after the image and recognised by name after a
crash (recover): the staging directory ``<rootfs>/snapshot-<image>/``
(made first, removed last), the subvolume ``<rootfs>/root/.snapshot-<image>``
and, for the cgroup freezer, ``<container dir>/snapshot-frozen``.

The stage, the readers (find | tar | zstd) and their end run in the
storage_admin daemon (privsep.snapshots), the marker and the freezer in
lxc_admin's (privsep.lxctools); the tarball comes back through a FIFO in
``<state_path>/spool``.
"""

import glob
import os
import re
import threading
import time
import uuid

from oslo_log import log as logging
from oslo_utils import excutils

from novalxcdriver import exception
from novalxcdriver import host as host_mod
from novalxcdriver import lxc
from novalxcdriver import mount
from novalxcdriver.privsep import disks
from novalxcdriver.privsep import snapshots
from novalxcdriver import spool

LOG = logging.getLogger(__name__)

STAGE_PREFIX = snapshots.STAGE_PREFIX
SUBVOLUME_PREFIX = '.snapshot-'
FROZEN_MARKER = 'snapshot-frozen'   # one of lxctools.MARKERS
SPOOL = snapshots.SPOOL
_CHUNK = 1024 * 1024
# A stream's FIFO in the spool: snapshot-<pid>-<hex>.fifo, the pid of the
# nova-compute that made it (remove_spool_leftovers).
_FIFO_RE = re.compile(r'^snapshot-([0-9]+)-[0-9a-f]+\.fifo\Z')

# In-process registry: destroy kills a snapshot's readers before it
# unmounts, or the unmount would find them holding the staging mount.
_RUNNING = {}
_RUNNING_LOCK = threading.Lock()


class Snapshot:
    """One snapshot of root (a rootfs.Rootfs), named after image_id.

    Its stage, readers and their end are the storage_admin daemon's
    (privsep.snapshots); what is decided here is the point in time's
    method, and the tarball is read here, from a FIFO in spool.

    :param root: the container's rootfs.Rootfs.
    :param idmap: its ids.Idmap.
    :param image_id: the Glance image receiving it (names the artifacts).
    :param container_dir: <lxc_path>/<name>, for the freezer's marker.
    :param spool: ``<state_path>/spool``, where the stream's FIFO is made.
    """

    def __init__(self, root, idmap, image_id, container_dir, spool):
        self.root = root
        self.idmap = idmap
        self.image_id = image_id
        self.container_dir = container_dir
        self.spool = spool
        self.stage = os.path.join(root.path, STAGE_PREFIX + image_id)
        self.merged = os.path.join(self.stage, snapshots.MERGED)
        self.subvolume = os.path.join(root.root_disk.mountpoint,
                                      SUBVOLUME_PREFIX + image_id)
        self.method = None
        self.stall = None   # seconds writers were blocked
        self._streaming = False
        self._reader = None

    # -- the point in time ---------------------------------------------

    def take(self, state):
        """Take the point-in-time copy and mount its read-only view.

        :param state: the container's LXC state ('RUNNING', 'FROZEN',
            'STOPPED', ...); only a running one is frozen for a copy.
        :raises SnapshotFailed: the copy or its view failed; what was
            made is removed.
        :raises FileExistsError: a stage of this image exists already.
        :raises OSError: as SnapshotFailed.
        """
        if not snapshots.STAGE_RE.match(os.path.basename(self.stage)):
            raise ValueError('bad image id %r' % self.image_id)
        # The marker, made first; the daemon holds its lock until it goes
        # (recover leaves a held stage alone: another live process's).
        snapshots.make_stage(self.stage)
        try:
            upper = self._point_in_time(state)
            mount.overlay_readonly([upper, self.root.lower], self.merged)
        except Exception:
            with excutils.save_and_reraise_exception():
                self.cleanup()
        with _RUNNING_LOCK:
            _RUNNING.setdefault(self.root.path, set()).add(self)

    def _point_in_time(self, state):
        """The directory holding the point-in-time upper layer."""
        root_disk = self.root.root_disk
        disk_mounted = root_disk.is_mounted()
        if disk_mounted and root_disk.filesystem() == 'btrfs':
            self.method = 'btrfs'
            started = time.monotonic()
            disks.sync_filesystem(root_disk.mountpoint)
            synced = time.monotonic()
            disks.snapshot_subvolume(root_disk.mountpoint,
                                     os.path.basename(self.subvolume))
            self.stall = time.monotonic() - synced
            LOG.info('Snapshot %s of %s: syncfs %.3f s, btrfs snapshot '
                     '%.3f s', self.image_id, self.root.path,
                     synced - started, self.stall)
            return os.path.join(self.subvolume, 'upper')
        if state != 'RUNNING':
            # Stopped or frozen: nothing writes; Nova's task state keeps
            # the server from being started meanwhile.
            self.method = 'quiescent'
            self.stall = 0.0
            return self.root.upper
        copy = os.path.join(self.stage, 'upper')
        if disk_mounted:
            self.method = 'fsfreeze'
            hold, release = (lambda: disks.freeze(root_disk.mountpoint),
                             lambda: disks.thaw(root_disk.mountpoint))
        else:
            self.method = 'cgroup-freezer'
            name = os.path.basename(self.container_dir)
            lxc_path = os.path.dirname(self.container_dir)

            def hold():
                lxc.set_marker(name, lxc_path, FROZEN_MARKER, self.image_id)
                lxc.freeze(name, lxc_path)

            def release():
                lxc.unfreeze(name, lxc_path)
                lxc.clear_marker(name, lxc_path, FROZEN_MARKER)
        started = time.monotonic()
        hold()
        try:
            disks.copy_layer(self.root.upper, copy)
        finally:
            release()
            self.stall = time.monotonic() - started
        LOG.warning('Snapshot %s of %s: writers blocked %.3f s by %s for '
                    'the copy of the upper layer (a btrfs root disk takes '
                    'it in milliseconds)', self.image_id, self.root.path,
                    self.stall, self.method)
        return copy

    # -- the tarball ------------------------------------------------------

    def stream(self):
        """A file object reading the zstd-compressed rootfs tarball.

        find | tar | zstd run in the storage_admin daemon as the
        container's root (privsep.snapshots.stream); zstd writes into a
        FIFO made here, which goes from the spool as soon as both ends
        are open. read() raises SnapshotFailed at the end when any
        failed, so a truncated tarball is never taken for a whole one.

        :raises PrivilegedCallRefused, OSError: nothing was started.
        """
        os.makedirs(self.spool, mode=0o700, exist_ok=True)
        fifo = os.path.join(self.spool, 'snapshot-%d-%s.fifo'
                            % (os.getpid(), uuid.uuid4().hex))
        os.mkfifo(fifo, 0o600)
        try:
            # Non-blocking: no writer yet; the daemon's open needs a
            # reader (ENXIO otherwise).
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                spool.widen(fd)
                snapshots.stream(self.stage, self.idmap.fields(), fifo)
            except BaseException:
                os.close(fd)
                raise
        finally:
            os.unlink(fifo)
        os.set_blocking(fd, True)
        self._streaming = True
        self._reader = os.fdopen(fd, 'rb')
        return _Stream(self._reader, self)

    def check(self):
        """Wait for find and tar; raise SnapshotFailed if either failed."""
        failed = snapshots.finish(self.stage)
        if failed:
            raise exception.SnapshotFailed(
                name=os.path.basename(self.container_dir),
                reason='; '.join(failed))

    def cancel(self):
        """Kill find, tar and zstd (destroy during an upload)."""
        if self._streaming:
            snapshots.cancel(self.stage)

    def cleanup(self):
        """Remove every artifact of this snapshot; thaw what it froze.

        :raises MountBusy: the staging mount is held by someone else;
            left for recover().
        """
        with _RUNNING_LOCK:
            _RUNNING.get(self.root.path, set()).discard(self)
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        _remove(self.root, self.container_dir, [self.stage],
                [os.path.basename(self.subvolume)])


class _Stream:
    """read() of a snapshot's compressed tarball; checks it at the end."""

    def __init__(self, pipe, snapshot):
        self._reader = pipe
        self._snapshot = snapshot
        self.bytes = 0

    def read(self, size=-1):
        data = self._reader.read(_CHUNK if size is None or size < 0
                                 else size)
        if not data:
            self._snapshot.check()
        self.bytes += len(data)
        return data

    def __iter__(self):
        while True:
            data = self.read(_CHUNK)
            if not data:
                return
            yield data


def image_metadata(instance, name, architecture):
    """Glance metadata of a snapshot of instance (dict).

    As libvirt's _create_snapshot_metadata, with the formats this driver
    boots: Nova strips disk_format and container_format from a
    snapshot's metadata, so they are set here. The properties Nova
    copied from the instance's image stay (the update does not purge).

    :param name: the image's name (Nova made the image).
    :param architecture: hw_architecture of the tree (e.g. 'x86_64').
    """
    properties = {'image_location': 'snapshot',
                  'image_state': 'available',
                  'owner_id': instance.project_id,
                  'hypervisor_type': 'lxc',
                  'hw_architecture': architecture}
    if instance.os_type:
        properties['os_type'] = instance.os_type
    return {'name': name, 'disk_format': 'raw', 'container_format': 'bare',
            'properties': properties}


def cancel_all(root_path):
    """Kill the readers of every snapshot of the root at root_path."""
    with _RUNNING_LOCK:
        running = list(_RUNNING.get(root_path, ()))
    for snap in running:
        LOG.info('Stopping snapshot %s of %s', snap.image_id, root_path)
        snap.cancel()


def recover(root, container_dir):
    """Remove what snapshots cut short by a crash left; thaw first.

    Run by init_host for each instance's root (mounted). Everything is
    recognised by name under the instance's own directories; a stage
    whose lock a live process holds (privsep.snapshots.stages) is that
    process's snapshot under way, and it is left alone with what it may
    use (its freeze, marker and subvolume).

    :returns: list of the paths removed (for the log and tests).
    """
    found = snapshots.stages(root.path)
    dead = [stage for stage, live in found if not live]
    live = [stage for stage, live in found if live]
    for stage in live:
        # A restart racing the old process, or tests sharing a state.
        LOG.info('Leaving %s: its snapshot is under way', stage)
    if live:
        return _remove(root, container_dir, dead, [], thaw=False)
    subvolumes = []
    if root.root_disk.is_mounted():
        subvolumes = [os.path.basename(p) for p in glob.glob(
            os.path.join(glob.escape(root.root_disk.mountpoint),
                         SUBVOLUME_PREFIX + '*'))]
    return _remove(root, container_dir, dead, subvolumes)


def remove_spool_leftovers(spool):
    """Remove the FIFOs of snapshots whose nova-compute died.

    A FIFO is unlinked as soon as its stream starts; one left was made by
    a process killed in between (its pid in the name is gone).

    :returns: list of the paths removed.
    """
    try:
        names = os.listdir(spool)
    except FileNotFoundError:
        return []
    removed = []
    for name in sorted(names):
        m = _FIFO_RE.match(name)
        if m and not host_mod.process_alive(int(m.group(1))):
            path = os.path.join(spool, name)
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            removed.append(path)
    return removed


def _remove(root, container_dir, stages, subvolumes, thaw=True):
    removed = []
    root_disk = root.root_disk
    fs = root_disk.filesystem() if root_disk.is_mounted() else None
    if thaw and stages and fs == 'ext4':
        # Frozen by a snapshot cut short; EINVAL (not frozen) is fine.
        if disks.thaw(root_disk.mountpoint):
            LOG.warning('Thawed %s, frozen by a snapshot cut short',
                        root_disk.mountpoint)
    marker = os.path.join(container_dir, FROZEN_MARKER)
    if thaw and os.path.exists(marker):
        name = os.path.basename(container_dir)
        lxc_path = os.path.dirname(container_dir)
        try:
            lxc.unfreeze(name, lxc_path)
        except exception.CommandFailed as e:
            # Stopped meanwhile: nothing to thaw.
            LOG.info('Cannot unfreeze %s: %s', name, e)
        lxc.clear_marker(name, lxc_path, FROZEN_MARKER)
        removed.append(marker)
    for stage in stages:
        if snapshots.remove_stage(stage):
            removed.append(stage)
    for name in subvolumes if fs == 'btrfs' else ():
        if disks.delete_subvolume(root_disk.mountpoint, name):
            removed.append(os.path.join(root_disk.mountpoint, name))
    return removed
