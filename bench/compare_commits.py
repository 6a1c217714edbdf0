"""A refactor changes no number: run an older commit and the current tree side by side and compare.

    python bench/compare_commits.py --base af34245            # the commit before the change
    python bench/compare_commits.py --base HEAD --epochs 2    # the last commit against the working tree

The older commit is exported (``git archive``) into a temporary folder; one
tiny synthetic Tiktok-like dataset (dense v and a, word-id t) is prepared
once (``Data/cmp_tiny``) and read by both trees.  Every configuration below
trains ``--epochs`` epochs with seed 1 in each tree, each in an empty
folder of its own, with the default output paths.  Compared: the results lines (every field but the
timing ones: ``wall_time_s`` and each epoch's ``seconds``), the run names,
and the best-model files byte for byte.  Exit status 0 when everything is
identical, 1 otherwise (the differences are printed).  A flag added since the older commit shows in the
new results line's ``args`` only: it is named on the configuration's line ("new flags"), not counted as a
difference (the configurations never set it, so it holds its default; what it trains is compared as usual).
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    'SLMRec-FAC': ['--model_name', 'SLMRec', '--ssl_task', 'FAC'],
    'SLMRec-FD': ['--model_name', 'SLMRec', '--ssl_task', 'FD'],
    'SLMRec-FM': ['--model_name', 'SLMRec', '--ssl_task', 'FM'],
    'SLMRec-FD+FM': ['--model_name', 'SLMRec', '--ssl_task', 'FD+FM'],
    'SLMRec-none': ['--model_name', 'SLMRec', '--ssl_task', 'none'],
    'SLMRec-mmgcn': ['--model_name', 'SLMRec', '--backbone', 'mmgcn', '--num_layer', '2'],
    'MMGCN': ['--model_name', 'MMGCN', '--concat', 'False', '--aggr_mode', 'mean'],
    'LightGCN': ['--model_name', 'LightGCN'],
    'VBPR': ['--model_name', 'VBPR'],
    'FREEDOM': ['--model_name', 'FREEDOM', '--knn_k', '5'],
    'GRCN': ['--model_name', 'GRCN'],
    'LATTICE': ['--model_name', 'LATTICE', '--knn_k', '5'],
    'BM3': ['--model_name', 'BM3'],
    'MGCN': ['--model_name', 'MGCN', '--knn_k', '5'],
    'LGMRec': ['--model_name', 'LGMRec'],
    'PGL': ['--model_name', 'PGL', '--knn_k', '5'],
    'MENTOR': ['--model_name', 'MENTOR', '--knn_k', '5'],
    'SMORE': ['--model_name', 'SMORE', '--image_knn_k', '5', '--text_knn_k', '5'],
    'DAMRS': ['--model_name', 'DAMRS', '--knn_k', '5'],
    'DRAGON': ['--model_name', 'DRAGON', '--knn_k', '5', '--user_graph_k', '5'],
    'MMSSL': ['--model_name', 'MMSSL'],
    'DiffMM': ['--model_name', 'DiffMM', '--diffmm_dims', '64'],
}
TIMING = ('wall_time_s',)


def export_commit(rev, dest):
    archive = subprocess.run(['git', '-C', ROOT, 'archive', '--format=tar', rev], check=True,
                             capture_output=True).stdout
    with tempfile.TemporaryFile() as f:
        f.write(archive)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(dest, filter='data')


def prepare():
    """Data/cmp_tiny of the current tree (a no-op when it is there already); returns its path."""
    subprocess.run([sys.executable, os.path.join(ROOT, 'prepare_data.py'), 'synthetic', '--like', 'Tiktok',
                    '--num_user', '120', '--num_item', '90', '--inter_per_user', '12', '--seed', '3',
                    '--name', 'cmp_tiny'], check=True, capture_output=True, cwd=ROOT)
    return os.path.join(ROOT, 'Data', 'cmp_tiny')


def run_config(tree, work, data, flags, epochs):
    """Train ``tree``'s main.py in the folder ``work``; returns (results record, best-model sha256 or None)."""
    out = subprocess.run([sys.executable, os.path.join(tree, 'main.py'), '--data_path', data,
                          '--num_epoch', str(epochs),
                          '--batch_size', '256', '--topK', '10', '20', '--seed', '1', '--no-progress',
                          '--save_file', 'cmp.jsonl', *flags],
                         cwd=work, capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    if out.returncode != 0:
        raise SystemExit(f'{tree}: {" ".join(flags)} failed (exit {out.returncode}):\n{out.stderr[-2000:]}')
    with open(os.path.join(work, 'cmp.jsonl')) as f:
        record = json.loads(f.read().splitlines()[-1])
    best = os.path.join(work, 'runs', f'{record["run"]}.best.pt')
    digest = None
    if os.path.isfile(best):
        with open(best, 'rb') as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    return record, digest


def comparable(record):
    """The record without its timing fields (and with the history's per-epoch seconds dropped)."""
    record = {k: v for k, v in record.items() if k not in TIMING}
    record['history'] = [{k: v for k, v in h.items() if k != 'seconds'} for h in record.get('history', [])]
    return record


def differences(old, new, path=''):
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            if k not in old or k not in new:
                out.append(f'{path}{k}: {"only after" if k not in old else "only before"}')
            else:
                out += differences(old[k], new[k], f'{path}{k}.')
        return out
    return [] if old == new else [f'{path[:-1]}: {old!r} -> {new!r}']


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--base', required=True, help='the older commit (any git revision)')
    p.add_argument('--epochs', type=int, default=3)
    p.add_argument('--only', nargs='+', choices=sorted(CONFIGS), help='a subset of the configurations')
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = os.path.join(tmp, 'old')
        export_commit(args.base, old_tree)
        sides = [(old_tree, os.path.join(tmp, 'old-runs')), (ROOT, os.path.join(tmp, 'new-runs'))]
        for _, work in sides:
            os.makedirs(work)
        data = prepare()
        failed = 0
        for name in args.only or CONFIGS:
            (old, old_best), (new, new_best) = (run_config(tree, work, data, CONFIGS[name], args.epochs)
                                                for tree, work in sides)
            diff = differences(comparable(old), comparable(new))
            added = [line.split(':')[0][len('args.'):] for line in diff
                     if line.startswith('args.') and line.endswith(': only after')]
            diff = [line for line in diff if not (line.startswith('args.') and line.endswith(': only after'))]
            if old_best != new_best:
                diff.append(f'best model: {old_best} -> {new_best}')
            failed += bool(diff)
            print(f'{name:14s} {"identical" if not diff else "DIFFERENT"}  run {new["run"]}  '
                  f'best epoch {new["best_epoch"]}  test R@20 {new["test"]["20"]["recall"]:.4f}  '
                  f'best model {(new_best or "none")[:12]}' + (f'  (new flags: {", ".join(added)})' if added else ''))
            for line in diff[:10]:
                print(f'    {line}')
        print(f'{len(args.only or CONFIGS) - failed} identical, {failed} different (base {args.base})')
        return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
