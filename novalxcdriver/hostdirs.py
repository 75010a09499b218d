"""The driver's directories on a compute host: whose each is, and making them.

Two kinds (docs/design/issue-14-privsep-inventory.md, 2.1):

- root's: ``[lxc] lxc_path`` and ``state_path`` (0711: containers'
  uids traverse them) and what the privsep daemons make below them
  (containers' directories, roots, the image cache);
- nova-compute's bookkeeping (BOOKKEEPING): instance records and the
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
import os
import pwd
import sys

from novalxcdriver import conf as conf_mod

CONF = conf_mod.CONF

Directory = collections.namedtuple('Directory', 'path mode bookkeeping')
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
        permission bits it is made with), bookkeeping (True for
        nova-compute's own, False for root's).
    """
    state = os.path.normpath(os.path.abspath(state_path))
    found = [Directory(os.path.normpath(os.path.abspath(lxc_path)), 0o711,
                       False),
             Directory(state, 0o711, False)]
    found += [Directory(os.path.join(state, name), mode, True)
              for name, mode in STATE_BOOKKEEPING]
    # ids.IdAllocator: the reservations, and their lock beside them.
    ids_path = os.path.normpath(os.path.abspath(
        ids_path or os.path.join(state, 'ids')))
    found.append(Directory(ids_path, 0o755, True))
    ids_locks = os.path.join(os.path.dirname(ids_path), 'locks')
    if ids_locks not in {d.path for d in found}:
        found.append(Directory(ids_locks, 0o700, True))
    return found


def problems(lxc_path, state_path, ids_path=None):
    """What nova-compute, running as this process's user, cannot use.

    Root makes its directories as it needs them: nothing to report.
    Another user needs each bookkeeping directory to exist and be
    writable and searchable by it (access(2)).

    :param lxc_path, state_path, ids_path: as layout's.
    :returns: list of str, one naming the directories and the fix.
    """
    if os.geteuid() == 0:
        return []
    user = pwd.getpwuid(os.geteuid()).pw_name
    missing = [d.path for d in layout(lxc_path, state_path, ids_path)
               if d.bookkeeping and
               not os.access(d.path, os.W_OK | os.X_OK)]
    if not missing:
        return []
    return ['%s cannot write %s: run novalxc-prepare-host --user %s with '
            'nova-compute\'s --config-file options, as root'
            % (user, ', '.join(missing), user)]


def prepare(uid, gid, lxc_path, state_path, ids_path=None, log=print):
    """Make every directory of layout; give the bookkeeping to uid:gid.

    Root's directories are made (0711) if missing and otherwise left as
    they are. Each bookkeeping directory is made if missing, and it and
    everything it holds is given to uid:gid (links themselves, never
    followed: lchown).

    :param lxc_path, state_path, ids_path: as layout's.
    :param log: callable(str) told each change.
    :raises OSError: a directory could not be made or given.
    """
    for d in layout(lxc_path, state_path, ids_path):
        if not os.path.isdir(d.path):
            os.makedirs(d.path, mode=d.mode)
            os.chmod(d.path, d.mode)
            log('made %s (%04o)' % (d.path, d.mode))
        if not d.bookkeeping:
            continue
        given = 0
        # Each entry once: the top, then what each directory lists.
        paths = [d.path]
        for top, dirs, files in os.walk(d.path):
            paths += [os.path.join(top, n) for n in dirs + files]
        for path in paths:
            st = os.lstat(path)
            if (st.st_uid, st.st_gid) != (uid, gid):
                os.lchown(path, uid, gid)
                given += 1
        if given:
            log('gave %s (%d entries) to %d:%d' % (d.path, given, uid, gid))


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
