"""The config sample in etc/ is what oslo-config-generator writes now."""

import io
import os

from oslo_config import cfg
from oslo_config import generator
from oslotest import base

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
GENERATOR_CONF = os.path.join(ROOT, 'etc', 'oslo-config-generator',
                              'novalxcdriver.conf')
SAMPLE = os.path.join(ROOT, 'etc', 'novalxcdriver.conf.sample')


class SampleTest(base.BaseTestCase):

    def test_sample_is_current(self):
        # An option added or changed without `tox -e genconfig` leaves
        # operators a sample that lies (it once lacked [lxc] pids_max).
        conf = cfg.ConfigOpts()
        generator.register_cli_opts(conf)
        conf(['--config-file', GENERATOR_CONF], project='novalxcdriver')
        out = io.StringIO()
        generator.generate(conf, output_file=out)
        with open(SAMPLE) as f:
            self.assertEqual(f.read(), out.getvalue(),
                             'etc/novalxcdriver.conf.sample is stale: '
                             'run tox -e genconfig')


class CgroupParentTest(base.BaseTestCase):

    def test_relative_plain_components_only(self):
        from novalxcdriver import conf as conf_mod
        opt = [o for o in conf_mod.lxc_opts if o.name == 'cgroup_parent'][0]
        for good in ('', 'novalxc', 'machine.slice/novalxc', 'a_1-b.c'):
            self.assertEqual(good, opt.type(good))
        for bad in ('/novalxc', 'novalxc/', '../x', 'a/../b', 'a//b', '.',
                    'a/.hidden', 'a b', 'a;id', 'a\nlxc.hook.mount=x',
                    '/'.join(['a'] * 9), 'x' * 65):
            self.assertRaises(ValueError, opt.type, bad)
