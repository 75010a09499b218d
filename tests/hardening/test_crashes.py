"""The driver's process killed (SIGKILL) at each step of spawn, destroy,
snapshot and rebuild.

For every crash point a driver process (tests.hardening.worker) is armed
to kill itself right before or after one function of the driver runs,
then asked to spawn or destroy. While the half-made container's
artifacts remain, a new allocation (the driver's own IdAllocator) must not
hand out its ID. Then a new driver process starts on the same host and
state, runs init_host and deletes the instance: nothing may be left, no
mount, directory, cgroup, ID reservation, loop device, monitor process,
veth or held lock.

A rebuild cut short must leave the server whole: before the replacement
is recorded, a hard reboot brings back the old root as it was (the
container's writes, the ephemeral disk's files); after, it finishes the
new one, with none of the old writes and nothing set aside left.

A host reboot is simulated too: containers running, every container
killed, every mount under the state path gone, a new driver runs
init_host and resume_state_on_host_boot.
"""

import contextlib
import fnmatch
import glob
import os
import subprocess
import uuid

from novalxcdriver import container
from novalxcdriver import ids
from novalxcdriver import mount
from novalxcdriver import privsep
from novalxcdriver import record
from tests.hardening import base
from tests.hardening import summary

# (label, target, when, match): match 'dir' stands for the container's
# directory, 'config' for its config file, 'record' for its record.
SPAWN_POINTS = (
    ('download.chunks', 'novalxcdriver.download:chunks', 'after', None),
    # The image cache's directories are the storage_admin daemon's: the
    # partial is made, then published (marker, rename) in one call.
    ('imagecache.make_partial',
     'novalxcdriver.privsep.imagecache:make_partial', 'after', None),
    # The tarball is unpacked by the storage_admin daemon's confined
    # child: the crash is nova-compute's (its daemons die with it, the
    # child with them, the child's view stays mounted), with the child
    # reading and once it is done.
    ('unpack.start_unpack', 'novalxcdriver.privsep.unpack:start_unpack',
     'after', None),
    ('unpack.finish_unpack', 'novalxcdriver.privsep.unpack:finish_unpack',
     'after', None),
    ('imagecache.publish', 'novalxcdriver.privsep.imagecache:publish',
     'before', None),
    ('imagecache.publish', 'novalxcdriver.privsep.imagecache:publish',
     'after', None),
    ('ImageCache.get', 'novalxcdriver.images:ImageCache.get', 'after',
     None),
    ('IdAllocator._write_owner', 'novalxcdriver.ids:IdAllocator._write_owner',
     'before', None),
    ('IdAllocator.allocate', 'novalxcdriver.ids:IdAllocator.allocate',
     'after', None),
    ('record write', 'novalxcdriver.durable:write', 'before', 'record'),
    ('record write', 'novalxcdriver.durable:write', 'after', 'record'),
    # The root (its directories, disk, mounts and /etc/hostname) is made
    # by the storage_admin daemon in one call: the crash is
    # nova-compute's, around it (the daemon finishes a call it began;
    # a root cut short inside it is the power loss tests' case).
    ('rootdirs.create_root', 'novalxcdriver.privsep.rootdirs:create_root',
     'before', None),
    ('rootdirs.create_root', 'novalxcdriver.privsep.rootdirs:create_root',
     'after', None),
    # Made and written by the lxc_admin daemon: the crash is
    # nova-compute's, around its call.
    ('lxc.make_dir', 'novalxcdriver.lxc:make_dir', 'after', None),
    ('config write', 'novalxcdriver.lxc:write_config', 'before', None),
    ('config write', 'novalxcdriver.lxc:write_config', 'after', None),
    ('lxc.start', 'novalxcdriver.lxc:start', 'before', None),
    ('lxc.start', 'novalxcdriver.lxc:start', 'after', None),
    ('Container.mark_ready', 'novalxcdriver.container:Container.mark_ready',
     'before', None),
)
DESTROY_POINTS = (
    ('Container.stop', 'novalxcdriver.container:Container.stop', 'before',
     None),
    ('Container.stop', 'novalxcdriver.container:Container.stop', 'after',
     None),
    ('Rootfs.unmount', 'novalxcdriver.rootfs:Rootfs.unmount', 'after', None),
    ('Rootfs.destroy', 'novalxcdriver.rootfs:Rootfs.destroy', 'after', None),
    # Removed by the lxc_admin daemon: the crash is nova-compute's,
    # around its call.
    ('lxc.remove_dir', 'novalxcdriver.lxc:remove_dir', 'before', None),
    ('lxc.remove_dir', 'novalxcdriver.lxc:remove_dir', 'after', None),
    ('IdAllocator.release', 'novalxcdriver.ids:IdAllocator.release',
     'before', None),
    # Its reservation gone, its index entry not yet.
    ('IdAllocator._unindex', 'novalxcdriver.ids:IdAllocator._unindex',
     'before', None),
)

# (label, target, when, match, root disk): the server runs with a root
# disk of that filesystem, or none ('unbounded': root_gb 0, cgroup freezer).
SNAPSHOT_POINTS = (
    ('snapshots.make_stage', 'novalxcdriver.privsep.snapshots:make_stage',
     'after', None, 'btrfs'),
    ('disks.sync_filesystem', 'novalxcdriver.privsep.disks:sync_filesystem',
     'after', None, 'btrfs'),
    ('disks.snapshot_subvolume',
     'novalxcdriver.privsep.disks:snapshot_subvolume',
     'after', None, 'btrfs'),
    ('mount.overlay_readonly', 'novalxcdriver.mount:overlay_readonly',
     'after', None, 'btrfs'),
    ('mkfifo(spool)', 'os:mkfifo', 'after', None, 'btrfs'),
    ('snapshots.stream', 'novalxcdriver.privsep.snapshots:stream', 'after',
     None, 'btrfs'),
    ('Snapshot.cleanup', 'novalxcdriver.snapshot:Snapshot.cleanup',
     'before', None, 'btrfs'),
    ('disks.freeze', 'novalxcdriver.privsep.disks:freeze', 'after', None,
     'ext4'),
    ('disks.copy_layer', 'novalxcdriver.privsep.disks:copy_layer', 'after',
     None, 'ext4'),
    ('lxc.set_marker', 'novalxcdriver.lxc:set_marker', 'after', None,
     'unbounded'),
    ('lxc.freeze', 'novalxcdriver.lxc:freeze', 'after', None, 'unbounded'),
)

# (label, target, when, match, committed): committed says whether the
# replacement is recorded at that point (Rootfs.begin_replacement), so
# that a hard reboot finishes the new root rather than keeps the old.
REBUILD_POINTS = (
    ('Rootfs.stage_config_drive',
     'novalxcdriver.rootfs:Rootfs.stage_config_drive', 'after', None,
     False),
    ('Container.stop', 'novalxcdriver.container:Container.stop', 'after',
     None, False),
    ('replacement.write_record',
     'novalxcdriver.privsep.replacement:write_record', 'before', None,
     False),
    ('replacement.write_record',
     'novalxcdriver.privsep.replacement:write_record', 'after', None, True),
    ('replacement.set_aside(upper)',
     'novalxcdriver.privsep.replacement:set_aside', 'after', 'root/upper',
     True),
    ('ownership.make_owned_dir(upper)',
     'novalxcdriver.privsep.ownership:make_owned_dir', 'after',
     'root/upper', True),
    ('replacement.remove_layer(upper)',
     'novalxcdriver.privsep.replacement:remove_layer', 'after',
     'upper.rebuild-old', True),
    ('replacement.set_aside(ephemeral)',
     'novalxcdriver.privsep.replacement:set_aside', 'after',
     'ephemeral.img', True),
    ('Disk.create(ephemeral)', 'novalxcdriver.disk:Disk.create', 'after',
     None, True),
    ('replacement.promote(config drive)',
     'novalxcdriver.privsep.replacement:promote', 'after', '.rebuild-new',
     True),
    ('replacement.remove_record',
     'novalxcdriver.privsep.replacement:remove_record', 'after', None,
     True),
    ('lxc.start', 'novalxcdriver.lxc:start', 'before', None, True),
)
OLD_WRITE = 'written-before-the-rebuild'


@contextlib.contextmanager
def _storage_admin_here(*roots):
    """storage_admin's entry points run in this process, for roots.

    This test process (root) probes each crash point's private roots
    with the driver's own code (the ID allocator lists the roots'
    directories through privsep.rootdirs.root_ids): its daemon would
    need a restart per new root (privsep.add_roots), so the entry points
    run here, with their checks, as the daemon would.
    """
    added = {os.path.normpath(r) for r in roots} - privsep._added_roots
    privsep._added_roots.update(added)
    was = privsep.storage_admin.client_mode
    privsep.storage_admin.set_client_mode(False)
    try:
        yield
    finally:
        privsep.storage_admin.set_client_mode(was)
        privsep._added_roots.difference_update(added)


def rebuild_leftovers(root_dir):
    """What a replacement sets aside or stages, and its record."""
    return (glob.glob(os.path.join(root_dir, '*.rebuild-*')) +
            glob.glob(os.path.join(root_dir, 'root', '*.rebuild-*')) +
            glob.glob(os.path.join(root_dir, 'replacing.json')))


def snapshot_leftovers(state_path, lxc_path):
    """What snapshots left: stages, subvolumes, FIFOs, mounts, freezes."""
    found = glob.glob(os.path.join(state_path, 'rootfs', '*', 'snapshot-*'))
    found += glob.glob(os.path.join(state_path, 'rootfs', '*', 'root',
                                    '.snapshot-*'))
    found += glob.glob(os.path.join(lxc_path, '*', 'snapshot-frozen'))
    found += glob.glob(os.path.join(state_path, 'spool', '*'))
    found += [p for p in mount.mountpoints()
              if fnmatch.fnmatch(p, os.path.join(state_path, 'rootfs', '*',
                                                 'snapshot-*'))]
    for point in glob.glob(os.path.join(state_path, 'rootfs', '*', 'root')):
        if point in mount.mountpoints():
            # FITHAW succeeds only on a frozen filesystem. As the host:
            # this process's daemons lack the workers' roots.
            if subprocess.run(['fsfreeze', '--unfreeze', point],
                              capture_output=True).returncode == 0:
                found.append('%s was frozen' % point)
    return found


class CrashTest(base.WorkerTestCase):

    host_prefix = 'hardening-crash'

    def _worker(self, root, image_id, **options):
        return base.Worker(self, root, self.host,
                           images={image_id: self.tarball},
                           state_poll_interval=1.0, **options)

    def _match(self, match, lxc_path, state_path, spec):
        directory = os.path.join(lxc_path, base.instance_name(spec))
        return {'dir': directory, 'config': directory + '/config',
                'record': os.path.join(state_path, 'instances', spec['uuid']),
                None: None}.get(match, match)

    def _crash_once(self, phase, i, label, target, when, match, fs=None):
        """One crash point in a root of its own.

        :returns: (left, held, probe, leaks, problems): what the crash
            left, the IDs it held, the ID a new allocation got, what the
            restarted driver left, and anything else wrong (as text).
        """
        root = os.path.join(self.root, '%s-%02d' % (phase, i))
        os.makedirs(root)
        image_id = str(uuid.uuid4())
        spec = base.instance_spec(
            0x2000 + i + {'spawn': 0, 'destroy': 100, 'snapshot': 200}[phase],
            root_gb=0 if fs == 'unbounded' else 1)
        name = base.instance_name(spec)
        problems = []
        options = {'root_disk_fs': fs} if fs in ('btrfs', 'ext4') else {}
        worker = self._worker(root, image_id, **options)
        lxc_path, state_path = worker.lxc_path, worker.state_path
        if phase in ('destroy', 'snapshot'):
            result, = worker.call('spawn', instances=[spec],
                                  image_id=image_id)
            if result['error']:
                return [], [], None, [], ['spawn failed: %s'
                                          % result['message']]
        worker.call('arm', target=target, when=when,
                    match=self._match(match, lxc_path, state_path, spec))
        op = {'spawn': dict(op='spawn', instances=[spec], image_id=image_id),
              'destroy': dict(op='destroy', instances=[spec]),
              'snapshot': dict(op='snapshot', instances=[spec],
                               image_id=str(uuid.uuid4()))}[phase]
        status = worker.crash_during(**op)
        if status != -9:
            problems.append('exit status %s, not SIGKILL' % status)

        left = base.leaks(lxc_path, state_path, [name])
        # The half-made container keeps its ID while its artifacts remain.
        held = base.held_ids(lxc_path, state_path)
        allocator = ids.IdAllocator(
            state_path, artifact_ids=lambda: container.artifact_ids(
                lxc_path, state_path, record.RecordStore(state_path)))
        with _storage_admin_here(lxc_path, state_path):
            probe = allocator.allocate(str(uuid.uuid4()), 'probe')
        allocator.release(probe)
        if probe in held:
            problems.append('ID %d handed out again while held by %s' % (
                probe, sorted(held)))
        veth_names = base.veth_pairs(lxc_path)

        restarted = self._worker(root, image_id, **options)
        if phase == 'snapshot':
            # init_host alone undoes the snapshot; the server runs on.
            left_by_snapshot = snapshot_leftovers(state_path, lxc_path)
            if left_by_snapshot:
                problems.append('after init_host: %s' % left_by_snapshot)
            info, = restarted.call('info', instances=[spec])
            state = (info['value'] or {}).get('state')
            if state != 'RUNNING':
                problems.append('server %s after init_host, not RUNNING '
                                '(%s)' % (state, info['message']
                                          if info['error'] else ''))
        leaks = self._delete(restarted, spec, root, veth_names, problems)
        return left, sorted(held), probe, leaks, problems

    @staticmethod
    def _delete(restarted, spec, root, veth_names, problems):
        """Delete spec's instance with the restarted worker, and quit it.

        :returns: what it left (base.leaks); the root is removed if
            nothing. A failed destroy is added to problems.
        """
        result, = restarted.call('destroy', instances=[spec])
        if result['error']:
            problems.append('destroy after restart: %s: %s' % (
                result['error'], result['message']))
        restarted.quit()
        leaks = base.leaks(restarted.lxc_path, restarted.state_path,
                           [base.instance_name(spec)],
                           veth_names=veth_names)
        if not leaks:
            base.force_clean(root)
        return leaks

    def _crash_points(self, phase, points):
        figures = {}
        failures = {}
        for i, (label, target, when, match, *fs) in enumerate(points):
            point = '%s: %s %s' % (phase, when, label)
            if fs:
                point += ' (%s)' % fs[0]
            try:
                left, held, probe, leaks, problems = self._crash_once(
                    phase, i, label, target, when, match, *fs)
            except base.WorkerError as e:
                left, held, probe, leaks, problems = [], [], None, [], [
                    '%s' % e]
            figures[point] = len(leaks)
            print('HARDENING crash point %-40s left %2d artifacts (IDs held '
                  '%s, new ID %s); leaks after restart+delete %d%s' % (
                      point, len(left), held, probe, len(leaks), ''.join(
                          '\n    ' + x for x in leaks + problems)))
            if leaks or problems:
                failures[point] = leaks + problems
        summary.record(
            'crashes.' + phase,
            '%d crash points in %s, %d leaks after restart and delete, %d '
            'points with problems' % (len(points), phase,
                                      sum(figures.values()), len(failures)),
            points=len(points), leaks=sum(figures.values()),
            per_point=figures)
        self.assertEqual({}, failures)

    def test_crash_at_each_step_of_spawn(self):
        self._crash_points('spawn', SPAWN_POINTS)

    def test_crash_at_each_step_of_destroy(self):
        self._crash_points('destroy', DESTROY_POINTS)

    def test_crash_at_each_step_of_snapshot(self):
        self._crash_points('snapshot', SNAPSHOT_POINTS)

    def test_crash_at_each_step_of_rebuild(self):
        figures = {}
        failures = {}
        for i, (label, target, when, match, committed) in enumerate(
                REBUILD_POINTS):
            point = 'rebuild: %s %s' % (when, label)
            try:
                leaks, problems = self._rebuild_crash_once(
                    i, target, when, match, committed)
            except base.WorkerError as e:
                leaks, problems = [], ['%s' % e]
            figures[point] = len(leaks)
            print('HARDENING crash point %-48s %s root after a hard reboot;'
                  ' leaks after delete %d%s' % (
                      point, 'new' if committed else 'old', len(leaks),
                      ''.join('\n    ' + x for x in leaks + problems)))
            if leaks or problems:
                failures[point] = leaks + problems
        summary.record(
            'crashes.rebuild',
            '%d crash points in rebuild, %d leaks after a hard reboot and '
            'delete, %d points with problems' % (
                len(REBUILD_POINTS), sum(figures.values()), len(failures)),
            points=len(REBUILD_POINTS), leaks=sum(figures.values()),
            per_point=figures)
        self.assertEqual({}, failures)

    def _rebuild_crash_once(self, i, target, when, match, committed):
        """One crash in a rebuild, then a hard reboot and a delete.

        :returns: (leaks, problems) as text.
        """
        root = os.path.join(self.root, 'rebuild-%02d' % i)
        os.makedirs(root)
        old_image, new_image = str(uuid.uuid4()), str(uuid.uuid4())
        spec = base.instance_spec(0x2300 + i, ephemeral_gb=1,
                                  config_drive=True)
        worker = base.Worker(self, root, self.host,
                             images={old_image: self.tarball,
                                     new_image: self.tarball},
                             state_poll_interval=1.0)
        lxc_path, state_path = worker.lxc_path, worker.state_path
        result, = worker.call('spawn', instances=[spec], image_id=old_image)
        if result['error']:
            return [], ['spawn failed: %s' % result['message']]
        root_dir = os.path.join(state_path, 'rootfs',
                                str(result['value']['cid']))
        # The container's own writes, as the host sees them.
        old_writes = [os.path.join(root_dir, 'root', 'upper', OLD_WRITE),
                      os.path.join(root_dir, 'ephemeral', OLD_WRITE)]
        for path in old_writes:
            with open(path, 'w') as f:
                f.write('old')
        worker.call('arm', target=target, when=when, match=match)
        problems = []
        status = worker.crash_during('rebuild', instances=[spec],
                                     image_id=new_image)
        if status != -9:
            problems.append('exit status %s, not SIGKILL' % status)

        restarted = base.Worker(self, root, self.host,
                                images={old_image: self.tarball,
                                        new_image: self.tarball},
                                state_poll_interval=1.0)
        # Nova puts a server whose rebuild a restart cut short in ERROR;
        # a hard reboot is what its user may do next.
        result, = restarted.call('reboot', instances=[spec])
        if result['error']:
            problems.append('hard reboot: %s: %s' % (result['error'],
                                                     result['message']))
        elif result['value']['state'] != 'RUNNING':
            problems.append('%s after the hard reboot, not RUNNING'
                            % result['value']['state'])
        kept = [p for p in old_writes if os.path.exists(p)]
        if committed and kept:
            problems.append('old writes kept by a recorded replacement: %s'
                            % kept)
        elif not committed and kept != old_writes:
            problems.append('old writes lost before the replacement was '
                            'recorded: %s' % sorted(set(old_writes) -
                                                    set(kept)))
        left = rebuild_leftovers(root_dir)
        if committed and left:
            problems.append('after the hard reboot: %s' % left)
        leaks = self._delete(restarted, spec, root,
                             base.veth_pairs(lxc_path), problems)
        return leaks, problems

    def test_host_reboot_brings_running_instances_back(self):
        image_id = str(uuid.uuid4())
        worker = self._worker(self.root, image_id)
        lxc_path, state_path = worker.lxc_path, worker.state_path
        running = [base.instance_spec(0x3000 + i) for i in range(3)]
        stopped = base.instance_spec(0x3010)
        self.assertEqual([None] * 3, [r['error'] for r in worker.call(
            'spawn', instances=running, image_id=image_id)])
        self.assertEqual([None], [r['error'] for r in worker.call(
            'spawn', instances=[stopped], image_id=image_id,
            power_on=False)])
        names = [base.instance_name(s) for s in running]
        for name in names:
            base.attach(name, lxc_path, 'sh', '-c',
                        'echo kept > /root/persist', check=True)

        # The reboot: nova-compute dies with the host, every container
        # stops at once, every mount and loop device goes.
        self.assertEqual([], base.host_crash(worker, names))
        self.assertEqual([], base.loop_devices(state_path))

        restarted = self._worker(self.root, image_id)
        results = restarted.call('resume_state_on_host_boot',
                                 instances=running)
        self.assertEqual([None] * 3, [r['error'] for r in results])
        states = [base.lxc_info(n, lxc_path)[0] for n in names]
        kept = [base.attach(n, lxc_path, 'cat', '/root/persist').stdout
                for n in names]
        self.assertEqual(['RUNNING'] * 3, states)
        self.assertEqual(['kept\n'] * 3, kept)
        # The one that was stopped stays so, and still starts.
        stopped_name = base.instance_name(stopped)
        self.assertEqual('STOPPED', base.lxc_info(stopped_name,
                                                  lxc_path)[0])
        self.assertEqual([None], [r['error'] for r in restarted.call(
            'power_on', instances=[stopped])])
        self.assertEqual('RUNNING', base.lxc_info(stopped_name,
                                                  lxc_path)[0])

        everything = running + [stopped]
        self.assertEqual([None] * 4, [r['error'] for r in restarted.call(
            'destroy', instances=everything)])
        leaks = base.leaks(lxc_path, state_path,
                           names + [stopped_name])
        summary.record(
            'reboot', 'simulated host reboot: %d of 3 running instances '
            'RUNNING again with their data, the stopped one stopped; %d '
            'leaks after deleting all' % (states.count('RUNNING'),
                                          len(leaks)),
            running_again=states.count('RUNNING'), leaks=len(leaks))
        self.assertEqual([], leaks)
