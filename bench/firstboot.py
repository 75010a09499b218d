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
Glance). Every spawn gets a fresh image id, so nothing is cached; the
cache entries are removed once all of that image's samples are taken, not
after each: on an ext4 without a journal (CI's root file system here),
the inode allocator skips inodes freed in the last 60 s (360 s while their
inode table block is dirty) and scans the inode tables to do so
(fs/ext4/ialloc.c, recently_deleted()), which made an unpack right after
the previous sample's deletion of a 250 MB tree 2-3x slower, all of it
system time. Before each image's samples, if the bench's file system is
such an ext4, the run syncs and waits that window out.
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
    """Seconds to download image to a file (the floor)."""
    path = os.path.join(h.root, 'firstboot-download')
    start = time.perf_counter()
    try:
        _write(chunks(server, image.image_id, digest), path)
        return time.perf_counter() - start
    finally:
        os.unlink(path)


def spawn_sample(h, server, image, digest, stream):
    """Seconds of driver.spawn of image as a new image, then destroyed.

    The new image's cache entry stays (h.images keeps it) until
    drop_samples.

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
    return seconds


def drop_samples(h):
    """Remove the cache entries of the first boots' fresh images."""
    for image_id, image in list(h.images.items()):
        if image.key == 'firstboot-sample':
            del h.images[image_id]
    h.drop_stale_images()


# fs/ext4/ialloc.c: RECENTCY_MIN, once the inode tables are written.
_RECENTLY_DELETED_S = 60


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


def settle_deletions(h, log=print):
    """Wait out ext4's window of recently deleted inodes, if it has one."""
    if not journalless_ext4(h.root):
        return
    log('  first boot: %s is on an ext4 without a journal: syncing, then '
        '%d s for the inodes freed before to age (recently_deleted())'
        % (h.root, _RECENTLY_DELETED_S))
    os.sync()
    time.sleep(_RECENTLY_DELETED_S)


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
    with serving(images) as server:
        for image in images:
            digest = sha512(image.tarball)
            settle_deletions(h, log)
            per_rate = results[image.key] = {}
            try:
                for rate in rates:
                    label = 'loopback' if rate is None else \
                        '%d Mbit/s' % rate
                    server.rate_bytes = rate and rate * 1e6 / 8
                    per_rate[label] = _samples(h, server, image, digest,
                                               runs, label, log)
            finally:
                drop_samples(h)
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
