"""Disk images (qcow2, partitioned raw) booted through the driver, as root.

Each image is built here from the busybox or Debian root (mkfs.ext4 -d
fills a partition without mounting it; sfdisk writes the table; qemu-img
makes the qcow2), then booted as Nova boots a Glance image.
"""

import io
import os
import shutil
import tarfile
import time
import uuid

import fixtures
from nova import exception as nova_exc

from novalxcdriver import conf
from novalxcdriver import exception
from novalxcdriver import ids
from novalxcdriver import mount
from novalxcdriver.privsep import qemuimg
from tests.functional import base
from tests.functional import rootfs_images as ri

CONF = conf.CONF
# security.capability v2 of cap_net_raw=ep, as setcap(8) writes it.
CAP_NET_RAW_V2 = bytes.fromhex('0100000200200000000000000000000000000000')


class DiskImageTest(base.FunctionalTestCase):

    def setUp(self):
        super().setUp()
        self.work = self.useFixture(fixtures.TempDir(
            rootdir=os.path.dirname(ri.CACHE_DIR)
            if os.path.isdir(ri.CACHE_DIR) else None)).path

    def image(self, tarball, name, fmt, label):
        path = ri.disk_image(tarball, os.path.join(self.work, name), fmt,
                             label)
        image_id = self.add_image(path)
        # This test's own entry (a random id) goes once its instances are
        # destroyed (cleanups run last in, first out); others' are left.
        self.addCleanup(shutil.rmtree, os.path.join(
            CONF.lxc.state_path, 'images', image_id), ignore_errors=True)
        return image_id

    def boot(self, image_id, disk_format):
        instance = self.make_instance()
        start = time.monotonic()
        self.driver.spawn(self.ctxt, instance,
                          self.image_meta(image_id, disk_format=disk_format),
                          [], None, {}, network_info=[])
        print('%s image %s: converted, cached and spawned in %.2f s' % (
            disk_format, image_id, time.monotonic() - start))
        self.assertEqual('RUNNING', self.lxc_state(instance.name))
        return instance

    def assert_marks_kept(self, image_id, instance):
        """Owner, setuid mode, capability, xattr, hard link survived.

        And the entry holds the rootfs and its marker only: the received
        image, its raw conversion and the mount point are not published
        (a 367 MB disk.raw was, before).
        """
        self.assertEqual(['image.json', 'rootfs'], sorted(os.listdir(
            os.path.join(CONF.lxc.state_path, 'images', image_id))))
        rootfs = self.driver._images.lookup(image_id).rootfs
        mark = os.path.join(rootfs, ri.MARK_FILE)
        st = os.lstat(mark)
        self.assertEqual((ri.MARK_UID, ri.MARK_GID, ri.MARK_MODE),
                         (st.st_uid, st.st_gid, st.st_mode & 0o7777))
        self.assertEqual(CAP_NET_RAW_V2,
                         os.getxattr(mark, 'security.capability'))
        self.assertEqual(ri.MARK_XATTR[1], os.getxattr(mark,
                                                       ri.MARK_XATTR[0]))
        self.assertEqual(st.st_ino, os.lstat(
            os.path.join(rootfs, ri.MARK_LINK)).st_ino)
        # Inside, the container sees the image's owners and mode.
        out = self.attach(instance.name, 'stat', '-c', '%u %g %a',
                          '/' + ri.MARK_FILE).stdout.split()
        self.assertEqual([str(ri.MARK_UID), str(ri.MARK_GID), '4750'], out)

    def assert_nothing_left(self, image_id):
        """No entry, partial, mount or loop device of image_id."""
        images = os.path.join(CONF.lxc.state_path, 'images')
        self.assertEqual([], [n for n in os.listdir(images)
                              if image_id in n])
        self.assertEqual([], [p for p in mount.mounts() if image_id in p])
        loops = []
        for name in os.listdir('/sys/block'):
            try:
                with open('/sys/block/%s/loop/backing_file' % name) as f:
                    if image_id in f.read():
                        loops.append(name)
            except OSError:
                pass
        self.assertEqual([], loops)

    def test_busybox_qcow2_gpt(self):
        tarball = ri.busybox_tarball(os.path.join(self.work, 'bb.tar.gz'))
        image_id = self.image(tarball, 'bb.qcow2', 'qcow2', 'gpt')
        instance = self.boot(image_id, 'qcow2')
        self.wait_for(lambda: b'busybox booted' in
                      self.driver.get_console_output(self.ctxt, instance))
        self.assert_marks_kept(image_id, instance)
        # The /boot partition (a "kernel", no /sbin/init) was not used.
        rootfs = self.driver._images.lookup(image_id).rootfs
        self.assertFalse(os.path.exists(os.path.join(rootfs, 'vmlinuz')))
        # An ordinary cache entry: a second boot neither fetches nor
        # converts again.
        self.boot(image_id, 'qcow2')
        self.assertEqual([image_id], self.fx.fetches)

    def test_busybox_raw_mbr(self):
        tarball = ri.busybox_tarball(os.path.join(self.work, 'bb.tar.gz'))
        image_id = self.image(tarball, 'bb.raw', 'raw', 'dos')
        instance = self.boot(image_id, 'raw')
        self.wait_for(lambda: b'busybox booted' in
                      self.driver.get_console_output(self.ctxt, instance))
        self.assert_marks_kept(image_id, instance)

    def test_debian_raw_gpt_and_qcow2_mbr(self):
        tarball = ri.debian_tarball()
        for name, fmt, label in (('debian.raw', 'raw', 'gpt'),
                                 ('debian.qcow2', 'qcow2', 'dos')):
            start = time.monotonic()
            image_id = self.image(tarball, name, fmt, label)
            print('Debian %s image built in %.1f s (%d bytes)' % (
                fmt, time.monotonic() - start,
                os.path.getsize(os.path.join(self.work, name))))
            instance = self.boot(image_id, fmt)

            def system_state():
                out = self.attach(instance.name, 'systemctl',
                                  'is-system-running', check=False).stdout
                return out.strip() in ('running', 'degraded') and out.strip()

            self.wait_for(system_state, timeout=60)
            self.assert_marks_kept(image_id, instance)
            self.assertIn('cap_net_raw=ep', self.attach(
                instance.name, 'getcap', '/' + ri.MARK_FILE).stdout)
            self.driver.destroy(self.ctxt, instance, [])
            os.unlink(os.path.join(self.work, name))

    def test_qcow2_with_a_host_backing_file_refused(self):
        secret = os.path.join(self.work, 'host-secret')
        with open(secret, 'wb') as f:
            f.write(b'host data a guest must never see\n' * 64)
        image_id = self.add_image(ri.qcow2_with_backing_file(
            os.path.join(self.work, 'hostile.qcow2'), secret))
        instance = self.make_instance()
        e = self.assertRaises(
            nova_exc.ImageUnacceptable, self.driver.spawn, self.ctxt,
            instance, self.image_meta(image_id, disk_format='qcow2'), [],
            None, {}, network_info=[])
        self.assertIn('backing', str(e))
        self.assert_nothing_left(image_id)
        self.assertIsNone(self.lxc_state(instance.name))

    def test_no_linux_root_refused(self):
        # Only the /boot partition: an ext4 filesystem without /sbin/init.
        empty = os.path.join(self.work, 'empty.tar')
        ri._run('tar', '-cf', empty, '--files-from', '/dev/null')
        path = ri.disk_image(empty, os.path.join(self.work, 'x.raw'), 'raw',
                             'gpt')
        image_id = self.add_image(path)
        e = self.assertRaises(
            nova_exc.ImageUnacceptable, self.spawn, self.make_instance(),
            image_id)
        self.assertIn('no partition holds a Linux root filesystem', str(e))
        self.assertIn('partition 1: ext4 without /sbin/init', str(e))
        self.assert_nothing_left(image_id)

    def test_copied_by_the_confined_child(self):
        # The copy runs as root of a user namespace of the unpack range
        # (privsep.unpack.copy_partition): owners 0..65535 are kept, one
        # above reads, and is copied, as the overflowuid; a file only
        # such an owner may read cannot be copied, and the image is
        # refused with nothing left.
        base_tar = ri.busybox_tarball(os.path.join(self.work, 'bb.tar.gz'))

        def tarball(name, extra_mode):
            path = os.path.join(self.work, name)
            with tarfile.open(base_tar) as src, \
                    tarfile.open(path, 'w:gz') as dst:
                for member in src.getmembers():
                    dst.addfile(member, src.extractfile(member)
                                if member.isfile() else None)
                for rel, uid, mode in (('high', 70000, extra_mode),
                                       ('nobody', 65534, 0o644),
                                       ('top', 65535, 0o600)):
                    info = tarfile.TarInfo('usr/share/novalxc-' + rel)
                    info.uid = info.gid = uid
                    info.mode = mode
                    info.size = 3
                    dst.addfile(info, io.BytesIO(b'abc'))
            return path

        image_id = self.image(tarball('owners.tar.gz', 0o644), 'o.raw',
                              'raw', 'gpt')
        self.boot(image_id, 'raw')
        rootfs = self.driver._images.lookup(image_id).rootfs
        owners = {rel: os.lstat(os.path.join(
            rootfs, 'usr/share/novalxc-' + rel)).st_uid
            for rel in ('high', 'nobody', 'top')}
        self.assertEqual({'high': 65534, 'nobody': 65534, 'top': 65535},
                         owners)
        self.assertEqual(0, os.lstat(os.path.join(rootfs, 'bin')).st_uid)

        image_id = self.image(tarball('closed.tar.gz', 0o600), 'c.raw',
                              'raw', 'gpt')
        e = self.assertRaises(
            nova_exc.ImageUnacceptable, self.spawn, self.make_instance(),
            image_id)
        self.assertIn('usr/share/novalxc-high cannot be read', str(e))
        self.assert_nothing_left(image_id)

    def partial(self, source):
        """An image cache partial holding source as its fetched archive."""
        images = os.path.join(CONF.lxc.state_path, 'images')
        os.makedirs(images, 0o700, exist_ok=True)
        partial = os.path.join(images, '.partial-%s-%d-t%s' % (
            uuid.uuid4(), os.getpid(), uuid.uuid4().hex[:6]))
        os.mkdir(partial, 0o700)
        self.addCleanup(shutil.rmtree, partial, ignore_errors=True)
        shutil.copyfile(source, os.path.join(partial, 'archive'))
        os.chmod(os.path.join(partial, 'archive'), 0o600)
        return partial

    def test_qemu_img_runs_as_nobodys_uid(self):
        # A root-only host file named as a backing file: qemu-img, run by
        # the daemon as the unpack range's uid, cannot open it to convert
        # (root's qemu-img would copy it into the image). The driver never
        # gets this far (the format inspector and check_info refuse
        # backing files first): this calls the entry points themselves.
        secret = os.path.join(self.work, 'root-only')
        with open(secret, 'wb') as f:
            f.write(b'\0' * 65536)
        os.chmod(secret, 0o600)
        partial = self.partial(ri.qcow2_with_backing_file(
            os.path.join(self.work, 'b.qcow2'), secret))
        info = qemuimg.qcow2_info(partial, 60, 30, 1 << 30)
        self.assertIn(secret, info)
        e = self.assertRaises(exception.CommandFailed, qemuimg.qcow2_convert,
                              partial, 65536, 1 << 30, 60, 30, 1 << 30)
        self.assertIn('Permission denied', str(e))
        self.assertEqual(['archive'], os.listdir(partial))
        archive = os.lstat(os.path.join(partial, 'archive'))
        self.assertEqual((0, 0), (archive.st_uid, archive.st_gid))

        # A plain qcow2 converts, sparse, as the range's uid, and both
        # files are root's again afterwards.
        plain = os.path.join(self.work, 'p.qcow2')
        ri._run('qemu-img', 'create', '-q', '-f', 'qcow2', plain, '64M')
        partial = self.partial(plain)
        info = qemuimg.qcow2_info(partial, 60, 30, 1 << 30)
        self.assertIn('"virtual-size": 67108864', info)
        qemuimg.qcow2_convert(partial, 64 << 20, 1 << 30, 60, 30, 1 << 30)
        raw = os.lstat(os.path.join(partial, 'disk.raw'))
        self.assertEqual(64 << 20, raw.st_size)
        self.assertLess(raw.st_blocks * 512, 1 << 20)
        for name in ('archive', 'disk.raw'):
            st = os.lstat(os.path.join(partial, name))
            self.assertEqual((0, 0), (st.st_uid, st.st_gid))
        self.assertNotEqual(0, ids.unpack_idmap().uid_start)
