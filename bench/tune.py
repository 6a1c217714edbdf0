"""The tuned configurations ``configs/<dataset>/<Model>.yaml``: each model's search grid run by sweep.py, the
point with the best validation Recall@20 written as a ``main.py --config`` file with its study, grid and
command at its top.

    python bench/tune.py --dataset tiktok                              # every model (resumes where it stopped)
    python bench/tune.py --dataset tiktok --models LATTICE,MGCN
    python bench/tune.py --dataset ml100k --grid lr --max_epoch 60     # the results table's learning-rate grid
    python bench/tune.py --dataset tiktok --write_only                 # configs of the finished studies only

The grid is the model's registry entry's ``search_grid`` (the learning rate and its one key coefficient,
from its authors' grid; at most 8 points), or with ``--grid lr`` its ``lr_grid``.  Each grid point is a
``main.py`` run with seed 1 (``--num_epoch --max_epoch``, early stopping after ``--patience`` evaluations
without validation improvement, ``--topK 20 10``), chosen on validation only; test metrics are recorded
beside it and never used to choose.  The studies live in ``runs/sweep-tune-<dataset>-<Model>.db``, so an
interrupted tuning resumes where it stopped (sweep.py retries a killed trial from its checkpoint), and
two processes with the same arguments share the work.  ``python main.py --config configs/<d>/<M>.yaml``
then reproduces the recorded validation and test metrics (seed 1; on another CPU within float noise).
"""
import datetime
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import registry  # noqa: E402
from safe_write import atomic_file  # noqa: E402

def grid_of(model, which):
    entry = registry.entry(model)
    return {'l_r': list(entry.lr_grid)} if which == 'lr' else dict(entry.search_grid)


def dataset_name(dataset):
    """The name configs and studies go by: a folder under Data/, or a path's last part."""
    return os.path.basename(os.path.normpath(dataset))


def study_name(dataset, model, which):
    return f'tune-{dataset_name(dataset)}-{model}' + ('-lr' if which == 'lr' else '')


def base_flags(args, model):
    """The flags every trial and the written configuration share."""
    return ['--data_path', args.dataset, '--model_name', model, '--num_epoch', str(args.max_epoch),
            '--patience', str(args.patience), '--topK', '20', '10', '--seed', '1']


def storage(args, study):
    return 'sqlite:///' + os.path.join(args.runs, f'sweep-{study}.db')


def run_study(args, model):
    """sweep.py over the model's grid (resumable); returns its exit status."""
    import yaml
    study = study_name(args.dataset, model, args.grid)
    space = os.path.join(args.runs, f'{study}.space.yaml')
    os.makedirs(os.path.dirname(space), exist_ok=True)
    with atomic_file(space, 'w') as f:
        yaml.safe_dump(grid_of(model, args.grid), f)
    command = [sys.executable, os.path.join(ROOT, 'sweep.py'), '--space', space, '--study', study,
               '--storage', storage(args, study), '--', *base_flags(args, model), '--num_workers', str(args.threads)]
    print(f'== {model}: {" ".join(command[1:])}', flush=True)
    return subprocess.run(command, cwd=os.path.dirname(args.runs)).returncode      # trials in <runs>/sweep-<study>/


def best_trial(args, study):
    """The study's best complete trial, or None (no study, or nothing finished)."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        loaded = optuna.load_study(study_name=study, storage=storage(args, study))
    except KeyError:                                    # no such study in that storage
        return None, None
    complete = [t for t in loaded.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return (max(complete, key=lambda t: t.value) if complete else None), loaded


def config_text(args, model, trial, study, points):
    """The configuration file: its provenance as comments, then the flags (dest: value) main.py reads."""
    import yaml
    flags = base_flags(args, model)
    chosen = {'model_name': model, 'data_path': args.dataset, **trial.params, 'num_epoch': args.max_epoch,
              'patience': args.patience, 'topK': [20, 10], 'seed': 1}
    val, test = trial.user_attrs.get('val', {}), trial.user_attrs.get('test', {})
    metrics = ', '.join(f'{split} R@20 {m["20"]["recall"]:.4f} N@20 {m["20"]["ndcg"]:.4f}'
                        for split, m in (('validation', val), ('test', test)) if '20' in m)
    commit = subprocess.run(['git', '-C', ROOT, 'rev-parse', '--short', 'HEAD'], capture_output=True,
                            text=True).stdout.strip() or 'unknown'
    grid = ', '.join(f'{k}: {v}' for k, v in grid_of(model, args.grid).items())
    source = "the results table's learning rates" if args.grid == 'lr' else "its registry entry's search_grid"
    header = [
        f'# {model} on {dataset_name(args.dataset)}, tuned by bench/tune.py ({datetime.date.today()}, commit {commit}).',
        f'# Chosen on validation only: trial {trial.number} of sweep.py study {study!r} ({points} grid points), '
        f'best epoch {trial.user_attrs.get("best_epoch")}, {trial.user_attrs.get("wall_s", 0):.0f} s.',
        f'# {metrics}.',
        f'# Grid ({source}): {grid}; every other flag at its published default.',
        f'# Made by: python bench/tune.py --dataset {args.dataset} --models {model}'
        + (' --grid lr' if args.grid == 'lr' else '') + f' --max_epoch {args.max_epoch} --patience {args.patience}',
        f'# Trials: main.py {" ".join(flags)} <grid point>',
        f'# Reproduce: python main.py --config configs/{dataset_name(args.dataset)}/{model}.yaml',
    ]
    return '\n'.join(header) + '\n' + yaml.safe_dump(chosen, sort_keys=False)


def write_config(args, model):
    """``configs/<dataset>/<model>.yaml`` from the finished study; False when the grid is not finished."""
    study = study_name(args.dataset, model, args.grid)
    trial, loaded = best_trial(args, study)
    points = 1
    for values in grid_of(model, args.grid).values():
        points *= len(values)
    finished = 0 if loaded is None else len({tuple(sorted(t.params.items())) for t in loaded.trials
                                             if t.state.is_finished() and 'exit' in t.user_attrs})
    if trial is None or finished < points:
        print(f'{model}: study {study!r} has {finished} of {points} trials finished; no configuration yet')
        return False
    path = os.path.join(args.configs, dataset_name(args.dataset), f'{model}.yaml')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_file(path, 'w') as f:
        f.write(config_text(args, model, trial, study, points))
    print(f'{model}: {path} (trial {trial.number}, validation R@20 {trial.value:.4f})')
    return True


def check_dataset(parser, data_path):
    """``parser.error`` unless ``data_path`` names a prepared dataset folder (or one main.py prepares on first use)."""
    from DataLoad import AUTO_PREPARED, dataset_path
    if data_path not in AUTO_PREPARED and not os.path.isdir(dataset_path(data_path)):
        parser.error(f'--dataset: {dataset_path(data_path)}: dataset folder not found')


def main_(argv=None):
    from errors import OneLineParser
    p = OneLineParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--dataset', required=True, help='a prepared dataset under Data/ (tiktok, ml100k, ...)')
    p.add_argument('--models', default=','.join(registry.entries()), help='comma list (default: every model)')
    p.add_argument('--grid', choices=('search', 'lr'), default='search',
                   help="search: each entry's search_grid (default); lr: the results table's learning rates")
    p.add_argument('--max_epoch', type=int, default=500)
    p.add_argument('--patience', type=int, default=10)
    p.add_argument('--threads', type=int, default=1, help='torch threads per trial (two trials at a time on 2 cores)')
    p.add_argument('--write_only', action='store_true', help='write the configurations of finished studies only')
    p.add_argument('--configs', default=os.path.join(ROOT, 'configs'), help='where configs/<dataset>/ goes')
    p.add_argument('--runs', default=os.path.join(ROOT, 'runs'), help="the studies' folder (sweep.py's runs/)")
    args = p.parse_args(argv)
    args.runs = os.path.abspath(args.runs)
    if os.path.basename(args.runs) != 'runs':
        p.error('--runs must be a folder named runs (sweep.py keeps its trials in runs/ beside it)')
    models = args.models.split(',')
    unknown = [m for m in models if m not in registry.names_and_aliases()]
    if unknown:
        p.error(f'--models: unknown model(s) {", ".join(map(repr, unknown))}; choose from '
                f'{", ".join(registry.entries())}')
    models = [registry.entry(m).name for m in models]       # an alias (DA-MRS) tunes its model (DAMRS)
    check_dataset(p, args.dataset)                # before runs/ and a study exist: every trial would be refused
    os.makedirs(args.runs, exist_ok=True)
    failed = []
    for model in models:
        if not args.write_only:
            code = run_study(args, model)
            if code in (130, 143):          # interrupted or terminated: the study resumes at the next start
                return code
        if not write_config(args, model):
            failed.append(model)
    if failed:
        print(f'no configuration for {", ".join(dict.fromkeys(failed))}')
    return 1 if failed and not args.write_only else 0


if __name__ == '__main__':
    sys.exit(main_())
