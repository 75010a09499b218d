"""bench.cpu: CPU seconds per recorded service, with reaped children."""

import os
import subprocess
import sys
import tempfile
import textwrap

from oslotest import base

from bench import cpu

# A service that runs a child burning ~0.3 s of CPU, reaps it, then idles.
SERVICE = textwrap.dedent('''
    import subprocess, sys, time
    sys.stdin.readline()
    subprocess.run([sys.executable, '-c',
                    'import time\\nt = time.process_time()\\n'
                    'while time.process_time() - t < 0.3: pass'])
    print('done', flush=True)
    time.sleep(60)
''')


class MeterTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.pid_dir = tempfile.mkdtemp()
        self.addCleanup(subprocess.run, ['rm', '-rf', self.pid_dir])
        self.proc = subprocess.Popen([sys.executable, '-c', SERVICE],
                                     stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.addCleanup(self.proc.wait)
        self.addCleanup(self.proc.kill)
        with open(os.path.join(self.pid_dir, 'svc.pid'), 'w') as f:
            f.write('%d 12345\n' % self.proc.pid)
        # A recorded PID of a process that is gone is left out.
        with open(os.path.join(self.pid_dir, 'gone.pid'), 'w') as f:
            f.write('999999999 1\n')

    def test_counts_the_reaped_child_of_a_service(self):
        meter = cpu.Meter(self.pid_dir)
        meter.start()
        self.proc.stdin.write('go\n')
        self.proc.stdin.flush()
        self.assertEqual('done\n', self.proc.stdout.readline())
        figures = meter.stop()

        self.assertEqual(['svc'], list(figures['services']))
        self.assertGreaterEqual(figures['services']['svc'], 0.25)
        self.assertLess(figures['services']['svc'], 5)
        self.assertGreaterEqual(figures['host_busy'],
                                figures['services']['svc'] - 0.05)
        self.assertGreaterEqual(figures['other'], 0)
        self.assertGreater(figures['wall'], 0)
        self.assertEqual(os.cpu_count(), figures['cores'])

    def test_nothing_done_counts_little(self):
        meter = cpu.Meter(self.pid_dir)
        meter.start()
        figures = meter.stop()
        self.assertLess(figures['services']['svc'], 0.1)
