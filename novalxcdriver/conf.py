"""Configuration options of the ``[lxc]`` group.

Registered on import; ``list_opts`` feeds oslo-config-generator (entry point
``novalxcdriver`` in setup.cfg, sample in etc/novalxcdriver.conf.sample).
"""

from oslo_config import cfg

CONF = cfg.CONF

lxc_group = cfg.OptGroup(
    'lxc', title='LXC driver options',
    help='Options of novalxcdriver, the Nova compute driver that runs each '
         'instance as an unprivileged LXC system container.')

lxc_opts = [
    cfg.StrOpt('lxc_path', default='/var/lib/novalxc/containers',
               help='LXC lxcpath holding one directory per container '
                    '(config, console and LXC logs). Operators inspect '
                    'containers with "lxc-ls -P <lxc_path>".'),
    cfg.StrOpt('state_path', default='/var/lib/novalxc',
               help='Directory for the driver\'s own state: instance '
                    'records (instances/), per-container root filesystems '
                    '(rootfs/), the image cache (images/) and locks '
                    '(locks/). Each nova-compute service of a machine '
                    'needs its own.'),
    cfg.ListOpt('extra_driver_roots', default=[],
                help='Directories, besides lxc_path and state_path, in '
                     'which the driver\'s privsep daemons act (absolute '
                     'paths). For a process that runs several drivers, '
                     'each with its own lxc_path and state_path, with one '
                     'set of daemons: the functional tests do. A '
                     'nova-compute service runs one driver and needs '
                     'none. The daemons take it from their own config '
                     'files; the caller cannot add to it.'),
    cfg.StrOpt('ids_path', default='/var/lib/novalxc/ids',
               help='The machine\'s container ID reservations, one '
                    'directory per ID. Shared by every nova-compute '
                    'service of the machine whatever its state_path, '
                    'since the uid ranges are the machine\'s (root\'s '
                    '/etc/subuid): two services with different ids_path '
                    'would give one range to two containers. Reservations '
                    'in <state_path>/ids, from earlier versions, are moved '
                    'here at start.'),
    cfg.IntOpt('command_timeout', default=120, min=1,
               help='Seconds any single lxc-* or mount command may run '
                    'before it is killed and reported as failed.'),
    cfg.IntOpt('soft_reboot_timeout', default=60, min=1,
               help='Seconds a soft reboot may take before the driver falls '
                    'back to a hard reboot (Nova REBOOT SOFT semantics).'),
    cfg.FloatOpt('state_poll_interval', default=2.0, min=0.0,
                 help='Seconds between scans of container states that turn '
                      'stops and starts from inside a container into Nova '
                      'lifecycle events, and give a container that rebooted '
                      'itself back the NICs attached since its start. 0 '
                      'disables the scan.'),
    cfg.FloatOpt('ovn_installed_timeout', default=10.0, min=0.0,
                 help='Seconds a start waits for ovn-controller to mark '
                      'the OVS interfaces of its ports bound by ML2/OVN '
                      'installed (external_ids:ovn-installed, set with '
                      'the southbound Port_Binding.up from which Neutron '
                      'reports the port up). Marked, the start goes on '
                      'without Neutron\'s network-vif-plugged event, '
                      'which reaches Nova about a second later (Neutron '
                      'batches its events to Nova, [DEFAULT] '
                      'send_events_interval, at least 1 s); not marked '
                      'in time, or for other ports, it waits for the '
                      'event as Nova\'s libvirt driver does. 0: always '
                      'wait for the event.'),
    cfg.IntOpt('console_log_size_kib', default=1024, min=64,
               help='Size in KiB at which LXC rotates a container\'s '
                    'console log (lxc.console.size).'),
    cfg.IntOpt('image_max_unpacked_gib', default=32, min=1,
               help='Largest total size, in GiB, of the files in one '
                    'unpacked image; a larger archive (or a compression '
                    'bomb) is refused. Also the largest virtual size of '
                    'a qcow2 image, whose raw conversion (sparse) takes '
                    'up to that much space in the image cache while its '
                    'root partition is copied.'),
    cfg.BoolOpt('disk_images', default=True,
                help='Boot disk images (qcow2, and raw images holding a '
                     'partition table or a filesystem) besides root '
                     'filesystem tarballs: each host converts one once and '
                     'copies its root partition\'s files (needs qemu-img, '
                     'Debian package qemu-utils, for qcow2). This mounts, '
                     'read-only, a filesystem a user wrote, which the '
                     'host kernel\'s filesystem driver must survive. False '
                     'refuses them (and drops the COMPUTE_IMAGE_TYPE_QCOW2 '
                     'trait): only tarballs boot.'),
    cfg.BoolOpt('spare_unpacker', default=True,
                help='Keep one image unpacker started ahead in the '
                     'storage_admin privsep daemon: a Python process of '
                     'root\'s, its imports done, idle until a new image is '
                     'unpacked (about 20 MiB), when it confines itself as '
                     'any unpacker does. A first boot of a new image then '
                     'skips the unpacker\'s start (0.05 to 0.1 s). False: '
                     'each unpack starts its own.'),
    cfg.IntOpt('pids_max', default=4096, min=16,
               help='Most tasks (processes and threads) one container may '
                    'run at once (pids cgroup), so a fork bomb stops there. '
                    'A flavor overrides it with the extra spec lxc:pids_max.'),
    cfg.StrOpt('cgroup_parent', default='novalxc',
               regex=r'^(%s(/%s){0,7})?$' % ((r'[A-Za-z0-9_][A-Za-z0-9_.-]'
                                              r'{0,63}',) * 2),
               help='cgroup, relative to each hierarchy\'s root, under '
                    'which every container\'s cgroup is made '
                    '(lxc.cgroup.dir; LXC names the container\'s own '
                    'lxc.payload.<name> inside it). All the instances then '
                    'weigh together as one group against the host\'s '
                    'services when the CPUs are contended (cpu.shares, '
                    'cpu.weight: the kernel\'s default 1024 and 100 unless '
                    'the operator sets the parent\'s), as libvirt groups '
                    'its guests under machine.slice; without it each '
                    'container weighs as much as all of nova-compute, and '
                    'ten booting guests can starve the control plane. '
                    'Empty: LXC\'s default, each container at the root. '
                    'The lxc_admin privsep daemon writes only configs that '
                    'name its own value. Running containers keep their '
                    'cgroup until they stop.'),
    cfg.IntOpt('id_range_size', default=65536, min=65536,
               help='Number of uids and gids in each container\'s isolated '
                    'range (the idmap). Container ID N owns the range '
                    'starting at root\'s /etc/subuid start + N * size.'),
    cfg.StrOpt('migration_ssh_user', default='',
               help='User a destination host logs in as over SSH to '
                    'copy a migrating server\'s disks from the source '
                    'host (whose my_ip it reaches), running tar there. '
                    'Empty: the local user, root: the copy is made by the '
                    'storage_admin privsep daemon, which reads this and '
                    'the other migration_ssh_* options from its own '
                    'config files. Root\'s SSH key must be accepted by '
                    'the other compute hosts, as for libvirt\'s cold '
                    'migration, and the remote user must read the disks '
                    '(root). Not used between two services of one '
                    'machine: they copy locally.'),
    cfg.PortOpt('migration_ssh_port', default=22,
                help='SSH port of the source host for migrations.'),
    cfg.ListOpt('migration_ssh_options', default=[],
                help='More ssh_config(5) options for the migrations\' '
                     'SSH, each NAME=VALUE without blanks, given as -o '
                     'NAME=VALUE: e.g. IdentityFile=/etc/nova/migration-key'
                     ',UserKnownHostsFile=/etc/nova/known_hosts.'),
    cfg.IntOpt('migration_timeout', default=3600, min=1,
               help='Seconds the copy of one disk of a migrating server '
                    'may take before it is killed and the migration '
                    'fails (the server stays on its source).'),
    cfg.StrOpt('root_disk_fs', default='btrfs', choices=[
                   ('btrfs', 'point-in-time snapshots in milliseconds, '
                             'online grow'),
                   ('ext4', 'for hosts without btrfs: a snapshot freezes '
                            'writers for the whole copy of the upper '
                            'layer')],
               help='Filesystem of new root disks (flavors with root_gb '
                    '> 0). Existing disks keep theirs: the type is read '
                    'from the disk at mount. btrfs needs btrfs-progs.'),
]


def register_opts(conf=CONF):
    conf.register_group(lxc_group)
    conf.register_opts(lxc_opts, group=lxc_group)


def list_opts():
    """Return the options for oslo-config-generator."""
    return [(lxc_group, lxc_opts)]


register_opts()
