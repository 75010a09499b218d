"""The driver's directories on a compute host: whose each is, and making them.

Three kinds (docs/design/issue-14-privsep-inventory.md, 2.1):

- root's (ROOT): ``[lxc] state_path`` (0711: containers' uids traverse
  it) and what the privsep daemons make below it (roots, the image
  cache);
- root's, read by nova-compute's group (SHARED): ``[lxc] lxc_path``,
  setgid (2751), so that the containers' directories the lxc_admin
  daemon makes in it (0750) are that group's: nova-compute reads their
  configs without a privileged call; only root writes them;
- nova-compute's bookkeeping (USER): instance records and the
  records of resize sources, lock files, the snapshot spool, ID
  reservations and their lock directory. Only nova-compute reads and
  writes them; the daemons never trust them (they take names and IDs,
  and derive and check every path themselves), so they are the user's
  that nova-compute runs as.

nova-compute running as root makes each as it needs it. Running as
another user it cannot make directories in root's ``state_path``:
``novalxc-prepare-host --user nova --config-file /etc/nova/nova.conf``,
run as root when the driver is installed (as Nova's packages make
/var/lib/nova nova's), makes all of them and gives the bookkeeping to
that user, what they already hold included (a host where nova-compute
ran as root). init_host reports what nova-compute cannot write
(problems).
"""

import argparse
import collections
import glob
import os
import pwd
import stat
import sys

from novalxcdriver import conf as conf_mod
from novalxcdriver.privsep import lxcconf
from novalxcdriver.privsep import lxctools
from novalxcdriver.privsep import replacement
from novalxcdriver.privsep import rootdirs

CONF = conf_mod.CONF

Directory = collections.namedtuple('Directory', 'path mode owner')
ROOT, SHARED, USER = 'root', 'shared', 'user'
# Below state_path: records (record.py: instances, resize-sources),
# lockutils' lock files (container.py, images.py), the snapshot spool
# (snapshot.py).
STATE_BOOKKEEPING = (('instances', 0o700), ('resize-sources', 0o700),
                     ('locks', 0o700), ('spool', 0o700))


def layout(lxc_path, state_path, ids_path=None):
    """The driver's directories, parents first (list of Directory).

    :param lxc_path, state_path, ids_path: a driver's ``[lxc]`` paths;
        ids_path None is ``<state_path>/ids``.
    :returns: Directory tuples: path (absolute, normalized), mode (the
        permission bits prepare gives it), owner (ROOT, SHARED or USER:
        module docstring).
    """
    state = os.path.normpath(os.path.abspath(state_path))
    found = [Directory(os.path.normpath(os.path.abspath(lxc_path)),
                       lxctools.SHARED_MODE, SHARED),
             Directory(state, 0o711, ROOT)]
    found += [Directory(os.path.join(state, name), mode, USER)
              for name, mode in STATE_BOOKKEEPING]
    # ids.IdAllocator: the reservations, and their lock beside them.
    ids_path = os.path.normpath(os.path.abspath(
        ids_path or os.path.join(state, 'ids')))
    found.append(Directory(ids_path, 0o755, USER))
    ids_locks = os.path.join(os.path.dirname(ids_path), 'locks')
    if ids_locks not in {d.path for d in found}:
        found.append(Directory(ids_locks, 0o700, USER))
    return found


def problems(lxc_path, state_path, ids_path=None):
    """What nova-compute, running as this process's user, cannot use.

    Root makes its directories as it needs them: nothing to report.
    Another user needs each bookkeeping directory to exist and be
    writable and searchable by it, and lxc_path, if it exists, to be
    readable and searchable (access(2)); a missing one is
    make_lxc_path's.

    :param lxc_path, state_path, ids_path: as layout's.
    :returns: list of str, one naming the directories and the fix.
    """
    if os.geteuid() == 0:
        return []
    user = pwd.getpwuid(os.geteuid()).pw_name
    need = {USER: os.W_OK | os.X_OK, SHARED: os.R_OK | os.X_OK}
    missing = [d.path for d in layout(lxc_path, state_path, ids_path)
               if d.owner in need and not os.access(d.path, need[d.owner])
               and (d.owner != SHARED or os.path.lexists(d.path))]
    if not missing:
        return []
    return ['%s cannot use %s: run novalxc-prepare-host --user %s with '
            'nova-compute\'s --config-file options, as root'
            % (user, ', '.join(missing), user)]


def make_lxc_path(lxc_path):
    """Make a missing lxc_path for this process's nova-compute.

    Root: 0711, as before prepare existed. Another user: through the
    storage_admin daemon, root's and this process's group's, as prepare
    makes it (rootdirs.make_lxc_path).

    :raises OSError: it could not be made (e.g. its parent is missing).
    :raises PrivilegedCallRefused: lxc_path is not a driver root.
    """
    if os.path.isdir(lxc_path):
        return
    if os.geteuid() == 0:
        os.makedirs(lxc_path, mode=0o711, exist_ok=True)
        return
    try:
        rootdirs.make_lxc_path(os.path.normpath(os.path.abspath(lxc_path)),
                               os.getegid())
    except FileExistsError:
        pass


def prepare(uid, gid, lxc_path, state_path, ids_path=None, log=print):
    """Make every directory of layout, each with its owner and mode.

    ROOT: made (0711) if missing, otherwise left as it is (but for the
    rebuild records of earlier versions in its roots, made readable,
    0644). SHARED:
    root:gid with its mode, and each container directory already in it
    whose config carries the driver's record root:gid 2750 (an earlier
    version made them root's 0700); nothing in them changes, and
    another container there is left alone. USER: made if missing, and
    it and everything it holds given to uid:gid (links themselves,
    never followed: lchown).

    :param lxc_path, state_path, ids_path: as layout's.
    :param log: callable(str) told each change.
    :raises OSError: a directory could not be made or given.
    """
    state = os.path.normpath(os.path.abspath(state_path))
    for d in layout(lxc_path, state_path, ids_path):
        if not os.path.isdir(d.path):
            os.makedirs(d.path, mode=d.mode & 0o777)
            os.chmod(d.path, d.mode)
            log('made %s (%04o)' % (d.path, d.mode))
        if d.owner == SHARED:
            _give(d.path, 0, gid, d.mode, log)
            for name in os.listdir(d.path):
                path = os.path.join(d.path, name)
                st = os.lstat(path)
                if stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and \
                        _driver_s(path):
                    _give(path, 0, gid, 0o2750, log)
        elif d.owner == ROOT and d.path == state:
            # Rebuild records of earlier versions were 0600; nova-compute
            # reads them (privsep.replacement.write_record makes 0644).
            for path in glob.glob(os.path.join(state, 'rootfs', '*',
                                               replacement.RECORD)):
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and st.st_uid == 0:
                    _give(path, 0, 0, 0o644, log)
        elif d.owner == USER:
            # Each entry once: the top, then what each directory lists.
            paths = [d.path]
            for top, dirs, files in os.walk(d.path):
                paths += [os.path.join(top, n) for n in dirs + files]
            given = sum(_give(path, uid, gid, None, None) for path in paths)
            if given:
                log('gave %s (%d entries) to %d:%d'
                    % (d.path, given, uid, gid))


def _driver_s(container_dir):
    """Whether container_dir's config carries this driver's record.

    Another container in lxc_path (LXC's own, an operator's) is left as
    it is: its config is not nova-compute's to read.
    """
    try:
        fd = os.open(os.path.join(container_dir, 'config'),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    with os.fdopen(fd) as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        record = lxcconf.parse_record(f.read(1 << 20))
    return 'instance_uuid' in record


def _give(path, uid, gid, mode, log):
    """lchown path to uid:gid and chmod it to mode (None: kept), if not so.

    :returns: whether anything changed.
    """
    st = os.lstat(path)
    changed = False
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.lchown(path, uid, gid)
        changed = True
    # chown(2) clears the setgid bit: the mode after it.
    if mode is not None and (changed or stat.S_IMODE(st.st_mode) != mode):
        os.chmod(path, mode)
        changed = True
    if changed and log:
        log('gave %s to %d:%d%s' % (path, uid, gid,
                                    ' (%04o)' % mode if mode else ''))
    return changed


def main(argv=None):
    """novalxc-prepare-host: the driver's directories for a compute user.

    Run as root with nova-compute's config files, e.g.
    ``novalxc-prepare-host --user nova --config-file /etc/nova/nova.conf``.

    :returns: the exit status.
    """
    parser = argparse.ArgumentParser(
        prog='novalxc-prepare-host',
        description='Make the driver\'s directories and give its '
                    'bookkeeping to the user nova-compute runs as.')
    parser.add_argument('--user', required=True,
                        help='the user nova-compute runs as')
    args, conf_args = parser.parse_known_args(argv)
    CONF(conf_args, project='nova')
    if os.geteuid() != 0:
        print('novalxc-prepare-host must run as root', file=sys.stderr)
        return 1
    try:
        entry = pwd.getpwnam(args.user)
    except KeyError:
        print('no such user: %s' % args.user, file=sys.stderr)
        return 1
    prepare(entry.pw_uid, entry.pw_gid, CONF.lxc.lxc_path,
            CONF.lxc.state_path, CONF.lxc.ids_path)
    return 0
