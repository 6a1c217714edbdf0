"""The results table: every model on a real dataset, mean ± std over seeds.

    python bench/results.py --dataset ml100k                 # the README's table (seeds 1 2 3)
    python bench/results.py --dataset ml1m --seeds 1 --rows FAC,none,MMGCN,ID --no-grid --max_epoch 12

Protocol.  Each row is trained with ``main.py`` (full ranking, training items
excluded) and reports test Precision/Recall/NDCG@10 and @20 at the epoch with
the best *validation* Recall@20.  Hyper-parameters come from a small grid
(GRID below), chosen on validation only: every grid point is run with the
first seed, the point with the best validation Recall@20 is kept, and the
remaining seeds are run with it.  Everything else is the published default
of the model; training stops after ``--max_epoch`` epochs or ``--patience``
evaluations without validation improvement.

The table is printed and written to ``bench/out/results_<dataset>.md``; each
run's JSON line goes to ``bench/out/results_<dataset>.jsonl``.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import main  # noqa: E402

# Row key -> (label, flags).
ROWS = {
    'FAC': ('SLMRec, FAC', ['--model_name', 'SLMRec', '--ssl_task', 'FAC']),
    'FD': ('SLMRec, FD', ['--model_name', 'SLMRec', '--ssl_task', 'FD']),
    'FM': ('SLMRec, FM', ['--model_name', 'SLMRec', '--ssl_task', 'FM']),
    'FD+FM': ('SLMRec, FD+FM', ['--model_name', 'SLMRec', '--ssl_task', 'FD+FM']),
    'none': ('SLMRec, no SSL task', ['--model_name', 'SLMRec', '--ssl_task', 'none']),
    'MMGCN': ('MMGCN', ['--model_name', 'MMGCN', '--aggr_mode', 'mean', '--concat', 'False']),
    'ID': ('ID only (LightGCN-style)', ['--model_name', 'SLMRec', '--ssl_task', 'none', '--modalities', 'none']),
}
# The grid, per model: learning rates around the published defaults (SLMRec 0.01, MMGCN 0.0005).
GRID = {'SLMRec': {'l_r': [0.01, 0.001]}, 'MMGCN': {'l_r': [0.001, 0.0005]}}
KS = (10, 20)
METRICS = (('precision', 'P'), ('recall', 'R'), ('ndcg', 'N'))


def grid_points(flags, use_grid=True):
    model = flags[flags.index('--model_name') + 1]
    if not use_grid:
        return [['--l_r', str(main.MODEL_DEFAULTS[model]['l_r'])]]
    (name, values), = GRID[model].items()
    return [[f'--{name}', str(v)] for v in values]


def train(dataset, flags, seed, args, log):
    tag = f'{dataset}-{"-".join(f.strip("-") for f in flags)}-seed{seed}'.replace('/', '_')
    runs = os.path.join(args.out, 'runs')
    os.makedirs(runs, exist_ok=True)
    argv = ['--data_path', dataset, '--seed', str(seed), '--topK', '20', '10', '--num_epoch', str(args.max_epoch),
            '--patience', str(args.patience), '--save_file', log, '--no-progress',
            '--checkpoint', os.path.join(runs, tag + '.last.pt'), '--PATH_weight_save', os.path.join(runs, tag + '.best.pt'),
            *flags]
    if args.no_cuda:
        argv.append('--no-cuda')
    if main.main(argv) != 0:
        raise SystemExit(f'run failed: main.py {" ".join(argv)}')
    with open(log) as f:
        return json.loads(f.readlines()[-1])


def cell(values):
    return f'{np.mean(values):.4f} ± {np.std(values):.4f}' if len(values) > 1 else f'{values[0]:.4f}'


def main_(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--dataset', default='ml100k')
    p.add_argument('--seeds', type=int, nargs='+', default=[1, 2, 3])
    p.add_argument('--rows', default=','.join(ROWS), help=f'comma list of {", ".join(ROWS)}')
    p.add_argument('--max_epoch', type=int, default=100)
    p.add_argument('--patience', type=int, default=10)
    p.add_argument('--no-cuda', dest='no_cuda', action='store_true')
    p.add_argument('--no-grid', dest='grid', action='store_false',
                   help="no selection: each model's published learning rate (for a CPU-sized first look)")
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'out'))
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    name = os.path.basename(os.path.normpath(args.dataset))     # a folder under Data/ or a path
    log = os.path.join(args.out, f'results_{name}.jsonl')
    lines = []
    header = ('| model | ' + ' | '.join(f'{short}@{k}' for k in KS for _, short in METRICS)
              + ' | chosen | best epoch | s/run |')
    lines += [header, '|' + '---|' * (header.count('|') - 1)]
    started, first_data = time.time(), None
    for key in args.rows.split(','):
        label, flags = ROWS[key]
        first = {}
        for point in grid_points(flags, args.grid):
            record = train(args.dataset, flags + point, args.seeds[0], args, log)
            first[tuple(point)] = record
            print(f'[grid] {label} {" ".join(point)}: val R@20 {record["val"]["20"]["recall"]:.4f}', flush=True)
        point = max(first, key=lambda pt: first[pt]['val']['20']['recall'])
        records = [first[point]] + [train(args.dataset, flags + list(point), s, args, log) for s in args.seeds[1:]]
        first_data = first_data or records[0]['data']
        cols = [cell([r['test'][str(k)][m] for r in records]) for k in KS for m, _ in METRICS]
        epochs = '/'.join(str(r['best_epoch']) for r in records)
        seconds = np.mean([r['wall_time_s'] for r in records])
        lines.append(f'| {label} | ' + ' | '.join(cols) + f' | {" ".join(point)} | {epochs} | {seconds:.0f} |')
        print(lines[-1], flush=True)
    device = records[-1]['device']
    lines.append('')
    lines.append(f'{first_data}. Test metrics at the best validation Recall@20 epoch, '
                 f'mean ± std over seeds {" ".join(map(str, args.seeds))}; '
                 + (f'grid {GRID}, chosen on validation with seed {args.seeds[0]}; ' if args.grid
                    else 'no grid: published learning rates; ')
                 + f'at most {args.max_epoch} epochs, patience {args.patience}; device {device}; '
                 f'total {time.time() - started:.0f}s.')
    table = '\n'.join(lines)
    with open(os.path.join(args.out, f'results_{name}.md'), 'w') as f:
        f.write(table + '\n')
    print(table)


if __name__ == '__main__':
    main_()
