"""Images of the hardening suite: busybox with helpers, and hostile tarballs.

``busybox_plus`` is the functional suite's busybox root with more applets
and extra files (the static ``hh`` helper built from hh.c). ``corpus``
builds the crafted archives of issue 5, each with what the driver must do
with it: refuse it with a reason, or unpack it harmlessly.
"""

import dataclasses
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile

from tests.functional import rootfs_images
from tests import tar_members

HERE = os.path.dirname(os.path.abspath(__file__))
EXTRA_APPLETS = ('unshare', 'find', 'insmod', 'sha256sum', 'nsenter',
                 'fallocate', 'readlink', 'usleep', 'date', 'xargs', 'awk')


def helper(cache_dir):
    """Path of the static hh helper, compiled once per source version.

    :raises subprocess.CalledProcessError: gcc failed (needs libc6-dev).
    """
    with open(os.path.join(HERE, 'hh.c'), 'rb') as f:
        source = f.read()
    path = os.path.join(cache_dir, 'hh-%s' %
                        hashlib.sha256(source).hexdigest()[:12])
    if not os.path.exists(path):
        os.makedirs(cache_dir, exist_ok=True)
        tmp = path + '.tmp%d' % os.getpid()
        subprocess.run(['gcc', '-static', '-O2', '-Wall', '-o', tmp,
                        os.path.join(HERE, 'hh.c')], check=True)
        os.rename(tmp, path)
    return path


def busybox_plus(path, extras=()):
    """A gzip busybox rootfs tarball with extra applets and files.

    :param extras: (name, bytes, mode) of files to add.
    """
    base = rootfs_images.busybox_tarball(path + '.base')
    try:
        with tarfile.open(base) as src, tarfile.open(path, 'w:gz') as dst:
            names = set()
            for member in src:
                names.add(member.name)
                dst.addfile(member, src.extractfile(member)
                            if member.isreg() else None)
            for applet in EXTRA_APPLETS:
                if 'bin/' + applet not in names:
                    dst.addfile(*tar_members.symlink('bin/' + applet,
                                                     'busybox'))
            for name, data, mode in extras:
                dst.addfile(tar_members.info(name, size=len(data), mode=mode),
                            io.BytesIO(data))
    finally:
        os.unlink(base)
    return path


def helper_image(path, cache_dir):
    """busybox_plus with /hh, and /hh-selfexe for the CVE-2019-5736 test."""
    with open(helper(cache_dir), 'rb') as f:
        hh = f.read()
    return busybox_plus(path, extras=[
        ('hh', hh, 0o755),
        # The runtime exec'ing this script runs itself in the container.
        ('hh-selfexe', b'#!/proc/self/exe\n', 0o755)])


def _base_members(tar, with_etc=True):
    """The members of a minimal valid root: busybox init and a shell."""
    with open(rootfs_images.BUSYBOX, 'rb') as f:
        data = f.read()
    for d in ('bin', 'sbin', 'tmp', 'root', 'run', 'proc', 'sys', 'dev'):
        tar.addfile(*tar_members.directory(d))
    tar.addfile(*tar_members.reg('bin/busybox', data, mode=0o755))
    for applet in ('sh', 'sleep', 'true', 'cat', 'mount', 'echo'):
        tar.addfile(*tar_members.symlink('bin/' + applet, 'busybox'))
    tar.addfile(*tar_members.symlink('sbin/init', '/bin/busybox'))
    if not with_etc:
        return
    tar.addfile(*tar_members.directory('etc'))
    inittab = b'::sysinit:/bin/echo hostile image booted\n' \
              b'::respawn:/bin/sleep 86400\n'
    tar.addfile(*tar_members.reg('etc/inittab', inittab))


@dataclasses.dataclass
class Case:
    """One crafted image and the driver's expected answer.

    :ivar expect: 'refused' (ImageUnacceptable whose reason holds
        ``reason``) or 'harmless' (the container boots; nothing leaks).
    """

    name: str
    path: str
    expect: str
    reason: str = ''
    max_unpacked_gib: int = 0   # raise [lxc] image_max_unpacked_gib for it


def _tar(path, members, with_base=True, compression='gz', with_etc=True):
    mode = 'w:' + compression if compression else 'w'
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tar:
        if with_base:
            _base_members(tar, with_etc)
        for info, data in members:
            tar.addfile(info, data)
    return path


def _reg(name, data=b'x', **kwargs):
    return tar_members.reg(name, data, **kwargs)


def gzip_bomb(path, size):
    """A gzip tarball of one file of size zero bytes (about size/1000)."""
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + '.tmp%d' % os.getpid()
    with gzip.GzipFile(tmp, 'wb', compresslevel=1, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode='w|') as tar:
            _base_members(tar)
            tar.addfile(*tar_members.zeros('bomb', size))
    os.rename(tmp, path)
    return path


def corpus(work, canary, cache_dir, bomb_bytes):
    """The hostile and broken images of issue 5, built in work.

    :param canary: a directory outside every image root; each escaping
        member aims at it, so a successful attack leaves a file there.
    :param bomb_bytes: size of the gzip bomb's file: more than the
        driver's [lxc] image_max_unpacked_gib.
    :returns: list of Case.
    """
    # From the unpack directory <state>/images/.partial-*/rootfs, as many
    # '..' as reach '/', then down to the canary.
    up = '../' * 12 + canary.lstrip('/')
    secret = os.path.join(canary, 'secret')
    cases = []

    def add(name, members, expect, reason='', **kwargs):
        path = os.path.join(work, name + '.tar.gz')
        _tar(path, members, **{k: v for k, v in kwargs.items()
                               if k in ('with_base', 'compression',
                                        'with_etc')})
        cases.append(Case(name, path, expect, reason,
                          kwargs.get('max_unpacked_gib', 0)))

    add('absolute-path', [_reg(canary + '/absolute')], 'refused',
        'absolute name')
    add('dotdot-path', [_reg(up + '/dotdot')], 'refused', "'..' in name")
    add('symlink-then-file', [tar_members.symlink('escape', canary),
                              _reg('escape/through-symlink')],
        'refused', 'goes through the symlink')
    # The two-archive form of CVE-2025-45582 as two members of one
    # archive, the link deeper and named like a real directory.
    add('symlink-split-members', [
        tar_members.directory('usr'),
        tar_members.symlink('usr/lib', canary),
        tar_members.directory('usr/lib'),
        _reg('usr/lib/split')], 'refused', 'cannot replace')
    add('symlink-climbing-then-file', [
        tar_members.symlink('var', '../' * 12 + canary.lstrip('/')),
        _reg('var/climbed')], 'refused', 'climbs out of the image root')
    add('hardlink-absolute-outside',
        [tar_members.hardlink('etc/shadow-copy', secret)],
        'refused', 'absolute hard link target')
    add('hardlink-dotdot-outside',
        [tar_members.hardlink('etc/shadow-copy', up + '/secret')],
        'refused', "'..' in hard link target")
    add('hardlink-to-symlink', [tar_members.symlink('etc/link', secret),
                                tar_members.hardlink('etc/hard', 'etc/link')],
        'refused', 'hard link to the symlink')
    add('char-device', [
        (tar_members.info('dev/mem', tarfile.CHRTYPE, 0o666, devmajor=1,
                          devminor=1), None)], 'refused', 'device node')
    add('block-device', [
        (tar_members.info('dev/vda', tarfile.BLKTYPE, 0o666, devmajor=254,
                          devminor=0), None)], 'refused', 'device node')
    add('fifo', [tar_members.fifo('run/fifo')], 'harmless')
    add('xz-compressed', [], 'harmless', compression='xz')
    add('absolute-symlinks-inside', [
        tar_members.symlink('etc/mtab', '/proc/mounts'),
        tar_members.symlink('root/shadow', '/etc/shadow'),
        tar_members.symlink('root/canary', secret)], 'harmless')
    # The driver writes /etc/hostname into the root from the host: an
    # image's links must not lead that write out.
    add('etc-symlink-to-host', [tar_members.symlink('etc', canary)],
        'harmless', with_etc=False)
    add('hostname-symlink-to-host',
        [tar_members.symlink('etc/hostname', secret)], 'harmless')
    add('setuid-file', [_reg('bin/suid', b'#!/bin/sh\n', mode=0o4755)],
        'harmless')
    # The confined unpacker's user namespace maps ids 0..65535 only.
    add('owner-beyond-unpack-range', [_reg('etc/high', uid=65536)],
        'refused', 'uid 65536 is outside 0..65535')
    # Only the host's CAP_SYS_ADMIN sets them; left out (tarball.py).
    add('trusted-xattr', [_reg('etc/trusted', pax_headers={
        'SCHILY.xattr.trusted.overlay.redirect': '/etc'})], 'harmless')
    add('file-replaces-directory', [_reg('etc')], 'refused',
        'cannot replace')
    # libarchive's tar reader gives a hard link no data: its data would
    # otherwise be written into its target, uncounted by the size limit.
    # It reads the data as the next header (zeros: the archive's end).
    add('hardlink-with-data', [
        _reg('etc/target', b'orig'),
        (tar_members.hardlink('etc/link', 'etc/target', size=1 << 16)[0],
         io.BytesIO(b'EVIL' * (1 << 14)))], 'refused',
        'Damaged tar archive')
    # Headers libarchive reads whole into memory stop at 1 MiB.
    add('oversized-pax-header', [_reg('etc/big', pax_headers={
        'comment': 'x' * (2 << 20)})], 'refused', 'Special header too large')
    # Not applied (no ARCHIVE_EXTRACT_FFLAGS): an immutable file would
    # outlive the server's delete.
    add('immutable-flag', [_reg('etc/stuck', pax_headers={
        'SCHILY.fflags': 'schg,sappnd'})], 'harmless')
    # A type tar(5) does not define is a regular file (POSIX pax).
    add('unknown-member-type', [
        (tar_members.info('etc/odd', b'Z', size=3), io.BytesIO(b'odd'))],
        'harmless')
    add('no-sbin-init', [_reg('etc/hostname', b'x\n')], 'refused',
        'no /sbin/init', with_base=False)
    add('init-symlink-to-host', [
        tar_members.directory('sbin'),
        tar_members.symlink('sbin/init', '/usr/bin/python3')], 'refused',
        'no /sbin/init', with_base=False)

    bomb = Case('gzip-bomb', gzip_bomb(
        os.path.join(cache_dir, 'bomb-%d.tar.gz' % bomb_bytes), bomb_bytes),
        'refused', 'exceed the limit of')
    cases.append(bomb)
    # A file larger than the disk's free space, the size limit set high:
    # refused from its header, before a byte is written.
    free = shutil.disk_usage(work).free
    huge = os.path.join(work, 'larger-than-disk.tar.gz')
    raw = io.BytesIO()
    tar = tarfile.open(fileobj=raw, mode='w', format=tarfile.PAX_FORMAT)
    _base_members(tar)
    # The header of a file twice the free space, 1 MiB of it, no end.
    data = raw.getvalue() + tar_members.info('huge', size=free * 2).tobuf(
        tarfile.PAX_FORMAT, 'utf-8', 'surrogateescape') + bytes(1 << 20)
    with open(huge, 'wb') as f:
        f.write(gzip.compress(data))
    cases.append(Case('larger-than-disk', huge, 'refused',
                      'bytes but only', max_unpacked_gib=10 ** 6))

    good = busybox_plus(os.path.join(work, 'good.tar.gz'))
    with open(good, 'rb') as f:
        data = f.read()
    truncated = os.path.join(work, 'truncated.tar.gz')
    with open(truncated, 'wb') as f:
        f.write(data[:len(data) // 2])
    cases.append(Case('truncated', truncated, 'refused',
                      'truncated or corrupt'))
    blob = os.path.join(work, 'blob.bin')
    with open(blob, 'wb') as f:
        f.write(hashlib.sha512(b'not a tarball').digest() * 1024)
    cases.append(Case('non-tar-blob', blob, 'refused', 'not a tar archive'))
    qcow2 = os.path.join(work, 'disk.qcow2')
    with open(qcow2, 'wb') as f:
        f.write(b'QFI\xfb' + bytes(4096))
    # Uploaded as disk_format=raw (the corpus's format): a qcow2 must
    # come as qcow2, whose checks it would then meet (diskimage.py).
    cases.append(Case('qcow2-disk', qcow2, 'refused',
                      'its content is a qcow2 image'))
    compressed_junk = os.path.join(work, 'junk.gz')
    with open(compressed_junk, 'wb') as f:
        f.write(gzip.compress(b'#!/bin/sh\nrm -rf /\n' * 1000))
    cases.append(Case('gzip-of-non-tar', compressed_junk, 'refused',
                      'truncated or corrupt'))
    corrupt = os.path.join(work, 'corrupt.tar.gz')
    with open(corrupt, 'wb') as f:
        raw = bytearray(data)
        for i in range(len(raw) // 3, len(raw) // 3 + 4096):
            raw[i] ^= 0x5a
        f.write(bytes(raw))
    cases.append(Case('corrupt-deflate', corrupt, 'refused',
                      'truncated or corrupt'))

    # A complete root whose later part is damaged: tarfile would once
    # take a bad header for the end of the archive, and never reads as
    # far as the gzip CRC; either way files would be silently missing.
    raw = io.BytesIO()
    tar = tarfile.open(fileobj=raw, mode='w', format=tarfile.PAX_FORMAT)
    _base_members(tar)
    noise = hashlib.shake_256(b'noise').digest(256 * 1024)
    for i in range(3):
        tar.addfile(tar_members.info('etc/data%d' % i, size=len(noise)),
                    io.BytesIO(noise))
    tar.close()
    whole = bytearray(raw.getvalue())
    header = whole.find(b'etc/data2')
    header -= header % 512
    bad_header = bytearray(whole)
    bad_header[header + 148:header + 156] = b'0000000\0'  # its checksum
    path = os.path.join(work, 'bad-header-mid-archive.tar.gz')
    with open(path, 'wb') as f:
        f.write(gzip.compress(bytes(bad_header)))
    cases.append(Case('bad-header-mid-archive', path, 'refused',
                      'truncated or corrupt: Damaged tar archive'))
    late = bytearray(gzip.compress(bytes(whole), compresslevel=1))
    for i in range(len(late) * 9 // 10, len(late) * 9 // 10 + 16):
        late[i] ^= 0x55
    path = os.path.join(work, 'gzip-crc-mismatch.tar.gz')
    with open(path, 'wb') as f:
        f.write(bytes(late))
    cases.append(Case('gzip-crc-mismatch', path, 'refused',
                      'truncated or corrupt'))

    # Disk images (a GPT raw image; the root partition's files copied by
    # the confined child, privsep.unpack.copy_partition): what a tarball
    # could not carry past tarball.py reaches the copy here.
    def add_disk(name, members, expect, reason=''):
        tarball = _tar(os.path.join(work, name + '.tar.gz'), members)
        path = os.path.join(work, name + '.raw')
        rootfs_images.disk_image(tarball, path, 'raw', 'gpt', marked=False)
        os.unlink(tarball)
        cases.append(Case(name, path, expect, reason))

    add_disk('disk-links-out', [
        tar_members.symlink('root/canary', secret),
        tar_members.symlink('escape', canary),
        tar_members.symlink('etc/up', '../' * 12 + canary.lstrip('/')),
        tar_members.hardlink('etc/busybox-link', 'bin/busybox')], 'harmless')
    add_disk('disk-device-nodes', [
        tar_members.device('dev-mem', tarfile.CHRTYPE),
        tar_members.device('etc/blk', tarfile.BLKTYPE),
        (tar_members.info('etc/whiteout', tarfile.CHRTYPE, devmajor=0,
                          devminor=0), None)], 'harmless')
    add_disk('disk-trusted-xattr', [_reg('etc/trusted', pax_headers={
        'SCHILY.xattr.trusted.overlay.redirect': '/etc',
        'SCHILY.xattr.security.evil': 'x'})], 'harmless')
    add_disk('disk-unreadable-owner-beyond-range',
             [_reg('etc/high', uid=70000, gid=70000, mode=0o600)],
             'refused', 'etc/high cannot be read: its owner is beyond')
    return cases
