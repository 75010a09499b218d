"""First boot of a new image against downloading it alone (issue 16, goal 2).

A local HTTP server stands in for Glance's image download: the same bytes
over TCP, read with requests in 64 KiB chunks and checked with
glanceclient's own ``serious_integrity_iter`` (SHA-512, Glance's default
os_hash_algo), as glanceclient's ``images.data`` does. Three sides per run,
in rotating order:

- download: the image to a file, fsync'd, as nova.virt.images.fetch writes
  it (the floor the goal is measured against);
- stream: driver.spawn of the image not yet cached, unpacked as it
  downloads (novalxcdriver.download.chunks);
- file: the same spawn fetching to a file first, then unpacking (what the
  driver does under ``[glance] verify_glance_signatures``, and did before).

Each is run with the server unthrottled (loopback: the unpack bounds it)
and capped at a link rate (default 1 Gbit/s, a compute host's usual link to
Glance). Every spawn gets a fresh image id, so nothing is cached; its cache
entry is removed right after the sample.

The driver's state_path is on a journaled file system, as a compute host's
is. When the bench root's is an ext4 without a journal (CI's and this
machine's root file system), the family runs on one of its own: a
journaled ext4 on a loop device (its image file sparse, under the root),
with a second driver whose state_path is there. On a journalless ext4
the inode allocator skips the inodes freed in the last 60 s (360 s while
their inode table block is dirty, and allocating dirties it), looking
each one up on the way (fs/ext4/ialloc.c, recently_deleted(), called only
without a journal): after the earlier families' deletions, GNU tar took
5.8 to 6.4 s there for Debian's tarball, all of it system time, against
0.56 to 0.64 s on the journaled loop file system, minutes later still
1.3 to 1.5 s. The download floor writes its file there too.
"""

import contextlib
import dataclasses
import hashlib
import http.server
import os
import threading
import time
import uuid

from glanceclient.common import utils as glance_utils
import requests

from bench import harness as harness_mod

CHUNK = 64 * 1024
DEFAULT_RATES = (None, 1000)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(('127.0.0.1', 0), _Handler)
        self.files = {}
        self.rate_bytes = None   # per second; None: as fast as it goes


class _Handler(http.server.BaseHTTPRequestHandler):

    def do_GET(self):
        path = self.server.files.get(self.path.lstrip('/'))
        if path is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header('Content-Length', str(os.path.getsize(path)))
        self.end_headers()
        rate = self.server.rate_bytes
        start = time.perf_counter()
        sent = 0
        with open(path, 'rb') as f:
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    return
                self.wfile.write(chunk)
                sent += len(chunk)
                if rate:
                    ahead = sent / rate - (time.perf_counter() - start)
                    if ahead > 0:
                        time.sleep(ahead)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(images):
    """A started _Server for the images' tarballs, stopped after."""
    server = _Server()
    for image in images:
        server.files[image.image_id] = image.tarball
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def sha512(path):
    h = hashlib.sha512()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def chunks(server, key, digest):
    """glanceclient's checked iterator over an HTTP download of key."""
    response = requests.get('http://127.0.0.1:%d/%s' % (
        server.server_address[1], key), stream=True, timeout=60)
    response.raise_for_status()
    return glance_utils.serious_integrity_iter(
        response.iter_content(CHUNK), hashlib.sha512(), digest)


def _write(chunks_, path):
    with open(path, 'wb') as f:
        for chunk in chunks_:
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def download_sample(h, server, image, digest):
    """Seconds to download image to a file (the floor).

    The file is written beside the driver's state_path, on its file system.
    """
    path = os.path.join(os.path.dirname(h.state_path), 'firstboot-download')
    start = time.perf_counter()
    try:
        _write(chunks(server, image.image_id, digest), path)
        return time.perf_counter() - start
    finally:
        os.unlink(path)


def spawn_sample(h, server, image, digest, stream):
    """Seconds of driver.spawn of image as a new image, then destroyed.

    The new image's cache entry is removed afterwards (untimed).

    :param stream: unpack as it downloads (else fetch to a file first).
    """
    fresh = dataclasses.replace(image, image_id=str(uuid.uuid4()),
                                key='firstboot-sample')
    h.images[fresh.image_id] = fresh
    h.glance = _Glance(server, image.image_id, digest, stream)
    instance = h.make_instance()
    try:
        seconds, phases = h.spawn(instance, fresh)
        if h.state(instance.name) != 'RUNNING':
            raise RuntimeError('%s is not RUNNING after its first boot'
                               % instance.name)
    finally:
        h.glance = None
        h.destroy(instance)
        drop_samples(h)
    return seconds


def drop_samples(h):
    """Remove the cache entries of the first boots' fresh images."""
    for image_id, image in list(h.images.items()):
        if image.key == 'firstboot-sample':
            del h.images[image_id]
    h.drop_stale_images()


# The family's own journaled file system, when it needs one: its mount
# point and sparse image file under the bench root, and its driver's host.
FS_DIR = 'firstboot-fs'
FS_IMAGE = 'firstboot-fs.img'
# Room for the 1 GB image's entry, its partial and the floor's file.
FS_BYTES = 8 << 30
HOST = harness_mod.HOST + '-firstboot'


def journalless_ext4(path):
    """True if path is on an ext4 file system without a journal."""
    st = os.stat(path)
    device = '%d:%d' % (os.major(st.st_dev), os.minor(st.st_dev))
    try:
        with open('/sys/dev/block/%s/uevent' % device) as f:
            name = dict(line.strip().split('=', 1) for line in f
                        if '=' in line).get('DEVNAME')
    except OSError:
        return False
    with open('/proc/self/mountinfo') as f:
        ext4 = any(line.split()[2] == device and
                   line.split(' - ')[1].split()[0] == 'ext4' for line in f)
    return ext4 and name is not None and not os.path.exists(
        '/proc/fs/jbd2/%s-8' % name)


def _fs_paths(h):
    """(mount point, lxc_path, state_path, image file) of h's family fs."""
    mnt = os.path.join(h.root, FS_DIR)
    return (mnt, os.path.join(mnt, 'lxc'), os.path.join(mnt, 'state'),
            os.path.join(h.root, FS_IMAGE))


@contextlib.contextmanager
def journaled(h, log=print):
    """h, its driver's state_path on a journaled file system meanwhile.

    As it is, if h.root's file system is not a journalless ext4; else h's
    driver, lxc_path and state_path are swapped for a driver (host HOST)
    whose paths are on a new journaled ext4 of FS_BYTES on a loop device,
    destroyed after with all it holds.
    """
    if not journalless_ext4(h.root):
        yield h
        return
    mnt, lxc_path, state_path, image = _fs_paths(h)
    log('  first boot: %s is on an ext4 without a journal; the driver\'s '
        'state_path goes on a journaled ext4 of %d GiB at %s'
        % (h.root, FS_BYTES >> 30, mnt))
    with open(image, 'wb') as f:
        f.truncate(FS_BYTES)
    try:
        harness_mod.run(['mkfs.ext4', '-q', '-F', '-O', 'has_journal',
                         image])
        os.makedirs(mnt, exist_ok=True)
        harness_mod.run(['mount', '-o', 'loop', image, mnt])
        try:
            drv = harness_mod.driver_on(lxc_path, state_path, HOST)
            own = h.driver, h.lxc_path, h.state_path
            h.driver, h.lxc_path, h.state_path = drv, lxc_path, state_path
            try:
                yield h
            finally:
                h.driver, h.lxc_path, h.state_path = own
                harness_mod.retire_driver(drv, lxc_path, state_path, HOST)
        finally:
            harness_mod.run(['umount', mnt])
            os.rmdir(mnt)
    finally:
        os.unlink(image)


def destroy_leftovers(h):
    """What a killed run left of the family's file system, destroyed.

    Its containers and roots through a driver on it, then the mount and
    its image file. Call after h.destroy_everything().
    """
    mnt, lxc_path, state_path, image = _fs_paths(h)
    if os.path.ismount(mnt):
        harness_mod.retire_driver(
            harness_mod.driver_on(lxc_path, state_path, HOST), lxc_path,
            state_path, HOST)
        harness_mod.run(['umount', mnt])
    if os.path.isdir(mnt):
        os.rmdir(mnt)
    if os.path.exists(image):
        os.unlink(image)


def leaks(h):
    """What of the family is left (dict of kind -> list, empty: none)."""
    mnt, _lxc, _state, image = _fs_paths(h)
    return {'first boot file system': [
        p for p in (mnt, image) if os.path.exists(p)]}


class _Glance:
    """What the harness's Glance answers while a first boot is measured."""

    def __init__(self, server, key, digest, stream):
        self.server, self.key, self.digest = server, key, digest
        self.stream = stream

    def chunks(self, image_id):
        if not self.stream:
            return None
        return chunks(self.server, self.key, self.digest)

    def fetch(self, image_id, path):
        _write(chunks(self.server, self.key, self.digest), path)


def measure(h, images, runs, rates=DEFAULT_RATES, log=print):
    """Download, streamed first boot and file-first boot of each image.

    :param rates: link caps in Mbit/s (None: unthrottled).
    :returns: {image key: {rate label: {'download': [s], 'stream': [s],
        'file': [s]}}} with the rate label 'loopback' or '<n> Mbit/s'.
    """
    results = {}
    with serving(images) as server, journaled(h, log):
        for image in images:
            digest = sha512(image.tarball)
            per_rate = results[image.key] = {}
            for rate in rates:
                label = 'loopback' if rate is None else '%d Mbit/s' % rate
                server.rate_bytes = rate and rate * 1e6 / 8
                per_rate[label] = _samples(h, server, image, digest, runs,
                                           label, log)
    return results


def _samples(h, server, image, digest, runs, label, log):
    """runs samples of each side, in rotating order: {side: [s]}."""
    sides = ('download', 'stream', 'file')
    got = {side: [] for side in sides}
    for run in range(runs):
        for side in sides[run % 3:] + sides[:run % 3]:
            if side == 'download':
                seconds = download_sample(h, server, image, digest)
            else:
                seconds = spawn_sample(h, server, image, digest,
                                       side == 'stream')
            got[side].append(seconds)
        log('  first boot %s, %s, run %d/%d: download %.2f s, stream %.2f s, '
            'file first %.2f s' % (image.key, label, run + 1, runs,
                                   got['download'][-1], got['stream'][-1],
                                   got['file'][-1]))
    return got
