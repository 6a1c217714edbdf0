"""Both protocols from the same runs: the test-selected result (``--select_on test``) and the validation-selected
one, read off each run's per-epoch history.

    python bench/both_protocols.py runs/hkuds/results.jsonl
    python bench/both_protocols.py results.jsonl --k 20 --published MMSSL=0.0921,0.0392 DiffMM=0.1129,0.0456

A ``--select_on test`` run keeps every epoch's validation *and* test metrics in its history, and training never
depends on the selection (the same seed trains the same epochs under both protocols; tests/test_models_hkuds.py).
So the validation-selected run of the same seed is the history's best validation epoch, stopped early where
``--patience`` evaluations without validation improvement end it: exact whenever that stop lies within the epochs
the test-selected run trained (else the line says how far it got).  Each model's lines end with the mean ± std over
its runs; test-selected numbers are optimistic (SPEC 4) and are labelled so.
"""
import os
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from errors import OneLineParser  # noqa: E402
from plot import PlotError, read_results  # noqa: E402
import report  # noqa: E402


def validation_protocol(history, key, patience):
    """``(best epoch entry, stopped)`` of the validation protocol over ``history``: the best validation Recall@key
    so far, stopping after ``patience`` evaluations without improvement; ``stopped`` False when the history ends
    first (the run would have gone on)."""
    best, bad = None, 0
    for h in history:
        if best is None or h['val'][key]['recall'] > best['val'][key]['recall']:
            best, bad = h, 0
        else:
            bad += 1
        if bad >= patience:
            return best, True
    return best, False


def rows(records, key):
    """``{model: [(seed, test-selected (epoch, R, N), validation-selected (epoch, R, N) or None, note)]}``."""
    out = defaultdict(list)
    for r in records:
        args = r['args']
        if args.get('select_on') != 'test' or not r['history'] or 'test' not in r['history'][0]:
            continue
        test = (r['best_epoch'], r['test'][key]['recall'], r['test'][key]['ndcg'])
        best, stopped = validation_protocol(r['history'], key, args['patience'])
        complete = stopped or len(r['history']) >= args['num_epoch']
        val = (best['epoch'], best['test'][key]['recall'], best['test'][key]['ndcg']) if complete else None
        note = '' if complete else f'validation protocol still improving at epoch {len(r["history"])}'
        out[args['model_name']].append((args['seed'], test, val, note))
    return out


def cell(values):
    """'R mean ± std, N mean ± std' of rows (R, N) ('R r, N n' for one row), or a dash."""
    if not len(values):
        return '—'
    return f'R {report.cell(values[:, 0])}, N {report.cell(values[:, 1])}'


def parse_published(pairs):
    """``MODEL=R,N`` strings -> {model: (R, N)}; ValueError names a malformed one."""
    out = {}
    for pair in pairs:
        model, _, numbers = pair.partition('=')
        try:
            recall, ndcg = map(float, numbers.split(','))
        except ValueError:
            raise ValueError(f'--published: {pair!r} is not MODEL=RECALL,NDCG') from None
        out[model] = (recall, ndcg)
    return out


def main_(argv=None):
    p = OneLineParser(description=__doc__.split('\n\n')[0])
    p.add_argument('results', nargs='+', help='results.jsonl files')
    p.add_argument('--k', default='20', help='the cut-off (the runs\' first --topK)')
    p.add_argument('--published', nargs='*', default=[], metavar='MODEL=R,N', help="the papers' Recall@k, NDCG@k")
    args = p.parse_args(argv)
    try:
        published = parse_published(args.published)
        records = [record for path in args.results for _, record in read_results(path)]
    except (ValueError, PlotError) as e:
        p.error(str(e))
    k = args.k
    print(f'| model | seed | selected on TEST (optimistic): epoch, R@{k}, N@{k} | selected on validation: epoch, '
          f'R@{k}, N@{k} |')
    print('|---|---|---|---|')
    for model, lines in rows(records, k).items():
        for seed, test, val, note in sorted(lines):
            shown = f'{val[0]}, {val[1]:.4f}, {val[2]:.4f}' if val else note
            print(f'| {model} | {seed} | {test[0]}, {test[1]:.4f}, {test[2]:.4f} | {shown} |')
        tests = np.array([t[1:] for _, t, _, _ in lines])
        vals = np.array([v[1:] for _, _, v, _ in lines if v])
        runs = f'{len(vals)} run{"s" if len(vals) != 1 else ""}'
        print(f'| {model} | mean of {len(lines)} | {cell(tests)} | {cell(vals)} ({runs}) |')
        if model in published:
            recall, ndcg = published[model]
            print(f'| {model} | published | R {recall:.4f}, N {ndcg:.4f} (the paper: best test epoch) | — |')


if __name__ == '__main__':
    main_()
