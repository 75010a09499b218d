"""Run the benchmarks: ``python -m bench.run [--out DIR] [options]``.

Runs as root on a host set up by tools/test-setup.sh, with the package's
dependencies and matplotlib (bench-requirements.txt) installed; ``tox -e
bench`` does both. Writes, in --out (docs/benchmarks by default):

- results.json   every sample, the run's options and the machine's facts
- RESULTS.md     the figures against the targets of issues 6, 14 (privsep's
                 cost per spawn) and 16 and of the snapshot and migration
                 families, and plots
- *.png          latency distributions, spawn against image size,
                 throughput per batch, memory per container, API latency,
                 snapshot times and write stalls, cold migration against
                 rsync -S

--out is written whole: a run of some families (--only) replaces the
figures of the others there, so point it elsewhere (e.g. /tmp/bench) to
keep docs/benchmarks as committed. Only the images the chosen families
boot are built; the cache of the others is kept.

api-density (issue 16 goal 5: 200 busybox and 50 Debian idle servers kept
running through the all-in-one cloud's API) is left out unless named in
--only: it takes longer than the other families together. So is
api-floor (issue 16 goal 4: POST to ACTIVE at concurrency 10 on this
driver's compute against a compute with Nova's fake driver, in the same
run): it needs the fake compute, which "aio/novalxc-aio up
--fake-compute" starts and a plain "up" does not.

Everything runs under --root (/var/lib/novalxc-bench) and is destroyed at
the end, even on failure; the unpacked image cache there is kept for the
next run. The check that nothing is left is printed, and a leak makes the
exit status 1.
"""

import argparse
import json
import logging
import os
import shlex
import signal
import socket
import sys
import time
import traceback

from bench import api_density
from bench import api_floor
from bench import boot
from bench import density
from bench import firstboot
from bench import harness
from bench import idlookup
from bench import images as bench_images
from bench import machine
from bench import migration
from bench import networked_boot
from bench import nova_api
from bench import plots
from bench import privsep
from bench import report
from bench import snapshot
from bench import spawn
from bench import throughput

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = ('spawn', 'boot', 'density', 'throughput', 'snapshot',
            'migration', 'firstboot', 'privsep', 'idlookup', 'api',
            'networked-boot', 'api-floor', 'api-density')
# What a run without --only measures. api-density keeps 250 servers of the
# all-in-one cloud running and takes longer than all the others together;
# api-floor needs the aio's fake compute (up --fake-compute): they run
# only when asked for.
DEFAULT_FAMILIES = tuple(f for f in FAMILIES
                         if f not in ('api-density', 'api-floor'))
# The families that use the all-in-one cloud, not a driver of their own.
API_FAMILIES = ('api', 'networked-boot', 'api-floor', 'api-density')
# The images each family of this host boots (bench.images keys).
IMAGES = {'spawn': ('busybox', 'debian', 'synthetic'), 'boot': ('debian',),
          'density': ('busybox', 'debian'),
          'throughput': ('busybox', 'debian'), 'snapshot': ('busybox',),
          'migration': ('busybox',), 'firstboot': ('debian', 'synthetic'),
          'privsep': ('busybox',)}


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog='python -m bench.run', description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default=os.path.join(REPO, 'docs', 'benchmarks'),
                   help='directory for results.json, RESULTS.md and plots')
    p.add_argument('--root', default='/var/lib/novalxc-bench',
                   help="the driver's lxc_path and state_path go under it")
    p.add_argument('--only', default=','.join(DEFAULT_FAMILIES),
                   help='comma-separated subset of %s (default: all but '
                        'api-density)' % ', '.join(FAMILIES))
    p.add_argument('--runs', type=int, default=20,
                   help='samples per image and side for spawn latency, '
                        'boot to service and privsep\'s cost (default 20)')
    p.add_argument('--count', type=int, default=100,
                   help='spawns per throughput run (default 100)')
    p.add_argument('--concurrency', type=int, default=10,
                   help='threads of the throughput run (default 10)')
    p.add_argument('--batch', type=int, default=10,
                   help='spawns per throughput batch (default 10)')
    p.add_argument('--throughput-rounds', type=int, default=3,
                   help='driver-then-raw throughput runs per image, '
                        'alternating; issue 16 goal 1 takes the median '
                        'ratio (default 3)')
    p.add_argument('--density-busybox', type=int, default=20,
                   help='idle busybox containers for density (default 20)')
    p.add_argument('--density-debian', type=int, default=10,
                   help='idle Debian containers for density (default 10)')
    p.add_argument('--settle', type=float, default=10,
                   help='seconds idle before memory is read (default 10)')
    p.add_argument('--snapshot-sizes', default=snapshot.DEFAULT_SIZES,
                   help='data written in each snapshot server, comma-'
                        'separated (binary units: 10M, 500M, 2G; default '
                        '%(default)s)')
    p.add_argument('--snapshot-runs', type=int, default=3,
                   help='driver.snapshot and plain tar | zstd samples per '
                        'size (default 3)')
    p.add_argument('--migration-sizes', default=migration.DEFAULT_SIZES,
                   help='data written in each migrated server, comma-'
                        'separated (binary units; default %(default)s)')
    p.add_argument('--migration-runs', type=int, default=3,
                   help='cold migrations and floor copies per size and '
                        'transport, alternating (default 3)')
    p.add_argument('--firstboot-runs', type=int, default=3,
                   help='downloads and first boots of each kind per image '
                        'and link rate, rotating (default 3)')
    p.add_argument('--firstboot-rates', default='loopback,1000',
                   help="the Glance stand-in's link caps in Mbit/s, comma-"
                        "separated; 'loopback' is none (default "
                        "%(default)s)")
    p.add_argument('--api-runs', type=int, default=10,
                   help='API boots at concurrency 1 (default 10)')
    p.add_argument('--api-concurrent-runs', type=int, default=30,
                   help='API boots at concurrency 10 (default 30)')
    p.add_argument('--api-floor-runs', type=int, default=30,
                   help='api-floor: servers booted on each side, this '
                        'driver and the fake driver (default 30)')
    p.add_argument('--api-floor-batch', type=int, default=10,
                   help='api-floor: servers per batch; batches alternate '
                        'between the sides, ABBA (default 10)')
    p.add_argument('--api-floor-host', default=None,
                   help="api-floor: this driver's compute host (default: "
                        "this machine's host name, the aio's)")
    p.add_argument('--api-floor-fake-host', default=None,
                   help="api-floor: the fake driver's compute host "
                        "(default: the host name + '%s', the aio's "
                        "up --fake-compute)" % api_floor.FAKE_SUFFIX)
    p.add_argument('--api-density-busybox', type=int, default=200,
                   help='idle busybox servers kept running through the API '
                        '(default 200)')
    p.add_argument('--api-density-debian', type=int, default=50,
                   help='idle Debian servers kept running through the API '
                        '(default 50)')
    p.add_argument('--networked-boot-runs', type=int, default=5,
                   help='networked-boot: boots on the network and without '
                        'one, each (concurrency 1)')
    p.add_argument('--api-network', default='demo-net',
                   help='networked-boot: the network of the networked side')
    p.add_argument('--api-image', default='debian-12')
    p.add_argument('--api-flavor', default='lxc.tiny')
    p.add_argument('--clouds-yaml', default=nova_api.CLOUDS_YAML)
    p.add_argument('--cloud', default=nova_api.CLOUD)
    p.add_argument('--admin-cloud', default=nova_api.ADMIN_CLOUD,
                   help="the aio's admin in --clouds-yaml (api-density: "
                        "quotas, its flavor, instance names)")
    p.add_argument('--aio-lxc-path', default=api_density.AIO_LXC_PATH,
                   help="the aio nova-compute's lxc_path (api-density reads "
                        "its containers' cgroups there)")
    p.add_argument('--compute-log', default=nova_api.COMPUTE_LOG,
                   help="nova-compute's log, for its own build timings")
    p.add_argument('--note', default='',
                   help='a sentence for RESULTS.md (e.g. "machine busy")')
    p.add_argument('--report-only', action='store_true',
                   help='rewrite RESULTS.md and plots from --out\'s '
                        'results.json')
    args = p.parse_args(argv)
    args.only = [f.strip() for f in args.only.split(',') if f.strip()]
    unknown = set(args.only) - set(FAMILIES)
    if unknown:
        p.error('unknown --only %s' % ', '.join(sorted(unknown)))
    try:
        args.snapshot_sizes = snapshot.parse_sizes(args.snapshot_sizes)
    except ValueError as e:
        p.error('--snapshot-sizes: %s' % e)
    try:
        args.migration_sizes = snapshot.parse_sizes(args.migration_sizes)
    except ValueError as e:
        p.error('--migration-sizes: %s' % e)
    if args.api_floor_runs < 1 or args.api_floor_batch < 1:
        p.error('--api-floor-runs and --api-floor-batch: 1 or more')
    try:
        args.firstboot_rates = [
            None if r.strip() == 'loopback' else int(r)
            for r in args.firstboot_rates.split(',') if r.strip()]
    except ValueError as e:
        p.error('--firstboot-rates: %s' % e)
    return args


def log(msg):
    print('[%s] %s' % (time.strftime('%H:%M:%S'), msg), flush=True)


def _terminate(signum, frame):
    # SIGTERM unwinds like Ctrl-C, so the finally blocks destroy everything.
    raise KeyboardInterrupt('signal %d' % signum)


def host_warnings(args, facts):
    """What on this host will distort the figures (list of text)."""
    found = []
    try:
        instances = int(facts['sysctls']['fs.inotify.max_user_instances'])
    except (KeyError, ValueError):
        instances = None
    # systemd in each container takes ~5 inotify instances, all charged to
    # host root as well (user namespace ucounts): at 128, about 25 Debian
    # containers run at once and the rest die with "Too many open files".
    wanted = {'throughput': ('the Debian throughput run', args.count),
              'api-density': ('api-density', args.api_density_debian)}
    for family, (what, count) in wanted.items():
        if (family in args.only and instances is not None and
                instances // 5 < count):
            found.append(
                'fs.inotify.max_user_instances = %d: only about %d systemd '
                'containers can run at once here, and %s starts %d (raise '
                'it first, e.g. sysctl -w '
                'fs.inotify.max_user_instances=1048576)' % (
                    instances, instances // 5, what, count))
    return found


def measure(args, results):
    """Run the chosen families into results; always clean up after."""
    if set(args.only) - set(API_FAMILIES):
        measure_host(args, results)
    if 'api' in args.only:
        measure_api(args, results)
    if 'networked-boot' in args.only:
        measure_networked_boot(args, results)
    if 'api-floor' in args.only:
        measure_api_floor(args, results)
    if 'api-density' in args.only:
        measure_api_density(args, results)


def measure_host(args, results):
    """Families 1-6, 8-12: the driver (and raw LXC) on this host."""
    images = {}
    log('images: building or finding the tarballs')
    keys = {key for name in args.only for key in IMAGES.get(name, ())}
    for image in bench_images.chosen(keys):
        images[image.key] = image
    h = harness.Harness(args.root, list(images.values()))
    try:
        h.destroy_everything()
        migration.destroy_leftovers(h)
        firstboot.destroy_leftovers(h)
        # The cache of images this run does not boot is kept too.
        h.drop_stale_images({i.image_id for i in images.values()} |
                            bench_images.existing_ids())
        results['leaks'] = {'before': _leaks(h)}
        for image in images.values():
            log('images: caching %s' % image.label)
            cached = h.cache(image)
            results['images'][image.key] = {
                'label': image.label, 'tarball_bytes': image.tarball_bytes,
                'unpacked_bytes': cached.size, 'image_id': image.image_id}
        # Warm-up: page cache, LXC's and Python's first-call costs.
        for image in images.values():
            spawn.driver_sample(h, image)
            spawn.raw_sample(h, image)
        families = {
            'spawn': lambda: spawn.measure(
                h, list(images.values()), args.runs, log=log),
            'boot': lambda: boot.measure(
                h, images['debian'], args.runs, log=log),
            'density': lambda: {
                'busybox': density.measure(
                    h, images['busybox'], args.density_busybox, False,
                    args.settle, log=log),
                'debian': density.measure(
                    h, images['debian'], args.density_debian, True,
                    args.settle, log=log)},
            'throughput': lambda: {
                key: throughput.measure(h, images[key], args.count,
                                        args.concurrency, args.batch,
                                        args.throughput_rounds, log=log)
                for key in IMAGES['throughput']},
            'snapshot': lambda: snapshot.measure(
                h, images['busybox'], args.snapshot_sizes,
                args.snapshot_runs, log=log),
            'migration': lambda: migration.measure(
                h, images['busybox'], args.migration_sizes,
                args.migration_runs, log=log),
            'firstboot': lambda: firstboot.measure(
                h, [images['debian'], images['synthetic']],
                args.firstboot_runs, args.firstboot_rates, log=log),
            'privsep': lambda: privsep.measure(
                h, images['busybox'], args.runs, log=log),
            'idlookup': lambda: idlookup.measure(args.root, log=log),
        }
        for name in FAMILIES:
            if name not in args.only or name not in families:
                continue
            log('%s: starting' % name)
            try:
                results[name] = families[name]()
            except Exception:
                results['errors'][name] = traceback.format_exc()
                log('%s: FAILED\n%s' % (name, results['errors'][name]))
                h.destroy_everything()
                migration.destroy_leftovers(h)
                firstboot.destroy_leftovers(h)
    finally:
        log('cleanup: destroying everything under %s' % args.root)
        try:
            h.destroy_everything()
            migration.destroy_leftovers(h)
            firstboot.destroy_leftovers(h)
        finally:
            results['leaks']['after'] = _leaks(h)
            h.close()


def _leaks(h):
    return dict(h.leaks(), **migration.leaks(h), **firstboot.leaks(h))


def measure_api(args, results):
    """Family 7: the Nova API of the all-in-one cloud, if it runs."""
    log('api: starting')
    try:
        results['api'] = nova_api.measure(
            [(1, args.api_runs), (10, args.api_concurrent_runs)],
            image_name=args.api_image, flavor_name=args.api_flavor,
            clouds_yaml=args.clouds_yaml, cloud=args.cloud,
            compute_log=args.compute_log, log=log)
        results['leaks'].setdefault('after', {})['api servers'] = \
            results['api'].get('leftovers', [])
    except Exception:
        results['errors']['api'] = traceback.format_exc()
        log('api: FAILED\n%s' % results['errors']['api'])


def measure_networked_boot(args, results):
    """Issue 16 goal 3: a boot on a network against one without."""
    log('networked-boot: starting')
    try:
        results['networked-boot'] = networked_boot.measure(
            args.networked_boot_runs, image_name=args.api_image,
            flavor_name=args.api_flavor, network_name=args.api_network,
            clouds_yaml=args.clouds_yaml, cloud=args.cloud,
            logs={'compute': args.compute_log}, log=log)
        for line in networked_boot.describe(results['networked-boot']):
            log('  ' + line)
        results['leaks'].setdefault('after', {})[
            'networked-boot servers'] = results['networked-boot'].get(
                'leftovers', [])
    except Exception:
        results['errors']['networked-boot'] = traceback.format_exc()
        log('networked-boot: FAILED\n%s'
            % results['errors']['networked-boot'])


def floor_hosts(args, hostname):
    """{'driver': host, 'fake': host} of the api-floor family."""
    driver = args.api_floor_host or hostname
    return {'driver': driver,
            'fake': args.api_floor_fake_host or
            hostname + api_floor.FAKE_SUFFIX}


def measure_api_floor(args, results):
    """Issue 16 goal 4: this driver's compute vs the fake driver's."""
    log('api-floor: starting')
    try:
        results['api-floor'] = api_floor.measure(
            per_side=args.api_floor_runs, batch=args.api_floor_batch,
            concurrency=args.concurrency, image_name=args.api_image,
            flavor_name=args.api_flavor,
            hosts=floor_hosts(args, socket.gethostname()),
            clouds_yaml=args.clouds_yaml, admin_cloud=args.admin_cloud,
            compute_logs={'driver': args.compute_log,
                          'fake': api_floor.COMPUTE_LOGS['fake']},
            lxc_path=args.aio_lxc_path, log=log)
        after = results['leaks'].setdefault('after', {})
        after['api-floor servers'] = results['api-floor'].get(
            'leftovers', [])
        after['api-floor containers'] = results['api-floor'].get(
            'host_leftovers', [])
    except Exception:
        results['errors']['api-floor'] = traceback.format_exc()
        log('api-floor: FAILED\n%s' % results['errors']['api-floor'])


def measure_api_density(args, results):
    """Issue 16 goal 5: idle servers kept running through the Nova API."""
    log('api-density: starting')
    try:
        results['api-density'] = api_density.measure(
            {'busybox': args.api_density_busybox,
             'debian': args.api_density_debian},
            settle=args.settle, concurrency=args.concurrency,
            clouds_yaml=args.clouds_yaml, cloud=args.cloud,
            admin_cloud=args.admin_cloud, lxc_path=args.aio_lxc_path,
            log=log)
        after = results['leaks'].setdefault('after', {})
        after['api-density servers'] = results['api-density'].get(
            'leftovers', [])
        after['api-density containers'] = [
            name for phase in results['api-density'].get(
                'images', {}).values()
            for name in phase.get('host_leftovers', [])]
    except Exception:
        results['errors']['api-density'] = traceback.format_exc()
        log('api-density: FAILED\n%s' % results['errors']['api-density'])


def _rounded(value):
    """value with every float rounded to 6 decimals (microseconds).

    Finer digits are noise; rounding keeps results.json small enough to
    commit.
    """
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def write(results, out_dir, command):
    """results.json, the plots and RESULTS.md in out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'results.json'), 'w') as f:
        json.dump(_rounded(results), f, indent=1, sort_keys=True)
        f.write('\n')
    names = plots.draw(results, out_dir, log=log)
    with open(os.path.join(out_dir, 'RESULTS.md'), 'w') as f:
        f.write(report.markdown(results, command, names))
    log('wrote %s: results.json, RESULTS.md, %s' % (
        out_dir, ', '.join(names) or 'no plots'))


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    command = 'python -m bench.run ' + shlex.join(
        sys.argv[1:] if argv is None else argv)
    if args.report_only:
        with open(os.path.join(args.out, 'results.json')) as f:
            results = json.load(f)
        write(results, args.out, results.get('command', command))
        print(report.console_table(results))
        return 0
    if os.geteuid() != 0:
        print('bench.run needs root: it starts real LXC containers',
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING,
                        format='%(levelname)s %(name)s: %(message)s')
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    results = {'machine': machine.facts(REPO), 'config': vars(args),
               'command': command.strip(), 'note': args.note, 'errors': {},
               'images': {}, 'leaks': {}}
    log('machine: %(cpu_model)s, %(cores)s cores, %(memory_mib)s MiB, '
        'kernel %(kernel)s, LXC %(lxc_version)s, load %(loadavg_start)s'
        % results['machine'])
    results['warnings'] = host_warnings(args, results['machine'])
    for warning in results['warnings']:
        log('WARNING: %s' % warning)
    measure(args, results)
    results['machine']['loadavg_end'] = machine.loadavg()
    results['duration_seconds'] = time.monotonic() - started
    write(results, args.out, command.strip())
    print()
    print(report.console_table(results))
    left = {k: v for k, v in results['leaks'].get('after', {}).items() if v}
    print()
    print('cleanup check: %s' % (
        'nothing left (containers, container dirs, rootfs dirs, ID '
        'reservations, records, mounts, cgroups, snapshot uploads, API '
        'servers: none)' if not left
        else 'LEFT BEHIND: %s' % left))
    if results['errors']:
        print('failed families: %s' % ', '.join(results['errors']))
    return 1 if left or results['errors'] else 0


if __name__ == '__main__':
    sys.exit(main())
