"""Snapshot of a running server, and unshelve (the snapshot family).

For each size (10 MiB, 500 MiB and 2 GiB by default), one busybox server
with a btrfs root disk big enough gets that much random data written
inside (a mix of 64 KiB, 1 MiB and 16 MiB files), then a ticker: init
respawns a shell that appends the wall-clock time (busybox ``ts %.s``,
microseconds; CLOCK_REALTIME is the host's) to /root/ticks, then sleeps
10 ms, forever. The longest gap between two ticks over a window is the
longest any write of the server waited, plus the ticker's own 10 ms and
scheduling. Then, on that same server, side by side:

a) ``driver.snapshot`` into a fake Glance that reads the stream in 64 KiB
   chunks (as glanceclient does) and counts it: seconds, compressed bytes,
   the longest gap between ticks meanwhile (the write stall), and the same
   over the point-in-time step alone (syncfs + btrfs snapshot);
c) the floor: a plain ``tar -cf - -C <merged root> . | zstd -T0 -3`` of
   the same tree, read by the bench the same way, while the server runs;
   its longest gap between ticks is the control (what two busy cores
   alone do to the ticker);

a and c alternate (ac, ca, ...) ``runs`` times. The first snapshot comes
right after the data was written (dirty: its syncfs writes it out); the
later ones find it on disk. Then once:

b) nova-lxd's way: a clean stop (driver.power_off, Nova's 60 s timeout),
   the same tar | zstd of the stopped server's merged root, and
   driver.power_on: total seconds, each step, and the downtime the server
   saw (its longest gap between ticks, init respawning the ticker at the
   start);

and unshelve: one more snapshot kept as a file (untimed, as shelve
uploads it), the server destroyed (shelve offload), then driver.spawn of
a new server from that image, which this host has never seen: fetch (a
copy of the file), unpack and spawn, timed, and until its ticker's first
tick (the server doing its work again).
"""

import contextlib
import math
import os
import shutil
import statistics
import subprocess
import time
import uuid

from bench import harness as harness_mod
from bench import images as bench_images
from bench import machine
from novalxcdriver import container as container_mod
from novalxcdriver import driver as driver_mod
from novalxcdriver import rootfs as rootfs_mod
from tests import fake_glance

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
DEFAULT_SIZES = '10M,500M,2G'
TICK_INTERVAL = 0.010
# What each file class holds of the data, smallest first; the largest
# class takes the rest.
FILE_CLASSES = ((64 * KIB, 0.1), (MIB, 0.3), (16 * MIB, None))
FILL_DIR = '/root/fill'
TICKS = 'root/ticks'
TICKER = """#!/bin/sh
# One line per tick: the time (s.us, the host's clock) it was written at.
while :; do
    echo | /bin/busybox ts %.s >> /root/ticks
    /bin/busybox usleep 10000
done
"""
TICKER_INITTAB = '::respawn:/bin/sh /root/ticker\n'
# Glance's client reads an upload in chunks of this size.
GLANCE_CHUNK = 64 * KIB
# Nova's [DEFAULT] shutdown_timeout and its retry interval: power_off.
STOP_TIMEOUT = 60
STOP_RETRY = 10
UPLOADS = 'snapshot-uploads'

_UNITS = {'': 1, 'B': 1, 'K': KIB, 'KB': KIB, 'KIB': KIB, 'M': MIB,
          'MB': MIB, 'MIB': MIB, 'G': GIB, 'GB': GIB, 'GIB': GIB}


# -- pure helpers -----------------------------------------------------------

def parse_size(text):
    """Bytes of a size such as '10M', '500MiB', '2G' or '4096' (binary).

    :raises ValueError: not a positive size.
    """
    t = text.strip().upper()
    number = t.rstrip('KMGIB')
    unit = t[len(number):]
    if unit not in _UNITS or not number:
        raise ValueError('bad size %r (e.g. 10M, 500M, 2G)' % text)
    value = int(float(number) * _UNITS[unit])
    if value <= 0:
        raise ValueError('bad size %r: not positive' % text)
    return value


def parse_sizes(text):
    """The sizes of a comma-separated list (list of bytes, as given)."""
    return [parse_size(s) for s in text.split(',') if s.strip()]


def size_label(nbytes):
    """'10 MiB', '2 GiB', '1.5 GiB', '64 KiB' or '100 B'."""
    for unit, name in ((GIB, 'GiB'), (MIB, 'MiB'), (KIB, 'KiB')):
        if nbytes >= unit:
            return '%g %s' % (round(nbytes / unit, 2), name)
    return '%d B' % nbytes


def root_gb_for(nbytes):
    """GiB of root disk for nbytes of data: a quarter more, plus 1 GiB.

    btrfs keeps its metadata twice and the ticker and busybox need a
    little; the disk is a sparse file, so the spare costs nothing.
    """
    return 1 + math.ceil(nbytes * 1.25 / GIB)


def file_plan(nbytes, classes=FILE_CLASSES):
    """Sizes of the files that hold nbytes: a mix, as a real server's.

    Each class (size, share) gets share of nbytes in whole files of its
    size; the last class (share None) gets what is left, in whole files
    plus one smaller file for any remainder.

    :returns: list of (size, count), in the order of classes, counts > 0.
    """
    plan = []
    left = nbytes
    for size, share in classes:
        count = (left if share is None else int(nbytes * share)) // size
        count = min(count, left // size)
        if count:
            plan.append((size, count))
            left -= size * count
    if left:
        plan.append((left, 1))
    return plan


def fill_script(plan, directory=FILL_DIR):
    """Shell text that writes plan's files of random data in directory.

    Files are named <size>-<n>; busybox head copies exactly size bytes
    of /dev/urandom (nothing along the way can compress them).
    """
    lines = ['set -e', 'mkdir -p %s' % directory]
    for size, count in plan:
        lines.append(
            'i=0; while [ $i -lt %d ]; do head -c %d /dev/urandom > '
            '%s/%d-$i; i=$((i+1)); done' % (count, size, directory, size))
    return '\n'.join(lines) + '\n'


def parse_ticks(text):
    """Tick times (sorted floats) from the ticker's file; torn lines out."""
    ticks = []
    for line in text.splitlines():
        field = line.split(' ', 1)[0]
        try:
            ticks.append(float(field))
        except ValueError:
            continue
    ticks.sort()
    return ticks


def longest_gap(ticks, start, end):
    """The longest interval between consecutive ticks overlapping [start, end].

    The last tick at or before start and the first at or after end are
    included: a writer blocked across the whole window shows as one gap.

    :param ticks: sorted tick times.
    :returns: dict with gap (s) and at (its start, s after start); None
        when no tick brackets the window on both sides.
    """
    before = [t for t in ticks if t <= start]
    after = [t for t in ticks if t >= end]
    if not before or not after:
        return None
    seq = [before[-1]] + [t for t in ticks if start < t < end] + [after[0]]
    gap, at = max((b - a, a) for a, b in zip(seq, seq[1:]))
    return {'gap': gap, 'at': at - start}


def gaps_between(ticks, start, end):
    """The intervals between consecutive ticks within [start, end] (list)."""
    inside = [t for t in ticks if start <= t <= end]
    return [b - a for a, b in zip(inside, inside[1:])]


def baseline(ticks, start, seconds=1.0):
    """The ticker's own gaps over seconds before start.

    :returns: dict of median and max (s), None when it did not tick.
    """
    gaps = gaps_between(ticks, start - seconds, start)
    if not gaps:
        return None
    return {'median': statistics.median(gaps), 'max': max(gaps),
            'n': len(gaps)}


# -- the fake Glance and what the driver did -------------------------------

@contextlib.contextmanager
def _fake_glance():
    fake = fake_glance.FakeImageAPI(name_prefix='bench-snap-')
    orig = driver_mod.glance.API
    driver_mod.glance.API = fake
    try:
        yield fake
    finally:
        driver_mod.glance.API = orig


@contextlib.contextmanager
def _takes():
    """Yield a list receiving, per snapshot taken, what it did.

    Each is a dict: method ('btrfs', 'fsfreeze', ...), stall (s, the
    driver's own figure: the btrfs ioctl or the freeze), and the wall
    clock times the point in time began and ended (take_start,
    take_end).
    """
    taken = []
    orig = container_mod.Container.take_snapshot

    def take_snapshot(self, image_id):
        start = time.time()
        snap = orig(self, image_id)
        taken.append({'method': snap.method, 'stall': snap.stall,
                      'take_start': start, 'take_end': time.time()})
        return snap

    container_mod.Container.take_snapshot = take_snapshot
    try:
        yield taken
    finally:
        container_mod.Container.take_snapshot = orig


# -- one server ---------------------------------------------------------------

class Server:
    """A bench server (an instance the harness spawned) and its ticker.

    :param nbytes: bytes of data it holds, or is to hold (fill).
    """

    def __init__(self, h, instance, nbytes):
        self.h = h
        self.instance = instance
        self.name = instance.name
        self.nbytes = nbytes

    @property
    def root(self):
        cid = self.h.driver._container(self.instance).cid()
        return rootfs_mod.Rootfs(self.h.state_path, cid)

    def attach(self, script, timeout=120):
        return harness_mod.run(
            ['lxc-attach', '-n', self.name, '-P', self.h.lxc_path, '--',
             'sh', '-c', script], timeout=timeout)

    def fill(self):
        """Write nbytes of random data inside; returns (seconds, files)."""
        plan = file_plan(self.nbytes)
        start = time.perf_counter()
        # 2 GiB of /dev/urandom at 100 MB/s is 20 s; room for a busy host.
        self.attach(fill_script(plan), timeout=1800 + self.nbytes // MIB)
        seconds = time.perf_counter() - start
        top = os.path.join(self.root.upper, FILL_DIR.lstrip('/'))
        written = sum(os.path.getsize(os.path.join(top, n))
                      for n in os.listdir(top))
        if written != self.nbytes:
            raise RuntimeError('%s: %d bytes written in %s, not %d' % (
                self.name, written, FILL_DIR, self.nbytes))
        return seconds, sum(count for _size, count in plan)

    def start_ticker(self):
        """Have init respawn the ticker (now and at every start)."""
        self.attach("cat > /root/ticker <<'EOF'\n%sEOF\n"
                    "printf '%%s' '%s' >> /etc/inittab\nkill -HUP 1\n"
                    % (TICKER, TICKER_INITTAB))
        self.wait_tick(time.time(), timeout=10)

    def ticks(self):
        try:
            with open(os.path.join(self.root.merged, TICKS)) as f:
                return parse_ticks(f.read())
        except FileNotFoundError:
            return []

    def wait_tick(self, after, timeout=60):
        """Wall clock time of the first tick after after (poll)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            later = [t for t in self.ticks() if t > after]
            if later:
                return later[0]
            time.sleep(0.02)
        raise TimeoutError('%s: no tick within %ss' % (self.name, timeout))

    def gap(self, start, end):
        """longest_gap over [start, end], once the ticker passed end."""
        self.wait_tick(end)
        ticks = self.ticks()
        found = longest_gap(ticks, start, end)
        if found is not None:
            found['baseline'] = baseline(ticks, start)
        return found

    def destroy(self):
        self.h.destroy(self.instance)


def _dirty_kib():
    return ((machine.meminfo_kib('Dirty') or 0) +
            (machine.meminfo_kib('Writeback') or 0))


def tar_zstd(tree):
    """``tar -cf - -C tree . | zstd -T0 -3``, read and counted here.

    GNU tar exits 1 when a file changed as it read it (the ticker's):
    that is no failure.

    :returns: (seconds, compressed bytes, tar's exit code).
    """
    start = time.perf_counter()
    tar = subprocess.Popen(['tar', '-cf', '-', '-C', tree, '.'],
                           stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL)
    zstd = subprocess.Popen(['zstd', '-T0', '-3', '-q', '-c'],
                            stdin=tar.stdout, stdout=subprocess.PIPE)
    tar.stdout.close()
    nbytes = 0
    while True:
        chunk = zstd.stdout.read(GLANCE_CHUNK)
        if not chunk:
            break
        nbytes += len(chunk)
    zstd.stdout.close()
    code, zcode = tar.wait(), zstd.wait()
    seconds = time.perf_counter() - start
    if code not in (0, 1) or zcode != 0:
        raise RuntimeError('tar | zstd of %s: tar exited %d, zstd %d'
                           % (tree, code, zcode))
    return seconds, nbytes, code


def snapshot_sample(h, server, glance, taken):
    """driver.snapshot of the server, timed, with its write stall."""
    image_id = str(uuid.uuid4())
    dirty = _dirty_kib()
    with h.timer.collect() as phases:
        wall = time.time()
        start = time.perf_counter()
        h.driver.snapshot(h.context, server.instance, image_id,
                          lambda task_state, expected_state=None: None)
        seconds = time.perf_counter() - start
    end = wall + seconds
    take = taken[-1]
    upload = glance.uploads.pop(image_id)
    return {'seconds': seconds, 'bytes': upload['bytes'], 'phases': phases,
            'method': take['method'], 'driver_stall': take['stall'],
            'take_seconds': take['take_end'] - take['take_start'],
            'stall': server.gap(wall, end),
            'take_stall': server.gap(take['take_start'], take['take_end']),
            'dirty_kib_before': dirty, 'image_id': image_id,
            'upload_path': upload['path']}


def plain_sample(server):
    """The floor: tar | zstd of the running server's merged root."""
    wall = time.time()
    seconds, nbytes, code = tar_zstd(server.root.merged)
    return {'seconds': seconds, 'bytes': nbytes, 'tar_exit': code,
            'stall': server.gap(wall, wall + seconds)}


def stop_tar_start(h, server):
    """nova-lxd's snapshot: clean stop, tar | zstd, start."""
    root = server.root
    wall = time.time()
    start = time.perf_counter()
    h.driver.power_off(server.instance, timeout=STOP_TIMEOUT,
                       retry_interval=STOP_RETRY)
    stopped = time.perf_counter()
    if h.state(server.name) != 'STOPPED':
        raise RuntimeError('%s is %s after power_off' % (
            server.name, h.state(server.name)))
    if not root.is_mounted():
        raise RuntimeError('%s: its merged root is not mounted once '
                           'stopped' % server.name)
    tar_seconds, nbytes, code = tar_zstd(root.merged)
    tarred = time.perf_counter()
    h.driver.power_on(h.context, server.instance, [], None)
    end = time.perf_counter()
    first_tick = server.wait_tick(wall + (end - start))
    found = server.gap(wall, wall + (end - start))
    return {'seconds': end - start, 'stop': stopped - start,
            'tar': tar_seconds, 'start': end - tarred, 'bytes': nbytes,
            'tar_exit': code, 'downtime': found and found['gap'],
            'first_tick_after_start': first_tick - (wall + end - start),
            'stall': found}


def unshelve(h, server, glance, taken, uploads):
    """Shelve (snapshot kept as a file, destroy) then unshelve, timed."""
    glance.directory = uploads
    try:
        kept = snapshot_sample(h, server, glance, taken)
    finally:
        glance.directory = None
    server.destroy()
    image_id = kept['image_id']
    path = kept['upload_path']
    snap_image = bench_images.BenchImage(
        'snapshot', 'snapshot of %s' % size_label(server.nbytes), path,
        image_id, os.path.getsize(path))
    h.images[image_id] = snap_image
    clone = h.make_instance(root_gb=server.instance.flavor.root_gb)
    try:
        wall = time.time()
        seconds, phases = h.spawn(clone, snap_image)
        if h.state(clone.name) != 'RUNNING':
            raise RuntimeError('%s is %s after its unshelve' % (
                clone.name, h.state(clone.name)))
        first_tick = Server(h, clone, server.nbytes).wait_tick(wall) - wall
    finally:
        h.destroy(clone)
        drop_image(h, image_id)
        os.unlink(path)
    return {'seconds': seconds, 'phases': phases, 'first_tick': first_tick,
            'tarball_bytes': snap_image.tarball_bytes,
            'shelve_snapshot_seconds': kept['seconds']}


def drop_image(h, image_id):
    """Remove image_id from the driver's image cache (and the fake Glance)."""
    h.images.pop(image_id, None)
    cache = h.driver._images.path
    others = set(os.listdir(cache)) - {image_id} if os.path.isdir(cache) \
        else set()
    h.driver._images.prune(others, 0)


def clear_uploads(root):
    shutil.rmtree(os.path.join(root, UPLOADS), ignore_errors=True)


def _order(run):
    return ('snapshot', 'plain') if run % 2 == 0 else ('plain', 'snapshot')


def measure_size(h, image, nbytes, runs, log=print):
    """Every figure of the family for one size (dict)."""
    label = size_label(nbytes)
    result = {'bytes': nbytes, 'label': label, 'root_gb': root_gb_for(nbytes),
              'snapshot': [], 'plain': []}
    uploads = os.path.join(h.root, UPLOADS)
    os.makedirs(uploads, exist_ok=True)
    server = Server(h, h.make_instance(root_gb=result['root_gb']), nbytes)
    try:
        h.spawn(server.instance, image)
        result['fill_seconds'], result['files'] = server.fill()
        server.start_ticker()
        time.sleep(1)
        with _fake_glance() as glance, _takes() as taken:
            for run in range(runs):
                for position, side in enumerate(_order(run)):
                    if side == 'snapshot':
                        sample = snapshot_sample(h, server, glance, taken)
                        sample['just_written'] = run == 0
                    else:
                        sample = plain_sample(server)
                    sample.update(run=run, first=position == 0)
                    result[side].append(sample)
                    time.sleep(1)
                snap, plain = result['snapshot'][-1], result['plain'][-1]
                log('  snapshot %s run %d/%d: driver.snapshot %.2f s '
                    '(%.1f MiB, stall %s), plain tar|zstd %.2f s (gap %s)'
                    % (label, run + 1, runs, snap['seconds'],
                       snap['bytes'] / MIB, _ms(snap['stall']),
                       plain['seconds'], _ms(plain['stall'])))
            result['stop_tar_start'] = sts = stop_tar_start(h, server)
            log('  snapshot %s: stop-tar-start %.2f s (stop %.2f, tar '
                '%.2f, start %.2f), downtime seen %s' % (
                    label, sts['seconds'], sts['stop'], sts['tar'],
                    sts['start'], _ms(sts['stall'])))
            time.sleep(1)
            result['unshelve'] = u = unshelve(h, server, glance, taken,
                                              uploads)
            log('  snapshot %s: unshelve (fetch + unpack + spawn) %.2f s, '
                'first tick after %.2f s' % (label, u['seconds'],
                                             u['first_tick']))
    finally:
        server.destroy()
        clear_uploads(h.root)
    return result


def _ms(found):
    return '—' if not found else '%.0f ms' % (found['gap'] * 1e3)


def measure(h, image, sizes, runs, log=print):
    """The family: every size in turn (see the module's docstring).

    :param image: the busybox bench.images.BenchImage.
    :param sizes: bytes of data to write, one server each.
    :param runs: driver.snapshot and plain tar | zstd samples per size.
    :returns: {'sizes': [dict per size], 'runs': runs,
        'tick_interval': s}.
    """
    clear_uploads(h.root)
    return {'runs': runs, 'tick_interval': TICK_INTERVAL,
            'sizes': [measure_size(h, image, n, runs, log=log)
                      for n in sizes]}
