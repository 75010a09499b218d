"""Tests for novalxcdriver.rescue: the rescue root's place and spec."""

from nova.compute import vm_states
from nova import context as nova_context
from nova import objects
from nova.tests.unit import fake_instance
from oslotest import base

from novalxcdriver import images
from novalxcdriver import rescue
from novalxcdriver import rootfs
from novalxcdriver import spec
from tests.unit import test_spec


class RootOfTest(base.BaseTestCase):

    def test_inside_the_servers_root_directory(self):
        server = rootfs.Rootfs('/state', 3)
        root = rescue.root_of(server)
        self.assertEqual(3, root.cid)
        self.assertEqual('/state/rootfs/3/rescue', root.path)
        self.assertEqual(
            ('/state/rootfs/3/rescue/lower', '/state/rootfs/3/rescue/merged',
             '/state/rootfs/3/rescue/root/upper',
             '/state/rootfs/3/rescue/root/work',
             '/state/rootfs/3/rescue/root.img'),
            (root.lower, root.merged, root.upper, root.work,
             root.root_disk.image_path))


class SpecOfTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.server = test_spec.make_spec(
            ephemeral='/var/lib/novalxc/rootfs/3/ephemeral',
            config_drive='/var/lib/novalxc/rootfs/3/config-drive')
        self.image = images.CachedImage('rescue-image', '/images/r/rootfs',
                                        'busybox', 100)
        self.root = rescue.root_of(rootfs.Rootfs('/var/lib/novalxc', 3))

    def test_only_root_init_mnt_and_config_drive_differ(self):
        s = rescue.spec_of(self.server, self.image, self.root,
                           '/var/lib/novalxc/rootfs/3/rescue/config-drive')
        self.assertEqual(spec.RescueSpec(
            image_id='rescue-image',
            server_rootfs='/var/lib/novalxc/rootfs/3/merged'), s.rescue)
        self.assertEqual(
            ('/var/lib/novalxc/rootfs/3/rescue/merged', 'busybox', None,
             '/var/lib/novalxc/rootfs/3/rescue/config-drive'),
            (s.rootfs, s.init_system, s.ephemeral, s.config_drive))
        # Same container, idmap, limits, NICs; the server's image stays.
        for field in ('name', 'instance_uuid', 'host', 'cid', 'idmap',
                      'hostname', 'container_dir', 'image_id',
                      'console_log_size', 'limits', 'cgroup_version',
                      'swap_accounting', 'nics'):
            self.assertEqual(getattr(self.server, field),
                             getattr(s, field), field)

    def test_no_config_drive(self):
        s = rescue.spec_of(self.server, self.image, self.root)
        self.assertIsNone(s.config_drive)


class KeptTest(base.BaseTestCase):

    def test_only_while_nova_says_rescued(self):
        objects.register_all()
        ctx = nova_context.get_admin_context()
        for state in (vm_states.ACTIVE, vm_states.STOPPED, vm_states.ERROR,
                      vm_states.RESCUED):
            instance = fake_instance.fake_instance_obj(ctx, vm_state=state)
            self.assertEqual(state == vm_states.RESCUED,
                             rescue.kept(instance), state)
