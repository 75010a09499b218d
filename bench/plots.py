"""PNG plots of a run's samples (matplotlib, no display needed)."""

import os
import random

from bench import report
from bench.stats import percentile
from bench.stats import summary

DRIVER_COLOR = '#1f77b4'
RAW_COLOR = '#ff7f0e'


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _strip_box(ax, groups, ylabel):
    """Box plots with every sample drawn over them (jittered).

    :param groups: list of (label, values, color).
    """
    rng = random.Random(0)  # the same jitter on every run
    positions = range(1, len(groups) + 1)
    boxes = ax.boxplot([g[1] for g in groups], positions=list(positions),
                       widths=0.6, showfliers=False, patch_artist=True,
                       medianprops={'color': 'black'})
    for patch, (_label, _values, color) in zip(boxes['boxes'], groups):
        patch.set_facecolor(color)
        patch.set_alpha(0.3)
    for pos, (_label, values, color) in zip(positions, groups):
        ax.scatter([pos + rng.uniform(-0.18, 0.18) for _ in values], values,
                   s=10, color=color, alpha=0.8, zorder=3)
    ax.set_xticks(list(positions))
    ax.set_xticklabels([g[0] for g in groups])
    ax.set_ylabel(ylabel)
    ax.grid(axis='y', alpha=0.3)


def _save(plt, fig, path):
    """Lay out, write (110 dpi) and close one figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def spawn_latency(plt, results, path):
    spawn = results['spawn']
    keys = [k for k in ('busybox', 'debian', 'synthetic') if k in spawn]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 4.5),
                             sharey=True)
    axes = axes if len(keys) > 1 else [axes]
    for ax, key in zip(axes, keys):
        d = [s['spawn'] * 1e3 for s in spawn[key]['driver']]
        r = [s['spawn'] * 1e3 for s in spawn[key]['raw']]
        _strip_box(ax, [('driver.spawn', d, DRIVER_COLOR),
                        ('raw lxc-start -d', r, RAW_COLOR)],
                   'milliseconds' if ax is axes[0] else '')
        ax.set_ylim(bottom=0)
        ax.set_title('%s\nmedian %.0f vs %.0f ms (%+.0f ms)' % (
            results['images'][key]['label'], summary(d)['median'],
            summary(r)['median'],
            summary(d)['median'] - summary(r)['median']), fontsize=10)
    fig.suptitle('Spawn to RUNNING, image cached (%d runs each)'
                 % len(spawn[keys[0]]['driver']))
    _save(plt, fig, path)


def spawn_vs_size(plt, results, path):
    spawn = results['spawn']
    images = results['images']
    keys = sorted(spawn, key=lambda k: images[k]['unpacked_bytes'])
    sizes = [images[k]['unpacked_bytes'] / 2 ** 20 for k in keys]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    top = 0
    for side, color in (('driver', DRIVER_COLOR), ('raw', RAW_COLOR)):
        values = [[s['spawn'] * 1e3 for s in spawn[k][side]] for k in keys]
        top = max([top] + [percentile(v, 95) for v in values])
        med = [summary(v)['median'] for v in values]
        low = [m - percentile(v, 5) for m, v in zip(med, values)]
        high = [percentile(v, 95) - m for m, v in zip(med, values)]
        ax.errorbar(sizes, med, yerr=[low, high], marker='o', capsize=4,
                    color=color, label='%s (median, p5-p95)' % (
                        'driver.spawn' if side == 'driver'
                        else 'raw lxc-start -d'))
    base = summary(s['spawn'] * 1e3 for s in spawn['busybox']['driver'])
    ax.axhline(base['median'] * report.SIZE_RATIO_MAX, color='grey', ls='--',
               label='target: 1.2x busybox driver median')
    for k, x in zip(keys, sizes):
        ax.annotate(images[k]['label'], (x, 0), textcoords='offset points',
                    xytext=(0, 4), ha='center', fontsize=8,
                    xycoords=('data', 'axes fraction'))
    ax.set_xscale('log')
    # Room for the image labels at both ends.
    ax.set_xlim(min(sizes) / 2, max(sizes) * 2)
    ax.set_xlabel('unpacked image size (MiB, log scale)')
    ax.set_ylabel('milliseconds')
    # Headroom above the bars for the legend.
    ax.set_ylim(0, max(top, base['median'] * report.SIZE_RATIO_MAX) * 1.45)
    ax.set_title('Spawn latency against image size')
    ax.legend(fontsize=8, loc='upper left')
    ax.grid(alpha=0.3)
    _save(plt, fig, path)


def throughput(plt, results, path):
    from matplotlib import ticker
    tp = results['throughput']
    fig, axes = plt.subplots(1, len(tp), figsize=(5.5 * len(tp), 4.5),
                             squeeze=False)
    for ax, (key, sides) in zip(axes[0], tp.items()):
        for side, color in (('driver', DRIVER_COLOR), ('raw', RAW_COLOR)):
            rates = sides[side]['batch_rates']
            ax.plot(range(1, len(rates) + 1), rates, marker='o', color=color,
                    label='%s: %.1f/s overall' % (
                        'driver.spawn' if side == 'driver'
                        else 'raw lxc-start -d', sides[side]['rate'] or 0))
        ax.axhline(report.RATE_MIN, color='grey', ls='--',
                   label='target: 5/s')
        ax.set_xlabel('batch of %d (in order of completion)'
                      % results['config']['batch'])
        ax.set_ylabel('create+start per second')
        ax.set_ylim(bottom=0)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.set_title('%s: %d at concurrency %d' % (
            key, len(sides['driver']['spawn_seconds']),
            results['config']['concurrency']))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    _save(plt, fig, path)


def boot_destroy(plt, results, path):
    boot = results['boot']
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 4.5))
    _strip_box(ax1, [('driver', [s['boot'] for s in boot['driver']],
                      DRIVER_COLOR),
                     ('raw', [s['boot'] for s in boot['raw']], RAW_COLOR)],
               'seconds')
    ax1.axhline(report.BOOT_MAX, color='grey', ls='--', label='target')
    ax1.set_ylim(bottom=0)
    ax1.set_title('Debian 12: start to systemd running', fontsize=10)
    ax1.legend(fontsize=8)
    _strip_box(ax2, [('driver.destroy', [s['destroy'] for s in
                                         boot['driver']], DRIVER_COLOR),
                     ('raw lxc-stop -k', [s['destroy'] for s in boot['raw']],
                      RAW_COLOR)], 'seconds')
    ax2.axhline(report.DESTROY_MAX, color='grey', ls='--', label='target')
    ax2.set_ylim(bottom=0)
    ax2.set_title('Debian 12 booted: destroy with cleanup', fontsize=10)
    ax2.legend(fontsize=8)
    _save(plt, fig, path)


def density(plt, results, path):
    dens = results['density']
    groups = []
    for key in dens:
        for side, color in (('driver', DRIVER_COLOR), ('raw', RAW_COLOR)):
            groups.append(('%s\n%s' % (key, side),
                           [c['usage'] / 2 ** 20 for c in
                            dens[key][side]['containers']], color))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _strip_box(ax, groups, 'MiB (cgroup memory.usage_in_bytes)')
    ax.axhline(report.DEBIAN_MEMORY_MAX / 2 ** 20, color='grey', ls='--',
               label='target for Debian: 24 MiB')
    ax.set_ylim(bottom=0)
    ax.set_title('Memory per idle container')
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def api(plt, results, path):
    series = results['api']['series']
    groups = [('concurrency %s' % c, [s['seconds'] for s in v['samples']],
               DRIVER_COLOR) for c, v in sorted(series.items(),
                                                key=lambda x: int(x[0]))]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    _strip_box(ax, groups, 'seconds')
    ax.axhline(report.API_MEDIAN_MAX, color='grey', ls='--',
               label='target median (c=10)')
    ax.axhline(report.API_P95_MAX, color='grey', ls=':',
               label='target p95 (c=10)')
    ax.set_ylim(bottom=0)
    ax.set_title('Nova API: POST /servers to ACTIVE (%s)'
                 % results['api']['image'])
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def snapshot(plt, results, path):
    """Per size: the times side by side, and the stalls against 100 ms."""
    from matplotlib import ticker
    sizes = results['snapshot']['sizes']
    figures = [report.snapshot_figures(size) for size in sizes]
    xs = range(len(sizes))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))

    def lines(ax, series, scale):
        for key, name, color in series:
            ys = [None if f[key] is None else f[key] * scale
                  for f in figures]
            ax.plot(xs, ys, marker='o', color=color, label=name)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([size['label'] for size in sizes])
        ax.set_xlabel('data written in the server')
        ax.set_yscale('log')
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter('%g'))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.grid(alpha=0.3, which='both')

    lines(ax1, (('snapshot', 'driver.snapshot', DRIVER_COLOR),
                ('plain', 'plain tar | zstd -T0 -3', RAW_COLOR),
                ('sts', 'stop-tar-start (nova-lxd)', '#d62728'),
                ('unshelve', 'unshelve (fetch, unpack, spawn)', '#2ca02c')),
          1)
    ax1.set_ylabel('seconds (median)')
    ax1.set_title('Snapshot of a running server, and unshelve', fontsize=10)
    ax1.legend(fontsize=8)
    lines(ax2, (('stall', 'driver.snapshot: worst gap', DRIVER_COLOR),
                ('control', 'plain tar | zstd: worst gap', RAW_COLOR),
                ('downtime', 'stop-tar-start: downtime', '#d62728')), 1e3)
    ax2.axhline(report.SNAPSHOT_STALL_MAX * 1e3, color='grey', ls='--',
                label='target: 100 ms')
    ax2.set_ylabel('ms between the 10 ms ticks of a writer inside')
    ax2.set_title('Longest write stall', fontsize=10)
    ax2.legend(fontsize=8)
    _save(plt, fig, path)


def migration(plt, results, path):
    """Per transport: driver and floor against size, the goal's line."""
    sizes = results['migration']['sizes']
    names = [n for n in report.MIGRATION_TRANSPORTS
             if any(n in s['transports'] for s in sizes)]
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.5),
                             squeeze=False)
    xs = list(range(len(sizes)))
    for ax, name in zip(axes[0], names):
        figures = [report.migration_figures(s['transports'][name])
                   if name in s['transports'] else None for s in sizes]

        def ys(key):
            return [None if f is None else f[key] for f in figures]
        ax.plot(xs, ys('driver'), marker='o', color=DRIVER_COLOR,
                label='driver: cold migration')
        ax.plot(xs, ys('floor'), marker='o', color=RAW_COLOR,
                label='floor: rsync -S')
        ax.plot(xs, [None if f is None or f['floor'] is None else
                     report.MIGRATION_RATIO_MAX * f['floor'] +
                     report.MIGRATION_SLACK for f in figures],
                color='grey', ls='--', label='goal: 1.3x floor + 2 s')
        ax.plot(xs, ys('copy'), marker='.', color=DRIVER_COLOR, ls=':',
                label="driver: its copy alone")
        ax.set_xticks(xs)
        ax.set_xticklabels([s['label'] for s in sizes])
        ax.set_xlabel('data written in the server')
        ax.set_ylabel('seconds (median)')
        ax.set_title(report.MIGRATION_TRANSPORTS[name], fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(plt, fig, path)


def draw(results, out_dir, log=print):
    """Draw every plot the results have data for.

    :returns: list of PNG file names written in out_dir (empty without
        matplotlib).
    """
    try:
        plt = _pyplot()
    except ImportError:
        log('matplotlib is not installed: no plots (pip install -r '
            'bench-requirements.txt)')
        return []
    wanted = [
        ('spawn_latency.png', spawn_latency, results.get('spawn')),
        ('spawn_vs_image_size.png', spawn_vs_size,
         results.get('spawn') and 'busybox' in results['spawn']),
        ('boot_and_destroy.png', boot_destroy, results.get('boot')),
        ('throughput.png', throughput, results.get('throughput')),
        ('density.png', density, results.get('density')),
        ('api.png', api, (results.get('api') or {}).get('series')),
        ('snapshot.png', snapshot, (results.get('snapshot') or {}).get(
            'sizes')),
        ('migration.png', migration, (results.get('migration') or {}).get(
            'sizes')),
    ]
    written = []
    for name, draw_one, have in wanted:
        if not have:
            continue
        draw_one(plt, results, os.path.join(out_dir, name))
        written.append(name)
    return written
