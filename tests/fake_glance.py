"""Fakes of Glance: nova.image.glance.API for the driver's snapshot uploads,
and an image download as the checked iterator novalxcdriver.download.chunks
returns.

Shared by the functional snapshot tests (tests/functional/test_snapshot.py),
the hardening suite's worker (tests/hardening/worker.py) and the snapshot
benchmark (bench/snapshot.py). Each puts an instance where the driver calls
``glance.API()``: the instance is its own API().
"""

import contextlib
import os

# What the fake reads at a time (bytes), as an upload to Glance would.
CHUNK = 64 * 1024


def file_chunks(path, size=CHUNK):
    """A download from Glance: the file's bytes in chunks of size bytes.

    path: a path, opened on the first read, or a file object open for
    reading (closed at the end).
    """
    with (open(path, 'rb') if isinstance(path, str) else path) as f:
        while True:
            chunk = f.read(size)
            if not chunk:
                return
            yield chunk


class FakeImageAPI:
    """nova.image.glance.API whose update reads the upload to its end.

    :ivar directory: where each upload is kept, as <image id>.tar.zst
        (None: read and discarded).
    :ivar on_start: called as an upload starts, before its first read
        (None: nothing).
    :ivar uploads: {image id: {'bytes': bytes read, 'path': where kept
        or None}}.
    :ivar metadata: {image id: the metadata of its update}.
    """

    def __init__(self, directory=None, name_prefix='snap-'):
        """:param name_prefix: get() names image X name_prefix + X[:8]."""
        self.directory = directory
        self.name_prefix = name_prefix
        self.on_start = None
        self.uploads = {}
        self.metadata = {}

    def __call__(self):
        return self

    def get(self, context, image_id):
        return {'id': image_id, 'name': self.name_prefix + image_id[:8]}

    def update(self, context, image_id, metadata, data=None,
               purge_props=True):
        self.metadata[image_id] = metadata
        path = (os.path.join(self.directory, image_id + '.tar.zst')
                if self.directory else None)
        if self.on_start:
            self.on_start()
        nbytes = 0
        # Glance's store, not the driver's: root's even when the driver
        # runs as another user (tests/unprivileged.py).
        from tests import unprivileged
        with unprivileged.as_root():
            opened = open(path, 'wb') if path else contextlib.nullcontext()
        with opened as out:
            while True:
                chunk = data.read(CHUNK)
                if not chunk:
                    break
                nbytes += len(chunk)
                if out:
                    out.write(chunk)
        self.uploads[image_id] = {'bytes': nbytes, 'path': path}
        return metadata
