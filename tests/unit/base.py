"""The unit tests' base class."""

import contextlib
import fcntl
import json
import os
import shutil
import stat
import threading
from unittest import mock

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from novalxcdriver import conf
from novalxcdriver import durable
from novalxcdriver import ids
from novalxcdriver import privsep
from novalxcdriver.privsep import imagecache
from novalxcdriver.privsep import lxcconf
from novalxcdriver.privsep import lxctools
from novalxcdriver.privsep import ownership
from novalxcdriver.privsep import replacement
from novalxcdriver.privsep import rootdirs
from novalxcdriver.privsep import snapshots
from novalxcdriver.privsep import unpack
from novalxcdriver import refusal
from novalxcdriver import tarball
from novalxcdriver import unpackchild


class TestCase(base.BaseTestCase):
    """oslotest's base, with patches that are undone at cleanup."""

    def patch(self, target, new=mock.DEFAULT, **kwargs):
        """mock.patch(target, new, **kwargs) for this test; the mock."""
        return self.useFixture(fixtures.MockPatch(target, new,
                                                  **kwargs)).mock

    def patch_object(self, target, attribute, new=mock.DEFAULT, **kwargs):
        """mock.patch.object(...) for this test; the mock."""
        return self.useFixture(fixtures.MockPatchObject(
            target, attribute, new, **kwargs)).mock

    def storage_admin_here(self, lxc_path, state_path):
        """Run storage_admin's entry points in this process, for this test.

        The driver roots are lxc_path and state_path alone (no add_roots
        of other tests).

        :returns: the config fixture, for further options.
        """
        cfg = self.useFixture(config_fixture.Config(conf.CONF))
        # No spare unpacker started behind a test's back (one asks).
        cfg.config(group='lxc', lxc_path=lxc_path, state_path=state_path,
                   spare_unpacker=False)
        self.patch('novalxcdriver.privsep._added_roots', new=set())
        # Never the host's cgroups (mount_disk clears a device's rules).
        self.patch('novalxcdriver.privsep.writeback.ROOT_BLKIO',
                   new=os.path.join(state_path, 'no-blkio'))
        privsep.storage_admin.set_client_mode(False)
        self.addCleanup(privsep.storage_admin.set_client_mode, True)
        return cfg


def checked_config_writer(roots, subuid_path, subgid_path):
    """A stand-in for lxc.write_config: the daemon's policy, then the write.

    So every config a unit test makes the driver write must pass
    privsep.lxcconf.check, as it must in the lxc_admin daemon.
    """
    def write_config(name, lxc_path, text):
        container_dir = os.path.join(lxc_path, name)
        subuids, subgids = ids.read_subordinate_ranges(subuid_path,
                                                       subgid_path)
        lxcconf.check(text, container_dir, roots, [subuids], [subgids],
                      lxcconf.LXCFS_MOUNT,
                      cgroup_parent=conf.CONF.lxc.cgroup_parent)
        durable.write(os.path.join(container_dir, 'config'), text)
    return write_config


def process_umask():
    """This process's umask, read without changing it (proc(5))."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('Umask:'):
                return int(line.split()[1], 8)


def open_fds():
    """{fd: what it is open on} of this process (/proc/self/fd)."""
    found = {}
    for name in os.listdir('/proc/self/fd'):
        try:
            found[int(name)] = os.readlink('/proc/self/fd/' + name)
        except OSError:
            pass
    return found


def tree_state(top, contents=False):
    """Every path below top as it is, to assert a call changed nothing.

    :param contents: read regular files too (not for large disk images).
    :returns: {path: (mode, size, mtime, inode, a symlink's target, a
        regular file's bytes when contents, else None)}.
    """
    found = {}
    for parent, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(parent, name)
            st = os.lstat(path)
            what = None
            if stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            elif contents and stat.S_ISREG(st.st_mode):
                with open(path, 'rb') as f:
                    what = f.read()
            found[path] = (st.st_mode, st.st_size, st.st_mtime_ns,
                           st.st_ino, what)
    return found


class _StorageAdminInProcess(fixtures.Fixture):
    """Some storage_admin entry points, each a mock running the real one.

    In this process, with client mode off for the call, their checks
    included; roots are added to the driver roots.

    :cvar ENTRY_POINTS: ((privsep module, (names to run, ...)), ...).
    """

    ENTRY_POINTS = ()

    def __init__(self, *roots):
        super().__init__()
        self.roots = roots

    def _setUp(self):
        if self.roots:
            self.useFixture(fixtures.MockPatchObject(
                privsep, '_added_roots', new=privsep._added_roots | {
                    os.path.normpath(os.path.abspath(r))
                    for r in self.roots}))
        for module, names in self.ENTRY_POINTS:
            for name in names:
                setattr(self, name, self.useFixture(
                    fixtures.MockPatchObject(
                        module, name, side_effect=self._in_process(
                            getattr(module, name)))).mock)

    def _patches(self):
        """Context managers held during each call."""
        return []

    def _in_process(self, entry_point):
        def call(*args):
            context = privsep.storage_admin
            was = context.client_mode
            context.set_client_mode(False)
            try:
                with contextlib.ExitStack() as stack:
                    for patch in self._patches():
                        stack.enter_context(patch)
                    return entry_point(*args)
            finally:
                context.set_client_mode(was)
        return call


class OwnershipInProcess(_StorageAdminInProcess):
    """privsep.ownership's entry points run in this process, chown mocked.

    For tests of the code that calls them: each entry point is a mock
    (to assert its calls) that runs the real one in this process, its
    checks included: paths below the driver roots (CONF's, add_roots',
    and roots), idmaps inside SUBORDINATE in place of root's
    /etc/subuid and /etc/subgid. Ownership needs root: os.chown and
    os.fchown are mocks. Only these entry points run here; any other of
    storage_admin still needs its own mock.

    :ivar make_owned_dir, write_etc_file, write_config_drive,
        give_disk_root: the mocks.
    :ivar chown, fchown: os.chown's and os.fchown's mocks.
    """

    SUBORDINATE = ((100000, 1 << 30), (100000, 1 << 30))
    ENTRY_POINTS = ((ownership, ('make_owned_dir', 'write_etc_file',
                                 'write_config_drive', 'give_disk_root')),)

    def _setUp(self):
        self.chown = self.useFixture(fixtures.MockPatch('os.chown')).mock
        self.fchown = self.useFixture(fixtures.MockPatch('os.fchown')).mock
        super()._setUp()

    def _patches(self):
        return [mock.patch.object(ids, 'read_subordinate_ranges',
                                  return_value=self.SUBORDINATE)]


class RootDirsInProcess(_StorageAdminInProcess):
    """privsep.rootdirs' and privsep.replacement's entry points, in process.

    On the tree: each entry point is a mock (to assert its calls) running
    the real one here, its checks included: paths below the driver roots
    (CONF's, add_roots', and roots); what refuses to delete under a mount
    sees the mount points ``mounts`` gives (the test's mocked mount
    table) instead of the host's.

    :param roots: driver roots besides CONF's.
    :param mounts: callable returning a collection of mount points;
        default none.
    :ivar make_root, make_mountpoint, create_root, remove_root,
        new_token, remove_token, has_token, root_ids, remove_layer,
        set_aside, promote, write_record, remove_record: the mocks.
    """

    ENTRY_POINTS = (
        (rootdirs, ('make_root', 'make_mountpoint', 'create_root',
                    'remove_root', 'new_token', 'remove_token', 'has_token',
                    'root_ids')),
        (replacement, ('remove_layer', 'set_aside', 'promote',
                       'write_record', 'remove_record')))

    def __init__(self, *roots, mounts=None):
        super().__init__(*roots)
        self.mounts = mounts or (lambda: ())

    def _patches(self):
        return [mock.patch.object(rootdirs.mount, 'mounts',
                                  side_effect=lambda: list(self.mounts()))]


class ImageCacheInProcess(_StorageAdminInProcess):
    """privsep.imagecache's entry points, in this process, on the tree.

    Each is a mock (to assert its calls) running the real one here, its
    checks included (paths below the driver roots: CONF's, add_roots'
    and roots; a partial root's 0700, so tests run as root). syncfs(2)
    is disks.sync_filesystem's, which tests mock or not as they need.

    :ivar read_entry, list_names, make_partial, publish, move_aside,
        retire, remove, start_receive, finish_receive, cancel_receive,
        unpack_disk_image: the mocks.
    """

    ENTRY_POINTS = ((imagecache, ('read_entry', 'list_names',
                                  'make_partial', 'publish', 'move_aside',
                                  'retire', 'remove', 'start_receive',
                                  'finish_receive', 'cancel_receive',
                                  'unpack_disk_image')),)


class ConfinedUnpackInProcess(fixtures.Fixture):
    """privsep.unpack's entry points, as a thread of this process.

    For tests of the image cache: start_unpack checks its arguments'
    shapes as the daemon does (an image cache partial's empty rootfs, a
    spool's unpack FIFO; not that the rootfs is root's, so that tests run
    as any user), opens the FIFO for reading and unpacks it in a thread
    with tarball.unpack_stream, owners at most ids.UNPACK_IDS - 1, as the
    confined child does (no user namespace here); finish_unpack joins it
    and returns or raises its outcome; cancel_unpack stops it.

    :ivar start_unpack, finish_unpack, cancel_unpack: the mocks.
    :ivar prepare_spare: a mock (no spare child is started).
    :ivar pipe_sizes: each FIFO's capacity in bytes when it was opened.
    """

    def _setUp(self):
        self.running = {}
        self.pipe_sizes = []
        for name in ('start_unpack', 'finish_unpack', 'cancel_unpack'):
            setattr(self, name, self.useFixture(fixtures.MockPatchObject(
                unpack, name, side_effect=getattr(self, '_' + name))).mock)
        self.prepare_spare = self.useFixture(fixtures.MockPatchObject(
            unpack, 'prepare_spare')).mock
        self.addCleanup(self._stop_all)

    def _start_unpack(self, rootfs, fifo, max_bytes):
        root = os.path.dirname(os.path.dirname(os.path.dirname(rootfs)))
        if not unpack.ROOTFS_RE.match(os.path.relpath(rootfs, root)) or \
                os.listdir(rootfs):
            raise AssertionError('not an empty partial rootfs: %s' % rootfs)
        if not unpack.FIFO_RE.match(os.path.basename(fifo)) or \
                os.path.basename(os.path.dirname(fifo)) != unpack.SPOOL:
            raise AssertionError('not a spool\'s unpack FIFO: %s' % fifo)
        if not stat.S_ISFIFO(os.lstat(fifo).st_mode):
            raise AssertionError('%s is not a FIFO' % fifo)
        source = os.fdopen(os.open(fifo, os.O_RDONLY | os.O_CLOEXEC), 'rb')
        self.pipe_sizes.append(fcntl.fcntl(source.fileno(),
                                           fcntl.F_GETPIPE_SZ))
        outcome = {}

        def run():
            try:
                outcome['size'] = tarball.unpack_stream(
                    source, rootfs, max_bytes, max_id=ids.UNPACK_IDS - 1)
            except refusal.Refusal as e:
                # As the daemon raises what the child printed.
                try:
                    unpack._outcome(1, json.dumps(
                        unpackchild.failure(e)).encode(), b'')
                except Exception as raised:
                    outcome['error'] = raised
            except BaseException as e:
                outcome['error'] = e
            finally:
                source.close()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.running[rootfs] = (thread, outcome, source)

    def _finish_unpack(self, rootfs, timeout):
        thread, outcome, _source = self.running.pop(rootfs)
        thread.join(timeout)
        if 'error' in outcome:
            raise outcome['error']
        return outcome['size']

    def _cancel_unpack(self, rootfs):
        thread, _outcome, source = self.running.pop(rootfs)
        source.close()
        thread.join(10)

    def _stop_all(self):
        for rootfs in list(self.running):
            self._cancel_unpack(rootfs)


def mounts_by_name(mount_mock):
    """Let an autospec'd mount module answer is_mountpoint by name.

    From its own mountpoints() (what the test says is mounted), or the
    points given: the tests' paths lead through no symlink.
    """
    mount_mock.is_mountpoint.side_effect = lambda path, points=None: (
        path in (mount_mock.mountpoints() if points is None else points))


def container_dirs(lxc_mock):
    """A mocked lxc module's container directories and markers, on the tree.

    make_dir, set_marker and clear_marker act as privsep.lxctools' do,
    without its checks; remove_dir and console_output are lxctools' own,
    run in this process (whose the directory is decided as in the
    daemon), without its check that the directory is root's (the tests
    may run as another user).
    """
    def make_dir(name, lxc_path):
        os.makedirs(lxc_path, mode=0o711, exist_ok=True)
        os.mkdir(os.path.join(lxc_path, name), 0o700)

    def in_process(entry_point):
        def call(name, lxc_path, *args):
            context = privsep.lxc_admin
            was = context.client_mode
            context.set_client_mode(False)
            try:
                with mock.patch.object(lxctools, '_check_root_owned'), \
                        mock.patch.object(privsep, '_added_roots',
                                          new={lxc_path}):
                    return entry_point(name, lxc_path, *args)
            finally:
                context.set_client_mode(was)
        return call

    def set_marker(name, lxc_path, marker, text=''):
        durable.write(os.path.join(lxc_path, name, marker), text)

    def clear_marker(name, lxc_path, marker):
        try:
            os.unlink(os.path.join(lxc_path, name, marker))
        except FileNotFoundError:
            return False
        return True
    lxc_mock.make_dir.side_effect = make_dir
    lxc_mock.remove_dir.side_effect = in_process(lxctools.remove_dir)
    lxc_mock.console_output.side_effect = in_process(lxctools.console_output)
    lxc_mock.set_marker.side_effect = set_marker
    lxc_mock.clear_marker.side_effect = clear_marker


class SnapshotStages(fixtures.Fixture):
    """privsep.snapshots' stage entry points as stand-ins on the tree.

    make_stage, remove_stage and stages act on the directories as the
    daemon does, without its checks or locks; a stage in ``live`` is one
    another process holds (left alone).

    :ivar live: set of stage paths.
    :ivar make_stage, remove_stage, stages: the mocks.
    """

    def _setUp(self):
        self.live = set()
        for name in ('make_stage', 'remove_stage', 'stages'):
            setattr(self, name, self.useFixture(fixtures.MockPatchObject(
                snapshots, name, side_effect=getattr(self, '_' + name))).mock)

    @staticmethod
    def _make_stage(stage):
        os.mkdir(stage, 0o700)
        os.mkdir(os.path.join(stage, snapshots.MERGED))

    def _remove_stage(self, stage):
        if stage in self.live or not os.path.lexists(stage):
            return False
        shutil.rmtree(stage)
        return True

    def _stages(self, rootfs_dir):
        if not os.path.isdir(rootfs_dir):
            return []
        return [[os.path.join(rootfs_dir, n),
                 os.path.join(rootfs_dir, n) in self.live]
                for n in sorted(os.listdir(rootfs_dir))
                if snapshots.STAGE_RE.match(n)]
