"""privsep.lxcconf: the configs the lxc_admin daemon writes, and no other.

A full config rendered by spec.render_config (NICs, ephemeral disk,
config drive, rescue, I/O throttles, both cgroup versions) passes; each
mutation that would give the container more than the driver gives it is
refused with the line and the reason.
"""

import dataclasses

from oslotest import base

from novalxcdriver import limits
from novalxcdriver.privsep import lxcconf
from novalxcdriver import spec
from tests.unit import test_spec

ROOTS = ('/var/lib/novalxc/containers', '/var/lib/novalxc')
CONTAINER_DIR = '/var/lib/novalxc/containers/instance-0000001a'
SUBUIDS = [(100000, 1000000000)]
SUBGIDS = [(100000, 1000000000)]
CGROUP_PARENT = 'novalxc'
NIC = spec.NicSpec(index=0, name='eth0', mac='fa:16:3e:12:34:56', mtu=1442,
                   host_dev='tap4e2a7b3c-5d', peer_dev='nlx4e2a7b3c-5d',
                   kind='ovs', bridge='br-int',
                   port_id='4e2a7b3c-5d6e-4f70-8192-a3b4c5d6e7f8')


def full_config(cgroup_version=2):
    s = test_spec.make_spec(
        nics=(NIC, dataclasses.replace(NIC, index=1, name='eth1',
                                       peer_dev='nlx5e2a7b3c-5d')),
        ephemeral='/var/lib/novalxc/rootfs/3/ephemeral',
        config_drive='/var/lib/novalxc/rootfs/3/config-drive',
        rescue=spec.RescueSpec(
            image_id=test_spec.IMAGE_ID,
            server_rootfs='/var/lib/novalxc/rootfs/3/merged'),
        cgroup_version=cgroup_version,
        cgroup_parent=CGROUP_PARENT,
        limits=dataclasses.replace(test_spec.LIMITS, io=(
            ('disk_read_bytes_sec', 1000), ('disk_write_bytes_sec', 2000),
            ('disk_read_iops_sec', 10), ('disk_write_iops_sec', 20))))
    text = spec.render_config(s)
    return spec.with_io(text, limits.render_io(
        s.limits.io, ['7:3'], cgroup_version))


def check(text, cgroup_parent=CGROUP_PARENT):
    lxcconf.check(text, CONTAINER_DIR, ROOTS, SUBUIDS, SUBGIDS,
                  lxcconf.LXCFS_MOUNT, cgroup_parent=cgroup_parent)


class PolicyTest(base.BaseTestCase):

    def refused(self, text, reason):
        e = self.assertRaises(lxcconf.Refused, check, text)
        self.assertIn(reason, str(e))

    def test_what_the_driver_renders_passes(self):
        for version in (1, 2):
            text = full_config(version)
            self.assertIn('lxc.net.1.link = nlx5e2a7b3c-5d', text)
            self.assertIn('7:3 ', text)
            check(text)

    def test_cgroup_dir_only_the_hosts_parent_and_always_it(self):
        line = 'lxc.cgroup.dir = novalxc\n'
        for other in ('', 'other', 'novalxc/lxc.payload.instance-00000001',
                      '../novalxc', 'novalxc/..'):
            self.refused(self.replaced(line, 'lxc.cgroup.dir = %s\n' % other),
                         "not once this host's cgroup_parent 'novalxc'")
        self.refused(self.added(line.strip()),
                     "lxc.cgroup.dir: not once this host's cgroup_parent")
        self.refused(self.replaced(line, ''),
                     "no lxc.cgroup.dir: this host puts every container "
                     "under 'novalxc'")

    def test_cgroup_dir_refused_where_the_root_is_the_parent(self):
        text = full_config()
        e = self.assertRaises(lxcconf.Refused, check, text, cgroup_parent='')
        self.assertIn("not once this host's cgroup_parent ''", str(e))
        check(text.replace('lxc.cgroup.dir = novalxc\n', ''),
              cgroup_parent='')

    def replaced(self, old, new):
        text = full_config()
        self.assertIn(old, text)
        return text.replace(old, new, 1)

    def added(self, line):
        return full_config() + line + '\n'

    def test_hooks_with_a_command_refused(self):
        self.refused(self.replaced('lxc.hook.mount = \n',
                                   'lxc.hook.mount = /bin/sh -c id\n'),
                     'lxc.hook.mount: a hook command')
        self.refused(self.added('lxc.hook.pre-start = /tmp/x'),
                     'a hook command')

    def test_includes_only_lxc_s_own_and_both_of_them(self):
        self.refused(self.added('lxc.include = /tmp/evil.conf'),
                     'not LXC\'s own file')
        self.refused(self.replaced(
            'lxc.include = /usr/share/lxc/config/userns.conf\n', ''),
            'common.conf and userns.conf must be included')

    def test_a_privileged_or_foreign_idmap_refused(self):
        text = full_config()
        no_idmap = '\n'.join(line for line in text.split('\n')
                             if not line.startswith('lxc.idmap'))
        self.refused(no_idmap, 'the container would be privileged')
        self.refused(self.replaced('lxc.idmap = u 0 296608 65536',
                                   'lxc.idmap = u 0 0 65536'),
                     'host ids 0-65535 are not all root\'s subordinate')
        self.refused(self.replaced('lxc.idmap = g 0 496608 65536',
                                   'lxc.idmap = g 0 99999 65536'),
                     'not all root\'s subordinate ids')
        self.refused(self.added('lxc.idmap = u 0 400000 65536'),
                     'not one "u|g 0 START SIZE" of each kind')
        self.refused(self.replaced('lxc.idmap = u 0 296608 65536',
                                   'lxc.idmap = u 1 296608 65536'),
                     'lxc.idmap')

    def test_devices_and_other_controllers_refused(self):
        for line in ('lxc.cgroup2.devices.allow = a',
                     'lxc.cgroup.devices.allow = c *:* rwm',
                     'lxc.cgroup2.misc.max = x 1'):
            self.refused(self.added(line), 'cgroup controller')

    def test_mounts_of_host_paths_refused(self):
        for line, reason in (
                ('lxc.mount.entry = / host none bind 0 0',
                 'neither lxcfs\'s nor under a driver root'),
                ('lxc.mount.entry = /etc etc none bind,ro 0 0',
                 'neither lxcfs\'s'),
                ('lxc.mount.entry = /var/lib/novalxc/../../etc x none '
                 'bind 0 0', 'neither lxcfs\'s'),
                ('lxc.mount.entry = /var/lib/novalxc/rootfs/3/e ../../x '
                 'none bind 0 0', 'not a plain relative path'),
                ('lxc.mount.entry = /var/lib/novalxc/rootfs/3/e /mnt none '
                 'bind 0 0', 'not a plain relative path'),
                ('lxc.mount.entry = /var/lib/novalxc/rootfs/3/e mnt none '
                 'rbind 0 0', 'options rbind'),
                ('lxc.mount.entry = /var/lib/novalxc/rootfs/3/e mnt none '
                 'bind,suid 0 0', 'options'),
                ('lxc.mount.entry = proc proc proc rw 0 0', 'not "SOURCE'),
                ('lxc.mount.auto = proc:rw sys:rw cgroup:rw',
                 'not a key the driver writes')):
            self.refused(self.added(line), reason)

    def test_root_console_and_nics_stay_the_driver_s(self):
        self.refused(self.replaced('dir:/var/lib/novalxc/rootfs/3/merged',
                                   'dir:/'), 'not a dir: under a driver')
        self.refused(self.replaced(
            CONTAINER_DIR + '/console.log', '/etc/shadow'),
            'not the container\'s console.log')
        self.refused(self.replaced('lxc.net.1.link = nlx5e2a7b3c-5d',
                                   'lxc.net.1.link = eth0'),
                     'lxc.net.1.link: bad value')
        self.refused(self.replaced('lxc.net.0.type = phys',
                                   'lxc.net.0.type = macvlan'),
                     'lxc.net.0.type: bad value')

    def test_keys_the_driver_never_writes_refused(self):
        for line in ('lxc.cap.keep = sys_admin', 'lxc.init.cmd = /bin/sh',
                     'lxc.namespace.keep = user net',
                     'lxc.seccomp.profile = ',
                     'lxc.apparmor.profile = lxc-container-default',
                     'lxc.sysctl.kernel.panic = 1',
                     'lxc.prlimit.nofile = unlimited'):
            self.refused(self.added(line), line.split(' = ')[0])

    def test_malformed_text_refused(self):
        self.refused(full_config().replace('\n', '\r\n'), 'carriage return')
        self.refused(self.added('lxc.uts.name'), 'not "key = value"')
        self.refused(self.added('LXC.arch = linux64'), 'not "key = value"')
        self.refused(self.replaced('lxc.uts.name = web-1',
                                   'lxc.uts.name = web 1'),
                     'lxc.uts.name: bad value')


class ParseRecordTest(base.BaseTestCase):

    def test_spec_reads_with_the_daemon_s_reader(self):
        text = full_config()
        owner = spec.parse_record(text)['instance_uuid']
        self.assertTrue(owner)
        self.assertIs(lxcconf.parse_record, spec.parse_record)
        self.assertEqual(owner, lxcconf.parse_record(text)['instance_uuid'])

    def test_the_record_line_only(self):
        uuid = 'c0ffee00-0000-4000-8000-000000000001'
        for text, owner in (
                ('', None),
                ('lxc.uts.name = x\n', None),
                ('# novalxc.instance_uuid = %s\n' % uuid, uuid),
                ('# novalxc.instance_uuid=%s' % uuid, uuid),
                # Not at the start of its line: not the driver's record.
                (' # novalxc.instance_uuid = %s\n' % uuid, None),
                ('# novalxc.nic.0.instance_uuid = %s\n' % uuid, None),
                ('# novalxc.host = h\n# novalxc.instance_uuid\n', None),
                ('# novalxc.instance_uuid = a\n'
                 '# novalxc.instance_uuid = b\n', 'b')):
            self.assertEqual(owner, lxcconf.parse_record(text).get(
                'instance_uuid'), text)
