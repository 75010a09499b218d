"""Cold migration between two drivers of this machine (the migration family).

Two LXCDriver instances stand for two compute hosts, as in
tests/functional/test_migration.py: the harness's driver is the source A
(lxc/ and state/ under --root) and a second one the destination B
(lxc-b/ and state-b/), both with the one machine-wide ids_path. For each
size (10 MiB, 500 MiB and 2 GiB by default) one busybox server on A gets a
btrfs root disk big enough (bench.snapshot.root_gb_for) and that much
random data written inside (bench.snapshot's writer). Then, for each
transport, side by side:

a) the driver's cold migration A -> B, same flavor, as Nova calls it:
   A's ``migrate_disk_and_power_off`` (clean stop, hand over), B's
   ``finish_migration(power_on=True)`` (copy, grow, mount, start), A's
   ``confirm_migration``: seconds in total and per step. The next
   driver sample goes back B -> A the same way (the two directions
   alternate: same machine, same filesystem, no untimed trip between);
c) the floor: the server handed over the same way by the host it is on
   (untimed, so its disks are unmounted and quiet, exactly as the
   driver's copy finds them), then a plain ``rsync -S`` of the same
   files from its root directory to a scratch directory beside the
   destination state paths, timed; the copy
   deleted, and the server brought back with
   ``finish_revert_migration`` (untimed). A reference, timed in the same
   window, for the local transport only (over SSH it would cost as
   much as the floor): ``cp --sparse=always``.

a and c alternate (ac, ca, ...) ``runs`` times. The transports:

- local: the default between two drivers of one machine (copied by
  the storage_admin daemon: disk images reflinked or their data extents,
  a root without a disk's upper layer as tar's stream into the confined
  child);
  floor: local ``rsync -S`` (the issue's floor);
- rsync: over SSH, as between two machines: a private sshd on
  127.0.0.1 (a port, host key and client key of its own, as
  tests/functional RsyncOverSSHTest), ``migration.is_local`` patched to
  False; the disks travel as ``tar --sparse``'s stream read by the
  daemon's confined child; floor: ``rsync -S`` over the same SSH.

The goal (issue): driver <= 1.3 x floor + 2 s, at the median.
"""

import contextlib
import os
import shutil
import time
from unittest import mock

from nova import objects

from bench import harness as harness_mod
from bench import snapshot as snapshot_mod
from novalxcdriver import conf
from novalxcdriver import migration as migration_mod
from novalxcdriver import privsep
from novalxcdriver.privsep import migrationcopy
from tests import private_sshd

CONF = conf.CONF
DEFAULT_SIZES = snapshot_mod.DEFAULT_SIZES
HOST_A = harness_mod.HOST
HOST_B = harness_mod.HOST + '-b'
DEST_LXC = 'lxc-b'
DEST_STATE = 'state-b'
# The floor's copies (beside state-b, on the same filesystem) and the
# private sshd's keys and config.
SCRATCH = 'migration-floor'
SSHD_DIR = 'migration-sshd'
TRANSPORTS = ('local', 'rsync')
GOAL_RATIO = 1.3
GOAL_SLACK = 2.0  # s
# Nova's [DEFAULT] shutdown_timeout and its retry interval, which the
# compute manager passes to migrate_disk_and_power_off.
STOP_TIMEOUT = snapshot_mod.STOP_TIMEOUT
STOP_RETRY = snapshot_mod.STOP_RETRY


def goal_met(driver, floor):
    """driver <= GOAL_RATIO x floor + GOAL_SLACK (None when unknown)."""
    if driver is None or floor is None:
        return None
    return driver <= GOAL_RATIO * floor + GOAL_SLACK


# -- the destination -------------------------------------------------------

def dest_paths(root):
    return os.path.join(root, DEST_LXC), os.path.join(root, DEST_STATE)


def destination_driver(h):
    """A second LXCDriver (host B) on lxc-b/ and state-b/ under h.root."""
    return harness_mod.driver_on(*dest_paths(h.root), host=HOST_B)


def _retire(h, drv):
    """Destroy B's containers and roots (B's own IDs only); B's end."""
    harness_mod.retire_driver(drv, *dest_paths(h.root), host=HOST_B)


def _has_content(path):
    return bool(harness_mod._listdir(path))


def destroy_leftovers(h):
    """Destroy whatever a run (this or a killed one) left of the family.

    B's containers and roots (through a B driver, made only when its
    directories hold something), the floor's copies and the sshd's
    directory. Call after h.destroy_everything().
    """
    lxc_path, state_path = dest_paths(h.root)
    if _has_content(lxc_path) or _has_content(
            os.path.join(state_path, 'rootfs')) or _has_content(
            os.path.join(state_path, 'instances')):
        _retire(h, destination_driver(h))
    for name in (SCRATCH, SSHD_DIR):
        shutil.rmtree(os.path.join(h.root, name), ignore_errors=True)


def leaks(h):
    """What of the family is left (dict of kind -> list, empty: none)."""
    lxc_path, state_path = dest_paths(h.root)
    return {
        'destination containers': harness_mod.run(
            ['lxc-ls', '-P', lxc_path], check=False).split()
        if os.path.isdir(lxc_path) else [],
        'destination container dirs': harness_mod._listdir(lxc_path),
        'destination rootfs dirs': harness_mod._listdir(
            os.path.join(state_path, 'rootfs')),
        'destination records': harness_mod._listdir(
            os.path.join(state_path, 'instances')),
        'migration floor copies': harness_mod._listdir(
            os.path.join(h.root, SCRATCH)),
        'migration sshd': harness_mod._listdir(
            os.path.join(h.root, SSHD_DIR)),
    }


# -- the transports --------------------------------------------------------

@contextlib.contextmanager
def transport(h, a, b, name):
    """Make the drivers copy by transport name ('local' or 'rsync')."""
    ips = a._my_ip, b._my_ip
    a._my_ip = b._my_ip = '127.0.0.1'
    try:
        if name == 'local':
            yield
            return
        if not private_sshd.available():
            raise RuntimeError('openssh-server is not installed '
                               '(tools/test-setup.sh installs it)')
        with private_sshd.running(os.path.join(h.root, SSHD_DIR)) as (
                port, options):
            values = {'migration_ssh_port': port,
                      'migration_ssh_user': 'root',
                      'migration_ssh_options': options}
            for key, value in values.items():
                CONF.set_override(key, value, group='lxc')
            # The storage_admin daemon runs ssh for the disk images.
            privsep.refresh_root_daemons()
            try:
                with mock.patch.object(migration_mod, 'is_local',
                                       return_value=False):
                    yield
            finally:
                for key in values:
                    CONF.clear_override(key, group='lxc')
                privsep.refresh_root_daemons()
    finally:
        a._my_ip, b._my_ip = ips


# -- the floor ---------------------------------------------------------------

def floor_commands(info, dest_dir, local):
    """The floor's commands for info's files: name -> list of argv.

    'rsync -S' is the floor (the issue's): locally, or over the SSH the
    driver's daemon uses (migrationcopy.ssh_command); locally also 'cp
    --sparse=always'.
    """
    out = {'rsync -S': []}
    if local:
        # Cheap here; over SSH it would cost as much as the floor.
        out['cp --sparse=always'] = []
    for name in info.files:
        directory = name == migration_mod.ROOT_DIR
        source = os.path.join(info.rootfs, name) + ('/' if directory
                                                    else '')
        dest = os.path.join(dest_dir, name) + ('/' if directory else '')
        flags = ['-S'] + (['-a'] if directory else [])
        if local:
            out['rsync -S'].append(['rsync'] + flags + [source, dest])
            out['cp --sparse=always'].append(
                ['cp', '--sparse=always'] + (['-a'] if directory else []) +
                ['--no-target-directory', source.rstrip('/'),
                 dest.rstrip('/')])
        else:
            ssh = migrationcopy.ssh_command(info.source_ip)[:-2]
            host = migrationcopy.ssh_command(info.source_ip)[-1]
            out['rsync -S'].append(['rsync'] + flags + [
                '-e', ' '.join(ssh), '%s:%s' % (host, source), dest])
    return out


def timed_copy(argvs, scratch):
    """Run argvs into the empty scratch directory; seconds; empty it."""
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch, mode=0o700)
    start = time.perf_counter()
    for argv in argvs:
        harness_mod.run(argv, timeout=CONF.lxc.migration_timeout)
    seconds = time.perf_counter() - start
    nbytes = sum(os.path.getsize(os.path.join(d, f))
                 for d, _dirs, files in os.walk(scratch) for f in files)
    shutil.rmtree(scratch)
    return seconds, nbytes


# -- one server --------------------------------------------------------------

def _migrate(h, src, dest, instance, image, phases_by_step):
    """src -> dest as Nova does (hand over, finish, confirm), timed."""
    steps = {}
    with h.timer.collect() as phases:
        start = time.perf_counter()
        disk_info = src.migrate_disk_and_power_off(
            h.context, instance, '127.0.0.1', instance.flavor, [],
            timeout=STOP_TIMEOUT, retry_interval=STOP_RETRY)
        steps['hand over'] = time.perf_counter() - start
    phases_by_step['hand over'] = phases
    with h.timer.collect() as phases:
        start = time.perf_counter()
        instance.old_flavor = instance.flavor
        migration = objects.Migration(source_compute=src._host,
                                      dest_compute=dest._host)
        dest.finish_migration(h.context, migration, instance, disk_info, [],
                              h.image_meta(image), False, {},
                              power_on=True)
        steps['finish'] = time.perf_counter() - start
    phases_by_step['finish'] = phases
    with h.timer.collect() as phases:
        start = time.perf_counter()
        src.confirm_migration(h.context, migration, instance, [])
        steps['confirm'] = time.perf_counter() - start
    phases_by_step['confirm'] = phases
    return steps, disk_info


def _state(drv, name):
    return harness_mod.run(['lxc-info', '-n', name, '-P', drv._lxc_path,
                            '-s', '-H'], check=False).strip() or None


def driver_sample(h, src, dest, instance, image):
    """src -> dest, timed (the server then runs on dest)."""
    phases = {}
    steps, _info = _migrate(h, src, dest, instance, image, phases)
    total = sum(steps.values())
    state = _state(dest, instance.name)
    if state != 'RUNNING':
        raise RuntimeError('%s is %s on the destination after its '
                           'migration' % (instance.name, state))
    finish = phases['finish']
    copy = finish.get('migration copy', 0.0)
    return {
        'seconds': total, 'hand_over': steps['hand over'],
        'finish': steps['finish'], 'confirm': steps['confirm'],
        'copy': copy, 'after_copy': steps['finish'] - copy,
        'stop': phases['hand over'].get('container stop'),
        'grow': finish.get('disk grow'), 'mount': finish.get('rootfs mount'),
        'start': finish.get('container start'),
        'image_lookup': finish.get('image lookup'),
        'source': src._host, 'destination': dest._host, 'phases': phases}


def floor_sample(h, src, instance, local):
    """The floor copies of the handed-over server's files, timed.

    The server is handed over by src (untimed), its files copied by each
    floor command in turn into a scratch directory beside the destination
    state path (one filesystem for all), then brought back on src.
    """
    disk_info = src.migrate_disk_and_power_off(
        h.context, instance, '127.0.0.1', instance.flavor, [],
        timeout=STOP_TIMEOUT, retry_interval=STOP_RETRY)
    info = migration_mod.DiskInfo.from_json(disk_info)
    scratch = os.path.join(h.root, SCRATCH, 'copy')
    sample = {'files': list(info.files), 'source': src._host}
    try:
        for name, argvs in floor_commands(info, scratch, local).items():
            seconds, nbytes = timed_copy(argvs, scratch)
            sample[name] = seconds
            sample[name + ' bytes'] = nbytes
            sample.setdefault('argv', {})[name] = [' '.join(a)
                                                   for a in argvs]
    finally:
        shutil.rmtree(os.path.join(h.root, SCRATCH), ignore_errors=True)
        src.finish_revert_migration(h.context, instance, [], None,
                                    power_on=True)
    sample['seconds'] = sample['rsync -S']
    return sample


def _order(run):
    return ('driver', 'floor') if run % 2 == 0 else ('floor', 'driver')


def measure_transport(h, hosts, instance, image, name, runs, label,
                      log=print):
    """Driver and floor samples of one transport, alternating.

    :param hosts: [the driver the server is on, the other]; each
        migration swaps them.
    """
    out = {'driver': [], 'floor': []}
    with transport(h, hosts[0], hosts[1], name):
        for run in range(runs):
            for position, side in enumerate(_order(run)):
                src, dest = hosts
                if side == 'driver':
                    sample = driver_sample(h, src, dest, instance, image)
                    hosts.reverse()
                else:
                    sample = floor_sample(h, src, instance, name == 'local')
                sample.update(run=run, first=position == 0)
                out[side].append(sample)
            d, f = out['driver'][-1], out['floor'][-1]
            refs = ''.join(', %s %.2f s' % (k, f[k]) for k in
                           ('cp --sparse=always',) if k in f)
            log('  migration %s %s run %d/%d: driver %.2f s (%s: hand over '
                '%.2f, copy %.2f, grow/mount/start %.2f, confirm %.2f), '
                'floor rsync -S %.2f s%s' % (
                    label, name, run + 1, runs, d['seconds'],
                    'A->B' if d['source'] == HOST_A else 'B->A',
                    d['hand_over'], d['copy'], d['after_copy'],
                    d['confirm'], f['seconds'], refs))
    return out


def measure_size(h, a, b, image, nbytes, runs, log=print):
    label = snapshot_mod.size_label(nbytes)
    result = {'bytes': nbytes, 'label': label,
              'root_gb': snapshot_mod.root_gb_for(nbytes), 'transports': {}}
    instance = h.make_instance(root_gb=result['root_gb'])
    try:
        h.spawn(instance, image)
        server = snapshot_mod.Server(h, instance, nbytes)
        result['fill_seconds'], result['files'] = server.fill()
        disk = server.root.root_disk.image_path
        st = os.stat(disk)
        result['disk_bytes'] = st.st_size
        result['disk_allocated'] = st.st_blocks * 512
        hosts = [a, b]
        for name in TRANSPORTS:
            result['transports'][name] = measure_transport(
                h, hosts, instance, image, name, runs, label, log=log)
        if hosts[0] is not a:
            # Back on A (untimed) for the check below.
            driver_sample(h, b, a, instance, image)
        # The data came back whole after every trip.
        top = os.path.join(server.root.upper,
                           snapshot_mod.FILL_DIR.lstrip('/'))
        kept = sum(os.path.getsize(os.path.join(top, n))
                   for n in os.listdir(top))
        if kept != nbytes:
            raise RuntimeError('%s: %d bytes of data after the migrations, '
                               'not %d' % (instance.name, kept, nbytes))
    finally:
        for drv in (b, a):
            drv.destroy(h.context, instance, [])
    return result


def measure(h, image, sizes, runs, log=print):
    """The family: every size in turn (see the module's docstring).

    :param image: the busybox bench.images.BenchImage.
    :param sizes: bytes of data to write, one server each.
    :param runs: driver and floor samples per size and transport.
    :returns: {'sizes': [dict per size], 'runs': runs, 'goal': ...}.
    """
    b = destination_driver(h)
    try:
        # B's image cache too, as the harness's (kept for the next run):
        # the first migration should not unpack it.
        b._images.get(image.image_id,
                      lambda dest: h._fetch(None, image.image_id, dest))
        return {'runs': runs, 'transports': list(TRANSPORTS),
                'goal': {'ratio': GOAL_RATIO, 'slack': GOAL_SLACK},
                'sizes': [measure_size(h, h.driver, b, image, n, runs,
                                       log=log) for n in sizes]}
    finally:
        try:
            h.destroy_everything()
        finally:
            try:
                _retire(h, b)
            finally:
                shutil.rmtree(os.path.join(h.root, SCRATCH),
                              ignore_errors=True)
