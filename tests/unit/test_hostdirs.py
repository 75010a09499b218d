"""novalxcdriver.hostdirs: whose each directory is, and novalxc-prepare-host.

prepare runs on a real temporary tree; its lchown is a mock recording
what it would give (the tests need not run as root).
"""

import os
import stat
from unittest import mock

import fixtures

from novalxcdriver import hostdirs
from tests.unit import base

UID, GID = 64000, 64001


class LayoutTest(base.TestCase):

    def test_root_s_then_the_bookkeeping(self):
        found = hostdirs.layout('/var/lib/novalxc/containers',
                                '/var/lib/novalxc', '/var/lib/novalxc/ids')
        self.assertEqual([
            ('/var/lib/novalxc/containers', 0o2751, 'shared'),
            ('/var/lib/novalxc', 0o711, 'root'),
            ('/var/lib/novalxc/instances', 0o700, 'user'),
            ('/var/lib/novalxc/resize-sources', 0o700, 'user'),
            ('/var/lib/novalxc/locks', 0o700, 'user'),
            ('/var/lib/novalxc/spool', 0o700, 'user'),
            ('/var/lib/novalxc/ids', 0o755, 'user')], found)

    def test_ids_shared_elsewhere_bring_their_lock_directory(self):
        # ids.IdAllocator locks in <dirname(ids_path)>/locks.
        found = hostdirs.layout('/srv/lxc', '/srv/state/',
                                '/var/lib/novalxc-shared/ids/')
        self.assertEqual(
            [('/var/lib/novalxc-shared/ids', 0o755, 'user'),
             ('/var/lib/novalxc-shared/locks', 0o700, 'user')], found[-2:])
        self.assertEqual('/srv/state', found[1].path)

    def test_default_ids_path(self):
        self.assertEqual(('/s/ids', 0o755, 'user'),
                         hostdirs.layout('/l', '/s')[-1])

    def test_root_s_directories_are_never_the_user_s(self):
        # What the daemons act in: never given to nova-compute's user.
        found = hostdirs.layout('/l', '/s', '/s/ids')
        self.assertEqual({'/l', '/s'},
                         {d.path for d in found if d.owner != 'user'})


class _Tree(base.TestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.lxc = os.path.join(self.tmp, 'lxc')
        self.state = os.path.join(self.tmp, 'state')
        self.addCleanup(os.umask, os.umask(0o022))


class PrepareTest(_Tree):

    def setUp(self):
        super().setUp()
        self.lchown = self.patch('os.lchown')
        self.log = mock.Mock()

    def prepare(self):
        hostdirs.prepare(UID, GID, self.lxc, self.state, log=self.log)

    def given(self, owner=(UID, GID)):
        return sorted(os.path.relpath(c.args[0], self.tmp)
                      for c in self.lchown.call_args_list
                      if c.args[1:] == owner)

    def test_makes_every_directory_with_its_mode(self):
        self.prepare()
        for d in hostdirs.layout(self.lxc, self.state):
            self.assertEqual(d.mode,
                             stat.S_IMODE(os.lstat(d.path).st_mode), d.path)
        # The bookkeeping is given; lxc_path is root's, the group's.
        self.assertEqual(['state/ids', 'state/instances', 'state/locks',
                          'state/resize-sources', 'state/spool'],
                         self.given())
        self.assertEqual(['lxc'], self.given((0, GID)))
        self.assertEqual(len(self.lchown.call_args_list),
                         len(self.given()) + 1)

    def test_containers_made_earlier_become_the_group_s_to_read(self):
        # Root's 0700 container directories of an earlier version: root's
        # still, 2750 and the group's; nothing in them is touched, and
        # neither is a link, someone else's directory, nor a container
        # whose config is not the driver's (LXC's own, an operator's).
        record = ('lxc.uts.name = x\n# novalxc.instance_uuid = '
                  '6f3c1c9e-8b9b-4a4e-9d1e-1f2f3f4f5f6f\n# novalxc.id = 3\n')
        for name, text in (('instance-1', record), ('instance-2', record),
                           ('foreign', 'lxc.uts.name = foreign\n'),
                           ('no-config', None)):
            os.makedirs(os.path.join(self.lxc, name), mode=0o700)
            if text is not None:
                with open(os.path.join(self.lxc, name, 'config'), 'w') as f:
                    f.write(text)
        os.symlink('/etc/hostname', os.path.join(self.lxc, 'no-config',
                                                 'config'))
        os.symlink('/etc', os.path.join(self.lxc, 'link'))
        real_lstat = os.lstat

        def stat_of(path, *args, **kwargs):
            st = real_lstat(path, *args, **kwargs)
            if path.endswith('instance-2'):
                return mock.Mock(st_uid=1000, st_gid=1000,
                                 st_mode=st.st_mode, st_ino=st.st_ino,
                                 st_dev=st.st_dev)
            return st
        self.patch('os.lstat', side_effect=stat_of)
        self.prepare()
        self.assertEqual(['lxc', 'lxc/instance-1'], self.given((0, GID)))
        self.assertEqual(0o2750, stat.S_IMODE(
            os.stat(os.path.join(self.lxc, 'instance-1')).st_mode))
        for name in ('instance-2', 'foreign', 'no-config'):
            self.assertEqual(0o700, stat.S_IMODE(
                os.stat(os.path.join(self.lxc, name)).st_mode))
        self.assertEqual(0o644, stat.S_IMODE(os.stat(
            os.path.join(self.lxc, 'instance-1', 'config')).st_mode))

    def test_what_the_bookkeeping_holds_is_given_links_not_followed(self):
        # A host where nova-compute ran as root: records, reservations,
        # lock files, and a link, which lchown gives without following.
        os.makedirs(os.path.join(self.state, 'instances'))
        os.makedirs(os.path.join(self.state, 'ids', '3'))
        with open(os.path.join(self.state, 'instances', 'u.json'), 'w'):
            pass
        os.symlink('/etc/shadow', os.path.join(self.state, 'locks-link'))
        os.makedirs(os.path.join(self.state, 'locks'))
        os.symlink('/etc/shadow', os.path.join(self.state, 'locks', 'x'))
        self.prepare()
        self.assertEqual(
            ['state/ids', 'state/ids/3', 'state/instances',
             'state/instances/u.json', 'state/locks', 'state/locks/x',
             'state/resize-sources', 'state/spool'], self.given())

    def test_what_root_owns_is_left_as_it_is(self):
        # An existing state_path, its image cache and roots: not given,
        # modes kept.
        for sub in ('images/x', 'rootfs/3'):
            os.makedirs(os.path.join(self.state, sub))
        os.chmod(self.state, 0o755)
        self.prepare()
        self.assertEqual(0o755, stat.S_IMODE(os.stat(self.state).st_mode))
        self.assertFalse([p for p in self.given()
                          if p.startswith(('state/images', 'state/rootfs'))])
        self.assertNotIn('state', self.given())
        self.assertNotIn('lxc', self.given())

    def test_rebuild_records_of_earlier_versions_become_readable(self):
        # They were 0600; nova-compute reads them now. Root's only.
        if os.geteuid() != 0:
            self.skipTest('the records are root\'s')
        for cid in ('3', '4'):
            os.makedirs(os.path.join(self.state, 'rootfs', cid, 'root'))
        record = os.path.join(self.state, 'rootfs', '3', 'replacing.json')
        with open(record, 'w') as f:
            f.write('{}')
        os.chmod(record, 0o600)
        other = os.path.join(self.state, 'rootfs', '4', 'root', 'x.json')
        with open(other, 'w') as f:
            f.write('{}')
        os.chmod(other, 0o600)
        self.prepare()
        self.assertEqual(0o644, stat.S_IMODE(os.stat(record).st_mode))
        self.assertEqual(0o600, stat.S_IMODE(os.stat(other).st_mode))
        self.assertNotIn('state/rootfs/3/replacing.json', self.given())

    def test_owned_already_is_not_given_again(self):
        real_lstat = os.lstat

        def lstat(path):
            st = real_lstat(path)
            if path.startswith(os.path.join(self.state, 'instances')):
                return mock.Mock(st_uid=UID, st_gid=GID, st_mode=st.st_mode)
            return st
        self.patch('os.lstat', side_effect=lstat)
        self.prepare()
        self.assertNotIn('state/instances', self.given())
        self.assertIn('state/locks', self.given())
        logged = ' '.join(c.args[0] for c in self.log.call_args_list)
        self.assertIn('gave %s/locks (1 entries) to %d:%d'
                      % (self.state, UID, GID), logged)


class ProblemsTest(_Tree):

    def test_root_makes_what_it_needs(self):
        self.patch('os.geteuid', return_value=0)
        self.assertEqual([], hostdirs.problems(self.lxc, self.state))

    def test_another_user_needs_the_bookkeeping_writable(self):
        os.mkdir(self.lxc)
        self.patch('os.geteuid', return_value=UID)
        self.patch('pwd.getpwuid', return_value=mock.Mock(pw_name='nova'))
        writable = {os.path.join(self.state, n)
                    for n in ('instances', 'resize-sources', 'spool')}
        access = self.patch('os.access',
                            side_effect=lambda path, mode: path in writable)
        problem, = hostdirs.problems(self.lxc, self.state)
        self.assertIn('nova cannot use %s, %s/locks, %s/ids: run '
                      'novalxc-prepare-host --user nova'
                      % (self.lxc, self.state, self.state), problem)
        # The bookkeeping for writing and searching, lxc_path for reading
        # and searching, state_path not at all.
        asked = {c.args[0]: c.args[1] for c in access.call_args_list}
        self.assertEqual(os.R_OK | os.X_OK, asked.pop(self.lxc))
        self.assertEqual({os.W_OK | os.X_OK}, set(asked.values()))
        self.assertNotIn(self.state, asked)

    def test_a_missing_lxc_path_is_make_lxc_path_s(self):
        # Moved away, or new: init_host makes it through the daemon.
        self.patch('os.geteuid', return_value=UID)
        self.patch('pwd.getpwuid', return_value=mock.Mock(pw_name='nova'))
        self.patch('os.access', side_effect=lambda path, mode:
                   path != self.lxc)
        self.assertEqual([], hostdirs.problems(self.lxc, self.state))
        # A link where it should be is not missing: reported.
        os.symlink('/nowhere', self.lxc)
        problem, = hostdirs.problems(self.lxc, self.state)
        self.assertIn('nova cannot use %s: run' % self.lxc, problem)

    def test_another_user_with_all_of_it(self):
        self.patch('os.geteuid', return_value=UID)
        self.patch('pwd.getpwuid', return_value=mock.Mock(pw_name='nova'))
        self.patch('os.access', return_value=True)
        self.assertEqual([], hostdirs.problems(self.lxc, self.state))


class MakeLxcPathTest(_Tree):

    def setUp(self):
        super().setUp()
        self.daemon = self.patch(
            'novalxcdriver.privsep.rootdirs.make_lxc_path')

    def test_root_makes_it_0711(self):
        self.patch('os.geteuid', return_value=0)
        deeper = os.path.join(self.lxc, 'deeper')
        hostdirs.make_lxc_path(deeper)
        self.assertEqual(0o711, stat.S_IMODE(os.stat(deeper).st_mode))
        self.daemon.assert_not_called()

    def test_another_user_asks_the_daemon_for_its_group_s(self):
        self.patch('os.geteuid', return_value=UID)
        self.patch('os.getegid', return_value=GID)
        hostdirs.make_lxc_path(self.lxc + '/')
        self.daemon.assert_called_once_with(self.lxc, GID)
        self.assertFalse(os.path.exists(self.lxc))

    def test_made_meanwhile_is_no_error(self):
        self.patch('os.geteuid', return_value=UID)
        self.daemon.side_effect = FileExistsError(17, 'File exists')
        hostdirs.make_lxc_path(self.lxc)
        self.daemon.side_effect = FileNotFoundError(2, 'No such file')
        self.assertRaises(FileNotFoundError, hostdirs.make_lxc_path,
                          self.lxc)

    def test_there_already_is_left_alone(self):
        os.mkdir(self.lxc, 0o700)
        for euid in (0, UID):
            self.patch('os.geteuid', return_value=euid)
            hostdirs.make_lxc_path(self.lxc)
        self.daemon.assert_not_called()
        self.assertEqual(0o700, stat.S_IMODE(os.stat(self.lxc).st_mode))


class MainTest(_Tree):

    def setUp(self):
        super().setUp()
        self.prepare = self.patch('novalxcdriver.hostdirs.prepare')
        self.conf = os.path.join(self.tmp, 'nova.conf')
        with open(self.conf, 'w') as f:
            f.write('[lxc]\nlxc_path = %s\nstate_path = %s\nids_path = '
                    '%s/ids\n' % (self.lxc, self.state, self.state))
        self.addCleanup(hostdirs.CONF.reset)
        self.addCleanup(hostdirs.CONF.clear)

    def test_paths_from_nova_s_config_files(self):
        self.patch('os.geteuid', return_value=0)
        self.patch('pwd.getpwnam',
                   return_value=mock.Mock(pw_uid=UID, pw_gid=GID))
        self.assertEqual(0, hostdirs.main(['--user', 'nova',
                                           '--config-file', self.conf]))
        self.prepare.assert_called_once_with(
            UID, GID, self.lxc, self.state, self.state + '/ids')

    def test_refused_unless_root(self):
        self.patch('os.geteuid', return_value=UID)
        self.assertEqual(1, hostdirs.main(['--user', 'nova',
                                           '--config-file', self.conf]))
        self.prepare.assert_not_called()

    def test_unknown_user(self):
        self.patch('os.geteuid', return_value=0)
        self.assertEqual(1, hostdirs.main(['--user', 'no-such-user-x',
                                           '--config-file', self.conf]))
        self.prepare.assert_not_called()
