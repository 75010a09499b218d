"""tempest: OpenStack's conformance suite against the running cloud.

Tempest lives in a virtualenv of its own under the aio's state (not the
cloud's: its requirements are not Nova's). ``tempest.conf`` is written
from the cloud as ``up`` made it: Keystone's URL and region, the admin's
generated password, the busybox and Debian images, the lxc.tiny and
lxc.small flavors, nova-compute's shelved_offload_time. The
``[compute-feature-enabled]`` flags come from the driver installed in
the cloud's virtualenv (the one nova-compute runs): a flag is on when the
driver overrides the ComputeDriver methods the feature needs and has the
capabilities it needs, so it flips on when the feature lands.
"""

import configparser
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

from novalxc_aio import api
from novalxc_aio import demo
from novalxc_aio import layout
from novalxc_aio import util

# The release verified against this cloud (Nova 34, Python 3.11), and
# what its requirements resolved to then.
TEMPEST_VERSION = '47.0.0'
CONSTRAINTS = os.path.join(layout.AIO_DIR, 'tempest-constraints.txt')
EXCLUDE_LIST = os.path.join(layout.AIO_DIR, 'tempest-exclude.txt')

HOME = layout.state('tempest')
VENV = os.path.join(HOME, 'venv')
WORKSPACE = os.path.join(HOME, 'workspace')
CONF = os.path.join(WORKSPACE, 'etc', 'tempest.conf')
RUN_LOG = layout.log_file('tempest-run')

# Issue 15's run: servers, flavors, images, limits, keypairs, and the
# admin's server tests.
DEFAULT_REGEX = (r'^tempest\.api\.(compute\.(servers|flavors|images|limits|'
                 r'keypairs|admin\.test_servers)|'
                 r'network\.(test_ports|test_security_groups))')
# With validation: Tempest logs in over SSH to each server it boots
# (debian-12-cloud on the shared network, which the host reaches), so
# its checks of the guest run too: the basic scenario (SSH, the metadata
# service from inside, a password posted to it) and the NICs attached
# and detached while a server runs.
VALIDATION_REGEX = (r'^tempest\.(scenario\.test_server_basic_ops|'
                    r'api\.compute\.servers\.test_attach_interfaces)')

# image_ref boots every test server; image_ref_alt is the rebuild target
# and the second image of the image filters.
IMAGE = layout.BUSYBOX_IMAGE
# With validation, what image_ref boots must let Tempest in over SSH.
VALIDATION_IMAGE = layout.DEBIAN_CLOUD_IMAGE
ALT_IMAGE = layout.DEBIAN_IMAGE
# lxc.small is only a resize target (flavor_ref_alt).
FLAVOR, ALT_FLAVOR = layout.FLAVORS[0][0], layout.FLAVORS[1][0]

# [compute-feature-enabled] flag -> (ComputeDriver methods the driver must
# override, LXCDriver.capabilities that must be true, needs Cinder).
DRIVER_FEATURES = (
    ('snapshot', ('snapshot',), (), False),
    # Nova's shelve is power off and a snapshot; offload destroys, and
    # unshelve spawns from the snapshot.
    ('shelve', ('snapshot', 'power_off', 'destroy', 'spawn'), (), False),
    ('rescue', ('rescue', 'unrescue'), (), False),
    ('resize', ('migrate_disk_and_power_off', 'finish_migration',
                'confirm_migration', 'finish_revert_migration'), (), False),
    ('cold_migration', ('migrate_disk_and_power_off', 'finish_migration',
                        'confirm_migration'), (), False),
    ('live_migration', ('live_migration', 'pre_live_migration',
                        'check_can_live_migrate_destination'), (), False),
    ('block_migration_for_live_migration', ('live_migration',), (), False),
    ('pause', ('pause', 'unpause'), (), False),
    ('suspend', ('suspend', 'resume'), (), False),
    ('console_output', ('get_console_output',), (), False),
    ('interface_attach', ('attach_interface', 'detach_interface'),
     ('supports_attach_interface',), False),
    ('change_password', ('set_admin_password',), (), False),
    ('serial_console', ('get_serial_console',), (), False),
    ('vnc_console', ('get_vnc_console',), (), False),
    ('spice_console', ('get_spice_console',), (), False),
    ('attach_encrypted_volume', ('attach_volume',), (), True),
    ('swap_volume', ('swap_volume',), (), True),
    ('volume_multiattach', ('attach_volume',), ('supports_multiattach',),
     True),
)

# Flags that no driver method decides, with the reason.
STATIC_FEATURES = (
    ('shelve_migrate', False, 'left off: its test is a scenario (shelve, '
     'then cold migrate over SSH) outside the selections'),
    ('live_migrate_back_and_forth', False, 'no live migration: no working '
     'CRIU on these kernels'),
    ('stable_rescue', False, 'the rescue image as a VM device on a chosen '
     'bus (hw_rescue_bus, hw_rescue_device)'),
    ('ide_bus', False, 'a VM device bus'),
    ('personality', False, 'file injection left the compute API in 2.57'),
    ('config_drive', True, "the driver serves Nova's config drive as a "
     'read-only directory (configdrive.py)'),
    ('metadata_service', True, 'nova-metadata behind the OVN metadata '
     'agent'),
    ('disk_config', True, "OS-DCF:diskConfig is Nova's API; the container "
     'root has no partition to grow'),
    ('enable_instance_password', True, "Nova's [api] "
     'enable_instance_password default'),
)

# Run in the cloud's virtualenv: which ComputeDriver methods LXCDriver
# overrides, and its capabilities.
_DRIVER_FACTS = '\n'.join([
    'import json, warnings',
    'warnings.simplefilter("ignore")',
    'from nova.virt import driver as base',
    'from novalxcdriver import driver',
    'ours, theirs = driver.LXCDriver, base.ComputeDriver',
    'print(json.dumps({',
    '    "overrides": sorted(n for n in dir(theirs) if callable(',
    '        getattr(theirs, n)) and getattr(ours, n) is not',
    '        getattr(theirs, n)),',
    '    "capabilities": ours.capabilities}))',
])


def _bin(name):
    return os.path.join(VENV, 'bin', name)


def _digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def install():
    """Tempest in its own virtualenv (again when the pins change)."""
    wanted = '%s %s' % (TEMPEST_VERSION, _digest(CONSTRAINTS))
    if os.path.exists(_bin('tempest')) and util.marker_done(
            'tempest', wanted, HOME):
        return
    util.say('installing tempest %s into %s (pip log %s)', TEMPEST_VERSION,
             VENV, layout.log_file('tempest-pip'))
    if not os.path.exists(_bin('python')):
        util.makedirs(HOME, 0o700)
        util.run(['/usr/bin/python3', '-m', 'venv', VENV], log='tempest-pip')
        util.run([_bin('pip'), 'install', '-q', '--upgrade', 'pip'],
                 log='tempest-pip')
    util.run([_bin('pip'), 'install', '-q', '-c', CONSTRAINTS,
              'tempest==' + TEMPEST_VERSION], log='tempest-pip')
    util.mark_done('tempest', wanted, HOME)


def driver_facts():
    """{'overrides': [method, ...], 'capabilities': {...}} of LXCDriver."""
    proc = util.run([layout.venv_bin('python'), '-c', _DRIVER_FACTS],
                    capture=True, timeout=120)
    return json.loads(proc.stdout)


# Flags whose tests move a server to another host (a resize stays on a
# lone compute host: allow_resize_to_same_host).
MULTI_HOST_FEATURES = ('cold_migration',)


def compute_features(facts, cinder=False, computes=1):
    """[(flag, bool, reason)] for [compute-feature-enabled].

    :param computes: nova-compute services up in the cloud.
    """
    overrides = set(facts['overrides'])
    capabilities = facts['capabilities']
    flags = []
    for flag, methods, caps, volumes in DRIVER_FEATURES:
        missing = [m for m in methods if m not in overrides]
        missing += ['capability ' + c for c in caps
                    if not capabilities.get(c)]
        off = ['lacks ' + ', '.join(missing)] if missing else []
        if volumes and not cinder:
            off.append('no Cinder')
        if flag in MULTI_HOST_FEATURES and computes < 2:
            off.append('one compute host (up --computes 2 gives two)')
        flags.append((flag, not off, '; '.join(off) or
                      'the driver has ' + ', '.join(methods + caps)))
    flags += list(STATIC_FEATURES)
    return flags


def _nova_compute_option(section, key, default):
    """An option of nova-cpu.conf as up wrote it."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(layout.etc('nova', 'nova-cpu.conf'))
    return parser.get(section, key, fallback=default)


def _render(sections):
    """INI text; each value may carry a comment line above it."""
    out = ['# Written by novalxc-aio tempest (aio/novalxc_aio/tempest.py) '
           'on every run.']
    for section, items in sections:
        out += ['', '[%s]' % section]
        for item in items:
            key, value = item[:2]
            if len(item) > 2:
                out.append('# %s' % item[2])
            if isinstance(value, bool):
                value = 'true' if value else 'false'
            out.append('%s = %s' % (key, value))
    return '\n'.join(out) + '\n'


def compute_hosts(secrets):
    """Names of the nova-compute services up and enabled (sorted)."""
    s = api.Session('admin', secrets['admin'], 'admin')
    services = s.get('compute', '/os-services?binary=nova-compute')
    return sorted(svc['host'] for svc in services['services']
                  if svc['state'] == 'up' and svc['status'] == 'enabled')


def tempest_conf(secrets, features, validation=False, computes=1):
    """tempest.conf for the cloud as up made it.

    :param validation: log in to servers over SSH: they boot from the
        cloud image on the shared network, which the host reaches through
        its own port (cloud.host_access).
    """
    s = api.Session('admin', secrets['admin'], 'admin')
    for flavor in (FLAVOR, ALT_FLAVOR):
        s.get('compute', '/flavors/' + flavor)
    region = layout.REGION
    return _render([
        ('DEFAULT', [('log_dir', os.path.join(WORKSPACE, 'logs')),
                     ('log_file', 'tempest.log')]),
        ('oslo_concurrency', [('lock_path', os.path.join(WORKSPACE,
                                                         'lock'))]),
        ('auth', [
            ('admin_username', 'admin'),
            ('admin_password', secrets['admin']),
            ('admin_project_name', 'admin'),
            ('admin_domain_name', 'Default'),
            ('use_dynamic_credentials', True),
            # Each test class's project gets its own network, subnet and
            # router (demo-net is the demo project's, not shared); with
            # validation, servers boot on the shared network the host
            # reaches (a project's own network it could not).
            ('create_isolated_networks', not validation)]),
        ('identity', [('uri_v3', layout.KEYSTONE_URL),
                      ('auth_version', 'v3'),
                      ('region', region)]),
        ('compute', [
            ('image_ref', demo.image_id_of(
                s, VALIDATION_IMAGE if validation else IMAGE),
             VALIDATION_IMAGE if validation else IMAGE),
            ('image_ref_alt', demo.image_id_of(s, ALT_IMAGE), ALT_IMAGE),
            ('flavor_ref', FLAVOR),
            ('flavor_ref_alt', ALT_FLAVOR),
            ('region', region),
            ('min_compute_nodes', computes),
            ('max_microversion', 'latest'),
            ('shelved_offload_time', int(_nova_compute_option(
                'DEFAULT', 'shelved_offload_time', 0)),
             "nova-cpu.conf's")] + (
                [('fixed_network_name', layout.SHARED_NETWORK)]
                if validation else [])),
        ('compute-feature-enabled', features),
        ('image', [('region', region)]),
        ('image-feature-enabled', [('api_v2', True)]),
        ('network', [('region', region),
                     ('project_networks_reachable', False)]),
        ('network-feature-enabled', [
            ('floating_ips', False, 'no external network in the aio')]),
        ('placement', [('region', region)]),
        ('service_available', [('nova', True), ('glance', True),
                               ('neutron', True), ('cinder', False),
                               ('swift', False)]),
        ('validation', [
            ('run_validation', True),
            ('connect_method', 'fixed', 'no floating IPs: see '
             'layout.HOST_ACCESS_PREFIX'),
            ('network_for_ssh', layout.SHARED_NETWORK),
            ('auth_method', 'keypair'),
            ('ip_version_for_ssh', 4),
            ('image_ssh_user', layout.DEBIAN_CLOUD_USER),
            ('image_alt_ssh_user', layout.DEBIAN_CLOUD_USER),
            ('ssh_timeout', 180)] if validation else [
            ('run_validation', False, 'the host reaches servers on %s '
             'only: tempest --validation runs those tests' %
             layout.SHARED_NETWORK)]),
    ])


def _env():
    env = util.clean_env()
    env['PATH'] = os.path.join(VENV, 'bin') + ':' + env['PATH']
    return env


def workspace():
    """A tempest workspace (.stestr.conf, etc/) registered beside it."""
    if os.path.exists(os.path.join(WORKSPACE, '.stestr.conf')):
        return
    if os.path.exists(WORKSPACE):
        shutil.rmtree(WORKSPACE)
    util.run([_bin('tempest'), 'init', '--workspace-path',
              os.path.join(HOME, 'workspace.yaml'), '--name', 'novalxc-aio',
              WORKSPACE], env=_env(), capture=True)


_TOTAL = re.compile(r'^ - (Passed|Skipped|Failed|Expected Fail|'
                    r'Unexpected Success): (\d+)$')
_FAILED = re.compile(r'^\{\d+\} (\S+) .*\.\.\. FAILED$')


def tempest(regex=None, validation=False):
    """Install, configure, run; print the summary.

    :param validation: see tempest_conf (default regex VALIDATION_REGEX).
    :returns: 0 when tests ran and none failed, else 1.
    """
    regex = regex or (VALIDATION_REGEX if validation else DEFAULT_REGEX)
    secrets = util.load_secrets()
    install()
    facts = driver_facts()
    computes = len(compute_hosts(secrets))
    features = compute_features(facts, computes=computes)
    if validation:
        # RemoteClient.mount_config_drive looks for a block device
        # labelled config-2; a container gets the directory /config-drive.
        features = [(flag, False if flag == 'config_drive' else value,
                     'Tempest mounts it as a block device; the container '
                     'has the directory /config-drive' if
                     flag == 'config_drive' else reason)
                    for flag, value, reason in features]
    workspace()
    util.write_file(CONF, tempest_conf(secrets, features, validation,
                                       computes), mode=0o600)
    util.say('tempest.conf: %s', CONF)
    for flag, value, reason in features:
        print('  %-36s %-5s %s' % (flag, 'on' if value else 'off', reason))
    argv = [_bin('tempest'), 'run', '--concurrency', '1', '--regex', regex,
            '--exclude-list', EXCLUDE_LIST]
    util.say('%s (output also in %s)', ' '.join(argv), RUN_LOG)
    t0 = time.monotonic()
    totals, failed = {}, []
    with open(RUN_LOG, 'w') as log:
        proc = subprocess.Popen(argv, cwd=WORKSPACE, env=_env(),
                                stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL)
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
            m = _TOTAL.match(line.rstrip())
            if m:
                totals[m.group(1)] = int(m.group(2))
            m = _FAILED.match(line.rstrip())
            if m:
                failed.append(m.group(1))
        rc = proc.wait()
    seconds = time.monotonic() - t0
    passed = totals.get('Passed', 0)
    nfailed = totals.get('Failed', len(failed)) + \
        totals.get('Unexpected Success', 0)
    skipped = totals.get('Skipped', 0)
    for test in failed:
        print('FAILED %s' % test)
    util.say('tempest ran %d tests in %.0f s (tempest exit %d); its log: %s',
             passed + nfailed + skipped, seconds, rc,
             os.path.join(WORKSPACE, 'logs', 'tempest.log'))
    if rc != 0 and not nfailed:
        print('tempest exited %d without a failed test: see %s' % (
            rc, RUN_LOG))
    print('tempest: %d passed, %d failed, %d skipped' % (
        passed, nfailed, skipped))
    return 0 if rc == 0 and passed and not nfailed else 1
