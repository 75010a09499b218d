"""A private sshd on 127.0.0.1 for the migration transport over SSH.

Used by the functional migration tests and the migration benchmark: the
two drivers share one machine, and this sshd stands for the other one.
Its host key, the client key and known_hosts live in a directory of the
caller's, so the machine's own sshd and root's ~/.ssh are not touched.
"""

import contextlib
import os
import shutil
import socket
import subprocess
import time

SSHD = '/usr/sbin/sshd'


def available():
    """True when openssh-server is installed (tools/test-setup.sh)."""
    return os.path.exists(SSHD)


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _port_open(port):
    with socket.socket() as s:
        return s.connect_ex(('127.0.0.1', port)) == 0


@contextlib.contextmanager
def running(tmp, timeout=10, force_command=None):
    """Run an sshd that root logs in to with a key made here.

    :param tmp: a directory of its own (made, and removed after).
    :param timeout: seconds to wait for it to listen.
    :param force_command: what it runs whatever the client asks
        (sshd_config(5) ForceCommand): a hostile source host.
    :yields: (port, ssh options NAME=VALUE, as for [lxc]
        migration_ssh_options).
    :raises RuntimeError: it did not listen in time.
    """
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp, mode=0o700)
    sshd = None
    try:
        for key in ('host', 'client'):
            subprocess.run(['ssh-keygen', '-q', '-N', '', '-t', 'ed25519',
                            '-f', os.path.join(tmp, key)], check=True)
        shutil.copyfile(os.path.join(tmp, 'client.pub'),
                        os.path.join(tmp, 'authorized_keys'))
        with open(os.path.join(tmp, 'host.pub')) as f:
            host_key = ' '.join(f.read().split()[:2])
        port = _free_port()
        with open(os.path.join(tmp, 'known_hosts'), 'w') as f:
            f.write('[127.0.0.1]:%d %s\n' % (port, host_key))
        config = os.path.join(tmp, 'sshd_config')
        with open(config, 'w') as f:
            f.write('\n'.join([
                'Port %d' % port, 'ListenAddress 127.0.0.1',
                'HostKey %s' % os.path.join(tmp, 'host'),
                'AuthorizedKeysFile %s' % os.path.join(tmp,
                                                       'authorized_keys'),
                'PermitRootLogin prohibit-password',
                'PasswordAuthentication no', 'UsePAM no', 'StrictModes no',
                'PidFile %s' % os.path.join(tmp, 'sshd.pid')]
                + (['ForceCommand %s' % force_command] if force_command
                   else []) + ['']))
        # sshd's privilege separation directory.
        os.makedirs('/run/sshd', mode=0o755, exist_ok=True)
        sshd = subprocess.Popen([SSHD, '-D', '-e', '-f', config],
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not _port_open(port):
            if time.monotonic() > deadline or sshd.poll() is not None:
                raise RuntimeError('the private sshd did not listen on '
                                   '127.0.0.1:%d' % port)
            time.sleep(0.05)
        yield port, ['IdentityFile=%s' % os.path.join(tmp, 'client'),
                     'UserKnownHostsFile=%s' % os.path.join(tmp,
                                                            'known_hosts')]
    finally:
        if sshd is not None:
            sshd.terminate()
            try:
                sshd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sshd.kill()
                sshd.wait()
        shutil.rmtree(tmp, ignore_errors=True)
