"""Side by side: MMRec's own trainer on exactly our split, as ``prepare_data.py export --to mmrec`` writes it.

    python bench/mmrec_side_by_side.py --mmrec ~/MMRec --dataset tiktok --model FREEDOM --seeds 1 2 3 \\
        --set learning_rate=0.001 reg_weight=0.0001 dropout=0.8 stopping_step=9

``--mmrec`` is a checkout of MMRec (https://github.com/enoche/MMRec; read at e775373).  The dataset folder
(``Data/<name>``) is exported to MMRec's layout (``<name>.inter`` with ``x_label`` 0/1/2, ``image_feat.npy``,
``text_feat.npy``) by ``exporters.export`` into a temporary folder, and MMRec's ``quick_start`` trains the
model once per seed with one fixed setting: its ``overall.yaml`` and ``configs/model/<Model>.yaml``, then
the ``--set`` values (YAML-parsed).  Every key the model's YAML grid-searches (its ``hyper_parameters``) must be
given one value, so that a seed is one run.  MMRec selects its best epoch on validation Recall@20, stops
after ``stopping_step`` + 1 evaluations without a better one (``stopping_step=9`` is main.py's ``--patience
10``) and removes only training items from the test ranking, as SPEC 4 does, so its test numbers compare with
the rows of ``bench/results.py`` on the same split.  Only the modalities MMRec reads are exported (image as
``v``, text as ``t``); the export prints a note for any other (TikTok's audio), so compare with our model run
on the same modalities (``main.py --modalities v``).

MMRec pins SciPy 1.7, NumPy 1.21 and torchvision; under the versions this package installs three
compatibility shims are applied in this process before MMRec is imported (``mmrec_compat``), none of which
touches a number: ``dok_matrix._update`` (removed in SciPy 1.12) as item assignment, NumPy's removed
``np.float``/``np.int``/``np.bool`` aliases as the builtins, and a torchvision stand-in for its raw-image
transforms, which raise if called (a run on pre-extracted features never calls them).  MMRec also needs
pandas and lmdb (``pip install pandas lmdb``) beside matplotlib and pillow (requirements.txt, pillow as
matplotlib's dependency).

MMRec writes its ``log/`` folder into ``<mmrec>/src`` (its working directory); nothing else is kept apart from
``--out``'s ``mmrec_<dataset>_<Model>.{md,jsonl}`` (this run's table and its per-seed records, replaced).
"""
import json
import os
import sys
import tempfile
import types

import numpy as np
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from DataLoad import load_dataset  # noqa: E402
from errors import DataError, InputError, OneLineParser, describe  # noqa: E402
from exporters import export  # noqa: E402
import report  # noqa: E402
from safe_write import atomic_file, check_writable  # noqa: E402

KS = (10, 20)
METRICS = ('precision', 'recall', 'ndcg')


def mmrec_compat():
    """The shims named in the module's docstring; each is applied only where the installed library lacks it."""
    import scipy.sparse as sp

    def _update(self, entries):
        for key, value in entries.items():
            self[key] = value

    for cls in {sp.dok_matrix, getattr(sp, 'dok_array', sp.dok_matrix)}:
        if not hasattr(cls, '_update'):
            cls._update = _update
    for alias, builtin in (('float', float), ('int', int), ('bool', bool)):
        if alias not in np.__dict__:
            setattr(np, alias, builtin)
    try:
        import torchvision.transforms  # noqa: F401
    except Exception:                   # absent, or (as the registry's CUDA build beside our torch) broken
        def unavailable(*args, **kwargs):
            raise RuntimeError('torchvision is not installed: MMRec\'s raw-image transforms are unavailable')
        package = types.ModuleType('torchvision')
        transforms = types.ModuleType('torchvision.transforms')
        functional = types.ModuleType('torchvision.transforms.functional')
        functional.pad = functional.resize = unavailable
        package.transforms, transforms.functional = transforms, functional
        sys.modules.update({'torchvision': package, 'torchvision.transforms': transforms,
                            'torchvision.transforms.functional': functional})


def parse_settings(pairs):
    """``key=value`` strings -> {key: YAML-parsed value}; a malformed one is an InputError."""
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition('=')
        if not sep or not key:
            raise InputError(f'--set: {pair!r} is not key=value')
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise InputError(f'--set: {pair!r}: not a YAML value ({describe(e)})') from None
        if isinstance(value, str):              # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        settings[key] = value
    return settings


def searched(src, model, settings):
    """The hyper-parameters MMRec's ``configs/model/<model>.yaml`` grid-searches; each must have one value in
    ``settings``, so that a seed is one run (an InputError names those missing)."""
    path = os.path.join(src, 'configs', 'model', f'{model}.yaml')
    try:
        with open(path) as f:
            names = [n for n in (yaml.safe_load(f) or {}).get('hyper_parameters') or [] if n != 'seed']
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f'{path}: cannot read ({describe(e)})') from None
    listed = [k for k, v in settings.items() if isinstance(v, list)]
    if listed:
        raise InputError(f'--set: {", ".join(listed)}: give one value, not a list (one run per seed)')
    missing = [n for n in names if n not in settings]
    if missing:
        raise InputError(f'--set: MMRec\'s configs/model/{model}.yaml grid-searches {", ".join(names)}; give '
                         f'{", ".join(missing)} one value each (KEY=VALUE)')
    return names


def config_dict(export_root, name, seed, settings, hyper_parameters):
    """MMRec's configuration for one seed: our export as its dataset, CPU, one value per hyper-parameter."""
    cfg = {'data_path': export_root + os.sep, 'inter_file_name': f'{name}.inter',
           'USER_ID_FIELD': 'userID', 'ITEM_ID_FIELD': 'itemID', 'TIME_FIELD': 'timestamp',
           'inter_splitting_label': 'x_label', 'field_separator': '\t',
           'vision_feature_file': 'image_feat.npy', 'text_feature_file': 'text_feat.npy',
           'use_gpu': False, 'gpu_id': 0, 'topk': list(KS), 'valid_metric': 'Recall@20',
           'save_recommended_topk': False}
    cfg.update(settings)
    for key in hyper_parameters:                # each given one value (``searched``): a one-point grid
        cfg[key] = [cfg[key]]
    cfg['seed'] = [seed]
    return cfg


def run_seed(model, export_root, name, seed, settings, hyper_parameters):
    """Train MMRec's ``model`` on the export with one seed; returns its best validation and test-upon-it."""
    import utils.quick_start as quick_start
    from utils.utils import get_trainer

    results = []

    class Recorded(get_trainer()):
        def fit(self, *args, **kwargs):
            out = super().fit(*args, **kwargs)
            results.append(out)
            return out

    quick_start.get_trainer = lambda: Recorded
    quick_start.quick_start(model=model, dataset=name, config_dict=config_dict(
        export_root, name, seed, settings, hyper_parameters), save_model=False)
    _, valid, test = results[-1]
    return {'seed': seed, 'val': {k: float(v) for k, v in valid.items()},
            'test': {k: float(v) for k, v in test.items()}}


def table(records, model, summary, settings, notes=()):
    """Markdown: MMRec's validation and test metrics, mean ± std over the seeds."""
    def cell(part, metric, k):
        return report.cell([r[part][f'{metric}@{k}'] for r in records])

    head = ' | '.join(f'{m[0].upper()}@{k}' for k in (20, 10) for m in METRICS)
    lines = [f'MMRec {model} on {summary}; {", ".join(f"{k} {v}" for k, v in settings.items()) or "its defaults"};'
             f' seeds {" ".join(str(r["seed"]) for r in records)}; best epoch on validation Recall@20.',
             *(f'export note: {note[len("note: "):]}' if note.startswith('note: ') else note for note in notes), '',
             f'| MMRec | {head} |', '|---|' + '---|' * 6]
    for part in ('val', 'test'):
        lines.append(f'| {part} | ' + ' | '.join(cell(part, m, k) for k in (20, 10) for m in METRICS) + ' |')
    return '\n'.join(lines)


def main_(argv=None):
    p = OneLineParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--mmrec', required=True, help='an MMRec checkout (holding src/main.py)')
    p.add_argument('--dataset', default='tiktok', help='folder under Data/ or a path')
    p.add_argument('--model', required=True, help="MMRec's model name (its configs/model/<Model>.yaml)")
    p.add_argument('--seeds', type=int, nargs='+', default=[1, 2, 3])
    p.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE',
                   help='MMRec settings over its YAML, every key it grid-searches among them, e.g. '
                        'learning_rate=0.001 reg_weight=0.0001 stopping_step=9')
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'out'))
    args = p.parse_args(argv)
    try:
        src = os.path.join(os.path.abspath(args.mmrec), 'src')
        if not os.path.isfile(os.path.join(src, 'utils', 'quick_start.py')):
            raise InputError(f'--mmrec {args.mmrec}: no MMRec checkout there (src/utils/quick_start.py is missing)')
        if not os.path.isfile(os.path.join(src, 'configs', 'model', f'{args.model}.yaml')):
            raise InputError(f'--model {args.model}: MMRec has no configs/model/{args.model}.yaml')
        settings = parse_settings(args.set)
        hyper_parameters = searched(src, args.model, settings)
        folder = os.path.abspath(args.dataset if os.path.isdir(args.dataset) else
                                 os.path.join(ROOT, 'Data', args.dataset))
        name = os.path.basename(folder)
        summary = load_dataset(folder).summary()
        stem = os.path.join(args.out, f'mmrec_{name}_{args.model}')
        for suffix in ('.md', '.jsonl'):
            check_writable(stem + suffix, 'result')
    except (InputError, DataError) as e:
        p.error(str(e))
    print(summary, flush=True)
    mmrec_compat()
    sys.path.insert(0, src)
    records, cwd = [], os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        notes = export(folder, 'mmrec', os.path.join(tmp, name))
        print('\n'.join(notes), flush=True)
        os.chdir(src)            # MMRec reads configs/ from, and writes log/ into, its working directory
        try:
            for seed in args.seeds:
                records.append(run_seed(args.model, tmp, name, seed, settings, hyper_parameters))
                print(f'seed {seed}: MMRec {args.model} val R@20 {records[-1]["val"]["recall@20"]:.4f}, '
                      f'test R@20 {records[-1]["test"]["recall@20"]:.4f} N@20 {records[-1]["test"]["ndcg@20"]:.4f}',
                      flush=True)
        finally:
            os.chdir(cwd)
    text = table(records, args.model, summary, settings, notes)
    with atomic_file(stem + '.md', 'w') as f:
        f.write(text + '\n')
    with atomic_file(stem + '.jsonl', 'w') as f:
        f.writelines(json.dumps({'model': args.model, 'settings': settings, **r}) + '\n' for r in records)
    print(text)


if __name__ == '__main__':
    main_()
