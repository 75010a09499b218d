"""Small helpers: messages, commands, files, generated secrets."""

import json
import os
import secrets
import subprocess
import sys
import time

from novalxc_aio import layout

_T0 = time.monotonic()


class AioError(Exception):
    """A step of the aio failed; the message says what to look at."""


def say(msg, *args):
    """Print a progress line with the seconds since the command started."""
    text = msg % args if args else msg
    print('[%6.1fs] %s' % (time.monotonic() - _T0, text), flush=True)


def warn(msg, *args):
    text = msg % args if args else msg
    print('WARNING: %s' % text, file=sys.stderr, flush=True)


def clean_env(extra=None):
    """A minimal environment for the services and tools we run.

    The caller's environment (OS_* variables, PYTHONPATH, a pyenv) must not
    leak into the cloud's processes.
    """
    env = {
        'PATH': ':'.join([layout.VENV_BIN, '/usr/local/sbin',
                          '/usr/local/bin', '/usr/sbin', '/usr/bin',
                          '/sbin', '/bin']),
        'LANG': 'C.UTF-8',
        'LC_ALL': 'C.UTF-8',
        'HOME': '/root',
        'PYTHONUNBUFFERED': '1',
        'DEBIAN_FRONTEND': 'noninteractive',
    }
    env.update(extra or {})
    return env


def run(argv, check=True, capture=False, env=None, input=None,
        timeout=1800, user=None, cwd=None, log=None):
    """Run argv (a list, never a shell) and return CompletedProcess.

    :param capture: return stdout/stderr as text instead of showing them.
    :param log: name of a log file under the aio log dir that receives the
        command's output (for noisy commands such as db syncs).
    :raises AioError: the command failed and check is True; its message
        carries the command, exit code and the tail of its output.
    """
    argv = [str(a) for a in argv]
    stdout = stderr = None
    log_fh = None
    if log:
        os.makedirs(layout.LOGS, exist_ok=True)
        log_fh = open(layout.log_file(log), 'a')
        log_fh.write('\n$ %s\n' % ' '.join(argv))
        log_fh.flush()
        stdout, stderr = log_fh, subprocess.STDOUT
    elif capture:
        stdout = stderr = subprocess.PIPE
    try:
        proc = subprocess.run(
            argv, stdout=stdout, stderr=stderr, text=True, timeout=timeout,
            env=env if env is not None else clean_env(), input=input,
            user=user, cwd=cwd,
            stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AioError('%s: no result after %ss' % (argv[0], timeout))
    finally:
        if log_fh:
            log_fh.close()
    if check and proc.returncode != 0:
        detail = ''
        if capture:
            detail = (proc.stderr or proc.stdout or '').strip()[-2000:]
        elif log:
            detail = 'see %s' % layout.log_file(log)
        raise AioError('command failed (exit %d): %s\n%s' % (
            proc.returncode, ' '.join(argv), detail))
    return proc


def write_file(path, text, mode=0o644, owner=None):
    """Write text to path atomically with mode; True if it changed.

    :param owner: (uid, gid), or None for root's.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    want = tuple(owner) if owner else (0, 0)
    try:
        with open(path) as f:
            st = os.stat(path)
            if f.read() == text and (st.st_mode & 0o7777) == mode and \
                    (st.st_uid, st.st_gid) == want:
                return False
    except FileNotFoundError:
        pass
    tmp = path + '.tmp'
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, 'w') as f:
        f.write(text)
    os.chmod(tmp, mode)
    if owner:
        os.chown(tmp, owner[0], owner[1])
    os.rename(tmp, path)
    return True


def makedirs(path, mode=0o755, owner=None):
    os.makedirs(path, mode=mode, exist_ok=True)
    os.chmod(path, mode)
    if owner:
        os.chown(path, owner[0], owner[1])


def chown_tree(path, owner):
    """Give path and everything below it (no symlink followed) to owner.

    For a service's own state made by an older "up" that ran it as root.
    """
    uid, gid = owner
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [dirpath] + [os.path.join(dirpath, n)
                                 for n in dirnames + filenames]:
            st = os.lstat(name)
            if (st.st_uid, st.st_gid) != (uid, gid):
                os.lchown(name, uid, gid)


def load_secrets():
    """Generated passwords, created once and kept in a 0600 file.

    Every password of the cloud (database users, RabbitMQ, Keystone users)
    is random; nothing is hard-coded.
    """
    names = (['db_' + u for u in sorted(set(layout.DATABASES.values()))] +
             ['rabbit', 'admin', 'demo', 'metadata'] +
             ['svc_' + u for u in layout.SERVICE_USERS])
    try:
        with open(layout.SECRETS) as f:
            values = json.load(f)
    except FileNotFoundError:
        values = {}
    missing = [n for n in names if n not in values]
    if missing:
        for name in missing:
            # URL-safe: these land in URLs, INI files and SQL literals.
            values[name] = secrets.token_urlsafe(18)
        makedirs(layout.STATE, 0o711)
        write_file(layout.SECRETS, json.dumps(values, indent=1) + '\n',
                   mode=0o600)
    return values


def marker_done(name, value='done', where=layout.MARKERS):
    """True if step name already ran with this value (e.g. a version).

    Markers of the aio's state live under its state dir (``clean`` removes
    them with the state); those of the virtualenv live beside it.
    """
    try:
        with open(os.path.join(where, name)) as f:
            return f.read() == value
    except FileNotFoundError:
        return False


def mark_done(name, value='done', where=layout.MARKERS):
    makedirs(where, 0o700)
    write_file(os.path.join(where, name), value, mode=0o600)


def wait_for(what, predicate, timeout, interval=0.5):
    """Poll predicate() until it returns a true value; return that value.

    :raises AioError: still false after timeout seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = predicate()
        except Exception as e:  # a probe may fail while a service starts
            result = None
            last = e
        else:
            last = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AioError('timed out after %ds waiting for %s%s' % (
                timeout, what, (': %s' % last) if last else ''))
        time.sleep(interval)
