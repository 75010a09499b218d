"""The image cache's tarballs unpacked by the confined child, for real.

Through the driver's image cache and the storage_admin daemon it starts
(privsep.unpack): the child runs as the unpack range's root, nobody's
host ids, and the tree it leaves is the one a root unpack gives.
"""

import os
import stat
import tarfile
import uuid

from nova import exception as nova_exc

from novalxcdriver import ids
from novalxcdriver import mount
from novalxcdriver import tarball
from tests.functional import base
from tests.functional import rootfs_images

CHILD = b'novalxcdriver.unpackchild'


def unpackers(below):
    """/proc/PID/status fields of each confined unpacker working below.

    Only those whose working directory (their view) is below the path:
    other tests' run at the same time.
    """
    found = []
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                if CHILD not in f.read().split(b'\0'):
                    continue
            if not os.readlink('/proc/%s/cwd' % pid).startswith(below):
                continue
            with open('/proc/%s/status' % pid) as f:
                status = dict(line.split(':', 1) for line in
                              f.read().splitlines() if ':' in line)
        except OSError:
            continue
        found.append({k: v.split() for k, v in status.items()})
    return found


def tree(root):
    """{relative path: what a root unpack decides} of the tree at root."""
    found = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            xattrs = tuple(sorted(
                (k, os.getxattr(path, k, follow_symlinks=False))
                for k in os.listxattr(path, follow_symlinks=False)))
            found[os.path.relpath(path, root)] = (
                st.st_mode, st.st_uid, st.st_gid,
                st.st_size if stat.S_ISREG(st.st_mode) else 0,
                st.st_nlink if not stat.S_ISDIR(st.st_mode) else 0,
                os.readlink(path) if stat.S_ISLNK(st.st_mode) else None,
                xattrs)
    return found


class ConfinedUnpackTest(base.FunctionalTestCase):

    # Its own image cache, pruned whole at the end.
    private_root = True

    def test_debian_unpacked_as_nobody_s_ids_like_root_s_unpack(self):
        path = rootfs_images.debian_tarball()
        image_id = str(uuid.uuid4())
        cache = self.driver._images
        mine = cache.path + '/'
        seen = []

        def chunks():
            # Far enough in that the unpacker runs (the cache reads 1 MiB
            # ahead): look at it while it waits for the rest.
            with open(path, 'rb') as f:
                sent = 0
                while True:
                    data = f.read(1 << 20)
                    if not data:
                        return
                    sent += len(data)
                    if not seen and sent > 8 << 20:
                        seen.append(base.poll(lambda: unpackers(mine),
                                              timeout=10))
                    yield data

        cached = cache.get(image_id, fetch=None, stream=chunks)
        self.addCleanup(cache.prune, set(), 0)

        unpack = ids.unpack_idmap()
        self.assertEqual(1, len(seen[0]), seen)
        status = seen[0][0]
        self.assertEqual([str(unpack.uid_start)] * 4, status['Uid'])
        self.assertEqual([str(unpack.gid_start)] * 4, status['Gid'])
        self.assertEqual([], status.get('Groups', []))
        self.assertEqual(['1'], status['NoNewPrivs'])
        # Nothing of the unpacker stays: no view mounted, no child.
        self.assertEqual([], [p for p in mount.mountpoints()
                              if p.startswith(cache.path + '/')])
        self.assertEqual([], unpackers(mine))

        # The tree is what root's unpack of the same tarball gives:
        # owners on disk the image's, setuid bits, links, xattrs.
        reference = os.path.join(
            self.useFixture(base.fixtures.TempDir(
                rootdir='/var/tmp')).path, 'rootfs')
        os.mkdir(reference)
        with open(path, 'rb') as f:
            size = tarball.unpack_stream(f, reference, 8 << 30)
        self.assertEqual(size, cached.size)
        ours, theirs = tree(cached.rootfs), tree(reference)
        self.assertEqual(len(theirs), len(ours))
        self.assertEqual(theirs, ours)
        setuid = [p for p, v in ours.items() if v[0] & stat.S_ISUID]
        self.assertIn('usr/bin/mount', setuid)
        self.assertEqual(0, ours['usr/bin/mount'][1])

    def test_an_owner_beyond_the_unpack_range_refused(self):
        tmp = self.useFixture(base.fixtures.TempDir()).path
        path = os.path.join(tmp, 'high.tar.gz')
        rootfs_images.busybox_tarball(os.path.join(tmp, 'bb.tar.gz'))
        with tarfile.open(os.path.join(tmp, 'bb.tar.gz')) as src, \
                tarfile.open(path, 'w:gz') as dst:
            for member in src:
                dst.addfile(member, src.extractfile(member)
                            if member.isreg() else None)
            info = tarfile.TarInfo('etc/high')
            info.uid = info.gid = ids.UNPACK_IDS
            dst.addfile(info)
        image_id = self.add_image(path)
        instance = self.make_instance()
        e = self.assertRaises(
            nova_exc.ImageUnacceptable, self.driver.spawn, self.ctxt,
            instance, self.image_meta(image_id), [], None, {},
            network_info=[])
        self.assertIn('uid 65536 is outside 0..65535', str(e))
        cache = self.driver._images
        self.assertIsNone(cache.lookup(image_id))
        self.assertEqual([], [n for n in os.listdir(cache.path)
                              if image_id in n])
        self.assertEqual([], [p for p in mount.mountpoints()
                              if p.startswith(cache.path + '/')])
