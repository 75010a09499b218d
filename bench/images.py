"""The root filesystem tarballs the benchmark boots.

busybox (2 MB) and Debian 12 (about 250 MB) are the functional tests' own
images (tests/functional/rootfs_images.py); the synthetic one is the busybox
root plus about 1 GiB of random file data, so that only the image's size
differs. All are built once per machine under rootfs_images.CACHE_DIR.
"""

import dataclasses
import os
import tarfile
import uuid

from tests.functional import rootfs_images

MIB = 1 << 20
# 1024 files of 1 MiB: many files, as a real image has, and random data so
# that nothing along the way (compression, dedup) makes it smaller.
FILLER_FILES = 1024
FILLER_FILE_SIZE = MIB
# Image ids stay fixed while the tarball is unchanged, so the driver's
# unpacked image cache is reused from one run to the next.
_ID_NAMESPACE = uuid.UUID('0c2bb1de-6d5c-4a0e-9d63-6a3d1a8e4b11')


@dataclasses.dataclass(frozen=True)
class BenchImage:
    """One image: a key for the results, a label for people, its tarball.

    :ivar tarball_bytes: size of the (compressed) tarball, bytes.
    """

    key: str
    label: str
    tarball: str
    image_id: str
    tarball_bytes: int


def _image(key, label, path):
    st = os.stat(path)
    image_id = str(uuid.uuid5(_ID_NAMESPACE, '%s:%s:%d:%d' % (
        key, os.path.basename(path), st.st_size, int(st.st_mtime))))
    return BenchImage(key, label, path, image_id, st.st_size)


def busybox():
    path = os.path.join(rootfs_images.CACHE_DIR, 'busybox.tar.gz')
    if not os.path.exists(path):
        os.makedirs(rootfs_images.CACHE_DIR, exist_ok=True)
        rootfs_images.busybox_tarball(path + '.tmp')
        os.rename(path + '.tmp', path)
    return _image('busybox', 'busybox (2 MB)', path)


def debian():
    return _image('debian', 'Debian 12 (250 MB)',
                  rootfs_images.debian_tarball())


class _RandomReader:
    """A file-like object of n random bytes (tarfile reads it in chunks)."""

    def __init__(self, n):
        self._left = n

    def read(self, size=-1):
        size = self._left if size < 0 else min(size, self._left)
        self._left -= size
        return os.urandom(size)


def synthetic(busybox_image):
    """busybox root plus FILLER_FILES random files, as a plain tar.

    :returns: BenchImage of about 1 GiB.
    """
    path = os.path.join(rootfs_images.CACHE_DIR, 'synthetic-1g.tar')
    if not os.path.exists(path):
        tmp = path + '.tmp'
        with tarfile.open(busybox_image.tarball) as src, \
                tarfile.open(tmp, 'w') as dst:
            for member in src:
                data = src.extractfile(member) if member.isfile() else None
                dst.addfile(member, data)
            for d in ('usr', 'usr/share', 'usr/share/filler'):
                info = tarfile.TarInfo(d)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                dst.addfile(info)
            for i in range(FILLER_FILES):
                info = tarfile.TarInfo('usr/share/filler/%04d.bin' % i)
                info.size = FILLER_FILE_SIZE
                info.mode = 0o644
                dst.addfile(info, _RandomReader(FILLER_FILE_SIZE))
        os.rename(tmp, path)
    return _image('synthetic', 'synthetic (1 GB)', path)


def all_images():
    """busybox, Debian 12 and the synthetic 1 GB image, smallest first."""
    return chosen(KEYS)


KEYS = ('busybox', 'debian', 'synthetic')


def chosen(keys):
    """The images of keys (a subset of KEYS), smallest first.

    Only these are built, if missing (Debian's takes a minute).
    """
    bb = busybox()   # the synthetic image is made from it
    makers = {'busybox': lambda: bb, 'debian': debian,
              'synthetic': lambda: synthetic(bb)}
    return [makers[key]() for key in KEYS if key in keys]


def existing_ids():
    """Ids of every image whose tarball is already built (set of str).

    Builds nothing: a run of some images keeps the others' cache.
    """
    paths = {'busybox': os.path.join(rootfs_images.CACHE_DIR,
                                     'busybox.tar.gz'),
             'debian': rootfs_images.debian_tarball_path(),
             'synthetic': os.path.join(rootfs_images.CACHE_DIR,
                                       'synthetic-1g.tar')}
    return {_image(key, key, path).image_id for key, path in paths.items()
            if os.path.exists(path)}
