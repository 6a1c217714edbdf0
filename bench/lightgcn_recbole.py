"""Cross-check: RecBole's LightGCN on exactly our split, scored both ways.

    python -m venv .venv-crosscheck      # RecBole 1.2.1 needs NumPy 1: see requirements-crosscheck.txt
    .venv-crosscheck/bin/pip install -r requirements-crosscheck.txt
    .venv-crosscheck/bin/pip install --no-deps recbole==1.2.1
    .venv-crosscheck/bin/python bench/lightgcn_recbole.py --dataset ml100k --seeds 1 2 3
    .venv-crosscheck/bin/python bench/lightgcn_recbole.py --dataset ml1m --time_epochs 2   # epoch time only

The dataset folder (``Data/<name>``, as ``prepare_data.py`` writes it) is
exported to RecBole's pre-split "benchmark" files (``.train/.valid/.test``
``.inter``), so RecBole trains on our training pairs and selects its best
epoch on our validation pairs (Recall@20, full ranking).  RecBole's own
LightGCN hyper-parameters are used (its defaults, overridable below).

Two sets of test numbers are printed per seed:

- ``recbole``: RecBole's own evaluation, which also removes a user's
  validation items from the test ranking;
- ``ours``: the embeddings of the same trained model scored by our
  ``Full_vt.rank_metrics`` (training items removed, validation items kept,
  SPEC 4), i.e. directly comparable with the results table's rows.

RecBole's validation metrics of the chosen model are printed next to ours:
the two protocols agree on validation (training items removed), so the two
numbers must match -- an independent check of ``Full_vt``'s metrics.

Nothing from the dataset is kept: the export goes to a temporary folder.
"""
import argparse
import json
import logging
import os
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from DataLoad import load_dataset  # noqa: E402
from Full_vt import SplitIndex, format_metrics, rank_metrics  # noqa: E402
import report  # noqa: E402

KS = (10, 20)


def split_pairs(split):
    """[n, 2] (user, item) pairs of a {user: items} split."""
    users = [np.full(len(items), u) for u, items in split.items()]
    return np.stack([np.concatenate(users), np.concatenate(list(split.values()))], axis=1) if users else np.zeros((0, 2))


def export(data, folder, name):
    """Write ``<folder>/<name>/<name>.{train,valid,test}.inter`` with our user and item ids as tokens."""
    os.makedirs(os.path.join(folder, name))
    for part, pairs in (('train', data.train), ('valid', split_pairs(data.val)), ('test', split_pairs(data.test))):
        with open(os.path.join(folder, name, f'{name}.{part}.inter'), 'w') as f:
            f.write('user_id:token\titem_id:token\n')
            f.writelines(f'{u}\t{i}\n' for u, i in pairs.astype(np.int64))


def in_our_order(table, dataset, field, count):
    """Rows of a RecBole embedding table re-indexed by our ids; ids RecBole never saw stay NaN."""
    out = torch.full((count, table.shape[1]), float('nan'))
    tokens = dataset.field2id_token[field]
    ours = np.array([int(t) if t != '[PAD]' else -1 for t in tokens])
    known = ours >= 0
    out[torch.as_tensor(ours[known])] = table[torch.as_tensor(np.flatnonzero(known))]
    return out


def settings(folder, seed, l_r, args):
    """RecBole's configuration: our split as its benchmark files, full ranking, Recall@20 selection."""
    return {
        'data_path': folder, 'benchmark_filename': ['train', 'valid', 'test'],
        'load_col': {'inter': ['user_id', 'item_id']},
        'eval_args': {'group_by': 'user', 'order': 'RO', 'mode': 'full'},
        'metrics': ['Precision', 'Recall', 'NDCG'], 'topk': list(KS), 'valid_metric': 'Recall@20',
        'epochs': args.max_epoch, 'stopping_step': args.patience, 'eval_step': 1,
        'learning_rate': l_r, 'n_layers': args.n_layers, 'embedding_size': args.dim,
        'reg_weight': args.reg_weight, 'train_batch_size': args.batch_size, 'eval_batch_size': 65536,
        'seed': seed, 'reproducibility': True, 'use_gpu': False, 'device': 'cpu', 'show_progress': False,
        'checkpoint_dir': os.path.join(folder, 'saved'), 'state': 'WARNING', 'worker': 0,
        'metric_decimal_place': 6}


def run_seed(data, folder, name, seed, l_r, args):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender import LightGCN
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    argv, sys.argv = sys.argv, sys.argv[:1]      # RecBole would read our flags as its own
    try:
        config = Config(model='LightGCN', dataset=name, config_dict=settings(folder, seed, l_r, args))
    finally:
        sys.argv = argv
    init_seed(seed, True)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(seed, True)
    model = LightGCN(config, train_data.dataset).to('cpu')
    trainer = Trainer(config, model)
    if args.time_epochs:
        return time_epochs(trainer, train_data, args.time_epochs)
    started = time.time()
    _, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    # RecBole 1.2.1 reloads its best model with torch.load's pre-2.6 default; the file is the one it
    # just wrote into our temporary folder, so it is loaded here with weights_only=False.
    best = torch.load(trainer.saved_model_file, map_location='cpu', weights_only=False)
    model.load_state_dict(best['state_dict'])
    model.load_other_parameter(best.get('other_parameter'))
    theirs = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    model.eval()
    with torch.no_grad():
        users, items = model.forward()
    z_user = in_our_order(users, dataset, 'user_id', data.num_user)
    z_item = in_our_order(items, dataset, 'item_id', data.num_item)
    unseen = int(torch.isnan(z_item[:, 0]).sum())
    z_user, z_item = torch.nan_to_num(z_user), torch.nan_to_num(z_item)
    indptr, train_items = data.train_csr()
    ours = {part: rank_metrics(z_user, z_item, SplitIndex(split, indptr, train_items), KS)
            for part, split in (('val', data.val), ('test', data.test))}
    same = abs(ours['val'][20]['recall'] - best_valid['recall@20'])
    print(f'seed {seed}  validation R@20 (same protocol in both): RecBole {best_valid["recall@20"]:.4f}, '
          f'ours {ours["val"][20]["recall"]:.4f} (difference {same:.1e})', flush=True)
    print(f'seed {seed} lr {l_r} ({time.time() - started:.0f}s)  RecBole test: '
          + '  '.join(f'{k} {v:.4f}' for k, v in theirs.items()), flush=True)
    print(f'  our protocol  Val  {format_metrics(ours["val"])}', flush=True)
    print(f'  our protocol  Test {format_metrics(ours["test"])}', flush=True)
    if unseen:
        print(f'note: {unseen} items have no interaction in any split; their score is 0', flush=True)
    return {'seed': seed, 'l_r': l_r, 'seconds': time.time() - started, 'best_valid_recbole': dict(best_valid),
            'test_recbole': {k: float(v) for k, v in theirs.items()}, 'ours': ours}


def time_epochs(trainer, train_data, epochs):
    """RecBole's own training epoch (sampling, BPR steps; no evaluation), timed ``epochs`` times."""
    seconds = []
    for epoch in range(epochs):
        started = time.perf_counter()
        loss = trainer._train_epoch(train_data, epoch, show_progress=False)
        seconds.append(time.perf_counter() - started)
        print(f'RecBole LightGCN epoch {epoch + 1}: {seconds[-1]:.1f}s (loss {float(loss):.4f})', flush=True)
    print(f'RecBole LightGCN: {np.mean(seconds):.1f}s per training epoch ({epochs} epochs, '
          f'{torch.get_num_threads()} threads)', flush=True)
    return None


def main_(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--dataset', default='ml100k', help='folder under Data/ or a path')
    p.add_argument('--seeds', type=int, nargs='+', default=[1, 2, 3])
    p.add_argument('--max_epoch', type=int, default=300)
    p.add_argument('--patience', type=int, default=10, help="RecBole's stopping_step (evaluations)")
    p.add_argument('--l_r', type=float, nargs='+', default=[0.001, 0.01],
                   help='learning-rate grid, chosen on validation Recall@20 with the first seed '
                        '(RecBole default 0.001; the results table grids SLMRec over the same two)')
    p.add_argument('--n_layers', type=int, default=2, help='RecBole default')
    p.add_argument('--reg_weight', type=float, default=1e-5, help='RecBole default')
    p.add_argument('--dim', type=int, default=64, help='RecBole default')
    p.add_argument('--batch_size', type=int, default=2048, help='RecBole default')
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'out'))
    p.add_argument('--time_epochs', type=int, default=0, metavar='N',
                   help='only time N training epochs (no evaluation, first seed and learning rate); compare '
                        'with the "(Ns)" of main.py\'s epoch lines on the same dataset')
    args = p.parse_args(argv)
    folder = args.dataset if os.path.isdir(args.dataset) else os.path.join(ROOT, 'Data', args.dataset)
    data = load_dataset(folder)
    print(data.summary(), flush=True)
    logging.getLogger().setLevel(logging.WARNING)
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        name = 'export'
        export(data, tmp, name)
        cwd = os.getcwd()
        os.chdir(tmp)            # RecBole writes log/ and log_tensorboard/ into the working directory
        try:
            if args.time_epochs:
                return run_seed(data, tmp, name, args.seeds[0], args.l_r[0], args)
            grid = [run_seed(data, tmp, name, args.seeds[0], l_r, args) for l_r in args.l_r]
            best = max(grid, key=lambda rec: rec['ours']['val'][20]['recall'])
            records = [best] + [run_seed(data, tmp, name, seed, best['l_r'], args) for seed in args.seeds[1:]]
        finally:
            os.chdir(cwd)
    lines = [f'RecBole LightGCN on {data.summary()}; lr {best["l_r"]} (of {args.l_r} on validation), '
             f'{args.n_layers} layers, reg {args.reg_weight}, '
             f'd {args.dim}, batch {args.batch_size}, best epoch on validation Recall@20 (patience {args.patience}); '
             f'seeds {" ".join(map(str, args.seeds))}.',
             '', '| protocol | ' + ' | '.join(f'{s}@{k}' for k in KS for s in ('P', 'R', 'N')) + ' |',
             '|---|' + '---|' * 3 * len(KS)]

    def cells(values):
        return ' | '.join(report.cell(v) for v in values)

    ours = [[r['ours']['test'][k][m] for r in records] for k in KS for m in ('precision', 'recall', 'ndcg')]
    theirs = [[r['test_recbole'][f'{m}@{k}'] for r in records] for k in KS for m in ('precision', 'recall', 'ndcg')]
    lines.append('| ours (validation items kept, SPEC 4) | ' + cells(ours) + ' |')
    lines.append("| RecBole's (validation items removed) | " + cells(theirs) + ' |')
    table = '\n'.join(lines)
    with open(os.path.join(args.out, f'lightgcn_recbole_{data.name}.md'), 'w') as f:
        f.write(table + '\n')
    with open(os.path.join(args.out, f'lightgcn_recbole_{data.name}.jsonl'), 'a') as f:
        f.writelines(json.dumps(r, default=str) + '\n' for r in grid + records[1:])
    print(table)


if __name__ == '__main__':
    main_()
