"""novalxc-aio unprivileged: the driver run by a user with no privilege.

Issue 14's production shape, for the driver alone: a system user of its
own (USER), a configuration of its own (CONFIG: its own lxc_path,
state_path and ids_path under ROOT, and ``helper_command = sudo
privsep-helper ...`` for each privsep context, with the sudoers rule
that allows exactly that), its directories given to it by
``novalxc-prepare-host --user``. Then unprivileged_child.py runs as that
user, with the aio's virtualenv (the driver as ``up`` installed it):
spawn from a tarball and from a qcow2 (neither cached), reboot, power,
pause, snapshot, rescue, rebuild, a cold migration refused with its
reason, destroy, prune, a restart. It checks, from /proc, that the
child's uids are the user's and its capability sets empty, and that the
privsep daemons it started are root's.

Needs the virtualenv (``up`` first; the cloud itself may be down; this
tree's driver is installed into it if it changed) and
sudo (installed here if missing). Its own state, not the cloud's: run it
while no server of the cloud exists, because it allocates container IDs
from an ids_path of its own.
"""

import os
import pwd
import shutil
import stat
import subprocess

from novalxc_aio import cloud
from novalxc_aio import install
from novalxc_aio import layout
from novalxc_aio import util

USER = 'novalxc-unpriv'
ROOT = os.path.join(layout.STATE, 'unprivileged')
LXC_PATH = os.path.join(ROOT, 'lxc')
CONFIG_DIR = os.path.join(layout.ETC, 'unprivileged')
CONFIG = os.path.join(CONFIG_DIR, 'nova.conf')
SUDOERS = '/etc/sudoers.d/novalxc-aio-unprivileged'
CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                     'unprivileged_child.py')
CONTEXTS = ('novalxc_lxc_admin', 'novalxc_net_admin',
            'novalxc_storage_admin', 'vif_plug_ovs_privileged',
            'vif_plug_linux_bridge_privileged')


def _helper():
    return os.path.join(layout.VENV, 'bin', 'privsep-helper')


def _config():
    helper = 'sudo %s --config-file %s' % (_helper(), CONFIG)
    lines = ['[DEFAULT]', 'host = novalxc-unpriv',
             'state_path = %s' % os.path.join(ROOT, 'nova'), '',
             '[lxc]', 'lxc_path = %s' % LXC_PATH,
             'state_path = %s' % os.path.join(ROOT, 'state'),
             'ids_path = %s' % os.path.join(ROOT, 'ids'),
             'state_poll_interval = 0', '']
    for section in CONTEXTS:
        lines += ['[%s]' % section, 'helper_command = %s' % helper, '']
    return '\n'.join(lines)


def _set_up():
    if shutil.which('sudo') is None:
        util.run(['apt-get', 'install', '-y', '-q',
                  '--no-install-recommends', 'sudo'], log='apt')
    try:
        pwd.getpwnam(USER)
    except KeyError:
        util.run(['useradd', '--system', '--no-create-home', '--shell',
                  '/usr/sbin/nologin', USER])
    util.makedirs(ROOT, 0o711)
    util.makedirs(CONFIG_DIR, 0o755)
    # No secret in it; the daemons read it as root, the user too.
    util.write_file(CONFIG, _config(), 0o644)
    # Exactly the daemons' commands with this config file, nothing else.
    util.write_file(SUDOERS, '%s ALL=(root) NOPASSWD: %s\n' % (
        USER, layout.privsep_sudoers_command(
            CONFIG, layout.COMPUTE_PRIVSEP_PYPATHS)), 0o440)
    util.run(['visudo', '-c', '-f', SUDOERS])
    util.run([os.path.join(layout.VENV, 'bin', 'novalxc-prepare-host'),
              '--user', USER, '--config-file', CONFIG], log='unprivileged')
    # Gone, as after a mishap: the driver's start makes it again through
    # its storage_admin daemon (hostdirs.make_lxc_path), the user's group's.
    # Empty: the last run ended with destroy and prune.
    try:
        os.rmdir(LXC_PATH)
    except OSError as e:
        util.warn('%s kept (%s): its remaking is not checked', LXC_PATH,
                  e.strerror)
    # The child's code, where the user can read it.
    child = os.path.join(ROOT, 'lifecycle.py')
    shutil.copyfile(CHILD, child)
    os.chmod(child, 0o644)
    return child


def _status(pid):
    """{field: value} of /proc/PID/status (proc(5))."""
    found = {}
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            key, _, value = line.partition(':')
            found[key] = value.split()
    return found


def _daemons():
    """(pid, uid) of each privsep daemon started with CONFIG."""
    found = []
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % name, 'rb') as f:
                argv = f.read().split(b'\0')
            uid = int(_status(int(name))['Uid'][1])
        except (OSError, KeyError, IndexError, ValueError):
            continue
        if any(a.endswith(b'privsep-helper') for a in argv) and \
                CONFIG.encode() in argv and b'sudo' not in argv[0]:
            found.append((int(name), uid))
    return found


def unprivileged():
    """Run the check; 0 if every step passed, else 1."""
    if not os.path.exists(os.path.join(layout.VENV, 'bin', 'python')):
        raise util.AioError('no virtualenv at %s: run "novalxc-aio up" '
                            'first' % layout.VENV)
    # This tree's driver, as up would install it (a no-op if unchanged).
    install.this_repo()
    child = _set_up()
    tarball = cloud.busybox_tarball()
    qcow2 = cloud.debian_cloud_qcow2()
    user = pwd.getpwnam(USER)
    util.say('The driver as %s (uid %d), its privsep daemons through '
             'sudo: %s', USER, user.pw_uid, CONFIG)
    proc = subprocess.Popen(
        ['runuser', '-u', USER, '--', os.path.join(layout.VENV, 'bin',
                                                   'python'),
         child, CONFIG, tarball, qcow2],
        cwd='/', stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=util.clean_env())
    lines = []
    daemons = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(('OK ', 'FAIL ', 'CRED ')) or \
                line.rstrip().endswith('steps failed'):
            print(line.rstrip(), flush=True)
        if line.startswith('OK spawn') and not daemons:
            # Running now: the child has started its daemons.
            daemons = _daemons()
    code = proc.wait()
    steps_failed = sum(1 for line in lines if line.startswith('FAIL '))
    failures = []
    creds = {line.split()[1].rstrip(':'): line.split()[2:]
             for line in lines if line.startswith('CRED ')}
    if set(creds.get('Uid', [])) != {str(user.pw_uid)} or \
            set(creds.get('Gid', [])) != {str(user.pw_gid)}:
        failures.append('the child\'s ids are not %s\'s: %s' % (USER, creds))
    for key in ('CapEff', 'CapPrm'):
        if creds.get(key) != ['0000000000000000']:
            failures.append('the child\'s %s is not empty: %s'
                            % (key, creds.get(key)))
    if not daemons:
        failures.append('no privsep daemon of %s was seen' % CONFIG)
    st = os.stat(LXC_PATH)
    made = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    print('lxc_path %s made again: uid %d, gid %d, mode %04o'
          % ((LXC_PATH,) + made))
    if made != (0, user.pw_gid, 0o2751):
        failures.append('lxc_path %s is not root:%d 2751 but %s'
                        % (LXC_PATH, user.pw_gid, made))
    for pid, uid in daemons:
        if uid != 0:
            failures.append('privsep daemon %d runs as uid %d' % (pid, uid))
    print('privsep daemons (pid, uid): %s' % daemons)
    with open(os.path.join(layout.LOGS, 'unprivileged.log'), 'w') as f:
        f.writelines(lines)
    for failure in failures:
        print('FAIL', failure)
    if code or steps_failed or failures:
        print('unprivileged: %d failures (the child\'s output: %s)'
              % (steps_failed + len(failures),
                 os.path.join(layout.LOGS, 'unprivileged.log')))
        return 1
    print('unprivileged: every step passed as %s' % USER)
    return 0
