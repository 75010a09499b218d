"""privsep.lxctools' checks and the driver roots the daemons accept.

Entry points run here in-process (client mode off) with the command
runner mocked: what is asserted is what each refuses before running
anything, and the file a root-started daemon is given. Through a real
daemon: tests/functional/test_privsep.py.
"""

import os
import shutil
import stat
import subprocess
import sys
from unittest import mock

import fixtures
from oslo_config import fixture as config_fixture
from oslo_privsep import priv_context

from novalxcdriver import conf
from novalxcdriver import container as container_mod
from novalxcdriver import exception
from novalxcdriver import privsep
from novalxcdriver.privsep import lxctools
from novalxcdriver.privsep import rootdirs
from novalxcdriver import serialconsole
from novalxcdriver import snapshot
from tests.unit import base as unit_base
from tests.unit import test_privsep_lxcconf

CONF = conf.CONF


class _Roots(unit_base.TestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.lxc_path = os.path.join(self.tmp, 'lxc')
        os.mkdir(self.lxc_path, 0o711)
        self.cfg = self.useFixture(config_fixture.Config(CONF))
        self.cfg.config(group='lxc', lxc_path=self.lxc_path,
                        state_path=os.path.join(self.tmp, 'state'))
        self.added = self.patch('novalxcdriver.privsep._added_roots',
                                new=set())


class _EntryPoints(_Roots):
    """Entry points run in this process, lxc-* tools mocked."""

    def setUp(self):
        super().setUp()
        privsep.lxc_admin.set_client_mode(False)
        self.addCleanup(privsep.lxc_admin.set_client_mode, True)
        self.execute = self.patch('novalxcdriver.command.execute',
                                  return_value=('', ''))

    def in_process(self, context):
        context.set_client_mode(False)
        self.addCleanup(context.set_client_mode, True)

    def container(self, name='instance-00000001', mode=0o700, uid=0):
        if os.geteuid() != 0:
            self.skipTest('the daemon trusts root\'s containers only')
        path = os.path.join(self.lxc_path, name)
        os.mkdir(path, mode)
        with open(os.path.join(path, 'config'), 'w') as f:
            f.write('lxc.uts.name = x\n')
        os.chmod(os.path.join(path, 'config'), 0o600)
        os.chown(path, uid, 0)
        return path

    def refused(self, fn, *args, match):
        e = self.assertRaises(exception.PrivilegedCallRefused, fn, *args)
        self.assertIn(match, str(e))
        self.execute.assert_not_called()


class EntryPointChecksTest(_EntryPoints):

    def test_every_entry_point_refuses_a_path_outside_the_roots(self):
        for fn, args in ((lxctools.start, ()), (lxctools.kill, ()),
                         (lxctools.freeze, ()), (lxctools.unfreeze, ()),
                         (lxctools.info, ()), (lxctools.stop, (5,)),
                         (lxctools.request_halt, (5,)),
                         (lxctools.reboot, (5,))):
            for path in ('/', '/etc', self.tmp, self.lxc_path + '/x'):
                self.refused(fn, 'etc', path, *args,
                             match='not a driver root')
        self.refused(lxctools.states, '/etc', match='not a driver root')

    def test_relative_or_unnormalized_paths_refused(self):
        for path in ('lxc', self.lxc_path + '/', self.lxc_path + '/../lxc',
                     self.lxc_path + '/.', b'/x', None):
            self.refused(lxctools.start, 'c1', path,
                         match='not an absolute normalized path')

    def test_names_that_leave_the_root_refused(self):
        for name in ('..', '.', '../etc', 'a/b', 'a b', 'x;reboot',
                     'x\n', '-n', '', 'a' * 129, 7, None):
            self.refused(lxctools.start, name, self.lxc_path,
                         match='not a container name')

    def test_a_symlinked_container_refused(self):
        os.symlink('/etc', os.path.join(self.lxc_path, 'c1'))
        self.refused(lxctools.start, 'c1', self.lxc_path,
                     match='symlink or of an unexpected type')

    def test_a_container_dir_another_user_owns_refused(self):
        if os.geteuid() != 0:
            self.skipTest('chown needs root')
        self.container('c1', uid=65534)
        self.refused(lxctools.start, 'c1', self.lxc_path,
                     match='not root\'s alone (uid 65534')

    def test_a_config_others_may_write_refused(self):
        path = self.container('c1')
        os.chmod(os.path.join(path, 'config'), 0o620)
        self.refused(lxctools.info, 'c1', self.lxc_path,
                     match='not root\'s alone')
        os.chmod(os.path.join(path, 'config'), 0o600)
        os.chmod(path, 0o777)
        self.refused(lxctools.info, 'c1', self.lxc_path,
                     match='not root\'s alone')

    def test_a_config_that_is_a_symlink_refused(self):
        path = self.container('c1')
        os.unlink(os.path.join(path, 'config'))
        os.symlink('/tmp/evil', os.path.join(path, 'config'))
        self.refused(lxctools.start, 'c1', self.lxc_path,
                     match='symlink')

    def test_timeouts_must_be_whole_seconds_in_range(self):
        self.container('c1')
        for timeout in (-1, 86401, 1.5, '5', True, None):
            self.refused(lxctools.stop, 'c1', self.lxc_path, timeout,
                         match='timeout')

    def test_root_owned_container_runs_with_umask_022(self):
        path = self.container('c1')
        umask = self.patch('os.umask')
        lxctools.start('c1', self.lxc_path)
        umask.assert_called_with(0o022)
        self.execute.assert_called_once_with(
            'lxc-start', '-n', 'c1', '-P', self.lxc_path, '-d', '-o',
            os.path.join(path, 'lxc.log'), '-l', 'WARN')

    def test_a_missing_container_is_left_to_lxc(self):
        # Nothing on disk to trust or distrust: lxc-info says it is not
        # there, as before.
        self.execute.side_effect = exception.CommandFailed(
            cmd='lxc-info', exit_code=1,
            stderr='c9 doesn\'t exist')
        self.assertRaises(exception.ContainerNotFound, lxctools.info, 'c9',
                          self.lxc_path)

    def write_config(self, text):
        self.patch('novalxcdriver.ids.read_subordinate_ranges',
                   return_value=((100000, 10 ** 9), (100000, 10 ** 9)))
        lxctools.write_config('instance-0000001a', self.lxc_path, text)

    def config_text(self):
        return test_privsep_lxcconf.full_config().replace(
            test_privsep_lxcconf.CONTAINER_DIR,
            os.path.join(self.lxc_path, 'instance-0000001a')).replace(
            '/var/lib/novalxc/', os.path.join(self.tmp, 'state') + '/')

    def test_a_config_the_policy_passes_is_written(self):
        path = self.container('instance-0000001a')
        text = self.config_text()
        self.write_config(text)
        with open(os.path.join(path, 'config')) as f:
            self.assertEqual(text, f.read())
        self.assertEqual(0o644, stat.S_IMODE(
            os.stat(os.path.join(path, 'config')).st_mode))

    def test_a_config_the_policy_refuses_is_not_written(self):
        path = self.container('instance-0000001a')
        e = self.assertRaises(
            exception.PrivilegedCallRefused, self.write_config,
            self.config_text() + 'lxc.hook.pre-start = /bin/sh\n')
        self.assertIn('a hook command', str(e))
        with open(os.path.join(path, 'config')) as f:
            self.assertEqual('lxc.uts.name = x\n', f.read())

    def test_no_container_dir_or_too_big_refused(self):
        e = self.assertRaises(exception.PrivilegedCallRefused,
                              self.write_config, self.config_text())
        self.assertIn('no container directory', str(e))
        self.container('instance-0000001a')
        e = self.assertRaises(exception.PrivilegedCallRefused,
                              self.write_config, '#' * (1 << 20) + '\n')
        self.assertIn('at most', str(e))

    def test_extra_roots_of_the_config_accepted(self):
        other = os.path.join(self.tmp, 'lxc-b')
        os.mkdir(other)
        self.cfg.config(group='lxc', extra_driver_roots=[other])
        lxctools.kill('c1', other)
        self.execute.assert_called_once_with('lxc-stop', '-n', 'c1', '-P',
                                             other, '-k')

    def test_markers_are_written_and_cleared_in_the_containers_dir(self):
        path = self.container()
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        for marker in ('suspended', 'snapshot-frozen'):
            lxctools.set_marker('instance-00000001', self.lxc_path, marker,
                                'image-1')
            with open(os.path.join(path, marker)) as f:
                self.assertEqual('image-1', f.read())
            self.assertEqual(0o644, stat.S_IMODE(
                os.stat(os.path.join(path, marker)).st_mode))
            self.assertTrue(lxctools.clear_marker(
                'instance-00000001', self.lxc_path, marker))
            self.assertFalse(os.path.exists(os.path.join(path, marker)))
            self.assertFalse(lxctools.clear_marker(
                'instance-00000001', self.lxc_path, marker))

    def test_markers_refused_with_nothing_written(self):
        path = self.container()
        before = sorted(os.listdir(path))
        name = 'instance-00000001'
        for marker in ('config', '../x', 'lxc.log', 'suspended/x', '',
                       None):
            self.refused(lxctools.set_marker, name, self.lxc_path, marker,
                         match='not one of the markers')
            self.refused(lxctools.clear_marker, name, self.lxc_path, marker,
                         match='not one of the markers')
        for text in ('x' * 257, 'a\0b', b'bytes', 7):
            self.refused(lxctools.set_marker, name, self.lxc_path,
                         'suspended', text, match='text is a str')
        self.refused(lxctools.set_marker, name, '/etc', 'suspended',
                     match='not a driver root')
        self.refused(lxctools.set_marker, '../etc', self.lxc_path,
                     'suspended', match='not a container name')
        self.refused(lxctools.set_marker, 'instance-00000002',
                     self.lxc_path, 'suspended',
                     match='no container directory')
        self.assertEqual(before, sorted(os.listdir(path)))
        self.assertEqual(['instance-00000001'], os.listdir(self.lxc_path))

    def test_markers_refused_in_a_directory_not_roots_alone(self):
        path = self.container(name='instance-00000003', uid=1000)
        self.refused(lxctools.set_marker, 'instance-00000003',
                     self.lxc_path, 'suspended', match='not root\'s alone')
        self.assertEqual(['config'], os.listdir(path))

    def test_make_dir_makes_roots_0700_and_never_reuses(self):
        if os.geteuid() != 0:
            self.skipTest('the daemon trusts root\'s containers only')
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        lxctools.make_dir('instance-00000001', self.lxc_path)
        path = os.path.join(self.lxc_path, 'instance-00000001')
        self.assertEqual(0o700, stat.S_IMODE(os.stat(path).st_mode))
        self.assertEqual(0, os.stat(path).st_uid)
        with open(os.path.join(path, 'mine'), 'w') as f:
            f.write('x')
        self.assertRaises(FileExistsError, lxctools.make_dir,
                          'instance-00000001', self.lxc_path)
        self.assertEqual(['mine'], os.listdir(path))
        self.refused(lxctools.make_dir, '../x', self.lxc_path,
                     match='not a container name')
        self.refused(lxctools.make_dir, 'x', '/etc', match='not a driver')
        self.assertFalse(os.path.exists('/etc/x'))

    def test_make_lxc_path_is_root_s_and_the_group_s_to_read(self):
        if os.geteuid() != 0:
            self.skipTest('chown to another group needs root')
        self.addCleanup(os.umask, os.umask(0))
        self.in_process(privsep.storage_admin)
        os.rmdir(self.lxc_path)
        rootdirs.make_lxc_path(self.lxc_path, 64001)
        st = os.stat(self.lxc_path)
        self.assertEqual((0o2751, 0, 64001),
                         (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid))
        # A container made in it is then the group's to read.
        lxctools.make_dir('instance-0000001b', self.lxc_path)
        self.assertEqual(64001, os.stat(os.path.join(
            self.lxc_path, 'instance-0000001b')).st_gid)
        self.assertRaises(FileExistsError, rootdirs.make_lxc_path,
                          self.lxc_path, 0)
        self.assertEqual(64001, os.stat(self.lxc_path).st_gid)

    def test_make_lxc_path_refusals(self):
        self.in_process(privsep.storage_admin)
        os.rmdir(self.lxc_path)
        self.refused(rootdirs.make_lxc_path, '/etc/x', 1,
                     match='not a driver root')
        self.refused(rootdirs.make_lxc_path, self.lxc_path + '/', 1,
                     match='not an absolute normalized')
        for gid in (-1, '5', True, 1.0, None):
            self.refused(rootdirs.make_lxc_path, self.lxc_path, gid,
                         match='is not an int >= 0')
        self.assertFalse(os.path.exists(self.lxc_path))
        self.assertFalse(os.path.exists('/etc/x'))
        # Only the last component: a missing parent stays missing.
        CONF.set_override('extra_driver_roots', [self.tmp + '/a/b'], 'lxc')
        self.assertRaises(FileNotFoundError, rootdirs.make_lxc_path,
                          self.tmp + '/a/b', 1)
        self.assertFalse(os.path.exists(self.tmp + '/a'))

    def test_make_dir_in_a_setgid_lxc_path_is_its_group_s_to_read(self):
        # novalxc-prepare-host: lxc_path root:<nova-compute's group> 2751.
        if os.geteuid() != 0:
            self.skipTest('the daemon trusts root\'s containers only')
        self.addCleanup(os.umask, os.umask(0))
        os.chown(self.lxc_path, 0, 64001)
        os.chmod(self.lxc_path, 0o2751)
        lxctools.make_dir('instance-0000001a', self.lxc_path)
        path = os.path.join(self.lxc_path, 'instance-0000001a')
        st = os.stat(path)
        self.assertEqual((0o2750, 0, 64001),
                         (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid))
        # Still root's alone for the daemon's checks: a config written,
        # the group's to read.
        self.write_config(self.config_text())
        st = os.stat(os.path.join(path, 'config'))
        self.assertEqual((0o644, 64001),
                         (stat.S_IMODE(st.st_mode), st.st_gid))

    def _config(self, path, text):
        with open(os.path.join(path, 'config'), 'w') as f:
            f.write(text)

    def test_remove_dir_of_the_instance_it_names(self):
        path = self.container()
        uuid = 'c0ffee00-0000-4000-8000-000000000001'
        self._config(path, '# novalxc.instance_uuid = %s\nlxc.uts.name = '
                     'x\n' % uuid)
        with open(os.path.join(path, 'guest-data'), 'w') as f:
            f.write('whatever LXC or the guest left')
        self.assertTrue(lxctools.remove_dir('instance-00000001',
                                            self.lxc_path, uuid))
        self.assertFalse(os.path.lexists(path))
        self.assertFalse(lxctools.remove_dir('instance-00000001',
                                             self.lxc_path, uuid))

    def test_remove_dir_naming_no_one_only_with_own_files(self):
        uuid = 'c0ffee00-0000-4000-8000-000000000001'
        for entries, removed in (
                ((), True),
                (('console.log', 'lxc.log', 'suspended',
                  '.config.abc_12.tmp', 'serial-console.json'), True),
                (('console.log', 'notes.txt'), False),
                (('.config.abc.tmp.x',), False),
                (('sub/',), False)):
            path = self.container()
            self._config(path, '# novalxc.host = h\n')   # torn: no owner
            for e in entries:
                if e.endswith('/'):
                    os.mkdir(os.path.join(path, e))
                else:
                    open(os.path.join(path, e), 'w').close()
            if removed:
                self.assertTrue(lxctools.remove_dir(
                    'instance-00000001', self.lxc_path, uuid), entries)
                self.assertFalse(os.path.lexists(path))
            else:
                self.refused(lxctools.remove_dir, 'instance-00000001',
                             self.lxc_path, uuid, match='neither LXC nor')
                self.assertTrue(os.path.isdir(path))
                shutil.rmtree(path)

    def test_remove_dir_refuses_another_s_container(self):
        path = self.container()
        uuid = 'c0ffee00-0000-4000-8000-000000000001'
        other = 'c0ffee00-0000-4000-8000-000000000002'
        for text in ('# novalxc.instance_uuid = %s\n' % other,
                     'lxc.uts.name = foreign\n',
                     ' # novalxc.instance_uuid = %s\nlxc.rootfs.path = '
                     '/x\n' % uuid):
            self._config(path, text)
            self.refused(lxctools.remove_dir, 'instance-00000001',
                         self.lxc_path, uuid, match='is the container of')
            self.assertTrue(os.path.isfile(os.path.join(path, 'config')))
        for bad in ('', 'x', None, 7, '../etc'):
            self.refused(lxctools.remove_dir, 'instance-00000001',
                         self.lxc_path, bad, match='not an instance UUID')
        self.refused(lxctools.remove_dir, 'etc', '/', uuid,
                     match='not a driver root')
        self.assertTrue(os.path.isdir(path))

    def test_own_files_name_what_the_driver_writes(self):
        self.assertIn(container_mod.SUSPENDED_MARKER, lxctools.MARKERS)
        self.assertIn(snapshot.FROZEN_MARKER, lxctools.MARKERS)
        for name in (serialconsole.STATE_FILE, serialconsole.LOG_FILE,
                     'config', 'console.log', 'lxc.log'):
            self.assertIn(name, lxctools.OWN_FILES)


class RootsTest(_Roots):

    def test_roots_of_the_config_and_this_process(self):
        privsep.add_roots('/srv/b/lxc', '/srv/b/state/')
        self.assertEqual(
            {self.lxc_path, os.path.join(self.tmp, 'state'), '/srv/b/lxc',
             '/srv/b/state'}, privsep.driver_roots())

    def test_unusable_roots_refused(self):
        for path in ('relative', '/a,b', '/a\nb'):
            self.assertRaises(ValueError, privsep.add_roots, path)
        self.assertEqual(set(), self.added)

    def test_a_running_root_daemon_lacking_a_root_is_stopped(self):
        ctx = privsep.lxc_admin
        self.useFixture(fixtures.MockPatchObject(ctx, 'channel', object()))
        stop = self.useFixture(fixtures.MockPatchObject(ctx, 'stop')).mock
        with mock.patch('os.geteuid', return_value=0):
            privsep.add_roots('/srv/b/lxc')
            privsep.add_roots('/srv/b/lxc')
        stop.assert_called_once_with()

    def test_a_daemon_of_sudo_keeps_its_config_files_roots(self):
        ctx = privsep.lxc_admin
        self.useFixture(fixtures.MockPatchObject(ctx, 'channel', object()))
        stop = self.useFixture(fixtures.MockPatchObject(ctx, 'stop')).mock
        with mock.patch('os.geteuid', return_value=1000):
            privsep.add_roots('/srv/b/lxc')
        stop.assert_not_called()

    def test_root_gives_its_daemon_a_file_of_its_roots(self):
        privsep.add_roots('/srv/b/lxc')
        seen = {}

        def start(context, method):
            cmd = context.helper_command('/t/sock')
            path = cmd[cmd.index('--privsep_context') - 1]
            seen['mode'] = stat.S_IMODE(os.stat(path).st_mode)
            with open(path) as f:
                seen['text'] = f.read()
            seen['cmd'] = cmd
            seen['path'] = path
        self.patch_object(priv_context.PrivContext, 'start', start)
        with mock.patch('os.geteuid', return_value=0):
            privsep.lxc_admin.start()
        self.assertEqual(0o600, seen['mode'])
        self.assertIn('lxc_path = %s\n' % self.lxc_path, seen['text'])
        self.assertIn('extra_driver_roots = /srv/b/lxc,%s,%s\n' % (
            self.lxc_path, os.path.join(self.tmp, 'state')), seen['text'])
        self.assertEqual(['--config-file', seen['path'], '--privsep_context',
                          'novalxcdriver.privsep.lxc_admin'],
                         seen['cmd'][-6:-2])
        self.assertFalse(os.path.exists(seen['path']))
        # Not kept for a later start through sudo.
        self.assertNotIn('--config-file',
                         privsep.lxc_admin.helper_command('/t/s'))

    def test_a_daemon_of_sudo_gets_no_file(self):
        start = self.patch_object(priv_context.PrivContext, 'start')
        with mock.patch('os.geteuid', return_value=1000):
            privsep.lxc_admin.start()
        start.assert_called_once_with(priv_context.Method.ROOTWRAP)
        self.assertNotIn('--config-file',
                         privsep.lxc_admin.helper_command('/t/s'))

    def test_thread_pools_sized_for_waiting_calls(self):
        # As the daemon sees it: a fresh process that imports the context
        # (a config fixture's reset here would have cleared the default).
        out = subprocess.run(
            [sys.executable, '-c',
             'from oslo_config import cfg\n'
             'import novalxcdriver.privsep\n'
             'cfg.CONF([], project="privsep")\n'
             'for g in (cfg.CONF.novalxc_lxc_admin,\n'
             '          cfg.CONF.novalxc_storage_admin):\n'
             '    print(g.thread_pool_size)\n'],
            capture_output=True, text=True, check=True).stdout
        self.assertEqual('64\n16\n', out)


class ConsoleOutputTest(_EntryPoints):
    """console_output: the console log's tail, read as root."""

    def log(self, path, name, data):
        with open(os.path.join(path, name), 'wb') as f:
            f.write(data)

    def test_tail_across_the_rotation(self):
        path = self.container('c1')
        self.assertEqual(b'', lxctools.console_output('c1', self.lxc_path,
                                                      80))
        self.log(path, 'console.log.1', b'a' * 100)
        self.log(path, 'console.log', b'b' * 50)
        self.assertEqual(b'a' * 30 + b'b' * 50,
                         lxctools.console_output('c1', self.lxc_path, 80))
        self.assertEqual(b'b' * 4,
                         lxctools.console_output('c1', self.lxc_path, 4))
        self.assertEqual(b'a' * 100 + b'b' * 50,
                         lxctools.console_output('c1', self.lxc_path,
                                                 lxctools.MAX_CONSOLE_OUTPUT))

    def test_links_and_fifos_are_not_read(self):
        path = self.container('c1')
        secret = os.path.join(self.tmp, 'secret')
        self.log(self.tmp, 'secret', b'host secret')
        os.symlink(secret, os.path.join(path, 'console.log'))
        os.mkfifo(os.path.join(path, 'console.log.1'))
        # A FIFO would block a reader that waited for a writer.
        self.assertEqual(b'', lxctools.console_output('c1', self.lxc_path,
                                                      100))

    def test_sizes_and_containers_refused(self):
        self.container('c1')
        for size in (0, -1, lxctools.MAX_CONSOLE_OUTPUT + 1, 1.5, '10',
                     True, None):
            self.refused(lxctools.console_output, 'c1', self.lxc_path, size,
                         match='max_bytes')
        self.refused(lxctools.console_output, '../c1', self.lxc_path, 10,
                     match='not a container name')
        self.refused(lxctools.console_output, 'c1', '/etc', 10,
                     match='not a driver root')
        path = self.container('c2', uid=1000)
        self.log(path, 'console.log', b'x')
        self.refused(lxctools.console_output, 'c2', self.lxc_path, 10,
                     match='not root\'s alone')
