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
Glance). Every spawn gets a fresh image id, so nothing is cached; its
cache entry is removed after the sample.
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

    :param stream: unpack as it downloads (else fetch to a file first).
    """
    fresh = dataclasses.replace(image, image_id=str(uuid.uuid4()))
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
        del h.images[fresh.image_id]
        h.drop_stale_images()
    return seconds


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
    sides = ('download', 'stream', 'file')
    results = {}
    with serving(images) as server:
        for image in images:
            digest = sha512(image.tarball)
            per_rate = results[image.key] = {}
            for rate in rates:
                label = 'loopback' if rate is None else '%d Mbit/s' % rate
                server.rate_bytes = rate and rate * 1e6 / 8
                got = per_rate[label] = {s: [] for s in sides}
                for run in range(runs):
                    order = sides[run % 3:] + sides[:run % 3]
                    for side in order:
                        if side == 'download':
                            seconds = download_sample(h, server, image,
                                                      digest)
                        else:
                            seconds = spawn_sample(h, server, image, digest,
                                                   side == 'stream')
                        got[side].append(seconds)
                    log('  first boot %s, %s, run %d/%d: download %.2f s, '
                        'stream %.2f s, file first %.2f s' % (
                            image.key, label, run + 1, runs,
                            got['download'][-1], got['stream'][-1],
                            got['file'][-1]))
    return results
