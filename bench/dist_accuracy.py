"""Accuracy of torchrun's data mode: 2 ranks against one process, with and without the linear scaling rule.

    python bench/dist_accuracy.py                                   # ML-100K, SLMRec FAC and LightGCN, seeds 1-3
    python bench/dist_accuracy.py --data_path ml100k_like --seeds 1 --num_epoch 10     # a reduced budget

The results table's protocol (scripts/ml100k.sh): each model's published
defaults, ``--topK 10 20``, ``--patience 20``, the best epoch by validation
Recall@10 and its test Recall@20.  Per model and seed, three runs side by side:
one process; 2 CPU ranks under torchrun (``--dist_mode data``: effective batch
2 x ``--batch_size``); the same with ``--lr_scale_ranks`` (learning rate x 2).
Results go to ``--out`` (one JSON line per run) and a table is printed.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {'SLMRec FAC': ['--model_name', 'SLMRec', '--ssl_task', 'FAC'], 'LightGCN': ['--model_name', 'LightGCN']}
SETTINGS = {'1 process': (1, []), '2 ranks': (2, []), '2 ranks, lr x2': (2, ['--lr_scale_ranks'])}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data_path', default='ml100k')
    p.add_argument('--seeds', type=int, nargs='+', default=[1, 2, 3])
    p.add_argument('--num_epoch', type=int, default=None, help="default: each model's own")
    p.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'out', 'dist_accuracy.jsonl'))
    args = p.parse_args(argv)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for seed in args.seeds:
                for setting, (ranks, extra) in SETTINGS.items():
                    tag = f'{model}-{seed}-{setting}'.replace(' ', '_').replace(',', '')
                    save = os.path.join(tmp, f'{tag}.jsonl')
                    launcher = ([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node',
                                 str(ranks)] if ranks > 1 else [sys.executable])
                    command = launcher + [
                        os.path.join(ROOT, 'main.py'), '--data_path', args.data_path, *MODELS[model],
                        '--seed', str(seed), '--topK', '10', '20', '--patience', '20', '--no-progress', '--no-cuda',
                        '--save_file', save, '--checkpoint', os.path.join(tmp, f'{tag}.last.pt'),
                        '--PATH_weight_save', os.path.join(tmp, f'{tag}.best.pt'), *extra,
                        *(['--num_epoch', str(args.num_epoch)] if args.num_epoch is not None else [])]
                    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
                    if done.returncode != 0:
                        raise SystemExit(f'{" ".join(command)} failed:\n{done.stderr[-2000:]}')
                    with open(save) as f:
                        record = json.loads(f.read().splitlines()[-1])
                    row = {'model': model, 'seed': seed, 'setting': setting, 'best_epoch': record['best_epoch'],
                           'epochs_run': record['epochs_run'], 'test_recall@20': record['test']['20']['recall'],
                           'val_recall@10': record['val']['10']['recall'], 'wall_time_s': record['wall_time_s'],
                           'data': args.data_path, 'num_epoch': record['args']['num_epoch']}
                    rows.append(row)
                    with open(args.out, 'a') as f:
                        f.write(json.dumps(row) + '\n')
                    print(f'{model:11s} seed {seed}  {setting:15s} best epoch {row["best_epoch"]:>3} of '
                          f'{row["epochs_run"]:>3}  test R@20 {row["test_recall@20"]:.4f}  '
                          f'({row["wall_time_s"]:.0f} s)', flush=True)


if __name__ == '__main__':
    main()
