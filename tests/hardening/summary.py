"""The figures of the hardening suite: recorded by each test, summed up here.

Each test prints its own ``HARDENING <name>: ...`` line and records the
same figures in ``<root>/figures.json``. ``tox -e hardening`` clears that
file before the run (``--reset``) and prints the summary after it, whether
the tests passed or not::

    python -m tests.hardening.summary [--reset]

No Nova import here: it runs in a second.
"""

import json
import os
import sys
import time

ROOT = os.environ.get('NOVALXC_HARDENING_ROOT', '/var/lib/novalxc-hardening')
FIGURES = os.path.join(ROOT, 'figures.json')


def _load():
    try:
        with open(FIGURES) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return {}


def record(name, line, **values):
    """Print ``HARDENING <name>: <line>`` and keep the values for the summary.

    :param values: JSON-serialisable figures (counts, ratios, lists).
    """
    text = 'HARDENING %s: %s' % (name, line)
    # On a line of its own: stestr passes non-subunit bytes through.
    sys.stdout.write('\n%s\n' % text)
    sys.stdout.flush()
    os.makedirs(ROOT, exist_ok=True)
    figures = _load()
    figures[name] = dict(values, line=line, time=time.time())
    tmp = FIGURES + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(figures, f, indent=1, sort_keys=True)
    os.rename(tmp, FIGURES)


def _sum(figures, key, field):
    return sum(v.get(field, 0) for k, v in figures.items()
               if k == key or k.startswith(key + '.'))


def summary_lines(figures):
    """The figures as text lines, the last one the one-line summary."""
    lines = ['HARDENING figures (%s):' % FIGURES]
    for name in sorted(figures):
        age = time.time() - figures[name].get('time', 0)
        lines.append('  %-28s %s  [%.0fs ago]' % (
            name, figures[name].get('line', ''), age))
    ratio = figures.get('neighbour', {}).get('ratio')
    mishaps = figures.get('mishaps', {})
    parts = [
        'spawns run %d' % (_sum(figures, 'concurrency', 'spawns') +
                           _sum(figures, 'api', 'boots')),
        'collisions %d' % _sum(figures, 'concurrency', 'collisions'),
        'leaks after %d crash points %d' % (
            _sum(figures, 'crashes', 'points'),
            _sum(figures, 'crashes', 'leaks')),
        'hostile cases refused %d (+%d unpacked harmlessly)' % (
            _sum(figures, 'hostile', 'refused'),
            _sum(figures, 'hostile', 'harmless')),
        'escape attempts refused %d/%d' % (
            _sum(figures, 'escapes', 'refused'),
            _sum(figures, 'escapes', 'attempts')),
        'neighbour latency ratio %s' % (
            'n/a' if ratio is None else '%.2f' % ratio),
        'mishaps as expected %d/%d' % (
            mishaps.get('mishaps', 0) - mishaps.get('wrong', 0),
            mishaps.get('mishaps', 0)),
    ]
    lines.append('HARDENING SUMMARY: ' + ', '.join(parts))
    return lines


def main(argv):
    if '--reset' in argv:
        try:
            os.unlink(FIGURES)
        except FileNotFoundError:
            pass
        return 0
    print('\n'.join(summary_lines(_load())))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
