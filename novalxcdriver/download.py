"""An image's bytes from Glance: a checked stream where Nova allows one.

The image cache (images.py) unpacks a rootfs tarball as it downloads it,
so a first boot neither waits for the whole download before unpacking nor
keeps a second copy of the image on disk. Nova's image API hands out the
download as an iterator of chunks when it has nothing to do with them
itself (``nova.image.glance.GlanceImageServiceV2.download`` with neither
``data`` nor ``dst_path``). glanceclient's iterator checks the image's
``os_hash_value`` (or its MD5 ``checksum``) as it is read and raises
IOError on a mismatch once the last chunk is read, so the caller must read
it to the end.

With ``[glance] verify_glance_signatures`` Nova verifies a signature over
the whole download and gives no iterator: the image is then fetched to a
file (``fetch``) first, as before.
"""

import io

from nova.compute import utils as compute_utils
import nova.conf
from nova.virt import images as nova_images

CONF = nova.conf.CONF


def chunks(context, image_id):
    """The image's bytes as an iterator of bytes objects, or None.

    :returns: glanceclient's checked iterator (read it to its end: the
        hash is compared there), or None when Nova must see the whole
        download itself (signature verification): use ``fetch``.
    :raises ImageNotFound: Glance has no such image.
    :raises ImageUnacceptable: the image has no data.
    """
    if CONF.glance.verify_glance_signatures:
        return None
    return nova_images.IMAGE_API.download(context, image_id)


def fetch(context, image_id, path):
    """Download the image to the file path (Nova's own fetch).

    :raises ImageNotFound, ImageUnacceptable: as ``chunks``.
    :raises IOError: the download did not match its hash or signature
        (the file is removed).
    """
    nova_images.fetch(context, image_id, path)


def held(chunks):
    """chunks, read under Nova's disk_ops_semaphore.

    The semaphore ([compute] max_concurrent_disk_ops) is what
    nova_images.fetch holds while it writes; a download unpacked as it
    arrives holds it from its first chunk until it is read to the end or
    closed (ChunkReader.close).
    """
    with compute_utils.disk_ops_semaphore:
        yield from chunks


class ChunkReader(io.RawIOBase):
    """A read-only raw file over an iterator of bytes chunks.

    Wrap it in io.BufferedReader for read(n) of any size. ``read_bytes``
    counts what was taken from the iterator; ``error`` is what the
    iterator raised, if it did (a decompressor or tarfile may wrap it).
    """

    def __init__(self, chunks):
        super().__init__()
        self._source = chunks
        self._chunks = iter(chunks)
        self._chunk = memoryview(b'')
        self.read_bytes = 0
        self.error = None

    def readable(self):
        return True

    def readinto(self, buf):
        while not self._chunk:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                return 0
            except Exception as e:
                self.error = e
                raise
            self.read_bytes += len(chunk)
            self._chunk = memoryview(chunk)
        n = min(len(buf), len(self._chunk))
        buf[:n] = self._chunk[:n]
        self._chunk = self._chunk[n:]
        return n

    def close(self):
        """Close the iterator too (a generator's finally runs now)."""
        if not self.closed:
            close = getattr(self._source, 'close', None)
            if close is not None:
                close()
        super().close()

    def drain(self):
        """Read the iterator to its end (where glanceclient checks the hash).

        :raises IOError: the download did not match Glance's hash.
        """
        self._chunk = memoryview(b'')
        for chunk in self._chunks:
            self.read_bytes += len(chunk)
