"""The results table: every model on a real dataset, mean ± std over seeds.

    python bench/results.py --dataset ml100k                 # the README's table (seeds 1 2 3)
    python bench/results.py --dataset ml1m --seeds 1 --rows FAC,none,MMGCN,ID --no-grid --max_epoch 12
    python bench/results.py --dataset ml1m --jobs 6          # on a GPU: six runs side by side

Protocol.  Each row is trained with ``main.py`` (full ranking, training items
excluded) and reports test Precision/Recall/NDCG@10 and @20 at the epoch with
the best *validation* Recall@20.  Hyper-parameters come from a small grid
(GRID below), chosen on validation only: every grid point is run with the
first seed, the point with the best validation Recall@20 is kept, and the
remaining seeds are run with it.  The rows of SWEPT (``--rows FAC-tuned``)
take their first seed's grid from ``sweep.py`` instead (the published SLMRec
grid, 18 points; the study is kept in ``<out>/sweep-<study>.db``, so an
interrupted grid resumes), then run the other seeds the same way.  Everything else is the published default
of the model; training stops after ``--max_epoch`` epochs or ``--patience``
evaluations without validation improvement.

The table is printed and written to ``bench/out/results_<dataset>.md``; each
run's JSON line goes to ``bench/out/results_<dataset>.jsonl``.

``--select_on test`` is the protocol of papers whose code keeps the best
*test* epoch (DiffMM, the official SLMRec): every run picks its epoch, stops
early and the grid picks its point by test Recall@20.  Those numbers are
optimistic and are never mixed with the validation-selected ones: the runs
have their own names (``...-testsel``), and the table its own file
(``results_<dataset>-testsel.md``), title and footer; a record of the other
protocol in such a table is an error.

Every finished run also leaves its record in ``bench/out/runs/<run>.json``, and
a later invocation with the same ``--max_epoch`` and ``--patience`` reuses it
instead of training again: an interrupted table resumes where it stopped, and
runs made on different machines (copy the records over) make one table, whose
footer counts the runs per device.  ``--jobs N`` trains N runs at a time, each
in its own process: a GPU that one small run leaves mostly idle, or a CPU with
cores to spare (on 2 cores it only slows each run down).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import main  # noqa: E402
import registry  # noqa: E402


def _table():
    """Row key -> (label, flags), the learning-rate grid per model and the rows sweep.py tunes, from the
    models' registry entries (each declares its rows, its lr grid and any wider tuning grid)."""
    rows, grid, swept = {}, {}, {}
    for name, model in registry.entries().items():
        for key, (label, flags) in model.table_rows().items():
            rows[key] = (label, ['--model_name', name, *flags])
        grid[name] = {'l_r': list(model.lr_grid)}
        swept.update(model.tuning_grid)
    return rows, grid, swept


# Row key -> (label, flags); the grid, per model: learning rates around the published defaults (SLMRec 0.01,
# MMGCN 0.0005, the baselines 0.001; 0.01 is the rate RecBole's LightGCN chose on this split); rows tuned by
# sweep.py over a wider grid (SLMRec's published lr x ssl_temp x ssl_alpha).
ROWS, GRID, SWEPT = _table()
KS = (10, 20)
METRICS = (('precision', 'P'), ('recall', 'R'), ('ndcg', 'N'))


def grid_points(flags, use_grid=True):
    model = flags[flags.index('--model_name') + 1]
    if not use_grid:
        return [['--l_r', str(registry.entry(model).defaults['l_r'])]]
    (name, values), = GRID[model].items()
    return [[f'--{name}', str(v)] for v in values]


def run_tag(dataset, flags, seed, select_on='val'):
    dataset = os.path.basename(os.path.normpath(dataset))
    tag = f'{dataset}-{"-".join(f.strip("-") for f in flags)}-seed{seed}'.replace('/', '_')
    return tag + ('-testsel' if select_on == 'test' else '')


def protocol(record):
    """The split a run selected its epoch on: 'val', or 'test' (``--select_on test``, optimistic)."""
    return record['args'].get('select_on', 'val')


def earlier_record(path, args):
    """The record of a finished earlier run of the same protocol (same epochs, patience and selection), or None."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        record = json.load(f)
    same = (record['args']['num_epoch'] == args.max_epoch and record['args']['patience'] == args.patience
            and protocol(record) == args.select_on)
    return record if same and record['status'] in ('done', 'diverged') else None


def train(dataset, flags, seed, args, log):
    """One run of main.py; its record is kept in <out>/runs/<tag>.json, and a later call reuses it."""
    tag = run_tag(dataset, flags, seed, args.select_on)
    runs = os.path.join(args.out, 'runs')
    os.makedirs(runs, exist_ok=True)
    path = os.path.join(runs, tag)
    record = earlier_record(path + '.json', args)
    if record is not None:
        print(f'[reuse] {tag} ({record["device"]}, {record["wall_time_s"]:.0f}s)', flush=True)
        return record
    argv = ['--data_path', dataset, '--seed', str(seed), '--topK', '20', '10', '--num_epoch', str(args.max_epoch),
            '--patience', str(args.patience), '--select_on', args.select_on, '--save_file', path + '.jsonl',
            '--no-progress',
            '--checkpoint', path + '.last.pt', '--PATH_weight_save', path + '.best.pt', *flags]
    if args.no_cuda:
        argv.append('--no-cuda')
    if os.path.exists(path + '.jsonl'):
        os.remove(path + '.jsonl')
    if args.jobs == 1:
        code = main.main(argv)
    else:                                             # its own process, its output in <tag>.log
        with open(path + '.log', 'w') as out:
            code = subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *argv],
                                  stdout=out, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if code != 0 or not os.path.exists(path + '.jsonl'):
        raise SystemExit(f'run failed (exit {code}): main.py {" ".join(argv)}')
    with open(path + '.jsonl') as f:
        line = f.readlines()[-1]
    with open(log, 'a') as f:
        f.write(line)
    with open(path + '.json.tmp', 'w') as f:
        f.write(line)
    os.replace(path + '.json.tmp', path + '.json')       # a killed run leaves no half record
    record = json.loads(line)
    if record['best_epoch'] is None:
        raise SystemExit(f'run ended with no evaluation ({record["status"]}): main.py {" ".join(argv)}')
    print(f'[done] {tag}: {args.select_on} R@20 {record[args.select_on]["20"]["recall"]:.4f}, '
          f'best epoch {record["best_epoch"]}, '
          f'{record["wall_time_s"]:.0f}s on {record["device"]}', flush=True)
    return record


class Inline:
    """A pool of one that runs each task at once, in this process (the plain sequential path)."""

    def submit(self, fn, *a):
        future = Future()
        future.set_result(fn(*a))
        return future


def sweep_first_seed(key, flags, args):
    """A ``SWEPT`` row's grid with the first seed, run by sweep.py (resumable: its study is kept in
    <out>/sweep-<study>.db); returns the chosen point's flags and its trial's record."""
    import optuna
    import yaml
    name = os.path.basename(os.path.normpath(args.dataset))
    study = f'results-{name}-{key}-e{args.max_epoch}-p{args.patience}'
    space, storage = os.path.join(args.out, f'{study}.yaml'), 'sqlite:///' + os.path.join(args.out, f'sweep-{study}.db')
    with open(space, 'w') as f:
        yaml.safe_dump(SWEPT[key], f)
    dataset = os.path.abspath(args.dataset) if os.path.isdir(args.dataset) else args.dataset
    base = ['--data_path', dataset, '--seed', str(args.seeds[0]), '--topK', '20', '10', '--num_epoch',
            str(args.max_epoch), '--patience', str(args.patience), '--no-progress', *flags]
    command = [sys.executable, os.path.join(ROOT, 'sweep.py'), '--space', space, '--study', study, '--storage',
               storage, '--n_jobs', str(args.jobs), '--', *base, *(['--no-cuda'] if args.no_cuda else [])]
    if subprocess.run(command, cwd=args.out).returncode != 0:     # its trials in <out>/runs/sweep-<study>/
        raise SystemExit(f'sweep failed: {" ".join(command)}')
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    best = optuna.load_study(study_name=study, storage=storage).best_trial
    point = [x for k, v in best.params.items() for x in (f'--{k}', str(v))]
    record = os.path.join(best.user_attrs['folder'], 'results.jsonl')
    if not os.path.isfile(record):
        raise SystemExit(f'{record}: the chosen trial\'s results line is missing (sweep study {study})')
    with open(record) as f:
        return point, json.loads(f.readlines()[-1])


def row_runs(key, pool, args, log):
    """A row's grid with the first seed, then the other seeds at the chosen point."""
    label, flags = ROWS[key]
    if key in SWEPT:
        if args.select_on != 'val':
            raise SystemExit(f'{key}: a swept row is tuned by sweep.py, on validation only (no --select_on test)')
        point, first = sweep_first_seed(key, flags, args)
        rest = [pool.submit(train, args.dataset, flags + point, s, args, log) for s in args.seeds[1:]]
        return point, [first] + [f.result() for f in rest]
    points = grid_points(flags, args.grid)
    first = [pool.submit(train, args.dataset, flags + pt, args.seeds[0], args, log) for pt in points]
    first = {tuple(pt): f.result() for pt, f in zip(points, first)}
    split = args.select_on                            # the grid is chosen on the split the epochs are
    for pt, record in first.items():
        print(f'[grid] {label} {" ".join(pt)}: {split} R@20 {record[split]["20"]["recall"]:.4f}', flush=True)
    point = max(first, key=lambda pt: first[pt][split]['20']['recall'])
    rest = [pool.submit(train, args.dataset, flags + list(point), s, args, log) for s in args.seeds[1:]]
    return point, [first[point]] + [f.result() for f in rest]


def cell(values):
    return f'{np.mean(values):.4f} ± {np.std(values):.4f}' if len(values) > 1 else f'{values[0]:.4f}'


def main_(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--dataset', default='ml100k')
    p.add_argument('--seeds', type=int, nargs='+', default=[1, 2, 3])
    p.add_argument('--rows', default=','.join(k for k in ROWS if k not in SWEPT),
                   help=f'comma list of {", ".join(ROWS)} (default: all but the swept {", ".join(SWEPT)})')
    p.add_argument('--max_epoch', type=int, default=100)
    p.add_argument('--patience', type=int, default=10)
    p.add_argument('--no-cuda', dest='no_cuda', action='store_true')
    p.add_argument('--jobs', type=int, default=1,
                   help='runs at a time, each in its own process (a GPU that one small run leaves mostly idle)')
    p.add_argument('--no-grid', dest='grid', action='store_false',
                   help="no selection: each model's published learning rate (for a CPU-sized first look)")
    p.add_argument('--select_on', choices=('val', 'test'), default='val',
                   help="test: the papers' optimistic protocol (epochs and grid chosen on test), in a table of its "
                        "own (results_<dataset>-testsel.md)")
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'out'))
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    name = os.path.basename(os.path.normpath(args.dataset))     # a folder under Data/ or a path
    suffix = '-testsel' if args.select_on == 'test' else ''
    log = os.path.join(args.out, f'results_{name}{suffix}.jsonl')
    lines = ['**Selected on TEST (--select_on test): optimistic numbers, the protocol of papers whose code keeps '
             'the best test epoch; not comparable with the validation-selected table.**', ''] if suffix else []
    header = ('| model | ' + ' | '.join(f'{short}@{k}' for k in KS for _, short in METRICS)
              + ' | chosen | best epoch | s/run |')
    lines += [header, '|' + '---|' * (header.count('|') - 1)]
    started, first_data = time.time(), None
    keys = args.rows.split(',')
    unknown = [k for k in keys if k not in ROWS]
    if unknown:
        p.error(f'unknown row(s) {", ".join(unknown)}; choose from {", ".join(ROWS)}')
    if args.jobs == 1:
        rows = [row_runs(key, Inline(), args, log) for key in keys]
    else:                                             # rows side by side, at most --jobs runs at a time
        with ThreadPoolExecutor(args.jobs) as pool, ThreadPoolExecutor(len(keys)) as row_pool:
            rows = list(row_pool.map(lambda key: row_runs(key, pool, args, log), keys))
    for key, (point, records) in zip(keys, rows):
        mixed = [r['run'] for r in records if protocol(r) != args.select_on]
        if mixed:
            raise SystemExit(f'{", ".join(mixed)}: selected on another split than this table (--select_on '
                             f'{args.select_on}); the two protocols never share a table')
        first_data = first_data or records[0]['data']
        cols = [cell([r['test'][str(k)][m] for r in records]) for k in KS for m, _ in METRICS]
        epochs = '/'.join(str(r['best_epoch']) for r in records)
        seconds = np.mean([r['wall_time_s'] for r in records])
        lines.append(f'| {ROWS[key][0]} | ' + ' | '.join(cols) + f' | {" ".join(point)} | {epochs} | {seconds:.0f} |')
        print(lines[-1], flush=True)
    swept = {k: SWEPT[k] for k in keys if k in SWEPT}
    swept = f'grid by sweep.py {swept}, chosen on validation with seed {args.seeds[0]}; ' if swept else ''
    devices = Counter(r.get('device_name', r['device']) for _, records in rows for r in records)
    lines.append('')
    chosen = 'validation' if args.select_on == 'val' else 'TEST (--select_on test: optimistic)'
    lines.append(f'{first_data}. Test metrics at the best {chosen} Recall@20 epoch, '
                 f'mean ± std over seeds {" ".join(map(str, args.seeds))}; '
                 + (f'grid {GRID}, chosen on {chosen} with seed {args.seeds[0]}; ' if args.grid
                    else 'no grid: published learning rates; ')
                 + swept
                 + f'at most {args.max_epoch} epochs, patience {args.patience}; '
                 f'runs by device: {", ".join(f"{d} {n}" for d, n in sorted(devices.items()))}; '
                 f'total {time.time() - started:.0f}s.')
    table = '\n'.join(lines)
    with open(os.path.join(args.out, f'results_{name}{suffix}.md'), 'w') as f:
        f.write(table + '\n')
    print(table)


if __name__ == '__main__':
    main_()
