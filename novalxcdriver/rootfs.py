"""A container's copy-on-write root filesystem.

Layout under ``<state_path>/rootfs/<cid>`` (named by container ID, so a
leftover directory keeps its ID from being reused)::

    root.img       the root disk: root_gb GiB of btrfs or ext4 (disk.Disk)
    root/          its mount point, holding
      upper/       the container's own writes (owned by its root)
      work/        overlay's work directory (same btrfs subvolume as
                   upper/: rename(2) does not cross subvolumes)
      .snapshot-*  a snapshot's read-only btrfs subvolume, while it runs
    snapshot-*/    a snapshot's staging directory, while it runs
    ephemeral.img  the ephemeral disk, when the flavor has one
    ephemeral/     its mount point, bind-mounted on /mnt in the container
    *.img.iostat   each disk's loop device I/O counters when attached
    lower/         idmapped, read-only view of the cached image's rootfs
    merged/        the overlay: lxc.rootfs.path
    rescue/        while rescued, the rescue root: this layout again
                   (rescue.py)

A flavor with root_gb 0 gets no root disk: upper/ and work/ then live in
root/ on the host's filesystem, unbounded.

Nova's rebuild replaces the root's own layers in place (``replace_layers``)
and keeps the directory, so the container keeps its ID and idmap. While a
replacement is under way the directory also holds::

    replacing.json              what the replacement makes (Replacement);
                                its presence means: the old layers go
    root/upper.rebuild-old      the old layers, set aside, then deleted
    root/work.rebuild-old
    ephemeral.img.rebuild-old   the old ephemeral disk, unless kept
    config-drive.rebuild-new    the new config drive, written in full
                                before replacing.json
    config-drive.rebuild-old    the old one, set aside, then deleted

The image is never written and never chowned; creating a root costs two
mounts whatever the image's size. The driver owns these mounts and removes
them itself: lxc-destroy would delete through a mounted rootfs.
"""

import os

from oslo_log import log as logging

from novalxcdriver import configdrive
from novalxcdriver import disk
from novalxcdriver import exception
from novalxcdriver import mount
from novalxcdriver.privsep import disks
from novalxcdriver.privsep import ownership
from novalxcdriver.privsep import replacement as replacement_mod
from novalxcdriver.privsep import rootdirs
from novalxcdriver import throttle

LOG = logging.getLogger(__name__)

# Suffixes of what a replacement sets aside or stages beside the real name.
_ASIDE = replacement_mod.ASIDE
_STAGED = replacement_mod.STAGED
_STAGING = replacement_mod.STAGING


# What a replacement records (its one definition: the daemon checks it).
Replacement = replacement_mod.Replacement


class Rootfs:
    """The root filesystem of container ID cid.

    :param state_path: the driver's state directory ([lxc] state_path).
    :param path: its directory instead of ``<state_path>/rootfs/<cid>``
        (state_path is not read then): a rescue root lives inside its
        server's (rescue.root_of).
    """

    def __init__(self, state_path, cid, path=None):
        self.cid = cid
        self.path = path or os.path.join(state_path, 'rootfs', str(cid))
        self.lower = os.path.join(self.path, 'lower')
        templates = (os.path.join(state_path, disk.TEMPLATES)
                     if state_path else None)
        self.root_disk = disk.Disk(os.path.join(self.path, 'root.img'),
                                   os.path.join(self.path, 'root'),
                                   templates)
        self.ephemeral_disk = disk.Disk(
            os.path.join(self.path, 'ephemeral.img'),
            os.path.join(self.path, 'ephemeral'), templates)
        self.upper = os.path.join(self.root_disk.mountpoint, 'upper')
        self.work = os.path.join(self.root_disk.mountpoint, 'work')
        self.merged = os.path.join(self.path, 'merged')

    def exists(self):
        return os.path.lexists(self.path)

    def is_mounted(self):
        return mount.is_mountpoint(self.merged)

    def has_ephemeral(self):
        return os.path.exists(self.ephemeral_disk.image_path)

    def create(self, image_rootfs, idmap, root_gb=0, ephemeral_gb=0,
               root_fs='ext4', hostname=None):
        """Make the disks and directories, mount the root, write its name.

        All in one call to the storage_admin daemon
        (privsep.rootdirs.create_root): the disks are new, so nothing is
        asked of the mount table.

        :param idmap: ids.Idmap of the container.
        :param root_gb: GiB of the root disk; 0 for none (unbounded).
        :param ephemeral_gb: GiB of the ephemeral disk; 0 for none (ext4).
        :param root_fs: filesystem of the root disk (disk.FILESYSTEMS).
        :param hostname: written to /etc/hostname (write_etc_file's
            rules: systemd sets the hostname from it over lxc.uts.name,
            and an image carries its build host's); None leaves it.
        :raises RootfsExists: its directory exists: nothing was touched.
        :raises MountFailed, CommandFailed: the caller destroys on failure.
        """
        disks = []
        if root_gb:
            disks.append(self.root_disk.plan(root_gb, root_fs, False))
        if ephemeral_gb:
            disks.append(self.ephemeral_disk.plan(ephemeral_gb, 'ext4',
                                                  True))
        etc_files = [] if hostname is None else [['hostname',
                                                  hostname + '\n']]
        left = rootdirs.create_root(
            self.path, not root_gb, disks,
            [self.lower, self.upper, self.work, self.merged],
            image_rootfs, idmap.fields(), etc_files)
        for (name, _text), why in zip(etc_files, left):
            self._log_etc_file_left(name, why)

    def mount(self, image_rootfs, idmap, disk_idmap=None):
        """Mount disks, lower and the overlay where missing (host boot).

        :param disk_idmap: ids.Idmap the disks' files are owned in, when
            not idmap (a migration brought them): each disk, and the
            root directory of a root without a disk, is shown in idmap
            through an idmapped mount (disk.shift_mount).
        """
        shift = (disk_idmap, idmap) if disk_idmap not in (None,
                                                          idmap) else None
        for d in (self.root_disk, self.ephemeral_disk):
            if os.path.exists(d.image_path):
                d.mount(shift)
            elif d is self.root_disk and shift:
                disk.shift_mount(d.mountpoint, *shift)
        self._mount_layers(image_rootfs, idmap, mount.mountpoints())

    def _mount_layers(self, image_rootfs, idmap, points):
        """The idmapped lower layer and the overlay, unless in points."""
        if not mount.is_mountpoint(self.lower, points):
            mount.idmapped_bind(image_rootfs, self.lower, idmap)
        if not mount.is_mountpoint(self.merged, points):
            mount.overlay(self.lower, self.upper, self.work, self.merged)

    def receive(self, fetch, image_rootfs, idmap, disk_idmap, root_gb,
                ephemeral_gb):
        """Make this root from a migrating server's disks, and mount it.

        The disks keep their owners (disk_idmap): mount shows them in
        idmap. They grow to root_gb and ephemeral_gb (migration.py's
        check_resize refused a shrink); an ephemeral disk the source had
        not is made, empty.

        :param fetch: callable(dest_dir) copying the source's disks into
            dest_dir (migration.fetch).
        :param image_rootfs: the cached image's rootfs (the lower layer).
        :param idmap: ids.Idmap of the container here.
        :param disk_idmap: ids.Idmap the disks' files are owned in.
        :param root_gb: GiB of its root disk (0: none, a directory came).
        :param ephemeral_gb: GiB of its ephemeral disk (0: none).
        :raises RootfsExists: its directory exists: nothing was touched.
        :raises MountFailed, CommandFailed, CommandTimedOut,
            DiskUnreadable: the caller destroys on failure.
        """
        self._make(disk_mountpoint=False)
        fetch(self.path)
        if root_gb:
            if not os.path.isfile(self.root_disk.image_path):
                raise exception.DiskUnreadable(
                    path=self.root_disk.image_path,
                    reason='the migration brought no root disk')
            rootdirs.make_mountpoint(self.root_disk.mountpoint)
        elif not os.path.isdir(self.upper):
            raise exception.DiskUnreadable(
                path=self.upper, reason='the migration brought no root')
        if ephemeral_gb and not self.has_ephemeral():
            self.ephemeral_disk.create(ephemeral_gb, disk_idmap)
        grow = [(d, gb) for d, gb in ((self.root_disk, root_gb),
                                      (self.ephemeral_disk, ephemeral_gb))
                if gb]
        # ext4 grows unmounted (no CAP_SYS_RESOURCE needed), btrfs
        # mounted (Disk.grow).
        for d, gb in grow:
            if d.filesystem() == 'ext4':
                d.grow(gb)
        self.mount(image_rootfs, idmap, disk_idmap)
        for d, gb in grow:
            if d.filesystem() == 'btrfs':
                d.grow(gb)

    def _make(self, disk_mountpoint):
        """Make its directory, lower and merged (privsep.rootdirs).

        :raises RootfsExists: its directory exists: nothing was touched.
        """
        try:
            rootdirs.make_root(self.path, disk_mountpoint)
        except FileExistsError:
            raise exception.RootfsExists(path=self.path)

    def write_etc_file(self, name, text, idmap):
        """Write /etc/<name> of the container, owned by its root, 0644.

        Written by the storage_admin daemon (ownership.write_etc_file).
        Paths resolve as inside the container (initsystem.resolve_in_root), so
        a hostile image's links cannot lead the write out of its root; an
        image with no /etc directory, or with a directory at /etc/<name>,
        is left as it is. The root must be mounted and the container
        stopped.

        :param name: a file of ownership.ETC_FILES ('hostname').
        :param text: str, the whole file.
        :param idmap: ids.Idmap of the container.
        :raises OSError: the write failed.
        """
        self._log_etc_file_left(name, ownership.write_etc_file(
            self.merged, name, text, idmap.fields()))

    def _log_etc_file_left(self, name, why):
        """Log why write_etc_file left /etc/<name>, if it did."""
        if why == ownership.NO_ETC:
            LOG.info('No /etc in the root of container ID %d; %s not '
                     'written', self.cid, name)
        elif why is not None:
            LOG.info('/etc/%s is a directory in the root of container '
                     'ID %d; left as it is', name, self.cid)

    def disk_devices(self, mounts=None):
        """'MAJ:MIN' of each mounted disk of its own (root, ephemeral).

        :param mounts: ``mount.table()`` read by the caller; default: read
            now.
        """
        if mounts is None:
            mounts = mount.table()
        points = {m.point for m in mounts}
        return [d.device(mounts)
                for d in (self.root_disk, self.ephemeral_disk)
                if mount.is_mountpoint(d.mountpoint, points)]

    def unmount(self):
        # One read of the mount table and one scan of the loop devices for
        # the whole destroy: both grow with the containers on the host.
        mounts = mount.table()
        for device in self.disk_devices(mounts):
            throttle.clear(device)
        mount.unmount_tree(self.path, [m.point for m in mounts])
        # A crash between losetup and the mount leaves a loop device.
        leftovers = disk.leftover_loops()
        for d in (self.root_disk, self.ephemeral_disk):
            d.detach_loops(leftovers)

    def unmount_for_copy(self):
        """Unmount it, each mounted disk synced first, for a copy.

        A mount namespace cloned while the disks were mounted (a container
        being started elsewhere on the host, a daemon run through ``ip
        netns exec``) keeps their filesystems alive past the unmount here,
        with what they had not written back, and may keep them for as long
        as it lives. A copy read meanwhile lacked it: a migration's
        destination found no upper/ on its root disk ("overlay ... No such
        file or directory"). Synced while still mounted here, the image
        files hold everything; the filesystem left alive is clean, and
        nothing can write to it (the container is stopped).

        :raises OSError: a sync failed; nothing was unmounted.
        :raises MountBusy, MountFailed: a mount stays.
        """
        for d in (self.root_disk, self.ephemeral_disk):
            d.sync()
        self.unmount()

    def destroy(self):
        """Unmount and delete everything of this root. Idempotent.

        :raises MountFailed: something stays mounted below it; nothing is
            deleted then, so the image cannot be deleted through a mount
            (the storage_admin daemon, which deletes it, checks again:
            privsep.rootdirs.remove_root).
        """
        if not self.exists():
            return
        self.unmount()
        rootdirs.remove_root(self.path)

    # -- replacement of the root's own layers (Nova's rebuild) ----------

    @property
    def _replacing_path(self):
        return os.path.join(self.path, replacement_mod.RECORD)

    @property
    def config_drive(self):
        """Host directory of its config drive (configdrive.path_for)."""
        return configdrive.path_for(self.path)

    def stage_config_drive(self, write):
        """Make the config drive the next replacement swaps in.

        Written under a temporary name and renamed when whole, so a crash
        never leaves a partial one staged (the storage_admin daemon
        renames and removes: privsep.replacement).

        :param write: callable(path) making the config drive directory at
            path (configdrive.write).
        """
        tmp = self.config_drive + _STAGING
        staged = self.config_drive + _STAGED
        _remove(tmp)
        write(tmp)
        _remove(staged)
        replacement_mod.promote(tmp)

    def unstage(self):
        """Remove a staged config drive (a rebuild failed before begin)."""
        for suffix in (_STAGING, _STAGED):
            _remove(self.config_drive + suffix)

    def replacement(self):
        """The replacement under way: a Replacement, or None.

        :raises ReplacementUnreadable: its file is torn or not one.
        """
        try:
            with open(self._replacing_path, 'rb') as f:
                text = f.read()
        except FileNotFoundError:
            return None
        try:
            return Replacement.from_json(text)
        except ValueError as e:
            raise exception.ReplacementUnreadable(
                path=self._replacing_path, reason=str(e))

    def begin_replacement(self, replacement):
        """Unmount the overlay, then record replacement durably.

        Until the record is written the root is untouched (a busy mount
        fails here); once it is, the old layers are as good as gone:
        replace_layers finishes the job, however often it is cut short.
        The container must be stopped.

        :param replacement: Replacement to make.
        :raises MountBusy, MountFailed: a mount to undo stays; nothing
            was recorded.
        """
        points = [self.merged, self.lower]
        if replacement.ephemeral_gb:
            points.append(self.ephemeral_disk.mountpoint)
        self._unmount(points)
        if not replacement.config_drive:
            # Not one a crashed rebuild staged: it is not this one's.
            self.unstage()
        # Synced first: the staged config drive is on disk before the
        # record names it.
        replacement_mod.write_record(self.path, replacement.to_json())

    def replace_layers(self, idmap, disk_idmap=None):
        """Carry out the recorded replacement, up to the mounts.

        A fresh, empty upper and work owned by the container's root (as
        create makes them), a new ephemeral disk of the recorded size
        unless it is kept, the staged config drive in place of the old
        one. Each step sets the old aside under a name of its own, makes
        the new, then deletes the old, so it can run again from any point
        a crash left. Nothing is mounted on the new layers yet (mount).

        :param idmap: ids.Idmap of the container.
        :param disk_idmap: ids.Idmap its disks' files are owned in, when
            a migration brought them (mount).
        :raises MountBusy, MountFailed, CommandFailed: a step failed; the
            record stays, so the next call finishes the job.
        """
        replacement = self.replacement()
        if replacement is None:
            return
        self._unmount([self.merged, self.lower])
        shift = (disk_idmap, idmap) if disk_idmap not in (None,
                                                          idmap) else None
        if os.path.exists(self.root_disk.image_path):
            # upper/ and work/ live on it.
            self.root_disk.mount(shift)
        elif shift:
            disk.shift_mount(self.root_disk.mountpoint, *shift)
        for d in (self.upper, self.work):
            _renew(d, lambda path: _make_dir(path, idmap))
        if replacement.ephemeral_gb:
            self._renew_ephemeral(replacement.ephemeral_gb, idmap, shift)
        self._swap_config_drive(replacement.config_drive)

    def end_replacement(self):
        """Forget the replacement: its layers are made and on disk."""
        if not os.path.exists(self._replacing_path):
            return
        for d in (self.root_disk, self.ephemeral_disk):
            if os.path.isdir(d.mountpoint):
                disks.sync_filesystem(d.mountpoint)
        replacement_mod.remove_record(self.path)

    def _unmount(self, points):
        for point in points:
            if point == self.ephemeral_disk.mountpoint and (
                    self.ephemeral_disk.is_mounted()):
                throttle.clear(self.ephemeral_disk.device())
            mount.unmount_tree(point)

    def _renew_ephemeral(self, size_gb, idmap, shift=None):
        d = self.ephemeral_disk
        self._unmount([d.mountpoint])
        # A crash between losetup and the mount leaves a loop device.
        d.detach_loops()
        # Its root owned on disk as its siblings are, shown as idmap's.
        owner = shift[0] if shift else idmap

        def make(path):
            d.create(size_gb, owner)
            if shift:
                disk.shift_mount(d.mountpoint, *shift)
        _renew(d.image_path, make)

    def _swap_config_drive(self, wanted):
        staged = self.config_drive + _STAGED
        if os.path.isdir(staged):
            _renew(self.config_drive,
                   lambda path: replacement_mod.promote(staged))
        elif not wanted:
            _remove(self.config_drive)
        # Else wanted and nothing staged: swapped in already (a crash
        # may have left the old one aside).
        for suffix in (_ASIDE, _STAGING):
            _remove(self.config_drive + suffix)


def _remove(path):
    """Delete a layer's path (a tree or a file), if it exists.

    By the storage_admin daemon (privsep.replacement.remove_layer): links
    are not followed, and nothing mounted on is deleted.
    """
    replacement_mod.remove_layer(path)


def _renew(path, make):
    """Replace what is at path by make(path): old aside, new, old deleted.

    Runs again from any point a crash left: what is aside is old (a
    second run deletes it first), and what is at path once a run began
    is set aside again, so only a finished make(path) stays.
    """
    replacement_mod.set_aside(path)
    make(path)
    _remove(path + _ASIDE)


def _make_dir(path, idmap):
    """An empty 0755 directory owned by the container's root.

    Made by the storage_admin daemon (ownership.make_owned_dir).

    :param idmap: ids.Idmap of the container.
    :raises FileExistsError: path exists.
    """
    ownership.make_owned_dir(path, idmap.fields())


def existing_ids(state_path):
    """Container IDs that still have a rootfs directory (set of int).

    Listed by the storage_admin daemon (privsep.rootdirs.root_ids): the
    directory is root's 0711.
    """
    return set(rootdirs.root_ids(os.path.join(state_path, 'rootfs')))
