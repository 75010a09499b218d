"""Tests for novalxcdriver.spec: the container description and lxc.conf."""

import dataclasses

from nova import context as nova_context
from nova import objects
from nova.tests.unit import fake_instance
from oslotest import base

from novalxcdriver import exception
from novalxcdriver import ids
from novalxcdriver import images
from novalxcdriver import limits
from novalxcdriver import spec

UUID = '6f5d9c3e-1b1a-4a57-9a43-0e6a5f4f1c2d'
IMAGE_ID = 'a1b2c3d4-0000-4000-8000-000000000001'
LIMITS = limits.Limits(
    memory_bytes=256 * 1024 * 1024, memsw_bytes=512 * 1024 * 1024,
    cpus=(2, 3), cpu_period_us=100000, cpu_quota_us=200000,
    cpu_shares=None, pids_max=4096)


def make_spec(**overrides):
    values = dict(
        name='instance-0000001a',
        instance_uuid=UUID,
        host='compute-1',
        cid=3,
        idmap=ids.Idmap(uid_start=296608, gid_start=496608, size=65536),
        hostname='web-1',
        rootfs='/var/lib/novalxc/rootfs/3/merged',
        container_dir='/var/lib/novalxc/containers/instance-0000001a',
        image_id=IMAGE_ID,
        init_system='systemd',
        console_log_size=1048576,
        limits=LIMITS,
    )
    values.update(overrides)
    return spec.ContainerSpec(**values)


def config_keys(text):
    """Return the 'key = value' lines of a config as a list of pairs."""
    pairs = []
    for line in text.splitlines():
        if line.startswith('#') or not line.strip():
            continue
        key, sep, value = line.partition(' = ')
        assert sep, line
        pairs.append((key, value))
    return pairs


class RenderConfigTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.spec = make_spec()
        self.text = spec.render_config(self.spec)
        self.pairs = config_keys(self.text)
        self.single = {}
        for key, value in self.pairs:
            self.single.setdefault(key, []).append(value)

    def value(self, key):
        values = self.single.get(key, [])
        self.assertEqual(1, len(values), 'key %s: %r' % (key, values))
        return values[0]

    def test_ends_with_newline(self):
        self.assertTrue(self.text.endswith('\n'))
        self.assertFalse(self.text.endswith('\n\n'))

    def test_rootfs_path(self):
        self.assertEqual('dir:/var/lib/novalxc/rootfs/3/merged',
                         self.value('lxc.rootfs.path'))

    def test_idmap_lines(self):
        self.assertEqual(['u 0 296608 65536', 'g 0 496608 65536'],
                         self.single['lxc.idmap'])

    def test_uts_name(self):
        self.assertEqual('web-1', self.value('lxc.uts.name'))

    def test_net_is_empty(self):
        self.assertEqual('empty', self.value('lxc.net.0.type'))
        self.assertEqual([], [k for k, _v in self.pairs
                              if k.startswith('lxc.net.') and
                              k != 'lxc.net.0.type'])

    def test_includes(self):
        self.assertEqual(['/usr/share/lxc/config/common.conf',
                          '/usr/share/lxc/config/userns.conf'],
                         self.single['lxc.include'])

    def test_console(self):
        base_dir = '/var/lib/novalxc/containers/instance-0000001a'
        self.assertEqual(base_dir + '/console.log',
                         self.value('lxc.console.logfile'))
        self.assertEqual('1048576', self.value('lxc.console.size'))
        self.assertEqual('1', self.value('lxc.console.rotate'))
        # lxc-start -o sets LXC's log: any lxc-* tool loading a config with
        # lxc.log.file recreates its directory, even after a destroy.
        self.assertNotIn('lxc.log.file', self.single)

    def test_no_cgroup_parent_leaves_lxc_s_default(self):
        self.assertNotIn('lxc.cgroup.dir', self.single)

    def test_cgroup_parent(self):
        text = spec.render_config(make_spec(cgroup_parent='novalxc/guests'))
        self.assertEqual([('lxc.cgroup.dir', 'novalxc/guests')],
                         [p for p in config_keys(text)
                          if p[0].startswith('lxc.cgroup.dir')])

    def test_with_cgroup_parent(self):
        text = spec.render_config(make_spec(cgroup_parent='novalxc'))
        at = text.index('lxc.cgroup.dir = novalxc\n')
        self.assertEqual(text, spec.with_cgroup_parent(text, 'novalxc'))
        moved = spec.with_cgroup_parent(text, 'other')
        self.assertEqual(at, moved.index('lxc.cgroup.dir = other\n'))
        self.assertNotIn('novalxc\n', moved)
        self.assertEqual(self.text, spec.with_cgroup_parent(text, ''))
        added = spec.with_cgroup_parent(self.text + 'lxc.cgroup.dir = a\n'
                                        'lxc.cgroup.dir = b\n', 'c')
        self.assertEqual(self.text + 'lxc.cgroup.dir = c\n', added)
        self.assertTrue(spec.with_cgroup_parent(
            self.text, 'novalxc').endswith('\nlxc.cgroup.dir = novalxc\n'))
        self.assertRaises(ValueError, spec.with_cgroup_parent, text, 'a\nb')

    def test_init_names_the_platform_for_cloud_init(self):
        # ds-identify (cloud-init) reads product_name from PID 1's
        # environment when there is no DMI.
        self.assertEqual('product_name=OpenStack Nova',
                         self.value('lxc.environment'))

    def test_apparmor_unconfined(self):
        self.assertEqual('unconfined', self.value('lxc.apparmor.profile'))

    def test_no_unsupported_seccomp_key(self):
        self.assertNotIn('lxc.seccomp', self.single)

    def test_signals_per_init(self):
        expected = {
            'systemd': ('SIGRTMIN+3', 'SIGINT'),
            'busybox': ('SIGUSR1', 'SIGTERM'),
            'sysvinit': ('SIGPWR', 'SIGINT'),
        }
        for init, (halt, reboot) in expected.items():
            text = spec.render_config(make_spec(init_system=init))
            pairs = dict(config_keys(text))
            self.assertEqual(halt, pairs['lxc.signal.halt'], init)
            self.assertEqual(reboot, pairs['lxc.signal.reboot'], init)

    def test_unknown_init_refused(self):
        self.assertRaises(KeyError, spec.render_config,
                          make_spec(init_system='openrc'))

    def test_record_lines_at_top(self):
        lines = self.text.splitlines()
        self.assertTrue(lines[0].startswith('#'))
        self.assertEqual([
            '# novalxc.instance_uuid = ' + UUID,
            '# novalxc.host = compute-1',
            '# novalxc.id = 3',
            '# novalxc.image_id = ' + IMAGE_ID,
        ], lines[1:5])
        # Every line after the record is a key.
        for line in lines[5:]:
            self.assertFalse(line.startswith('#'), line)

    def test_newline_in_any_value_refused(self):
        # name is not rendered (check_name guards it); init_system is a
        # key of INIT_SIGNALS.
        strings = [f.name for f in dataclasses.fields(spec.ContainerSpec)
                   if f.type is str and
                   f.name not in ('name', 'init_system')]
        self.assertIn('hostname', strings)
        for field in strings + ['ephemeral']:
            for bad in ('a\nlxc.mount.entry = / x', 'a\rb'):
                self.assertRaises(ValueError, spec.render_config,
                                  make_spec(**{field: bad}))

    def test_limits_v1_after_base_keys(self):
        limit_keys = limits.render(LIMITS, 1)
        self.assertIn(('lxc.cgroup.memory.limit_in_bytes',
                       str(256 * 1024 * 1024)), limit_keys)
        # The limit keys end the config, in render's order.
        self.assertEqual(limit_keys, self.pairs[-len(limit_keys):])
        self.assertEqual([], [k for k, _v in self.pairs
                              if k.startswith('lxc.cgroup2.')])

    def test_limits_v2(self):
        pairs = config_keys(spec.render_config(make_spec(cgroup_version=2)))
        limit_keys = limits.render(LIMITS, 2)
        self.assertIn(('lxc.cgroup2.memory.max', str(256 * 1024 * 1024)),
                      limit_keys)
        self.assertEqual(limit_keys, pairs[-len(limit_keys):])
        self.assertEqual([], [k for k, _v in pairs
                              if k.startswith('lxc.cgroup.')])

    def test_no_ephemeral_no_mount_entry(self):
        self.assertEqual([], [v for v in self.single['lxc.mount.entry']
                              if ' mnt ' in v])

    def test_ephemeral_bind_mounted_on_mnt(self):
        pairs = config_keys(spec.render_config(
            make_spec(ephemeral='/var/lib/novalxc/rootfs/3/ephemeral')))
        self.assertEqual(
            ['/var/lib/novalxc/rootfs/3/ephemeral mnt none bind,create=dir '
             '0 0'],
            [v for k, v in pairs
             if k == 'lxc.mount.entry' and not v.startswith('/var/lib/lxcfs')])

    def test_lxcfs_bound_without_debian_hooks(self):
        pairs = config_keys(spec.render_config(make_spec()))
        keys = [k for k, _v in pairs]
        # The hooks are cleared after the includes that add them.
        self.assertGreater(keys.index('lxc.hook.mount'),
                           max(i for i, k in enumerate(keys)
                               if k == 'lxc.include'))
        self.assertEqual('', self.single['lxc.hook.post-stop'][0])
        self.assertIn('/var/lib/lxcfs/proc/meminfo proc/meminfo none '
                      'bind,optional 0 0', self.single['lxc.mount.entry'])
        self.assertIn('/var/lib/lxcfs/sys/devices/system/cpu '
                      'sys/devices/system/cpu none bind,optional 0 0',
                      self.single['lxc.mount.entry'])


class ParseRecordTest(base.BaseTestCase):

    def test_round_trip(self):
        record = spec.parse_record(spec.render_config(make_spec()))
        self.assertEqual({'instance_uuid': UUID, 'host': 'compute-1',
                          'id': 3, 'image_id': IMAGE_ID}, record)
        self.assertIsInstance(record['id'], int)

    def test_no_record(self):
        self.assertEqual({}, spec.parse_record(
            'lxc.uts.name = foo\n# a comment = here\n'))
        self.assertEqual({}, spec.parse_record(''))

    def test_bad_id_dropped(self):
        record = spec.parse_record('# novalxc.id = x\n# novalxc.host = h\n')
        self.assertEqual({'host': 'h'}, record)


class IoTest(base.BaseTestCase):

    IO = (('disk_read_bytes_sec', 1000), ('disk_write_iops_sec', 40))

    def test_record_carries_the_throttles_not_the_keys(self):
        text = spec.render_config(make_spec(limits=dataclasses.replace(
            LIMITS, io=self.IO)))
        record = spec.parse_record(text)
        self.assertEqual(self.IO, limits.parse_io(record['io']))
        self.assertFalse([k for k, _v in config_keys(text)
                          if limits.is_io_key(k)])

    def test_with_io_replaces_every_earlier_key(self):
        text = spec.render_config(make_spec())
        first = spec.with_io(text, limits.render_io(self.IO, ['7:1'], 1))
        second = spec.with_io(first, limits.render_io(self.IO, ['7:2'], 1))
        self.assertEqual([
            ('lxc.cgroup.blkio.throttle.read_bps_device', '7:2 1000'),
            ('lxc.cgroup.blkio.throttle.write_iops_device', '7:2 40'),
        ], [kv for kv in config_keys(second) if limits.is_io_key(kv[0])])
        # Everything else stays, in its order.
        self.assertEqual(text, spec.with_io(second, []))

    def test_with_io_refuses_a_newline(self):
        self.assertRaises(ValueError, spec.with_io, '',
                          [('lxc.cgroup2.io.max', '7:1 rbps=1\nlxc.x = y')])


class CheckNameTest(base.BaseTestCase):

    def test_accepts(self):
        for name in ('instance-0000001a', 'a', 'web_1.example',
                     'x' * 128):
            self.assertEqual(name, spec.check_name(name))

    def test_refuses(self):
        bad = ['', 'a b', 'a;rm -rf /', 'a$(id)', 'a`id`', 'a|b', 'a&b',
               "a'b", 'a"b', 'a/b', '/abs', 'a\nb', 'a\n', '.hidden',
               '..', '../x', '-n', 'x' * 129, None, 5, b'instance-1']
        for name in bad:
            self.assertRaises(exception.InvalidContainerName,
                              spec.check_name, name)


class HostnameForTest(base.BaseTestCase):

    def test_valid(self):
        for name in ('web-1', 'a', 'host.example.com', 'A1-b2'):
            self.assertEqual(name, spec.hostname_for(name, 'fb'))

    def test_fallback(self):
        for name in (None, '', '-web', 'web-', 'we b', 'a_b', 'a..b',
                     'x' * 64, 'a\nb', 'web\n', 'a;b', '.a'):
            self.assertEqual('fb', spec.hostname_for(name, 'fb'), name)


class BuildTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        objects.register_all()
        self.context = nova_context.get_admin_context()
        self.idmap = ids.Idmap(100000, 200000, 65536)
        self.image = images.CachedImage(IMAGE_ID, '/img/rootfs', 'busybox',
                                        1234)

    def build(self, console_log_size=1048576, hostname='web-1', **kwargs):
        instance = fake_instance.fake_instance_obj(
            self.context, uuid=UUID, hostname=hostname)
        return instance, spec.build(
            instance, 'compute-1', 7, self.idmap, self.image,
            container_dir='/c/' + instance.name, rootfs='/r/7/merged',
            console_log_size=console_log_size, limits=LIMITS, **kwargs)

    def test_fields(self):
        instance, s = self.build()
        self.assertEqual(instance.name, s.name)
        self.assertEqual(UUID, s.instance_uuid)
        self.assertEqual('web-1', s.hostname)
        self.assertEqual('compute-1', s.host)
        self.assertEqual(7, s.cid)
        self.assertEqual(self.idmap, s.idmap)
        self.assertEqual('/r/7/merged', s.rootfs)
        self.assertEqual('/c/' + instance.name, s.container_dir)
        self.assertEqual(IMAGE_ID, s.image_id)
        self.assertEqual('busybox', s.init_system)
        self.assertEqual('/c/%s/config' % instance.name, s.config_path)
        self.assertIs(LIMITS, s.limits)
        self.assertEqual(1, s.cgroup_version)
        self.assertIsNone(s.ephemeral)

    def test_cgroup_version_and_ephemeral(self):
        _instance, s = self.build(cgroup_version=2,
                                  ephemeral='/s/rootfs/7/ephemeral')
        self.assertEqual(2, s.cgroup_version)
        self.assertEqual('/s/rootfs/7/ephemeral', s.ephemeral)

    def test_limits_required(self):
        instance = fake_instance.fake_instance_obj(self.context, uuid=UUID)
        self.assertRaises(
            TypeError, spec.build, instance, 'compute-1', 7, self.idmap,
            self.image, container_dir='/c', rootfs='/r',
            console_log_size=65536)

    def test_console_size_power_of_two(self):
        for given, expected in ((1048576, 1048576), (1048575, 524288),
                                (100 * 1024, 65536), (65536, 65536),
                                (3, 2)):
            _instance, s = self.build(console_log_size=given)
            self.assertEqual(expected, s.console_log_size, given)

    def test_invalid_hostname_falls_back_to_name(self):
        instance, s = self.build(hostname='bad_host name')
        self.assertEqual(instance.name, s.hostname)

    def test_unsafe_instance_name_refused(self):
        self.assertRaises(
            exception.InvalidContainerName, spec.build,
            FakeInstance('a/b', UUID, 'h'), 'compute-1', 7, self.idmap,
            self.image, container_dir='/c', rootfs='/r',
            console_log_size=65536, limits=LIMITS)

    def test_spec_is_frozen(self):
        _instance, s = self.build()
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, s,
                          'cid', 8)


class FakeInstance:
    """Just the attributes spec.build reads, with any name."""

    def __init__(self, name, uuid, hostname):
        self.name, self.uuid, self.hostname = name, uuid, hostname


def make_nic(index=0, name=None, kind='ovs', port_id='4e2a7b3c-1111'):
    return spec.NicSpec(
        index=index, name=name or 'eth%d' % index,
        mac='fa:16:3e:00:00:%02x' % index, mtu=1442,
        host_dev='tap' + port_id[:11], peer_dev='nlx' + port_id[:11],
        kind=kind, bridge='br-int' if kind == 'ovs' else 'br0',
        port_id=port_id)


class NicsTest(base.BaseTestCase):
    """NICs rendered into lxc.net.N keys, read back, replaced."""

    def setUp(self):
        super().setUp()
        self.nics = (make_nic(0, port_id='4e2a7b3c-1111'),
                     make_nic(1, kind='bridge', port_id='9f8e7d6c-2222'))

    def test_no_nic_is_loopback_only(self):
        self.assertEqual(['lxc.net.0.type = empty'], spec.render_nics(()))

    def test_phys_keys_per_nic(self):
        pairs = config_keys('\n'.join(spec.render_nics(self.nics)))
        self.assertEqual([
            ('lxc.net.0.type', 'phys'),
            ('lxc.net.0.link', 'nlx4e2a7b3c-11'),
            ('lxc.net.0.name', 'eth0'),
            ('lxc.net.0.hwaddr', 'fa:16:3e:00:00:00'),
            ('lxc.net.0.mtu', '1442'),
            ('lxc.net.0.flags', 'up'),
            ('lxc.net.1.type', 'phys'),
            ('lxc.net.1.link', 'nlx9f8e7d6c-22'),
            ('lxc.net.1.name', 'eth1'),
            ('lxc.net.1.hwaddr', 'fa:16:3e:00:00:01'),
            ('lxc.net.1.mtu', '1442'),
            ('lxc.net.1.flags', 'up'),
        ], pairs)

    def test_record_beside_keys(self):
        lines = spec.render_nics(self.nics[:1])
        self.assertEqual('# novalxc.nic.0 = port_id=4e2a7b3c-1111 '
                         'host_dev=tap4e2a7b3c-11 kind=ovs bridge=br-int',
                         lines[0])

    def test_in_config_instead_of_empty(self):
        text = spec.render_config(make_spec(nics=self.nics))
        keys = dict(config_keys(text))
        self.assertEqual('phys', keys['lxc.net.0.type'])
        self.assertNotIn('empty', [v for k, v in config_keys(text)
                                   if k.startswith('lxc.net.')])
        # The record at the top is unchanged by NIC records.
        self.assertEqual({'instance_uuid': UUID, 'host': 'compute-1',
                          'id': 3, 'image_id': IMAGE_ID},
                         spec.parse_record(text))

    def test_round_trip(self):
        text = spec.render_config(make_spec(nics=self.nics))
        self.assertEqual(self.nics, spec.parse_nics(text))
        self.assertEqual((), spec.parse_nics(
            spec.render_config(make_spec())))
        self.assertEqual((), spec.parse_nics(''))

    def test_index_must_match_position(self):
        self.assertRaises(ValueError, spec.render_nics,
                          (make_nic(1),))

    def test_unknown_kind_refused(self):
        self.assertRaises(ValueError, spec.render_nics,
                          (make_nic(kind='macvtap'),))

    def test_blank_or_newline_values_refused(self):
        for field, value in (('name', 'eth 0'), ('mac', 'x\nlxc.a = b'),
                             ('bridge', ''), ('host_dev', 'a=b')):
            nic = dataclasses.replace(make_nic(), **{field: value})
            self.assertRaises(ValueError, spec.render_nics, (nic,))

    def test_incomplete_nic_refused(self):
        text = '\n'.join(spec.render_nics(self.nics[:1]))
        broken = text.replace('lxc.net.0.hwaddr', 'lxc.net.0.hwaddrx')
        self.assertRaises(ValueError, spec.parse_nics, broken)
        no_record = '\n'.join(text.splitlines()[1:])
        self.assertRaises(ValueError, spec.parse_nics, no_record)

    def test_with_nics_replaces_in_place(self):
        text = spec.render_config(make_spec())
        added = spec.with_nics(text, self.nics)
        self.assertEqual(self.nics, spec.parse_nics(added))
        # Same lines around them, NICs where 'empty' was.
        before = text.splitlines()
        after = added.splitlines()
        at = before.index('lxc.net.0.type = empty')
        self.assertEqual(before[:at], after[:at])
        self.assertEqual(before[at + 1:], after[at + 14:])
        self.assertEqual(text, spec.with_nics(added, ()))

    def test_with_nics_renumbers_and_keeps_names(self):
        text = spec.render_config(make_spec(nics=self.nics))
        left = spec.with_nics(text, self.nics[1:])
        (nic,) = spec.parse_nics(left)
        self.assertEqual((0, 'eth1'), (nic.index, nic.name))

    def test_build_takes_nics(self):
        s = make_spec(nics=self.nics)
        self.assertEqual(self.nics, s.nics)
        self.assertEqual((), make_spec().nics)


class ConfigDriveTest(base.BaseTestCase):

    def test_bound_read_only_on_config_drive(self):
        text = spec.render_config(make_spec(
            config_drive='/var/lib/novalxc/rootfs/3/config-drive'))
        self.assertIn(('lxc.mount.entry',
                       '/var/lib/novalxc/rootfs/3/config-drive config-drive '
                       'none bind,ro,create=dir 0 0'), config_keys(text))

    def test_none_without(self):
        self.assertNotIn('config-drive', spec.render_config(make_spec()))


class ParseIdmapTest(base.BaseTestCase):

    def test_rendered_idmap_read_back(self):
        idmap = ids.Idmap(uid_start=165536, gid_start=365536, size=65536)
        text = ('lxc.idmap = u 0 165536 65536\n'
                'lxc.idmap = g 0 365536 65536\n')
        self.assertEqual(idmap, spec.parse_idmap(text))

    def test_incomplete_or_odd_idmaps_are_none(self):
        for text in ('', 'lxc.idmap = u 0 165536 65536\n',
                     'lxc.idmap = u 0 1 65536\nlxc.idmap = g 0 1 10\n',
                     'lxc.idmap = u 1 1 65536\nlxc.idmap = g 1 1 65536\n'):
            self.assertIsNone(spec.parse_idmap(text), text)


class RescueTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.spec = make_spec(
            rootfs='/var/lib/novalxc/rootfs/3/rescue/merged',
            rescue=spec.RescueSpec(
                image_id='rescue-image',
                server_rootfs='/var/lib/novalxc/rootfs/3/merged'))
        self.text = spec.render_config(self.spec)

    def test_server_root_bound_read_write_on_mnt(self):
        self.assertIn(('lxc.mount.entry',
                       '/var/lib/novalxc/rootfs/3/merged mnt none '
                       'bind,create=dir 0 0'), config_keys(self.text))
        self.assertIn(('lxc.rootfs.path',
                       'dir:/var/lib/novalxc/rootfs/3/rescue/merged'),
                      config_keys(self.text))

    def test_record_names_both_images(self):
        self.assertEqual({'instance_uuid': UUID, 'host': 'compute-1',
                          'id': 3, 'image_id': IMAGE_ID,
                          'rescue_image_id': 'rescue-image'},
                         spec.parse_record(self.text))

    def test_only_a_rescue_names_one(self):
        text = spec.render_config(make_spec())
        self.assertNotIn('rescue', text)
        self.assertNotIn(' mnt ', text)

    def test_newline_in_rescue_values_refused(self):
        for field in ('image_id', 'server_rootfs'):
            bad = dataclasses.replace(self.spec, rescue=dataclasses.replace(
                self.spec.rescue, **{field: 'x\nlxc.y = z'}))
            self.assertRaises(ValueError, spec.render_config, bad)
