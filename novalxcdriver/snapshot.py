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
"""

import fcntl
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from oslo_log import log as logging
from oslo_utils import excutils

from novalxcdriver import durable
from novalxcdriver import exception
from novalxcdriver import lxc
from novalxcdriver import mount
from novalxcdriver.privsep import disks

LOG = logging.getLogger(__name__)

STAGE_PREFIX = 'snapshot-'
SUBVOLUME_PREFIX = '.snapshot-'
FROZEN_MARKER = 'snapshot-frozen'
ZSTD_LEVEL = 3
_CHUNK = 1024 * 1024

# find(1) lists what tar(1) archives: /dev's contents are LXC's (it
# populates /dev at start), and device nodes and sockets are never part
# of an image (tarball.py refuses devices). The view is read-only, so
# the list cannot race with the tree.
_FIND = ['find', '.', '(', '-path', './dev/*', '-prune', ')', '-o', '(',
         '!', '-type', 'b', '!', '-type', 'c', '!', '-type', 's', '-print0',
         ')']
# POSIX (pax) format keeps long names, sub-second times and every xattr
# (SCHILY.xattr.*, read back by tarball.py): file capabilities, ACLs.
# zstd(1) -T0: every core, at nice 10; the frame carries its checksum.
_ZSTD = ['zstd', '-q', '-c', '-T0', '-%d' % ZSTD_LEVEL, '--check']
_TAR = ['tar', '--create', '--file=-', '--format=posix', '--numeric-owner',
        '--xattrs', '--xattrs-include=*', '--sparse', '--no-recursion',
        '--null', '--files-from=-']

# In-process registry: destroy kills a snapshot's readers before it
# unmounts, or the unmount would find them holding the staging mount.
_RUNNING = {}
_RUNNING_LOCK = threading.Lock()


class Snapshot:
    """One snapshot of root (a rootfs.Rootfs), named after image_id.

    :param root: the container's rootfs.Rootfs.
    :param idmap: its ids.Idmap.
    :param image_id: the Glance image receiving it (names the artifacts).
    :param container_dir: <lxc_path>/<name>, for the freezer's marker.
    """

    def __init__(self, root, idmap, image_id, container_dir):
        self.root = root
        self.idmap = idmap
        self.image_id = image_id
        self.container_dir = container_dir
        self.stage = os.path.join(root.path, STAGE_PREFIX + image_id)
        self.merged = os.path.join(self.stage, 'merged')
        self.subvolume = os.path.join(root.root_disk.mountpoint,
                                      SUBVOLUME_PREFIX + image_id)
        self.method = None
        self.stall = None   # seconds writers were blocked
        self._procs = []
        self._errors = []
        self._lock_fd = None

    # -- the point in time ---------------------------------------------

    def take(self, state):
        """Take the point-in-time copy and mount its read-only view.

        :param state: the container's LXC state ('RUNNING', 'FROZEN',
            'STOPPED', ...); only a running one is frozen for a copy.
        :raises SnapshotFailed: the copy or its view failed; what was
            made is removed.
        :raises OSError: as SnapshotFailed.
        """
        if any(c in self.image_id for c in '/\0'):
            raise ValueError('bad image id %r' % self.image_id)
        os.mkdir(self.stage, 0o700)   # the marker, made first
        # Held until cleanup, released by the kernel if this process dies:
        # recover() leaves a locked stage alone, as another live driver
        # process's snapshot.
        self._lock_fd = _lock(self.stage)
        try:
            upper = self._point_in_time(state)
            os.mkdir(self.merged, 0o755)
            mount.overlay_readonly([upper, self.root.lower], self.merged)
        except Exception:
            with excutils.save_and_reraise_exception():
                self.cleanup()
        with _RUNNING_LOCK:
            _RUNNING.setdefault(self.root.path, set()).add(self)

    def _point_in_time(self, state):
        """The directory holding the point-in-time upper layer."""
        root_disk = self.root.root_disk
        disk_mounted = root_disk.mountpoint in mount.mountpoints()
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
            marker = os.path.join(self.container_dir, FROZEN_MARKER)
            name = os.path.basename(self.container_dir)
            lxc_path = os.path.dirname(self.container_dir)

            def hold():
                durable.write(marker, self.image_id + '\n')
                lxc.freeze(name, lxc_path)

            def release():
                lxc.unfreeze(name, lxc_path)
                os.unlink(marker)
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

        find | tar | zstd run as the container's root in user namespaces
        of their own (lxc.userns_popen), at low CPU and I/O priority so
        the containers' own work comes first. read() raises
        SnapshotFailed at the end when any failed, so a truncated tarball
        is never taken for a whole one.
        """
        stdin = None
        for label, argv in (('find', _FIND), ('tar', _TAR),
                            ('zstd', _ZSTD)):
            err = tempfile.TemporaryFile(dir=self.stage)
            proc = lxc.userns_popen(self.idmap, argv, cwd=self.merged,
                                    stdin=stdin, stdout=subprocess.PIPE,
                                    stderr=err, background=True)
            self._procs.append((label, proc, err))
            if stdin is not None:
                stdin.close()   # the child holds it now
            stdin = proc.stdout
        return _Stream(stdin, self)

    def check(self):
        """Wait for find and tar; raise SnapshotFailed if either failed."""
        failed = []
        for label, proc, err in self._procs:
            code = proc.wait()
            if code != 0:
                err.seek(0)
                text = err.read(4096).decode(errors='replace').strip()
                failed.append('%s exited %d: %s' % (label, code, text))
        if failed:
            raise exception.SnapshotFailed(
                name=os.path.basename(self.container_dir),
                reason='; '.join(failed))

    def cancel(self):
        """Kill find, tar and zstd (destroy during an upload)."""
        for _label, proc, _err in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def cleanup(self):
        """Remove every artifact of this snapshot; thaw what it froze.

        :raises MountBusy: the staging mount is held by someone else;
            left for recover().
        """
        with _RUNNING_LOCK:
            _RUNNING.get(self.root.path, set()).discard(self)
        self.cancel()
        for _label, _proc, err in self._procs:
            err.close()
        try:
            _remove(self.root, self.container_dir, [self.stage],
                    [os.path.basename(self.subvolume)])
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None


def _lock(stage):
    """An fd of stage with an exclusive flock(2) on it, or None if held.

    :raises BlockingIOError: never; a held lock returns None.
    """
    fd = os.open(stage, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


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
    recognised by name under the instance's own directories; the
    processes of a killed nova-compute died with its pipes (SIGPIPE).

    :returns: list of the paths removed (for the log and tests).
    """
    held = []
    dead = []
    live = set()
    try:
        for stage in glob.glob(os.path.join(glob.escape(root.path),
                                            STAGE_PREFIX + '*')):
            fd = _lock(stage)
            if fd is None:
                # A snapshot under way in a live process sharing this
                # state (a restart racing the old process, tests).
                LOG.info('Leaving %s: its snapshot is under way', stage)
                live.add(os.path.basename(stage)[len(STAGE_PREFIX):])
            else:
                held.append(fd)
                dead.append(stage)
        if live:
            # Its freeze, marker and subvolume may be in use.
            return _remove(root, container_dir, dead, [], thaw=False)
        subvolumes = []
        if root.root_disk.mountpoint in mount.mountpoints():
            subvolumes = [os.path.basename(p) for p in glob.glob(
                os.path.join(glob.escape(root.root_disk.mountpoint),
                             SUBVOLUME_PREFIX + '*'))]
        return _remove(root, container_dir, dead, subvolumes)
    finally:
        for fd in held:
            os.close(fd)


def _kill_readers(stage):
    """Kill what still reads a staging view.

    A dead snapshot's find, tar or zstd not yet gone by SIGPIPE; nothing
    else has a reason to be in a 0700 directory of the driver's own.
    """
    for _attempt in range(50):
        pids = [pid for pid, _comm in mount.holders(stage)
                if pid != os.getpid()]
        if not pids:
            return
        for pid in pids:
            LOG.warning('Killing process %d, left reading the snapshot '
                        'view %s', pid, stage)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)


def _remove(root, container_dir, stages, subvolumes, thaw=True):
    removed = []
    root_disk = root.root_disk
    fs = (root_disk.filesystem()
          if root_disk.mountpoint in mount.mountpoints() else None)
    if thaw and stages and fs == 'ext4':
        # Frozen by a snapshot cut short; EINVAL (not frozen) is fine.
        if disks.thaw(root_disk.mountpoint):
            LOG.warning('Thawed %s, frozen by a snapshot cut short',
                        root_disk.mountpoint)
    marker = os.path.join(container_dir, FROZEN_MARKER)
    if thaw and os.path.exists(marker):
        name = os.path.basename(container_dir)
        try:
            lxc.unfreeze(name, os.path.dirname(container_dir))
        except exception.CommandFailed as e:
            # Stopped meanwhile: nothing to thaw.
            LOG.info('Cannot unfreeze %s: %s', name, e)
        os.unlink(marker)
        removed.append(marker)
    for stage in stages:
        if not os.path.lexists(stage):
            continue
        _kill_readers(stage)
        mount.unmount_tree(stage)
        shutil.rmtree(stage)
        removed.append(stage)
    for name in subvolumes if fs == 'btrfs' else ():
        if disks.delete_subvolume(root_disk.mountpoint, name):
            removed.append(os.path.join(root_disk.mountpoint, name))
    return removed
