"""Host preparation: Debian packages, subordinate ids, the virtualenv.

Each step checks first and does nothing when already done, so ``up`` stays
cheap on a prepared machine.
"""

import hashlib
import os
import shutil

from novalxc_aio import layout
from novalxc_aio import util

# Debian packages. Their own services are not started by apt (see
# _no_service_starts): the aio runs its own instances on its own data.
PACKAGES = (
    # LXC and what unprivileged containers and their images need.
    'lxc', 'uidmap', 'lxcfs', 'debootstrap', 'busybox-static', 'zstd',
    # The image unpacker's parser and writer (novalxcdriver/tarball.py).
    'libarchive13',
    # Root disks (the driver's default [lxc] root_disk_fs).
    'btrfs-progs',
    # qemu-img, for qcow2 images (the driver's diskimage.py) and for
    # building debian-12-cloud, whose partition table sfdisk writes.
    'qemu-utils', 'fdisk',
    # Database and message bus.
    'mariadb-server', 'mariadb-client', 'rabbitmq-server',
    # Neutron's ML2/OVN data plane and what its agents call.
    'openvswitch-switch', 'ovn-central', 'ovn-host', 'haproxy', 'iptables',
    'ethtool',
    # websocket-client for this tool's own Python: the smoke's and the
    # demo's client of nova-serialproxy.
    'python3-websocket',
    # ssh and ssh-keygen: the demo logs in to its cloud image server.
    'openssh-client',
    # sshd: root between the computes of "up --computes 2" (migrations).
    'openssh-server',
    # sudo: nova-compute (as nova) and the OVN metadata agents (as
    # neutron) start their root helpers through it; setfacl lets neutron
    # reach Open vSwitch's socket.
    'sudo', 'acl',
    # The virtualenv, and git for pbr's version of this repository.
    'python3-venv', 'git', 'ca-certificates',
)

# PyPI: the services of the cloud. aio/constraints.txt pins what these
# resolved to when the aio was last verified (nova 34 pins its own deps).
PIP_PACKAGES = (
    'nova==34.0.0', 'neutron==29.0.0', 'openstack-placement', 'glance',
    'keystone', 'python-openstackclient', 'gunicorn', 'PyMySQL',
    # oslo.cache loads every cache backend it knows and logs an ERROR for
    # this one when it is missing, though nothing here uses memcached.
    'python-memcached',
)
CONSTRAINTS = os.path.join(layout.AIO_DIR, 'constraints.txt')

POLICY_RC_D = '/usr/sbin/policy-rc.d'

# The interpreter of the virtualenv: NOVALXC_AIO_PYTHON if set, else
# Debian's python3 (3.11.2 on Debian 12), else a python3 on PATH.
PYTHON_CANDIDATES = (
    [os.environ['NOVALXC_AIO_PYTHON']] if os.environ.get('NOVALXC_AIO_PYTHON')
    else ['/usr/bin/python3'] + [shutil.which(n) for n in
                                 ('python3.11', 'python3.12', 'python3')])
_PYTHON_CHECK = ('import sys, venv, ensurepip; '
                 'print(sys.executable, sys.version.split()[0]); '
                 'sys.exit(0 if sys.version_info >= (3, 10) else 3)')
VENV_MARKERS = os.path.join(layout.PREFIX, 'done')


def debian_packages():
    """apt-get install what is missing, without starting Debian services."""
    missing = [p for p in PACKAGES if not _installed(p)]
    if not missing:
        return
    util.say('installing Debian packages: %s', ' '.join(missing))
    with _no_service_starts():
        # A failing third-party source must not stop us: the Debian
        # mirror is what matters.
        util.run(['apt-get', 'update', '-q'], check=False, log='apt')
        util.run(['apt-get', 'install', '-y', '-q',
                  '--no-install-recommends'] + missing, log='apt')


def _installed(package):
    proc = util.run(['dpkg-query', '-W', '-f=${db:Status-Status}', package],
                    check=False, capture=True)
    return proc.stdout.strip() == 'installed'


class _no_service_starts:
    """policy-rc.d(8) answering 101 while apt runs.

    Debian would otherwise start mariadb, rabbitmq, openvswitch and ovn on
    their default data and ports, where the aio starts its own. An existing
    policy-rc.d is left as it is.
    """

    def __enter__(self):
        self.created = not os.path.exists(POLICY_RC_D)
        if self.created:
            util.write_file(POLICY_RC_D, '#!/bin/sh\n# novalxc-aio: no '
                            'service starts during apt-get install\n'
                            'exit 101\n', mode=0o755)

    def __exit__(self, *exc):
        if self.created:
            os.unlink(POLICY_RC_D)


# Each systemd container takes inotify instances that count against host
# root's per-user limit; at Debian's 128 only about 25 boot at once.
INOTIFY_INSTANCES = 8192


def inotify_limits():
    """Raise fs.inotify.max_user_instances for many systemd containers."""
    path = '/proc/sys/fs/inotify/max_user_instances'
    with open(path) as f:
        if int(f.read()) >= INOTIFY_INSTANCES:
            return
    util.say('raising fs.inotify.max_user_instances to %d',
             INOTIFY_INSTANCES)
    with open(path, 'w') as f:
        f.write(str(INOTIFY_INSTANCES))


def subordinate_ids():
    """Give root a subordinate uid/gid range if it has none (subuid(5)).

    Each container's idmap is a slice of root's range; without one,
    newuidmap refuses every mapping and nova-compute's host check fails.
    """
    for path in ('/etc/subuid', '/etc/subgid'):
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            lines = []
        if any(line.split(':')[0] in ('root', '0') for line in lines):
            continue
        util.say('adding root:100000:1000000000 to %s', path)
        with open(path, 'a') as f:
            f.write('root:100000:1000000000\n')


def virtualenv():
    """Create the venv and pip install the cloud's services into it.

    :returns: True if packages were (re)installed.
    """
    interpreter = _python()
    python = layout.venv_bin('python')
    if os.path.exists(python) and not util.marker_done(
            'python', interpreter, VENV_MARKERS):
        util.say('recreating virtualenv %s for %s', layout.VENV, interpreter)
        shutil.rmtree(layout.PREFIX)
    if not os.path.exists(python):
        util.say('creating virtualenv %s (%s)', layout.VENV, interpreter)
        util.run([interpreter.split()[0], '-m', 'venv', layout.VENV],
                 log='pip')
        util.run([layout.venv_bin('pip'), 'install', '-q', '--upgrade',
                  'pip', 'setuptools', 'wheel'], log='pip')
        util.mark_done('python', interpreter, VENV_MARKERS)
    wanted = _fingerprint([CONSTRAINTS], extra=' '.join(PIP_PACKAGES))
    if util.marker_done('pip', wanted, VENV_MARKERS):
        return False
    util.say('pip installing OpenStack into %s (a few minutes)', layout.VENV)
    util.run([layout.venv_bin('pip'), 'install', '-q', '-c', CONSTRAINTS] +
             list(PIP_PACKAGES), log='pip')
    util.mark_done('pip', wanted, VENV_MARKERS)
    return True


def _python():
    """'PATH VERSION' of the interpreter for the venv (see above).

    :raises AioError: no candidate is a usable python3.
    """
    tried = []
    for python in PYTHON_CANDIDATES:
        if not python or not os.path.exists(python):
            continue
        proc = util.run([python, '-c', _PYTHON_CHECK], check=False,
                        capture=True)
        # "EXECUTABLE VERSION": a pyenv shim resolves to its interpreter.
        found = proc.stdout.strip()
        if proc.returncode == 0:
            return found
        tried.append('%s (%s)' % (python, found.split()[-1] if found
                                  else 'unusable'))
    raise util.AioError(
        'no Python >= 3.10 with venv and ensurepip (Debian: python3-venv); '
        'tried %s. Set NOVALXC_AIO_PYTHON to such a python3 and run up '
        'again.' %
        ', '.join(tried))


def this_repo():
    """pip install this repository (not editable) into the venv.

    A wheel install carries the nova/virt/novalxc shim through which
    nova-compute loads ``compute_driver = novalxc.LXCDriver``. Reinstalled
    whenever the driver's files change; running services keep the old code
    until ``up`` restarts nova-compute.

    :returns: True if it was (re)installed.
    """
    files = []
    for top in ('novalxcdriver', 'nova'):
        for root, dirs, names in os.walk(os.path.join(layout.REPO, top)):
            dirs[:] = sorted(d for d in dirs if d != '__pycache__')
            files += [os.path.join(root, n) for n in sorted(names)
                      if n.endswith('.py')]
    files += [os.path.join(layout.REPO, n) for n in
              ('setup.cfg', 'setup.py', 'requirements.txt')]
    wanted = _fingerprint(files)
    if util.marker_done('repo', wanted, VENV_MARKERS):
        return False
    util.say('installing novalxcdriver from %s into the venv', layout.REPO)
    pip = layout.venv_bin('pip')
    # Dependencies first (all but the driver are already there), then the
    # driver itself, forced: pbr gives an unchanged version to a changed
    # working tree.
    util.run([pip, 'install', '-q', '-c', CONSTRAINTS, '-r',
              os.path.join(layout.REPO, 'requirements.txt')], log='pip')
    util.run([pip, 'install', '-q', '--no-deps', '--force-reinstall',
              '--no-build-isolation', layout.REPO], log='pip',
             cwd=layout.REPO)
    util.mark_done('repo', wanted, VENV_MARKERS)
    return True


def _fingerprint(paths, extra=''):
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        digest.update(path.encode())
        with open(path, 'rb') as f:
            digest.update(f.read())
    return digest.hexdigest()
