"""The results table: every model on a real dataset, mean ± std over seeds.

    python bench/results.py --dataset ml100k                 # the README's table (seeds 1 2 3)
    python bench/results.py --dataset ml1m --seeds 1 --rows FAC,none,MMGCN,ID --no-grid --max_epoch 12
    python bench/results.py --dataset ml1m --jobs 6          # on a GPU: six runs side by side
    python bench/results.py --dataset tiktok                 # every model with its tuned configs/tiktok/ file

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

Tuned configurations.  Where ``configs/<dataset>/<Model>.yaml`` exists (``bench/tune.py``: sweep.py on
validation over the model's search grid), a row of that model runs with it (``--config``) and no grid, its
epochs and patience from the file unless ``--max_epoch``/``--patience`` are given; the default rows are
then one per model.  ``--no-tuned`` ignores the files.

The table is printed and written to ``bench/out/results_<dataset>.md`` (the published numbers beside ours
where ``bench/published.py`` has them, and each row's seconds per epoch), as a LaTeX ``tabular``
(``results_<dataset>.tex``) and as a bar chart of Recall@20 and NDCG@20 with error bars
(``results_<dataset>.png``, ``bench/report.py``); each run's JSON line goes to
``bench/out/results_<dataset>.jsonl``.  Where runs of the same rows selected on test exist
(``--select_on test`` records beside them), their Recall@20 is a column of its own, labelled optimistic.

``--select_on test`` makes those records: the protocol of papers whose code keeps the best *test* epoch
(DiffMM, the official SLMRec), whose numbers are optimistic.  Each row runs every seed at a point fixed without
looking at test: its tuned configuration, else its published learning rate (no grid is chosen on test; a
``sweep.py`` row is refused).  The records are named ``<run>-testsel.json``, never reused by or mixed into the
validation-selected runs; the runs are listed, labelled, in ``results_<dataset>-testsel.md``, and a later
``bench/results.py`` without the flag shows their Recall@20 in the table's labelled column where the row's point
is the same (a tuned configuration, or a chosen learning rate equal to the published one).

Every finished run also leaves its record in ``bench/out/runs/<run>.json``, and
a later invocation with the same ``--max_epoch`` and ``--patience`` reuses it
instead of training again: an interrupted table resumes where it stopped, and
runs made on different machines (copy the records over) make one table, whose
footer counts the runs per device.  ``--jobs N`` trains N runs at a time, each
in its own process: a GPU that one small run leaves mostly idle, or a CPU with
cores to spare (on 2 cores it only slows each run down).
"""
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
import report  # noqa: E402
from published import PUBLISHED, SOURCES  # noqa: E402


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
KS, METRICS = report.KS, report.METRICS
CONFIGS = os.path.join(ROOT, 'configs')


def model_of(flags):
    return flags[flags.index('--model_name') + 1]


def tuned_config(args, flags):
    """``configs/<dataset>/<Model>.yaml`` of the row's model, or None (none, or ``--no-tuned``)."""
    path = os.path.join(args.configs, os.path.basename(os.path.normpath(args.dataset)), f'{model_of(flags)}.yaml')
    return path if args.tuned and os.path.isfile(path) else None


def config_values(path):
    from safe_read import read_yaml
    return read_yaml(path, 'config file')


def row_protocol(args, flags):
    """``(epochs, patience)`` of a row's runs: the flags given, else a tuned configuration's, else 100 and 10."""
    saved = config_values(flags[flags.index('--config') + 1]) if '--config' in flags else {}
    return (args.max_epoch if args.max_epoch is not None else saved.get('num_epoch', 100),
            args.patience if args.patience is not None else saved.get('patience', 10))


def grid_points(flags, use_grid=True):
    model = model_of(flags)
    if not use_grid:
        return [['--l_r', str(registry.entry(model).defaults['l_r'])]]
    (name, values), = GRID[model].items()
    return [[f'--{name}', str(v)] for v in values]


def run_tag(dataset, flags, seed, select_on='val'):
    """A run's record name; a tuned configuration counts by its content (a re-tuned file runs again); a run
    selected on test ends in ``-testsel``."""
    import hashlib
    dataset = os.path.basename(os.path.normpath(dataset))
    if '--config' in flags:
        n = flags.index('--config')
        with open(flags[n + 1], 'rb') as f:
            flags = flags[:n] + [f'tuned-{hashlib.sha256(f.read()).hexdigest()[:8]}'] + flags[n + 2:]
    tag = f'{dataset}-{"-".join(f.strip("-") for f in flags)}-seed{seed}'.replace('/', '_')
    return tag + ('-testsel' if select_on == 'test' else '')


def selected_on(record):
    """The split a run selected its epoch on: 'val', or 'test' (``--select_on test``, optimistic)."""
    return record['args'].get('select_on', 'val')


def earlier_record(path, protocol, select_on='val'):
    """The record of a finished earlier run of the same protocol (same epochs, patience and selection), or
    None."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        record = json.load(f)
    same = ((record['args']['num_epoch'], record['args']['patience']) == tuple(protocol)
            and selected_on(record) == select_on)
    return record if same and record['status'] in ('done', 'diverged') else None


def train(dataset, flags, seed, args, log):
    """One run of main.py; its record is kept in <out>/runs/<tag>.json, and a later call reuses it."""
    tag = run_tag(dataset, flags, seed, args.select_on)
    runs = os.path.join(args.out, 'runs')
    os.makedirs(runs, exist_ok=True)
    path = os.path.join(runs, tag)
    epochs, patience = row_protocol(args, flags)
    record = earlier_record(path + '.json', (epochs, patience), args.select_on)
    if record is not None:
        print(f'[reuse] {tag} ({record["device"]}, {record["wall_time_s"]:.0f}s)', flush=True)
        return record
    argv = ['--data_path', dataset, '--seed', str(seed), '--topK', '20', '10', '--num_epoch', str(epochs),
            '--patience', str(patience), '--select_on', args.select_on, '--save_file', path + '.jsonl',
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
    split = 'val' if args.select_on == 'val' else 'test'
    print(f'[done] {tag}: {split} R@20 {record[split]["20"]["recall"]:.4f}, best epoch {record["best_epoch"]}, '
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
    epochs, patience = row_protocol(args, flags)
    study = f'results-{name}-{key}-e{epochs}-p{patience}'
    space, storage = os.path.join(args.out, f'{study}.yaml'), 'sqlite:///' + os.path.join(args.out, f'sweep-{study}.db')
    with open(space, 'w') as f:
        yaml.safe_dump(SWEPT[key], f)
    dataset = os.path.abspath(args.dataset) if os.path.isdir(args.dataset) else args.dataset
    base = ['--data_path', dataset, '--seed', str(args.seeds[0]), '--topK', '20', '10', '--num_epoch',
            str(epochs), '--patience', str(patience), '--no-progress', *flags]
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
    config = tuned_config(args, flags)
    if config is not None:                           # tuned by bench/tune.py: every seed with the file
        point = ['--config', config]
        return point, [f.result() for f in [pool.submit(train, args.dataset, flags + point, s, args, log)
                                            for s in args.seeds]]
    if args.select_on == 'test':                     # a point fixed without test: the published learning rate
        if key in SWEPT:
            raise SystemExit(f'{key}: a swept row is tuned by sweep.py, on validation only (no --select_on test)')
        point = grid_points(flags, use_grid=False)[0]
        return point, [f.result() for f in [pool.submit(train, args.dataset, flags + point, s, args, log)
                                            for s in args.seeds]]
    if key in SWEPT:
        point, first = sweep_first_seed(key, flags, args)
        rest = [pool.submit(train, args.dataset, flags + point, s, args, log) for s in args.seeds[1:]]
        return point, [first] + [f.result() for f in rest]
    points = grid_points(flags, args.grid)
    first = [pool.submit(train, args.dataset, flags + pt, args.seeds[0], args, log) for pt in points]
    first = {tuple(pt): f.result() for pt, f in zip(points, first)}
    for pt, record in first.items():
        print(f'[grid] {label} {" ".join(pt)}: val R@20 {record["val"]["20"]["recall"]:.4f}', flush=True)
    point = max(first, key=lambda pt: first[pt]['val']['20']['recall'])
    rest = [pool.submit(train, args.dataset, flags + list(point), s, args, log) for s in args.seeds[1:]]
    return point, [first[point]] + [f.result() for f in rest]


def chosen_text(point, records):
    """What a row's hyper-parameters are: a tuned file's grid values, or the grid point chosen."""
    if list(point[:1]) == ['--config']:
        model = records[0]['args']['model_name']
        values = ', '.join(f'{k} {records[0]["args"][k]:g}' for k in registry.entry(model).search_grid)
        return f'tuned: {values}'
    return ' '.join(point) if point else 'published'


def test_selected(args, flags, point):
    """``{(k, metric): [values]}`` of this row's runs selected on test (``--select_on test`` records beside
    the table's, every seed), or None."""
    records = []
    for seed in args.seeds:
        path = os.path.join(args.out, 'runs', run_tag(args.dataset, flags + list(point), seed, 'test') + '.json')
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            records.append(json.load(f))
    return {(k, m): [r['test'][str(k)][m] for r in records] for k in KS for m, _ in METRICS}


def table_row(key, point, records, args):
    """The row ``bench/report.py`` renders, from a row's records."""
    flags = ROWS[key][1]
    model = model_of(flags)
    first_row = next(iter(registry.entry(model).table_rows())) == key
    name = os.path.basename(os.path.normpath(args.dataset))
    seconds = [h['seconds'] for r in records for h in r['history'] if h.get('seconds') is not None]
    return {'label': ROWS[key][0], 'metrics': {(k, m): [r['test'][str(k)][m] for r in records]
                                               for k in KS for m, _ in METRICS},
            'chosen': chosen_text(point, records), 'epochs': '/'.join(str(r['best_epoch']) for r in records),
            # the median: an epoch that spans a suspended machine (one of SMORE's took 1849 s) is not the row's
            'epoch_s': float(np.median(seconds)) if seconds else float('nan'),
            'published': PUBLISHED.get(name, {}).get(model) if first_row else None,
            'test_selected': test_selected(args, flags, point)}


def default_rows(args):
    """Every row but the swept ones; with tuned configurations for the dataset, each model's first row."""
    name = os.path.basename(os.path.normpath(args.dataset))
    if args.tuned and os.path.isdir(os.path.join(args.configs, name)):
        return [next(iter(model.table_rows())) for model in registry.entries().values()]
    return [k for k in ROWS if k not in SWEPT]


def main_(argv=None):
    from errors import OneLineParser
    from tune import check_dataset
    p = OneLineParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--dataset', default='ml100k')
    p.add_argument('--seeds', type=int, nargs='+', default=[1, 2, 3])
    p.add_argument('--rows', default=None,
                   help=f'comma list of {", ".join(ROWS)} (default: all but the swept {", ".join(SWEPT)}; with '
                        f'tuned configurations, one row per model)')
    p.add_argument('--max_epoch', type=int, default=None, help='default: a tuned file\'s num_epoch, else 100')
    p.add_argument('--patience', type=int, default=None, help='default: a tuned file\'s patience, else 10')
    p.add_argument('--no-cuda', dest='no_cuda', action='store_true')
    p.add_argument('--jobs', type=int, default=1,
                   help='runs at a time, each in its own process (a GPU that one small run leaves mostly idle)')
    p.add_argument('--no-grid', dest='grid', action='store_false',
                   help="no selection: each model's published learning rate (for a CPU-sized first look)")
    p.add_argument('--no-tuned', dest='tuned', action='store_false',
                   help='ignore configs/<dataset>/ (the learning-rate grid for every row)')
    p.add_argument('--configs', default=CONFIGS, help='the tuned configurations\' folder (configs/<dataset>/)')
    p.add_argument('--select_on', choices=('val', 'test'), default='val',
                   help="test: the papers' optimistic protocol (the best test epoch), records <run>-testsel.json "
                        "listed in results_<dataset>-testsel.md and read into the table's labelled column")
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'out'))
    args = p.parse_args(argv)
    if args.configs != CONFIGS and not os.path.isdir(args.configs):     # else every row would fall back to a grid
        p.error(f'--configs: {args.configs}: folder not found')
    keys = args.rows.split(',') if args.rows else default_rows(args)
    unknown = [k for k in keys if k not in ROWS]
    if unknown:
        p.error(f'--rows: unknown row(s) {", ".join(map(repr, unknown))}; choose from {", ".join(ROWS)}')
    check_dataset(p, args.dataset)                 # before --out exists: every run would be refused
    os.makedirs(args.out, exist_ok=True)
    name = os.path.basename(os.path.normpath(args.dataset))     # a folder under Data/ or a path
    log = os.path.join(args.out, f'results_{name}{"-testsel" if args.select_on == "test" else ""}.jsonl')
    started = time.time()
    if args.jobs == 1:
        rows = [row_runs(key, Inline(), args, log) for key in keys]
    else:                                             # rows side by side, at most --jobs runs at a time
        with ThreadPoolExecutor(args.jobs) as pool, ThreadPoolExecutor(len(keys)) as row_pool:
            rows = list(row_pool.map(lambda key: row_runs(key, pool, args, log), keys))
    mixed = [r['run'] for _, records in rows for r in records if selected_on(r) != args.select_on]
    if mixed:
        raise SystemExit(f'{", ".join(mixed)}: selected on another split than these runs (--select_on '
                         f'{args.select_on}); the two protocols never share a column')
    if args.select_on == 'test':
        return test_selected_list(keys, rows, args, name)
    table = [table_row(key, point, records, args) for key, (point, records) in zip(keys, rows)]
    first_data = rows[0][1][0]['data']
    tuned = [key for key, (point, _) in zip(keys, rows) if list(point[:1]) == ['--config']]
    grid = [key for key in keys if key not in tuned]
    swept = {k: SWEPT[k] for k in grid if k in SWEPT}
    protocols = sorted({row_protocol(args, ROWS[k][1] + list(point)) for k, (point, _) in zip(keys, rows)})
    devices = Counter(r.get('device_name', r['device']) for _, records in rows for r in records)
    footer = (f'{first_data}. Test metrics at the best validation Recall@20 epoch, '
              f'mean ± std over seeds {" ".join(map(str, args.seeds))}; '
              + (f'{len(tuned)} {"row" if len(tuned) == 1 else "rows"} tuned by bench/tune.py '
                 f'(configs/{name}/: sweep.py on validation over each model\'s search grid, seed 1); ' if tuned else '')
              + (f'{"the other rows: " if tuned else ""}grid '
                 f'{ {registry.entry(model_of(ROWS[k][1])).name: GRID[model_of(ROWS[k][1])] for k in grid} }, '
                 f'chosen on validation with seed {args.seeds[0]}; ' if grid and args.grid else '')
              + ('' if args.grid or not grid else 'no grid: published learning rates; ')
              + (f'grid by sweep.py {swept}, chosen on validation with seed {args.seeds[0]}; ' if swept else '')
              + 'at most ' + ', '.join(f'{e} epochs with patience {pa}' for e, pa in protocols) + '; '
              f's/epoch: median seconds of a training epoch with its evaluation; '
              f'runs by device: {", ".join(f"{d} {n}" for d, n in sorted(devices.items()))}; '
              f'total {time.time() - started:.0f}s.')
    markdown = report.markdown(table, footer, SOURCES)
    outputs = {'md': markdown, 'tex': report.latex(table, f'{name}: {footer}')}
    for suffix, text in outputs.items():
        with open(os.path.join(args.out, f'results_{name}.{suffix}'), 'w') as f:
            f.write(text)
    report.bar_chart(table, os.path.join(args.out, f'results_{name}.png'),
                     f'{name}: test Recall@20 and NDCG@20 (mean ± std over seeds {" ".join(map(str, args.seeds))})')
    print(markdown)


def test_selected_list(keys, rows, args, name):
    """The runs selected on test, labelled optimistic, in ``results_<dataset>-testsel.md`` (not a table of the
    validation protocol: the table shows them in a column of their own)."""
    lines = ['**Selected on TEST (--select_on test): optimistic numbers, the protocol of papers whose code keeps '
             'the best test epoch; not comparable with the validation-selected table, whose labelled column shows '
             'their R@20.**', '',
             '| model | R@20 (test-selected) | N@20 (test-selected) | point | best epochs |', '|---|---|---|---|---|']
    for key, (point, records) in zip(keys, rows):
        values = {m: [r['test']['20'][m] for r in records] for m in ('recall', 'ndcg')}
        lines.append(f'| {ROWS[key][0]} | {report.cell(values["recall"])} | {report.cell(values["ndcg"])} | '
                     f'{chosen_text(point, records)} | {"/".join(str(r["best_epoch"]) for r in records)} |')
    lines += ['', f'{rows[0][1][0]["data"]}. Mean ± std over seeds {" ".join(map(str, args.seeds))}.']
    text = '\n'.join(lines) + '\n'
    with open(os.path.join(args.out, f'results_{name}-testsel.md'), 'w') as f:
        f.write(text)
    print(text)


if __name__ == '__main__':
    main_()
