"""Tests for novalxcdriver.lxc: running commands and parsing lxc-* output."""

import os
import subprocess
import sys
import time
from unittest import mock

from oslo_concurrency import processutils
from oslo_config import fixture as config_fixture
from oslotest import base

from novalxcdriver import command
from novalxcdriver import conf
from novalxcdriver import exception
from novalxcdriver import lxc
from novalxcdriver import privsep

PATH = '/var/lib/novalxc/containers'


class ExecuteTest(base.BaseTestCase):

    def test_output(self):
        out, err = lxc.execute(
            sys.executable, '-c',
            'import sys; print("out"); sys.stderr.write("err")')
        self.assertEqual('out\n', out)
        self.assertEqual('err', err)

    def test_failure_becomes_command_failed(self):
        argv = (sys.executable, '-c',
                'import sys; sys.stderr.write("no such thing\\n"); '
                'sys.exit(3)')
        e = self.assertRaises(exception.CommandFailed, lxc.execute, *argv)
        self.assertEqual(' '.join(argv), e.kwargs['cmd'])
        self.assertEqual(3, e.kwargs['exit_code'])
        self.assertEqual('no such thing', e.kwargs['stderr'])
        self.assertIn('exit code 3', str(e))
        self.assertIn('no such thing', str(e))

    def test_check_exit_code_accepts(self):
        out, _err = lxc.execute(
            sys.executable, '-c', 'import sys; print(1); sys.exit(2)',
            check_exit_code=[0, 2])
        self.assertEqual('1\n', out)

    def test_no_preexec_fn_so_subprocess_can_vfork(self):
        real_popen = subprocess.Popen
        seen = []

        def popen(*args, **kwargs):
            seen.append(kwargs)
            return real_popen(*args, **kwargs)
        with mock.patch.object(command.subprocess, 'Popen', side_effect=popen):
            lxc.execute('true')
        self.assertEqual(1, len(seen))
        self.assertIsNone(seen[0].get('preexec_fn'))
        self.assertFalse(seen[0].get('shell', False))

    def test_timeout_kills_child(self):
        procs = []
        real_popen = subprocess.Popen

        def popen(*args, **kwargs):
            procs.append(real_popen(*args, **kwargs))
            return procs[-1]

        start = time.monotonic()
        with mock.patch.object(command.subprocess, 'Popen', side_effect=popen):
            e = self.assertRaises(exception.CommandTimedOut, lxc.execute,
                                  'sleep', '5', timeout=1)
        self.assertLess(time.monotonic() - start, 4)
        self.assertEqual({'cmd': 'sleep 5', 'timeout': 1, 'code': 500},
                         e.kwargs)
        self.assertEqual(1, len(procs))
        # Killed by SIGKILL and reaped: no process with that pid is left.
        self.assertEqual(-9, procs[0].returncode)
        self.assertRaises(ProcessLookupError, os.kill, procs[0].pid, 0)

    def test_default_timeout_from_config(self):
        cfg = self.useFixture(config_fixture.Config(conf.CONF))
        cfg.config(group='lxc', command_timeout=17)
        with mock.patch.object(command.subprocess, 'run', return_value=(
                subprocess.CompletedProcess(['true'], 0, b'', b''))) as run:
            lxc.execute('true')
        self.assertEqual(17, run.call_args.kwargs['timeout'])


class _MockedExecute(base.BaseTestCase):
    """processutils.execute mocked: argv reaches it exactly as built."""

    def setUp(self):
        super().setUp()
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        self.cfg.config(group='lxc', command_timeout=120, lxc_path=PATH)
        # privsep.lxctools' entry points in this process (their checks
        # find no PATH/c1 here, so check nothing on disk).
        privsep.lxc_admin.set_client_mode(False)
        self.addCleanup(privsep.lxc_admin.set_client_mode, True)
        # subprocess.run's calls, seen through one mock in
        # processutils.execute's shape.
        patcher = mock.patch.object(processutils, 'execute',
                                    return_value=('', ''))
        self.pe = patcher.start()
        self.addCleanup(patcher.stop)
        run = mock.patch.object(command.subprocess, 'run',
                                side_effect=self._run)
        run.start()
        self.addCleanup(run.stop)

    def _run(self, argv, timeout=None, **kwargs):
        self.assertIsNone(kwargs.get('preexec_fn'))
        try:
            out, err = self.pe(*argv, timeout=timeout)
        except processutils.ProcessExecutionError as e:
            return subprocess.CompletedProcess(argv, e.exit_code, b'',
                                               e.stderr.encode())
        return subprocess.CompletedProcess(argv, 0, out.encode(),
                                           err.encode())

    def assert_argv(self, argv, timeout=120):
        self.pe.assert_called_once()
        args, kwargs = self.pe.call_args
        self.assertEqual(tuple(argv), args)
        for arg in args:
            self.assertIsInstance(arg, str)
        self.assertFalse(kwargs.get('shell', False))
        self.assertEqual(timeout, kwargs['timeout'])

    def fail_with(self, stderr, exit_code=1):
        self.pe.side_effect = processutils.ProcessExecutionError(
            exit_code=exit_code, stdout='', stderr=stderr, cmd='x')


class ArgvTest(_MockedExecute):

    def test_start(self):
        lxc.start('c1', PATH)
        self.assert_argv(['lxc-start', '-n', 'c1', '-P', PATH, '-d',
                          '-o', PATH + '/c1/lxc.log', '-l', 'WARN'])

    def test_stop(self):
        lxc.stop('c1', PATH, 30)
        self.assert_argv(['lxc-stop', '-n', 'c1', '-P', PATH, '-t', '30'],
                         timeout=150)

    def test_request_halt(self):
        self.assertTrue(lxc.request_halt('c1', PATH, 5))
        self.assert_argv(['lxc-stop', '-n', 'c1', '-P', PATH, '--nokill',
                          '-t', '5'], timeout=125)

    def test_kill(self):
        lxc.kill('c1', PATH)
        self.assert_argv(['lxc-stop', '-n', 'c1', '-P', PATH, '-k'])

    def test_reboot(self):
        self.assertTrue(lxc.reboot('c1', PATH, 60))
        self.assert_argv(['lxc-stop', '-n', 'c1', '-P', PATH, '-r', '-t',
                          '60'], timeout=180)

    def test_freeze(self):
        lxc.freeze('c1', PATH)
        self.assert_argv(['lxc-freeze', '-n', 'c1', '-P', PATH])

    def test_unfreeze(self):
        lxc.unfreeze('c1', PATH)
        self.assert_argv(['lxc-unfreeze', '-n', 'c1', '-P', PATH])

    def test_name_with_shell_characters_refused_unrun(self):
        e = self.assertRaises(exception.PrivilegedCallRefused, lxc.start,
                              'a b;c', PATH)
        self.assertIn('not a container name', str(e))
        self.pe.assert_not_called()

    def test_request_halt_false_on_failure(self):
        self.fail_with('timed out')
        self.assertFalse(lxc.request_halt('c1', PATH, 5))

    def test_reboot_false_on_failure(self):
        self.fail_with('timed out')
        self.assertFalse(lxc.reboot('c1', PATH, 5))

    def test_kill_failure_raises(self):
        self.fail_with('cannot kill', exit_code=2)
        e = self.assertRaises(exception.CommandFailed, lxc.kill, 'c1', PATH)
        self.assertEqual(2, e.kwargs['exit_code'])
        self.assertEqual('cannot kill', e.kwargs['stderr'])

    def test_start_failure_raises(self):
        self.fail_with('bad config')
        self.assertRaises(exception.CommandFailed, lxc.start, 'c1', PATH)

    def test_version(self):
        self.pe.return_value = ('5.0.2\n', '')
        self.assertEqual('5.0.2', lxc.version())
        self.assert_argv(['lxc-start', '--version'])


class InfoTest(_MockedExecute):

    def test_running(self):
        self.pe.return_value = ('State:          RUNNING\n'
                                'PID:            123\n', '')
        self.assertEqual(('RUNNING', 123), lxc.info('c1', PATH))
        self.assert_argv(['lxc-info', '-n', 'c1', '-P', PATH, '-s', '-p'])

    def test_stopped(self):
        self.pe.return_value = ('State:          STOPPED\n', '')
        self.assertEqual(('STOPPED', None), lxc.info('c1', PATH))

    def test_frozen(self):
        self.pe.return_value = ('State:          FROZEN\n'
                                'PID:            77\n', '')
        self.assertEqual(('FROZEN', 77), lxc.info('c1', PATH))

    def test_not_found(self):
        self.fail_with("c1 doesn't exist\n")
        e = self.assertRaises(exception.ContainerNotFound, lxc.info, 'c1',
                              PATH)
        # (Nova's exceptions add their HTTP code.)
        self.assertEqual({'name': 'c1', 'code': 500}, e.kwargs)

    def test_other_failure_raises_command_failed(self):
        self.fail_with('Permission denied')
        self.assertRaises(exception.CommandFailed, lxc.info, 'c1', PATH)


class StatesTest(_MockedExecute):

    def test_rows(self):
        self.pe.return_value = (
            'NAME              STATE   PID  \n'
            'instance-00000001 RUNNING 4242 \n'
            'instance-00000002 STOPPED -    \n'
            'instance-00000003 FROZEN  77   \n', '')
        self.assertEqual({'instance-00000001': ('RUNNING', 4242),
                          'instance-00000002': ('STOPPED', None),
                          'instance-00000003': ('FROZEN', 77)},
                         lxc.states(PATH))
        self.assert_argv(['lxc-ls', '-P', PATH, '-f', '-F',
                          'NAME,STATE,PID'])

    def test_header_only(self):
        self.pe.return_value = ('NAME STATE \n', '')
        self.assertEqual({}, lxc.states(PATH))

    def test_empty(self):
        self.pe.return_value = ('', '')
        self.assertEqual({}, lxc.states(PATH))
