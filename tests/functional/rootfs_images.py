"""Real root filesystem tarballs for functional tests.

busybox: built here in a second from Debian's busybox-static; with dhcp
(the all-in-one cloud's), each ethN gets its address by DHCP, at boot and
when hot-plugged.
debian: a debootstrapped Debian 12 (systemd) root, built once per machine
(about a minute) and cached under CACHE_DIR; ifupdown configures each ethN
by DHCP, at boot and when hot-plugged.
"""

import glob
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile

CACHE_DIR = os.environ.get('NOVALXC_TEST_CACHE',
                           '/var/cache/novalxcdriver-test')
BUSYBOX = '/bin/busybox'
DEBIAN_MIRROR = os.environ.get('NOVALXC_DEBIAN_MIRROR',
                               'http://deb.debian.org/debian')

# A shell on /dev/console: what a serial console client gets.
_INITTAB = b"""::sysinit:/bin/mount -t tmpfs tmpfs /run
::sysinit:/bin/echo novalxc busybox booted
::respawn:-/bin/sh
::shutdown:/bin/echo novalxc busybox halting
"""
_APPLETS = ('sh', 'ls', 'cat', 'echo', 'sleep', 'mount', 'id', 'ps',
            'touch', 'rm', 'hostname', 'poweroff', 'reboot', 'halt', 'dd',
            'head', 'grep', 'true', 'free', 'nproc', 'df', 'uptime', 'mkdir',
            'seq', 'yes', 'sync', 'wc', 'tail', 'kill', 'cut', 'env', 'stat',
            'mknod', 'chmod', 'ln', 'cp', 'mv', 'sed', 'tr', 'timeout')

# DHCP: udhcpc(8) runs /etc/udhcpc.script (busybox ships none) and forks
# to the background once bound (or after its last try), renewing. At boot
# (sysinit) for each NIC there, waiting for the leases; then, as a cloud
# image's udev rules would, for each NIC hot-plugged later. A container has
# no udevd, so "dhcp watch" (respawned by init) looks each second. Pid
# files name the NIC's ifindex: a udhcpc whose NIC is gone is stopped, and
# a NIC attached again under the same name gets a udhcpc of its own. Only
# at boot does it wait for a lease (-b: until bound or after its tries).
_NET_APPLETS = ('ip', 'udhcpc', 'ping', 'wget', 'nc')
_INITTAB_DHCP = _INITTAB.replace(
    b'::sysinit:/bin/echo',
    b'::sysinit:/etc/init.d/dhcp\n::sysinit:/bin/echo', 1).replace(
    b'::respawn:', b'::respawn:/etc/init.d/dhcp watch\n::respawn:', 1)
_DHCP_INIT = b"""#!/bin/sh
# Each ethN by DHCP; with "watch", each one that comes later too.
start() {
    for dev in /sys/class/net/eth*; do
        [ -e "$dev/ifindex" ] || continue
        pid=/run/udhcpc-${dev##*/}-$(cat "$dev/ifindex").pid
        [ -e "$pid" ] && continue
        udhcpc -i "${dev##*/}" -s /etc/udhcpc.script -p "$pid" -b \\
            -t 5 -T 2 -O staticroutes -O mtu &
        [ "$1" = watch ] || wait $!
    done
}
stop_gone() {
    for pid in /run/udhcpc-*.pid; do
        [ -e "$pid" ] || continue
        nic=${pid#/run/udhcpc-}
        nic=${nic%.pid}
        [ "$(cat "/sys/class/net/${nic%-*}/ifindex" 2>/dev/null)" = \\
            "${nic##*-}" ] && continue
        kill "$(cat "$pid")" 2>/dev/null
        rm -f "$pid"
    done
}
[ "$1" = watch ] || { start; exit 0; }
while sleep 1; do
    stop_gone
    start watch
done
"""
_UDHCPC_SCRIPT = b"""#!/bin/sh
# udhcpc(8) calls this with deconfig, bound, renew, leasefail or nak.
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set dev "$interface" up
    ;;
bound|renew)
    ip addr replace "$ip/$mask" dev "$interface"
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    # RFC 3442: classless routes (OVN's include 169.254.169.254, the
    # metadata service) replace the router option.
    if [ -n "$staticroutes" ]; then
        set -- $staticroutes
        while [ $# -ge 2 ]; do
            if [ "$2" = 0.0.0.0 ]; then
                ip route replace "$1" dev "$interface"
            else
                ip route replace "$1" via "$2" dev "$interface"
            fi
            shift 2
        done
    elif [ -n "$router" ]; then
        set -- $router
        ip route replace default via "$1" dev "$interface"
    fi
    ;;
esac
exit 0
"""


def busybox_tarball(path, dhcp=False):
    """Write a gzip rootfs tarball of a busybox system to path.

    :param dhcp: configure each ethN by DHCP, at boot and when
        hot-plugged, and add the ip, udhcpc, ping, wget and nc applets.
    """
    with tarfile.open(path, 'w:gz') as tar:
        def add_dir(name, mode=0o755):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = mode
            tar.addfile(info)

        def add_file(name, data, mode=0o644):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, _BytesReader(data))

        def add_link(name, target):
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)

        for d in ('bin', 'sbin', 'etc', 'proc', 'sys', 'dev', 'run', 'root',
                  'var', 'mnt'):
            add_dir(d)
        add_dir('tmp', 0o1777)
        with open(BUSYBOX, 'rb') as f:
            add_file('bin/busybox', f.read(), 0o755)
        for applet in _APPLETS + (_NET_APPLETS if dhcp else ()):
            add_link('bin/' + applet, 'busybox')
        add_link('sbin/init', '/bin/busybox')
        if dhcp:
            add_dir('etc/init.d')
            add_file('etc/init.d/dhcp', _DHCP_INIT, 0o755)
            add_file('etc/udhcpc.script', _UDHCPC_SCRIPT, 0o755)
        add_file('etc/inittab', _INITTAB_DHCP if dhcp else _INITTAB)
        add_file('etc/passwd', b'root:x:0:0:root:/root:/bin/sh\n')
        add_file('etc/group', b'root:x:0:\n')
    return path


class _BytesReader:
    def __init__(self, data):
        self._data = data
        self._pos = 0

    def read(self, size=-1):
        if size < 0:
            size = len(self._data) - self._pos
        chunk = self._data[self._pos:self._pos + size]
        self._pos += len(chunk)
        return chunk


# procps: free, uptime and ps read /proc (which lxcfs virtualises);
# isc-dhcp-client: ifupdown's dhcp method; wget: fetch metadata from
# 169.254.169.254.
# libcap2-bin: getcap/setcap, for the snapshot tests' file capability.
DEBIAN_PACKAGES = ('systemd-sysv,iproute2,ifupdown,isc-dhcp-client,procps,'
                   'wget,libcap2-bin')
# Each ethN by DHCP through ifupdown, at boot (networking.service's ifup
# -a) and when hot-plugged. On a machine, udevd runs ifupdown's hot-plug
# rule; a container has no udevd, so ifupdown-netlink.service reads the
# kernel's link events (ip monitor) and does it. Not systemd-networkd: with
# /sys mounted read-write (LXC's userns.conf) it waits for udev to
# initialise each link, for ever (ADMIN_STATE=pending, seen here with
# systemd 252).
# {path in the root: (mode, content)}
_DEBIAN_FILES = {
    'etc/network/interfaces': (0o644, b"""\
# novalxcdriver test image: each ethN by DHCP, hot-plugged ones too.
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

auto /eth*/=eth
iface eth inet dhcp
"""),
    'usr/local/sbin/ifupdown-netlink': (0o755, b"""\
#!/bin/sh
# What ifupdown's udev rule does where udevd runs: ifup (-a: each ethN
# matches "auto /eth*/=eth") when a NIC comes, ifdown when it goes; not
# when a NIC only changes (an ifdown by hand stays down). A NIC comes in
# as nlx..., then takes its name: each index:name seen once counts.
# dhclient cannot release a lease on a NIC that is gone: stop it first.
seen=' '
for dev in /sys/class/net/*; do
    seen="$seen$(cat "$dev/ifindex"):${dev##*/} "
done
set -f
ip -o monitor link | {
    ifup -a </dev/null
    # "[Deleted ]INDEX: NAME[@PEER]: <FLAGS> ..."
    while read -r line; do
        set -- $line
        gone=
        [ "$1" = Deleted ] && { gone=1; shift; }
        name=${2%:}
        name=${name%@*}
        if [ "$gone" ]; then
            pid=/run/dhclient.$name.pid
            [ -e "$pid" ] && kill "$(cat "$pid")"
            ifdown --force "$name" </dev/null
            continue
        fi
        case "$seen" in *" $1$name "*) continue ;; esac
        seen="$seen$1$name "
        ifup -a </dev/null
    done
}
"""),
    'etc/systemd/system/ifupdown-netlink.service': (0o644, b"""\
[Unit]
Description=ifup and ifdown of hot-plugged NICs (no udevd in a container)
After=networking.service

[Service]
ExecStart=/usr/local/sbin/ifupdown-netlink
Restart=always

[Install]
WantedBy=multi-user.target
"""),
}
# {link: target}: systemctl enable ifupdown-netlink, as a symlink.
_DEBIAN_LINKS = {
    'etc/systemd/system/multi-user.target.wants/ifupdown-netlink.service':
        '/etc/systemd/system/ifupdown-netlink.service',
}


# A cloud image as distributions make them: cloud-init gives it the
# hostname and the users' SSH keys from Nova (config drive or metadata
# service), sshd lets them in; curl, as Tempest's scenarios use it. Its
# NICs are the Debian image's (each ethN by DHCP, hot-plugged ones too):
# cloud-init's own eth0 stanza would clash with those. python3-cffi-backend:
# a dependency debootstrap's resolver misses (a virtual package's provider).
DEBIAN_CLOUD_PACKAGES = DEBIAN_PACKAGES + (
    ',cloud-init,openssh-server,sudo,curl,python3-cffi-backend')
_DEBIAN_CLOUD_FILES = dict(_DEBIAN_FILES, **{
    # No DMI in a container: the driver names the platform in PID 1's
    # environment (ds-identify reads it); the list keeps cloud-init from
    # probing clouds that cannot be. The hostname resolves (sudo
    # complains otherwise), as in Debian's own cloud images.
    'etc/cloud/cloud.cfg.d/90-novalxc.cfg': (0o644, b"""\
datasource_list: [ConfigDrive, OpenStack, None]
manage_etc_hosts: true
network:
  config: disabled
"""),
})
# Made at first boot by cloud-init (ssh_deletekeys): never shared.
_DEBIAN_CLOUD_REMOVE = ('etc/ssh/ssh_host_*',)


def _debian_path(prefix, packages, files):
    key = hashlib.sha256(repr((packages, sorted(files.items()),
                               sorted(_DEBIAN_LINKS.items()))).encode())
    return os.path.join(CACHE_DIR,
                        '%s-%s.tar.zst' % (prefix, key.hexdigest()[:8]))


def debian_tarball_path():
    """Where debian_tarball() caches it: named after what goes in."""
    return _debian_path('debian-bookworm', DEBIAN_PACKAGES, _DEBIAN_FILES)


def debian_cloud_tarball_path():
    """Where debian_cloud_tarball() caches it."""
    return _debian_path('debian-bookworm-cloud', DEBIAN_CLOUD_PACKAGES,
                        _DEBIAN_CLOUD_FILES)


def debian_tarball():
    """Path of a cached zstd rootfs tarball of Debian 12 with systemd."""
    return _debian(debian_tarball_path(), DEBIAN_PACKAGES, _DEBIAN_FILES)


def debian_cloud_tarball():
    """Path of a cached zstd rootfs tarball of a Debian 12 cloud image.

    cloud-init, openssh-server and sudo besides debian_tarball()'s
    packages; the user's key goes to cloud-init's default user, debian.
    """
    return _debian(debian_cloud_tarball_path(), DEBIAN_CLOUD_PACKAGES,
                   _DEBIAN_CLOUD_FILES, _DEBIAN_CLOUD_REMOVE)


def _debian(path, packages, files, remove=()):
    if os.path.exists(path):
        return path
    os.makedirs(CACHE_DIR, exist_ok=True)
    work = tempfile.mkdtemp(dir=CACHE_DIR, prefix='.debootstrap-')
    try:
        root = os.path.join(work, 'root')
        subprocess.run(
            ['debootstrap', '--variant=minbase',
             '--include=' + packages, 'bookworm', root,
             DEBIAN_MIRROR], check=True, stdout=subprocess.DEVNULL)
        for name, (mode, data) in files.items():
            os.makedirs(os.path.dirname(os.path.join(root, name)),
                        exist_ok=True)
            with open(os.path.join(root, name), 'wb') as f:
                f.write(data)
            os.chmod(os.path.join(root, name), mode)
        for name, target in _DEBIAN_LINKS.items():
            os.makedirs(os.path.dirname(os.path.join(root, name)),
                        exist_ok=True)
            os.symlink(target, os.path.join(root, name))
        for pattern in remove:
            for found in glob.glob(os.path.join(root, pattern)):
                os.unlink(found)
        tmp = os.path.join(work, 'rootfs.tar.zst')
        # /dev is LXC's to populate (lxc.autodev); devices are refused.
        subprocess.run(
            ['tar', '--numeric-owner', '--xattrs', '--xattrs-include=*',
             '--exclude=./dev/*', '--exclude=./proc/*', '--exclude=./sys/*',
             '--zstd', '-cf', tmp, '-C', root, '.'], check=True)
        os.rename(tmp, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


# -- disk images (diskimage.py) ---------------------------------------------

# What disk_image() adds to the root, checked after the boot: an owner, a
# setuid mode, a file capability and a user xattr must survive.
MARK_FILE = 'usr/local/bin/novalxc-mark'
MARK_LINK = 'usr/local/bin/novalxc-mark-link'
MARK_UID, MARK_GID, MARK_MODE = 1234, 5678, 0o4750
MARK_CAPABILITY = 'cap_net_raw=ep'
MARK_XATTR = ('user.novalxc', b'disk-image')
_MiB = 1024 * 1024


def _run(*argv):
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def disk_image(tarball, path, fmt='qcow2', label='gpt', marked=True):
    """Write a disk image of tarball's root to path, as a cloud image is.

    Partition 1 is a small ext4 "/boot" (a kernel file, no /sbin/init),
    partition 2 the root, filled by mkfs.ext4 -d (no mount).

    :param fmt: 'qcow2' or 'raw'.
    :param label: 'gpt' or 'dos' (sfdisk(8) label).
    :param marked: add MARK_FILE (owner, setuid mode, capability, xattr)
        and its hard link MARK_LINK to the root, for the tests to find.
    :returns: path.
    """
    work = tempfile.mkdtemp(dir=os.path.dirname(path), prefix='.disk-')
    try:
        root = os.path.join(work, 'root')
        os.mkdir(root)
        _run('tar', '--numeric-owner', '--xattrs', '--xattrs-include=*',
             '-xpf', tarball, '-C', root)
        if marked:
            _mark(root)
        boot = os.path.join(work, 'boot')
        os.mkdir(boot)
        with open(os.path.join(boot, 'vmlinuz'), 'wb') as f:
            f.write(b'not a kernel')
        used = int(subprocess.run(['du', '-sb', root], check=True,
                                  capture_output=True,
                                  text=True).stdout.split()[0])
        root_mib = used * 13 // 10 // _MiB + 16
        boot_mib = 4
        filesystems = []
        for name, mib in (('boot', boot_mib), ('root', root_mib)):
            image = os.path.join(work, name + '.ext4')
            _run('mkfs.ext4', '-q', '-F', '-d', os.path.join(work, name),
                 '-E', 'root_owner=0:0', image, '%dM' % mib)
            filesystems.append((image, mib))
        raw = os.path.join(work, 'disk.raw')
        with open(raw, 'wb') as f:
            f.truncate((2 + boot_mib + root_mib + 1) * _MiB)
        subprocess.run(['sfdisk', '-q', raw], check=True, text=True,
                       input='label: %s\nstart=1MiB, size=%dMiB\n'
                             'size=%dMiB\n' % (label, boot_mib, root_mib),
                       stdout=subprocess.DEVNULL)
        offset = _MiB
        with open(raw, 'r+b') as out:
            for image, mib in filesystems:
                with open(image, 'rb') as src:
                    out.seek(offset)
                    shutil.copyfileobj(src, out, _MiB)
                offset += mib * _MiB
        if fmt == 'qcow2':
            _run('qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', raw,
                 path)
        else:
            os.rename(raw, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def _mark(root):
    mark = os.path.join(root, MARK_FILE)
    os.makedirs(os.path.dirname(mark), exist_ok=True)
    shutil.copyfile(BUSYBOX, mark)
    os.chown(mark, MARK_UID, MARK_GID)
    os.chmod(mark, MARK_MODE)
    _run('setcap', MARK_CAPABILITY, mark)
    os.setxattr(mark, *MARK_XATTR)
    os.link(mark, os.path.join(root, MARK_LINK))


def debian_cloud_qcow2_path():
    """Where debian_cloud_qcow2() caches it (beside its tarball)."""
    return debian_cloud_tarball_path()[:-len('.tar.zst')] + '.qcow2'


def debian_cloud_qcow2():
    """The Debian 12 cloud image as distributions publish it (qcow2).

    A GPT disk with a /boot and a root (ext4) partition.
    """
    path = debian_cloud_qcow2_path()
    if not os.path.exists(path):
        tmp = '%s.%d.tmp' % (path, os.getpid())
        try:
            disk_image(debian_cloud_tarball(), tmp, 'qcow2', 'gpt',
                       marked=False)
            os.rename(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


def qcow2_with_backing_file(path, backing):
    """A qcow2 whose backing file is the host file backing (hostile)."""
    _run('qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
         backing, path)
    return path
