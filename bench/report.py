"""The figures against their targets, as rows and as a markdown page.

Every figure is derived here from the samples in the results dict (the same
dict that is written as JSON), so the table can be rebuilt from a saved
results.json with ``python -m bench.run --report-only``.
"""

from bench import harness
from bench.stats import ratio
from bench.stats import summary

MIB = 2 ** 20

# Targets of issue 6: what we work toward, not assertions.
SPAWN_OVERHEAD_MAX = 0.100        # s, driver - raw at the median
SIZE_RATIO_MAX = 1.2              # 1 GB spawn / busybox spawn
BOOT_MAX = 1.5                    # s, spawn to systemd running (median)
RATE_MIN = 5.0                    # create+start per second
BATCH_RATIO_MIN = 0.8             # last batch / first batch
DEBIAN_MEMORY_MAX = 24 * MIB      # bytes per idle container
DESTROY_MAX = 1.0                 # s, Debian destroy (median)
API_MEDIAN_MAX = 2.0              # s, POST to ACTIVE at concurrency 10
API_P95_MAX = 4.0


def _ms(seconds):
    return '—' if seconds is None else '%.0f ms' % (seconds * 1e3)


def _s(seconds):
    return '—' if seconds is None else '%.2f s' % seconds


def _mib(nbytes):
    return '—' if nbytes is None else '%.1f MiB' % (nbytes / MIB)


def _met(ok):
    if ok is None:
        return 'n/a'
    return 'yes' if ok else 'no'


def _row(item, metric, target, measured, met):
    return {'item': item, 'metric': metric, 'target': target,
            'measured': measured, 'met': met}


def _failed(family, results):
    err = results.get('errors', {}).get(family)
    if err:
        return 'failed: %s' % err.strip().splitlines()[-1][:160]
    return 'not run'


def spawn_rows(results):
    rows = []
    spawn = results.get('spawn')
    labels = {k: v['label'] for k, v in results.get('images', {}).items()}
    if not spawn:
        return [_row(1, 'Spawn to RUNNING, image cached', '≤ +100 ms over '
                     'raw at the median', _failed('spawn', results), 'n/a')]
    medians = {}
    for key in ('busybox', 'debian'):
        if key not in spawn:
            continue
        d = summary(s['spawn'] for s in spawn[key]['driver'])
        r = summary(s['spawn'] for s in spawn[key]['raw'])
        medians[key] = d['median']
        over = d['median'] - r['median']
        rows.append(_row(
            1, 'Spawn to RUNNING, %s: driver.spawn vs raw lxc-start -d '
            '(n=%d each)' % (labels.get(key, key), d['n']),
            '≤ +100 ms over raw at the median',
            'driver %s (p95 %s), raw %s (p95 %s): **%+.0f ms**' % (
                _ms(d['median']), _ms(d['p95']), _ms(r['median']),
                _ms(r['p95']), over * 1e3),
            _met(over <= SPAWN_OVERHEAD_MAX)))
    for key in spawn:
        medians.setdefault(key, summary(
            s['spawn'] for s in spawn[key]['driver'])['median'])
    if 'synthetic' in medians and 'busybox' in medians:
        big = ratio(medians['synthetic'], medians['busybox'])
        raw_big = ratio(
            summary(s['spawn'] for s in spawn['synthetic']['raw'])['median'],
            summary(s['spawn'] for s in spawn['busybox']['raw'])['median'])
        rows.append(_row(
            2, 'Image-size independence: driver spawn median, 1 GB root / '
            '2 MB busybox root',
            '≤ 1.2x',
            '**%.2fx** (busybox %s, Debian %s, 1 GB %s; raw LXC %.2fx)' % (
                big, _ms(medians['busybox']), _ms(medians.get('debian')),
                _ms(medians['synthetic']), raw_big or 0),
            _met(big <= SIZE_RATIO_MAX)))
    return rows


def boot_rows(results):
    boot = results.get('boot')
    if not boot:
        return [_row(3, 'Boot to service, Debian 12', '< 1.5 s',
                     _failed('boot', results), 'n/a')], []
    d = summary(s['boot'] for s in boot['driver'])
    r = summary(s['boot'] for s in boot['raw'])
    boot_row = _row(
        3, 'Boot to service, Debian 12: spawn to systemd running/degraded '
        '(n=%d)' % d['n'], '< 1.5 s (median)',
        'driver **%s** (p95 %s), raw lxc-start %s (p95 %s)' % (
            _s(d['median']), _s(d['p95']), _s(r['median']), _s(r['p95'])),
        _met(d['median'] < BOOT_MAX))
    dd = summary(s['destroy'] for s in boot['driver'])
    rd = summary(s['destroy'] for s in boot['raw'])
    destroy_row = _row(
        6, 'Destroy with cleanup, booted Debian 12 (n=%d)' % dd['n'],
        '< 1 s (median)',
        'driver **%s** (p95 %s), raw lxc-stop -k %s' % (
            _ms(dd['median']), _ms(dd['p95']), _ms(rd['median'])),
        _met(dd['median'] < DESTROY_MAX))
    return [boot_row], [destroy_row]


def destroy_rows(results):
    rows = []
    spawn = results.get('spawn') or {}
    for key in ('busybox', 'debian'):
        if key not in spawn:
            continue
        dd = summary(s['destroy'] for s in spawn[key]['driver'])
        rd = summary(s['destroy'] for s in spawn[key]['raw'])
        rows.append(_row(
            6, 'Destroy with cleanup right after spawn, %s (n=%d)' % (
                key, dd['n']), '—',
            'driver %s (p95 %s), raw lxc-stop -k %s' % (
                _ms(dd['median']), _ms(dd['p95']), _ms(rd['median'])),
            'n/a'))
    for key, t in (results.get('throughput') or {}).items():
        d = t['driver']
        rows.append(_row(
            6, 'Destroy %d %s at concurrency %d' % (
                len(d['destroy_seconds']), key,
                results['config']['concurrency']), '—',
            '%.1f/s; each: median %s, p95 %s' % (
                d['destroy_rate'] or 0,
                _ms(summary(d['destroy_seconds'])['median']),
                _ms(summary(d['destroy_seconds'])['p95'])),
            'n/a'))
    return rows


def throughput_rows(results):
    rows = []
    tp = results.get('throughput')
    if not tp:
        return [_row(4, 'Throughput, create+start at concurrency 10',
                     '≥ 5/s, last batch ≥ 0.8x first',
                     _failed('throughput', results), 'n/a')]
    for key, t in tp.items():
        d, r = t['driver'], t['raw']
        batches = d['batch_rates']
        last_first = ratio(batches[-1], batches[0]) if batches else None
        started = len(d['spawn_seconds']) + len(d['errors'])
        ok = (not d['errors'] and d['running'] == started and
              d['rate'] is not None and d['rate'] >= RATE_MIN and
              last_first is not None and last_first >= BATCH_RATIO_MIN)
        rows.append(_row(
            4, 'Throughput, %d create+start of %s at concurrency %d' % (
                started, key, results['config']['concurrency']),
            '≥ 5/s, last batch ≥ 0.8x first',
            '**%.1f/s**; batches of %d: first %.1f/s, last %.1f/s '
            '(**%.2fx**); RUNNING afterwards %d/%d; raw lxc-start %.1f/s '
            '(RUNNING afterwards %d/%d); %s' % (
                d['rate'] or 0, results['config']['batch'],
                batches[0] if batches else 0,
                batches[-1] if batches else 0, last_first or 0,
                d['running'], started, r['rate'] or 0, r['running'],
                len(r['spawn_seconds']) + len(r['errors']),
                _errors(d['errors'])),
            _met(ok)))
    return rows


def density_rows(results):
    rows = []
    dens = results.get('density')
    if not dens:
        return [_row(5, 'Density, memory per idle container',
                     'Debian ≤ 24 MiB', _failed('density', results),
                     'n/a')]
    for key, sides in dens.items():
        d, r = sides['driver'], sides['raw']
        du = summary(c['usage'] for c in d['containers'])
        ru = summary(c['usage'] for c in r['containers'])
        target = '≤ 24 MiB' if key == 'debian' else '—'
        met = _met(du['median'] <= DEBIAN_MEMORY_MAX) \
            if key == 'debian' else 'n/a'
        rows.append(_row(
            5, 'Memory per idle container, %s (%d containers, cgroup '
            'memory.usage_in_bytes)' % (key, du['n']), target,
            'driver **%s** median (max %s), raw %s; host MemAvailable drop '
            '%s per container' % (
                _mib(du['median']), _mib(du['max']), _mib(ru['median']),
                _mib(d['mem_available_drop_per_container'])),
            met))
    return rows


def _errors(errors):
    """'N errors (cause xK, ...)' with each distinct cause once."""
    if not errors:
        return '0 errors'
    causes = {}
    for e in errors:
        # "went to ERROR: <fault>" carries the cause; else the repr.
        cause = e.split('ERROR: ')[-1].split('.')[0].strip(' \'")')[:80]
        causes[cause] = causes.get(cause, 0) + 1
    return '%d errors (%s)' % (len(errors), ', '.join(
        '%s x%d' % (c, n) for c, n in sorted(causes.items())))


def _busy_percent(meter):
    """Share of the host's CPU capacity busy over a bench.cpu interval."""
    return 100 * meter['host_busy'] / max(1e-9,
                                          meter['wall'] * meter['cores'])


def api_rows(results):
    api = results.get('api')
    target = 'median < 2 s, p95 < 4 s at concurrency 10'
    if not api:
        return [_row(7, 'Nova API: POST /servers to ACTIVE', target,
                     _failed('api', results), 'n/a')]
    if 'skipped' in api:
        return [_row(7, 'Nova API: POST /servers to ACTIVE', target,
                     'skipped: %s' % api['skipped'], 'n/a')]
    rows = []
    for conc, series in sorted(api['series'].items(), key=lambda x:
                               int(x[0])):
        s = summary(x['seconds'] for x in series['samples'])
        ok = None
        if conc == '10':
            ok = (not series['errors'] and s['median'] is not None and
                  s['median'] < API_MEDIAN_MAX and s['p95'] < API_P95_MAX)
        build = summary(x['compute_build'] for x in series['samples']
                        if 'compute_build' in x)['median']
        spawn = summary(x['compute_spawn'] for x in series['samples']
                        if 'compute_spawn' in x)['median']
        inside = ('; nova-compute medians: build %s, of which spawn %s' % (
            _s(build), _s(spawn)) if build is not None else '')
        meter = series.get('cpu')
        if meter:
            inside += '; host CPU %.0f%% busy' % _busy_percent(meter)
        rows.append(_row(
            7, 'Nova API: POST /servers to ACTIVE, %s, concurrency %s '
            '(n=%d)' % (api['image'], conc, s['n']),
            target if conc == '10' else '—',
            'median **%s**, p95 **%s**%s; %s' % (
                _s(s['median']), _s(s['p95']), inside,
                _errors(series['errors'])),
            _met(ok)))
    return rows


def cpu_section(results):
    """Markdown lines: whose CPU time filled the host during item 7."""
    series = (results.get('api') or {}).get('series') or {}
    meters = {c: x['cpu'] for c, x in series.items() if x.get('cpu')}
    if not meters:
        return []
    concs = sorted(meters, key=int)
    last = meters[concs[-1]]
    booted = {c: max(1, len(series[c]['samples'])) for c in concs}
    names = sorted(last['services'], key=lambda n: -last['services'][n])
    body = []
    for name in names + ['benchmark client', 'everything else']:
        row = [name]
        for c in concs:
            m = meters[c]
            value = {'benchmark client': m['client'],
                     'everything else': m['other']}.get(
                name, m['services'].get(name, 0.0))
            row.append('%.1f s (%.0f ms per server)'
                       % (value, 1000 * value / booted[c]))
        if row[1:] == ['0.0 s (0 ms per server)'] * len(concs):
            continue
        body.append(row)
    body.append(['**host busy**'] + [
        '**%.1f s of %.1f s** (%.0f%% of %d cores)' % (
            meters[c]['host_busy'], meters[c]['wall'] * meters[c]['cores'],
            _busy_percent(meters[c]), meters[c]['cores']) for c in concs])
    return ['## Where the CPU went during item 7', '',
            'CPU seconds (user + system) of each service of the all-in-one '
            'cloud with its worker processes and the commands they ran, '
            'while each series booted and deleted its servers; nova-compute '
            'includes the driver and its lxc-*, losetup and mkfs.ext4 '
            'commands. "Everything else" is the containers\' own '
            'processes, LXC monitors and the kernel.', '',
            _md_table(['service'] + ['concurrency %s (%d servers, %.0f s)'
                                     % (c, booted[c], meters[c]['wall'])
                                     for c in concs], body), '']


def rows(results):
    """Every row of the main table, in the issue's order (list of dict)."""
    boot, booted_destroy = boot_rows(results)
    out = (spawn_rows(results) + boot + throughput_rows(results) +
           density_rows(results) + booted_destroy + destroy_rows(results) +
           api_rows(results))
    return sorted(out, key=lambda r: r['item'])


def phase_table(samples, leaves, key='phases', total='spawn'):
    """Median seconds per phase of driver samples, plus what is left."""
    samples = [s for s in samples if s.get(key)]
    if not samples:
        return []
    out = []
    for leaf in leaves:
        out.append((leaf, summary(s[key].get(leaf, 0.0)
                                  for s in samples)['median']))
    rest = summary(s[total] - sum(s[key].get(leaf, 0.0) for leaf in leaves)
                   for s in samples)['median']
    out.append(('other (Python, mkdir, config, locks)', rest))
    out.append(('total', summary(s[total] for s in samples)['median']))
    return out


def command_line(samples, key='phases'):
    """'command X median' for every command the driver ran, as text."""
    samples = [s[key] for s in samples if s.get(key)]
    names = sorted({k for p in samples for k in p if
                    k.startswith('command ')})
    return ', '.join('%s %gx %s' % (
        name[len('command '):],
        summary(p.get('calls ' + name, 0) for p in samples)['median'],
        _ms(summary(p.get(name, 0.0) for p in samples)['median']))
        for name in names)


def _md_table(header, body):
    lines = ['| ' + ' | '.join(header) + ' |',
             '|' + '|'.join(' --- ' for _ in header) + '|']
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in body]
    return '\n'.join(lines)


def markdown(results, command, plots):
    """The RESULTS.md page: machine, table of targets, details, plots."""
    m = results['machine']
    out = ['# novalxcdriver benchmark results', '',
           'Run on %s by `%s`, %.0f minutes.' % (
               m['date'], command, results.get('duration_seconds', 0) / 60),
           '',
           'Machine: %s, %s cores, %d MiB, kernel %s, %s (Debian %s), '
           'LXC %s, cgroup %s, Python %s, nova %s, commit %s. Load average '
           'at start %s, at end %s.' % (
               m['cpu_model'], m['cores'], m['memory_mib'], m['kernel'],
               m['os'], m['debian_version'], m['lxc_version'], m['cgroup'],
               m['python'], m['nova'], m['commit'],
               ' '.join('%.2f' % x for x in m['loadavg_start']),
               ' '.join('%.2f' % x for x in m.get('loadavg_end', []))),
           '']
    if results.get('note'):
        out += ['**Note:** %s' % results['note'], '']
    for warning in results.get('warnings', []):
        out += ['**Warning:** %s.' % warning, '']
    out += ['Raw LXC is the physical floor: the same container (same '
            'lxc.conf, root disk and idmapped overlay root on the same '
            'cached image, made by `driver.spawn(power_on=False)` before '
            'the clock starts), started with `lxc-start -d` and stopped '
            'with `lxc-stop -k`. Driver and raw samples alternate (ABAB). '
            'Targets are what we work toward, not assertions.', '',
            _md_table(('#', 'what', 'target', 'measured', 'met'),
                      [(r['item'], r['metric'], r['target'], r['measured'],
                        r['met']) for r in rows(results)]), '']
    if m.get('sysctls'):
        out += ['Host limits: %s.' % ', '.join(
            '%s = %s' % kv for kv in sorted(m['sysctls'].items())), '']
    if m.get('lxc_hooks'):
        out += ['The host\'s LXC config adds these hooks (common.conf.d): '
                '%s. The driver\'s lxc.conf, which the raw side shares, '
                'clears them and binds lxcfs\'s files itself.' % ', '.join(
                    '`%s`' % h for h in m['lxc_hooks']), '']
    images = results.get('images', {})
    if images:
        out += ['## Images', '',
                _md_table(('image', 'tarball', 'unpacked'),
                          [(v['label'], _mib(v['tarball_bytes']),
                            _mib(v.get('unpacked_bytes')))
                           for v in images.values()]), '']
    spawn = results.get('spawn') or {}
    if spawn:
        out += ['## Where a spawn and a destroy go (driver, medians)', '']
        for key in spawn:
            table = phase_table(spawn[key]['driver'], harness.SPAWN_LEAVES)
            dtable = phase_table(spawn[key]['driver'],
                                 harness.DESTROY_LEAVES,
                                 key='destroy_phases', total='destroy')
            out += ['%s spawn: ' % key + ', '.join(
                '%s %s' % (k, _ms(v)) for k, v in table) + '.', '',
                '%s destroy: ' % key + ', '.join(
                    '%s %s' % (k, _ms(v)) for k, v in dtable) + '.', '',
                '%s commands run (total per spawn / per destroy): %s / %s.'
                % (key, command_line(spawn[key]['driver']),
                   command_line(spawn[key]['driver'], 'destroy_phases')),
                '']
    for key, t in (results.get('throughput') or {}).items():
        d = t['driver']
        if not d.get('spawn_phases'):
            continue
        if not spawn:
            out += ['## Where a spawn and a destroy go (driver, medians)',
                    '']
        table = phase_table(
            [{'phases': p, 'spawn': s} for p, s in
             zip(d['spawn_phases'], d['spawn_seconds'])],
            harness.SPAWN_LEAVES)
        dtable = phase_table(
            [{'phases': p, 'destroy': s} for p, s in
             zip(d['destroy_phases'], d['destroy_seconds'])],
            harness.DESTROY_LEAVES, total='destroy')
        conc = results['config']['concurrency']
        samples = [{'phases': p} for p in d['spawn_phases']]
        dsamples = [{'phases': p} for p in d['destroy_phases']]
        out += ['%s spawn at concurrency %d: ' % (key, conc) + ', '.join(
            '%s %s' % (k, _ms(v)) for k, v in table) + '.', '',
            '%s destroy at concurrency %d: ' % (key, conc) + ', '.join(
                '%s %s' % (k, _ms(v)) for k, v in dtable) + '.', '',
            '%s commands run at concurrency %d (per spawn / per destroy): '
            '%s / %s.' % (key, conc, command_line(samples),
                          command_line(dsamples)), '']
    out += cpu_section(results)
    leaks = results.get('leaks', {}).get('after')
    if leaks is not None:
        left = {k: v for k, v in leaks.items() if v}
        out += ['## Cleanup', '',
                'After the run: %s.' % (
                    'nothing left (no container, container directory, '
                    'rootfs, ID reservation, mount, cgroup or API server)'
                    if not left else 'LEFT BEHIND: %s' % left), '']
    if plots:
        out += ['## Plots', '']
        out += ['![%s](%s)' % (name, name) for name in plots]
        out += ['']
    out += ['Every sample and the machine facts are in `results.json`.', '']
    return '\n'.join(out)


def console_table(results):
    """The main table as plain text for the terminal."""
    lines = []
    for r in rows(results):
        lines.append('%s. %s\n   target %s | measured %s | met: %s' % (
            r['item'], r['metric'], r['target'],
            r['measured'].replace('**', ''), r['met']))
    return '\n'.join(lines)
