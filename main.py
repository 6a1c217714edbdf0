"""Train and evaluate SLMRec, MMGCN or a baseline (LightGCN, VBPR, FREEDOM) on a dataset in the MMGCN layout.

    python main.py                                   # SLMRec with its defaults on MovieLens-100K
    python main.py --model_name='MMGCN' --l_r=0.0005 --weight_decay=0.1 --batch_size=1024 \\
        --dim_latent=64 --num_workers=30 --aggr_mode='mean' --num_layer=2 --concat=False --data_path tiktok_small

Each evaluation prints one Val and one Test line; the run ends with the best
epoch by validation Recall@K (first K) and its test metrics, and appends one
JSON line to ``--save_file``.  Exit status: 0 done, 1 unexpected error,
2 bad input or arguments, 3 training diverged (a NaN/Inf loss, parameter or score),
130 interrupted (Ctrl-C).
"""
import argparse
import hashlib
import json
import math
import os
import random
import sys
import time

try:
    import numpy as np
    import torch

    import distributed
    from DataLoad import DATA_ROOT
    from errors import EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED, InputError
    from safe_read import read_yaml
    from safe_write import (append_results_line, atomic_file, atomic_save, check_not_inputs, check_outputs,
                            check_writable)
except KeyboardInterrupt:          # Ctrl-C while torch loads (a second or two): the one line, not a traceback
    if __name__ != '__main__':
        raise
    print('interrupted before anything was read or written', file=sys.stderr)
    sys.exit(130)

MODELS = ('SLMRec', 'MMGCN', 'LightGCN', 'VBPR', 'FREEDOM')
BASELINES = ('LightGCN', 'VBPR', 'FREEDOM')   # SPEC 6, built by build_baseline

# Published defaults per model, used for every flag left out (SPEC 3.4, 5).
MODEL_DEFAULTS = {
    # SLMRec's published budget: 1000 epochs, early stopping by --patience (the default run on
    # ML-100K stops after about 45; README, Quick start).
    'SLMRec': dict(l_r=0.01, weight_decay=1e-4, batch_size=2048, num_layer=3, num_epoch=1000, dropout_rate=0.3),
    'MMGCN': dict(l_r=0.0005, weight_decay=0.1, batch_size=1024, num_layer=2, num_epoch=1000),
    # The baselines (SPEC 6): weight_decay is their loss coefficient λ; VBPR has no graph (num_layer unused).
    'LightGCN': dict(l_r=0.001, weight_decay=1e-4, batch_size=2048, num_layer=3, num_epoch=1000),
    'VBPR': dict(l_r=0.001, weight_decay=1e-4, batch_size=2048, num_layer=1, num_epoch=1000),
    'FREEDOM': dict(l_r=0.001, weight_decay=1e-4, batch_size=2048, num_layer=2, num_epoch=1000, dropout_rate=0.8),
}
AUTO_PREPARED = ('ml100k', 'ml1m')


def str2bool(value):
    if isinstance(value, bool):
        return value
    if value.lower() in ('true', '1', 'yes'):
        return True
    if value.lower() in ('false', '0', 'no'):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def build_parser():
    per_model = '; '.join(f'{m}: ' + ', '.join(f'{k}={v}' for k, v in d.items()) for m, d in MODEL_DEFAULTS.items())
    from errors import OneLineParser
    p = OneLineParser(description=__doc__.split('\n\n')[0],
                      epilog=f'Defaults of flags marked "per model": {per_model}.')
    a = p.add_argument
    a('--model_name', default='SLMRec', choices=MODELS,
      help='model to train (default SLMRec); LightGCN, VBPR and FREEDOM are the BPR baselines of SPEC 6')
    a('--data_path', default='ml100k', help='dataset folder under Data/ or a path (default ml100k, '
                                            'prepared on first use like ml1m)')
    a('--l_r', type=float, default=None, help='Adam learning rate (per model)')
    a('--weight_decay', type=float, default=None,
      help='SLMRec: Adam weight decay; MMGCN, LightGCN, VBPR, FREEDOM: the loss coefficient λ '
           '(FREEDOM: of its modality BPR terms), Adam then runs without decay (per model)')
    a('--batch_size', type=int, default=None, help='training pairs per step (per model)')
    a('--num_epoch', type=int, default=None, help='maximum epochs; 0 only evaluates (per model)')
    a('--num_workers', type=int, default=0,
      help='CPU threads for torch, capped at the core count (sampling is vectorised, no worker processes)')
    a('--dim_latent', type=int, default=64, help='embedding size d')
    a('--num_layer', type=int, default=None,
      help='graph layers L (per model; FREEDOM: its user-item layers; unused by VBPR)')
    a('--aggr_mode', default='mean', choices=('mean', 'max', 'add'), help='MMGCN neighbour aggregation')
    a('--concat', type=str2bool, default=False, help='MMGCN: g_l on [h ‖ x̂] (True) or g_l(h) + x̂ (False)')
    a('--has_id', type=str2bool, default=True, help='MMGCN: add the trainable ID embedding')
    a('--has_v', type=str2bool, default=True, help='use the visual modality when present')
    a('--has_a', type=str2bool, default=True, help='use the acoustic modality when present')
    a('--has_t', type=str2bool, default=True, help='use the textual modality when present')
    a('--modalities', default=None,
      help="comma-separated modalities to use, in order (e.g. 'v,t'); 'none' for an ID-only model")
    a('--topK', type=int, nargs='+', default=[10], help='cut-offs, e.g. --topK 10 20 (first one selects the model)')
    a('--seed', type=int, default=1, help='random seed; CPU runs with the same seed repeat exactly')
    a('--no-cuda', dest='no_cuda', action='store_true', help='stay on the CPU even when CUDA is present')
    a('--patience', type=int, default=20, help='evaluations without validation improvement before stopping')
    a('--eval_batch', type=int, default=1024, help='users per chunk in full-ranking evaluation')
    a('--PATH_weight_load', default=None, help='initial weights: ours, or an official SLMRec state dict')
    a('--PATH_weight_save', default=None, help='where the best model is saved (default runs/<run>.best.pt)')
    a('--checkpoint', default=None, help='end-of-epoch checkpoint for --resume (default runs/<run>.last.pt)')
    a('--resume', action='store_true', help='continue the run from --checkpoint')
    a('--resume_override', action='store_true',
      help='with --resume: continue although hyper-parameters differ from the checkpoint\'s (the new values apply; '
           'not --topK)')
    a('--save_file', default='results.jsonl', help='results file: one JSON line appended per run')
    a('--ssl_task', default='FAC', choices=('FAC', 'FD', 'FM', 'FD+FM', 'none'), help='SLMRec self-supervised task')
    a('--ssl_alpha', type=float, default=0.1, help='SLMRec: weight of the SSL loss')
    a('--ssl_temp', type=float, default=0.2, help='SLMRec: temperature of the SSL losses')
    a('--temp', type=float, default=0.2, help='SLMRec: temperature of the main InfoNCE')
    a('--dropout_rate', type=float, default=None,
      help='SLMRec: FD dropout (0.3); FREEDOM: share ρ of training edges pruned each epoch (0.8) (per model)')
    a('--knn_k', type=int, default=10, help="FREEDOM: neighbours per item in each modality's item-item kNN graph")
    a('--mm_image_weight', type=float, default=0.1,
      help='FREEDOM: weight of the first modality in the item-item graph (the others share the rest equally)')
    a('--mm_fusion_mode', default='concat', choices=('concat', 'mean'), help='SLMRec branch fusion')
    a('--backbone', default='lightgcn', choices=('lightgcn', 'mmgcn'), help='SLMRec encoder')
    a('--fm_views', default='official', choices=('official', 'clean'),
      help="SLMRec FM/FD+FM views: 'official' (each view's layer 0 from its own mask, its propagated layers "
           "from the other view's, as the official code) or 'clean' (its own mask at every layer; extension)")
    a('--no-progress', dest='progress', action='store_false', help='hide the per-epoch progress bar')
    a('--tensorboard', default=None, metavar='DIR',
      help='write TensorBoard curves to DIR/<run> (losses, validation and test metrics, epoch time, '
           'hyper-parameters); view with tensorboard --logdir DIR (default off)')
    a('--export_topk', default=None, metavar='FILE.csv',
      help="write every user's top K items (K = the largest --topK, training items excluded) from the best "
           "model (or the loaded one with --num_epoch 0) as CSV user,rank,item,score, in the dataset's source ids "
           "when it has user_ids.txt/item_ids.txt")
    a('--config', default=None, metavar='FILE.yaml',
      help='YAML mapping of flag names (dest, e.g. l_r, topK, no_cuda) to values; flags on the command line '
           'override it')
    a('--dist_timeout', type=float, default=300,
      help='under torchrun: seconds a rank waits for the others before the job fails (default 300)')
    return p


def config_defaults(parser, path):
    """The flag values of a --config YAML file, checked by the same type functions as the command line."""
    import difflib
    values = read_yaml(path, 'config file')
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InputError(f'{path}: expected a mapping of flag names to values, got {type(values).__name__}')
    actions = {a.dest: a for a in parser._actions if a.dest not in ('help', 'config')}
    out = {}
    for key, value in values.items():
        action = actions.get(key)
        if action is None:
            close = difflib.get_close_matches(str(key), actions, n=1)
            raise InputError(f'{path}: unknown key {key!r}' + (f' (did you mean {close[0]!r}?)' if close else ''))
        out[key] = _config_value(path, key, action, value)
    return out


def _config_value(path, key, action, value):
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise InputError(f'{path}: {key}: expected true or false, got {value!r}')
        return value
    if value is None:
        if action.default is None:
            return None
        raise InputError(f'{path}: {key}: a value is required')
    many = action.nargs in ('+', '*')
    items = value if many and isinstance(value, list) else [value]
    if isinstance(value, (list, dict)) and not many:
        raise InputError(f'{path}: {key}: expected one value, got {_short(value)}')
    if many and not items and action.nargs == '+':
        raise InputError(f'{path}: {key}: expected at least one value')
    converted = []
    for item in items:
        if isinstance(item, (list, dict)):
            raise InputError(f'{path}: {key}: expected a plain value, got {_short(item)}')
        text = str(item)        # YAML reads 1e-3 as a string and 0.001 as a float: both go through the type
        try:
            item = action.type(text) if action.type is not None else text
        except argparse.ArgumentTypeError as e:
            raise InputError(f'{path}: {key}: {e}') from None
        except (TypeError, ValueError):
            raise InputError(f'{path}: {key}: invalid {action.type.__name__} value {text!r}') from None
        if action.choices is not None and item not in action.choices:
            raise InputError(f'{path}: {key}: invalid choice {item!r} (choose from {", ".join(map(str, action.choices))})')
        converted.append(item)
    return converted if many else converted[0]


def _short(value):
    """A bounded repr: YAML aliases can nest a few hundred bytes into billions of items (a full repr hangs)."""
    import reprlib
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict, short.maxstring = 2, 4, 4, 40
    return short.repr(value)


def parse_args(argv=None):
    from errors import OneLineParser
    parser = build_parser()
    pre = OneLineParser(add_help=False, prog=parser.prog)
    pre.add_argument('--config', default=None)
    config = pre.parse_known_args(argv)[0].config
    if config is not None:
        parser.set_defaults(**config_defaults(parser, config))
    args = parser.parse_args(argv)
    for key, value in MODEL_DEFAULTS[args.model_name].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    validate_args(args)
    args.topK = list(dict.fromkeys(args.topK))
    return args


MAX_DIM, MAX_LAYER, MAX_TOPK, MAX_SEED = 4096, 32, 10000, 2 ** 32 - 1


def validate_args(args):
    """Every numeric flag inside its domain, else ``InputError`` naming the flag (one place for all of them).

    Non-finite floats are refused here (``--l_r inf`` is bad input, not a
    divergence); the upper bounds on sizes keep a typo from allocating the machine away.
    """
    finite = {k: getattr(args, k) is not None and math.isfinite(getattr(args, k))
              for k in ('l_r', 'weight_decay', 'ssl_alpha', 'ssl_temp', 'temp', 'dropout_rate', 'mm_image_weight',
                        'dist_timeout')}
    checks = [
        (finite['l_r'] and args.l_r > 0, '--l_r', 'must be a positive finite number'),
        (finite['weight_decay'] and args.weight_decay >= 0, '--weight_decay', 'must be a finite number >= 0'),
        (args.batch_size > 0, '--batch_size', 'must be positive'),
        (args.num_epoch >= 0, '--num_epoch', 'must be >= 0'),
        (args.num_workers >= 0, '--num_workers', 'must be >= 0'),
        (2 <= args.dim_latent <= MAX_DIM, '--dim_latent', f'must be in [2, {MAX_DIM}]'),
        (1 <= args.num_layer <= MAX_LAYER, '--num_layer', f'must be in [1, {MAX_LAYER}]'),
        (all(1 <= k <= MAX_TOPK for k in args.topK), '--topK', f'values must be in [1, {MAX_TOPK}]'),
        (0 <= args.seed <= MAX_SEED, '--seed', f'must be in [0, 2**32 - 1]'),
        (args.patience > 0, '--patience', 'must be positive'),
        (args.eval_batch > 0, '--eval_batch', 'must be positive'),
        (args.dropout_rate is None or (finite['dropout_rate'] and 0 <= args.dropout_rate < 1), '--dropout_rate',
         'must be in [0, 1)'),
        (1 <= args.knn_k <= MAX_TOPK, '--knn_k', f'must be in [1, {MAX_TOPK}]'),
        (finite['mm_image_weight'] and 0 <= args.mm_image_weight <= 1, '--mm_image_weight', 'must be in [0, 1]'),
        (finite['dist_timeout'] and args.dist_timeout > 0, '--dist_timeout', 'must be a positive finite number'),
        (finite['temp'] and args.temp > 0, '--temp', 'must be a positive finite number'),
        (finite['ssl_temp'] and args.ssl_temp > 0, '--ssl_temp', 'must be a positive finite number'),
        (finite['ssl_alpha'] and args.ssl_alpha >= 0, '--ssl_alpha', 'must be a finite number >= 0'),
        (args.has_id or args.model_name == 'MMGCN', '--has_id', 'False applies to MMGCN only'),
    ]
    for ok, flag, problem in checks:
        if not ok:
            value = getattr(args, flag[2:])
            shown = ' '.join(map(str, value)) if isinstance(value, list) else value
            raise InputError(f'{flag}: {problem}, got {shown}')


def run_name(args):
    """``<data>-<model>[-<ssl task>]-seed<seed>[-<hash>]``: the hash (8 hex digits) covers every other
    hyper-parameter that differs from the model's defaults, so runs that train differently never share
    their output files, and the default run keeps a readable name."""
    data = os.path.basename(os.path.normpath(args.data_path))
    task = f'-{args.ssl_task}' if args.model_name == 'SLMRec' else ''
    defaults = hyper_params(parse_args(['--model_name', args.model_name]))
    named = ('data_path', 'model_name', 'ssl_task', 'seed')
    differ = {k: v for k, v in hyper_params(args).items() if k not in named and v != defaults.get(k)}
    digest = hashlib.sha1(json.dumps(differ, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f'{data}-{args.model_name}{task}-seed{args.seed}' + (f'-{digest}' if differ else '')


def _data_folder(data_path):
    """The real path of the folder ``--data_path`` names (as ``resolve_data`` finds it)."""
    return os.path.realpath(data_path if os.path.isdir(data_path) else os.path.join(DATA_ROOT, data_path))


def resolve_data(args):
    """The dataset folder; the real MovieLens sets are prepared on first use."""
    path = args.data_path if os.path.isdir(args.data_path) else os.path.join(DATA_ROOT, args.data_path)
    if not os.path.isdir(path) and args.data_path in AUTO_PREPARED:
        import prepare_data
        print(f'preparing {args.data_path} (first use) ...')
        prepare_data.movielens(args.data_path)
    return path


def select_modalities(args, available):
    if args.modalities is not None:
        names = [] if args.modalities.strip().lower() == 'none' else [m.strip() for m in args.modalities.split(',') if m.strip()]
        unknown = [m for m in names if m not in available]
        if unknown:
            raise InputError(f'--modalities: unknown modality {unknown[0]!r}; valid: {", ".join(available) or "none"}')
        twice = [m for n, m in enumerate(names) if m in names[:n]]
        if twice:
            raise InputError(f'--modalities: {twice[0]!r} given twice')
        return names
    off = {m for m, flag in (('v', args.has_v), ('a', args.has_a), ('t', args.has_t)) if not flag}
    return [m for m in available if m not in off]


def check_memory(args, data):
    """Refuse what cannot fit in this machine's memory, before the graph or the model is built: sizes in
    meta.json are checked only against the ids, so a typo (or a hostile file) could allocate the machine away
    (2**31 items: 512 GiB for the item table alone).  Counted: the float32 embedding tables with their
    gradients and Adam's two moments, and one evaluation chunk (scores and their buffer, --eval_batch users)."""
    tables = (data.num_user + data.num_item) * args.dim_latent * 4 * 4
    chunk = min(args.eval_batch, data.num_user) * data.num_item * 4 * 2
    try:
        have = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (ValueError, OSError, AttributeError):                        # not a POSIX system: no bound
        return
    if tables + chunk > have:
        raise InputError(f'{data.path}: {data.num_user} users and {data.num_item} items need '
                         f'{(tables + chunk) / 2 ** 30:.0f} GiB ({tables / 2 ** 30:.0f} GiB of embeddings at '
                         f'--dim_latent {args.dim_latent}, {chunk / 2 ** 30:.0f} GiB to score --eval_batch '
                         f'{args.eval_batch} users); this machine has {have / 2 ** 30:.0f} GiB')


def build_model(args, data):
    from BaseModel import bipartite_edges, csr_adjacency, normalized_adjacency
    from model_MMGCN import MMGCN
    from model_SSL import SLMRec
    if args.model_name in BASELINES:
        return build_baseline(args, data)
    n = data.num_user + data.num_item
    if args.model_name == 'MMGCN':
        if not data.features:
            raise InputError('MMGCN needs at least one modality (see --modalities)')
        adj = csr_adjacency(bipartite_edges(data.train, data.num_user), n)
        return MMGCN(data.num_user, data.num_item, data.features, adj, args.dim_latent, args.num_layer,
                     args.aggr_mode, args.concat, args.has_id, reg_weight=args.weight_decay)
    if args.backbone == 'mmgcn':
        adj = csr_adjacency(bipartite_edges(data.train, data.num_user), n)
    else:
        adj = normalized_adjacency(data.train, data.num_user, data.num_item)
    try:
        return SLMRec(data.num_user, data.num_item, data.features, adj, args.dim_latent, args.num_layer,
                      args.mm_fusion_mode, args.ssl_task, args.ssl_alpha, args.temp, args.ssl_temp,
                      args.dropout_rate, args.backbone, args.aggr_mode, args.concat, args.fm_views)
    except ValueError as e:
        raise InputError(str(e)) from None


def build_baseline(args, data):
    """LightGCN, VBPR or FREEDOM (SPEC 6) for ``data``; VBPR and FREEDOM need a modality."""
    from BaseModel import normalized_adjacency
    if args.model_name != 'LightGCN' and not data.features:
        raise InputError(f'{args.model_name} needs at least one modality (see --modalities)')
    if args.model_name == 'VBPR':
        from model_VBPR import VBPR
        return VBPR(data.num_user, data.num_item, data.features, args.dim_latent, reg_weight=args.weight_decay)
    adj = normalized_adjacency(data.train, data.num_user, data.num_item)
    if args.model_name == 'LightGCN':
        from model_LightGCN import LightGCN
        return LightGCN(data.num_user, data.num_item, adj, args.dim_latent, args.num_layer, reg_weight=args.weight_decay)
    from model_FREEDOM import FREEDOM, item_graph
    if args.knn_k > data.num_item:
        raise InputError(f'--knn_k {args.knn_k} exceeds the number of items ({data.num_item})')
    graph = item_graph(data.features, data.num_item, args.knn_k, args.mm_image_weight, cache_dir=data.path)
    return FREEDOM(data.num_user, data.num_item, data.features, data.train, adj, graph, args.dim_latent,
                   args.num_layer, args.dropout_rate, reg_weight=args.weight_decay)


def load_checkpoint_file(path, what):
    from errors import describe
    if not os.path.isfile(path):
        raise InputError(f'{path}: {what} not found')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise InputError(f'{path}: not a readable {what} ({describe(e)})') from None


def load_weights(model, path):
    """Load our state dict (plain, or inside a checkpoint) or an official SLMRec one (SPEC 3.5)."""
    from errors import describe
    from model_SSL import from_official_state_dict, is_official_state_dict
    state = load_checkpoint_file(path, 'weight file')
    if isinstance(state, dict) and isinstance(state.get('model'), dict):
        state = state['model']
    if not isinstance(state, dict) or not all(isinstance(k, str) and _plain_tensor(v) for k, v in state.items()):
        raise InputError(f'{path}: expected a state dict of dense real tensors')
    bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise InputError(f'{path}: non-finite weights in {bad!r}')
    try:
        if is_official_state_dict(state):
            if not hasattr(model, 'official_key_map'):
                raise ValueError('an official SLMRec checkpoint needs --model_name SLMRec')
            state = from_official_state_dict(model, state)
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as e:
        raise InputError(f'{path}: does not fit this model ({describe(e)}; '
                         f'check --model_name, --dim_latent, --modalities and the fusion and SSL flags)') from None


# Flags that change where a run writes, how fast it runs, or when it stops, not what it trains:
# they may differ on --resume and do not enter the run name.  Every other flag is a hyper-parameter.
NOT_HYPER = {'resume', 'resume_override', 'checkpoint', 'PATH_weight_save', 'PATH_weight_load', 'save_file',
             'num_epoch', 'patience', 'num_workers', 'eval_batch', 'progress', 'no_cuda', 'tensorboard',
             'export_topk', 'config', 'dist_timeout'}


def hyper_params(args):
    return {k: v for k, v in sorted(vars(args).items()) if k not in NOT_HYPER}


def _plain_tensor(value):
    """A dense real tensor: a sparse one fails the finiteness check, a complex one is cast with a warning."""
    return (isinstance(value, torch.Tensor) and not value.is_nested and value.layout == torch.strided
            and value.device.type == 'cpu' and not value.is_complex())


class MalformedCheckpoint(Exception):
    """What is wrong with a checkpoint's structure (one phrase)."""


def _need(ok, problem):
    if not ok:
        raise MalformedCheckpoint(problem)


def _is_int(x, low=0):
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


def _is_real(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_metrics(metrics, where, topk):
    _need(isinstance(metrics, dict) and set(metrics) == set(topk),
          f'{where} must map each --topK cut-off {sorted(topk)} to metrics')
    for k, m in metrics.items():
        _need(isinstance(m, dict) and set(m) == {'precision', 'recall', 'ndcg'} and all(map(_is_real, m.values())),
              f'{where}[{k}] must hold finite precision, recall and ndcg')


def validate_checkpoint(ckpt, path, args, sampler_rng):
    """Check a ``--resume`` checkpoint before any of it is used; ``InputError`` names the problem.

    The optimiser's state is checked against the parameters by ``validate_optimizer_state``, once the
    model weights are loaded (loading may replace a parameter) and the optimiser is built.
    """
    try:
        _need(isinstance(ckpt, dict), f'expected a dict, found {type(ckpt).__name__}')
        missing = [k for k in ('model', 'optimizer', 'rng', 'state') if k not in ckpt]
        _need(not missing, f'no {", ".join(map(repr, missing))} entry')
        weights = ckpt['model']
        _need(isinstance(weights, dict) and all(isinstance(k, str) and _plain_tensor(v) for k, v in weights.items()),
              "'model' must be a state dict of dense real tensors")
        _need(all(bool(torch.isfinite(v).all()) for v in weights.values() if v.is_floating_point()),
              "'model' holds non-finite weights")
        opt = ckpt['optimizer']
        _need(isinstance(opt, dict) and isinstance(opt.get('state'), dict) and isinstance(opt.get('param_groups'), list)
              and all(isinstance(g, dict) and isinstance(g.get('params'), list) for g in opt['param_groups']),
              "'optimizer' must be an optimiser state dict")
        rng = ckpt['rng']
        _need(isinstance(rng, dict) and all(k in rng for k in ('python', 'numpy', 'torch')),
              "'rng' must hold the python, numpy and torch states")
        try:
            random.Random().setstate(rng['python'])
            type(sampler_rng.bit_generator)().state = rng['numpy']
            torch.Generator().set_state(rng['torch'])
        except (TypeError, ValueError, KeyError, RuntimeError, OverflowError):
            raise MalformedCheckpoint("'rng' holds an unusable random state") from None
        state = ckpt['state']
        _need(isinstance(state, dict), f"'state' must be a dict, found {type(state).__name__}")
        missing = [k for k in ('epoch', 'best_epoch', 'best_val', 'best_test', 'best_recall', 'bad_evals', 'history')
                   if k not in state]
        _need(not missing, f"'state' has no {', '.join(map(repr, missing))}")
        _need(_is_int(state['epoch']), "'state' epoch must be an integer >= 0")
        _need(_is_int(state['bad_evals']), "'state' bad_evals must be an integer >= 0")
        _need(_is_real(state['best_recall']) and -1 <= state['best_recall'] <= 1,
              "'state' best_recall must be a recall (or -1 before the first evaluation)")
        _need(isinstance(state.get('board_dir'), (str, type(None))), "'state' board_dir must be a folder name")
        history = state['history']
        _need(isinstance(history, list) and len(history) == state['epoch']
              and all(isinstance(h, dict) and _is_int(h.get('epoch')) and _is_real(h.get('loss'))
                      and _is_real(h.get('val_recall')) for h in history),
              "'state' history must list one {epoch, loss, val_recall} per epoch")
        if state['best_epoch'] is None:
            _need(state['best_val'] is None and state['best_test'] is None, "'state' has best metrics but no best epoch")
        else:
            _need(_is_int(state['best_epoch']) and state['best_epoch'] <= state['epoch'],
                  "'state' best_epoch must be an integer <= epoch")
            _check_metrics(state['best_val'], "'state' best_val", args.topK)
            _check_metrics(state['best_test'], "'state' best_test", args.topK)
        saved = ckpt.get('args')
        plain = (type(None), bool, int, float, str)
        _need(saved is None or (isinstance(saved, dict) and all(
            isinstance(k, str) and (isinstance(v, plain) or (isinstance(v, list) and all(isinstance(x, plain) for x in v)))
            for k, v in saved.items())), "'args' must map flag names to plain values")
    except MalformedCheckpoint as e:
        raise InputError(f'{path}: malformed checkpoint: {e}') from None


def validate_optimizer_state(opt, path, optimizer):
    """The checkpoint's optimiser state against this optimiser's parameters (Adam, the only one here)."""
    try:
        params = [p for g in optimizer.param_groups for p in g['params']]
        ids = [i for g in opt['param_groups'] for i in g['params']]
        _need(len(opt['param_groups']) == len(optimizer.param_groups) and all(_is_int(i) for i in ids)
              and sorted(ids) == list(range(len(params))), "'optimizer' does not cover this model's parameters")
        for i, entry in opt['state'].items():       # Adam's state (SPEC: the only optimiser here)
            _need(_is_int(i) and i < len(params) and isinstance(entry, dict)
                  and set(entry) == {'step', 'exp_avg', 'exp_avg_sq'}, "'optimizer' state is not Adam's per parameter")
            step = entry['step']
            _need(isinstance(step, torch.Tensor) and step.numel() == 1 and step.is_floating_point()
                  and bool(torch.isfinite(step).all()) and float(step) >= 1,
                  f"'optimizer' step of parameter {i} must be a number >= 1")
            for name in ('exp_avg', 'exp_avg_sq'):
                value = entry[name]
                _need(isinstance(value, torch.Tensor) and value.shape == params[i].shape
                      and value.dtype == params[i].dtype and bool(torch.isfinite(value).all())
                      and (name == 'exp_avg' or bool((value >= 0).all())),
                      f"'optimizer' {name} of parameter {i} has the wrong shape, type or values")
    except MalformedCheckpoint as e:
        raise InputError(f'{path}: malformed checkpoint: {e}') from None


def changed_hyper_params(ckpt, args):
    """Flags whose value differs from the checkpoint's run, as '--flag old -> new' phrases."""
    if ckpt.get('args') is not None:
        saved, now = ckpt['args'], hyper_params(args)
        same_data = isinstance(saved.get('data_path'), str) and \
            _data_folder(saved['data_path']) == _data_folder(now['data_path'])    # './x' and 'x', 'x/', a link
        return [f'--{k} {saved.get(k)!r} -> {now[k]!r}' for k in now
                if saved.get(k) != now[k] and not (k == 'data_path' and same_data)]
    group = ckpt['optimizer']['param_groups'][0]     # a checkpoint from before 'args' was saved
    adam_decay = args.weight_decay if args.model_name == 'SLMRec' else 0.0   # as in run(): MMGCN's is λ
    return [f'--{k} {group.get(key)!r} -> {value!r}' for k, key, value in
            (('l_r', 'lr', args.l_r), ('weight_decay', 'weight_decay', adam_decay)) if group.get(key) != value]


def read_checkpoint(path, args, sampler_rng):
    """The ``--resume`` checkpoint at ``path``, its structure validated and its hyper-parameters compared."""
    ckpt = load_checkpoint_file(path, 'checkpoint')
    saved = ckpt.get('args') if isinstance(ckpt, dict) else None
    if isinstance(saved, dict) and isinstance(saved.get('topK'), list) and saved['topK'] != args.topK:
        # the best metrics so far are per cut-off: they cannot be compared with other ones (not even with override)
        raise InputError(f'{path}: checkpoint of a run with --topK {" ".join(map(str, saved["topK"]))}; '
                         f'--resume needs the same cut-offs')
    validate_checkpoint(ckpt, path, args, sampler_rng)
    changed = changed_hyper_params(ckpt, args)
    if changed and not args.resume_override:
        raise InputError(f'{path}: checkpoint of a run with other hyper-parameters ({"; ".join(changed)}); '
                         f'pass --resume_override to continue with the new values')
    if changed:
        print(f'resuming with changed hyper-parameters: {"; ".join(changed)}')
    return ckpt


def resume_from(ckpt, path, optimizer, sampler_rng):
    """Optimiser and RNG states from a checkpoint of ``read_checkpoint``; returns the training state."""
    from errors import describe
    validate_optimizer_state(ckpt['optimizer'], path, optimizer)
    own_groups = [{k: v for k, v in g.items() if k != 'params'} for g in optimizer.param_groups]
    try:
        optimizer.load_state_dict(ckpt['optimizer'])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise InputError(f'{path}: not a checkpoint of this run ({describe(e)})') from None
    for group, own in zip(optimizer.param_groups, own_groups):   # this command line's values apply, never the file's
        group.update(own)
    set_rng_state(ckpt['rng'], sampler_rng)
    return ckpt['state']


def rng_state(sampler_rng):
    state = {'python': random.getstate(), 'numpy': sampler_rng.bit_generator.state, 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state, sampler_rng):
    random.setstate(state['python'])
    sampler_rng.bit_generator.state = state['numpy']
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        if distributed.active():    # every rank's GPU drew what rank 0's, cuda:0, drew
            torch.cuda.set_rng_state(state['cuda'][0])
        else:
            torch.cuda.set_rng_state_all(state['cuda'])


def keep_freed_memory():
    """Ask glibc to serve large blocks from the heap and keep freed memory in the process.

    The graph tensors are hundreds of MB; by default glibc maps each one afresh
    and unmaps it when freed, so every training step pays page faults on
    several GB (measured here: a 100 MB copy 43 ms by default, 12 ms after
    this).  A no-op where glibc's ``mallopt`` is absent.
    """
    import ctypes
    try:
        libc = ctypes.CDLL('libc.so.6')
        libc.mallopt(-8, 1)            # M_ARENA_MAX: one arena, so freed blocks are found again
        libc.mallopt(-4, 0)            # M_MMAP_MAX: no mmap for large blocks
        libc.mallopt(-1, 2 ** 31 - 1)  # M_TRIM_THRESHOLD: never give freed top memory back
    except (OSError, AttributeError):
        pass


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def run(args):
    from DataLoad import TrainSampler, load_dataset
    from errors import describe
    from Full_vt import SplitIndex, format_metrics, full_ranking
    from Board import open_board
    from Train import Divergence, train_epoch
    from tqdm import tqdm

    started = time.time()
    name = run_name(args)
    best_path = args.PATH_weight_save or os.path.join('runs', f'{name}.best.pt')
    ckpt_path = args.checkpoint or os.path.join('runs', f'{name}.last.pt')
    outputs = [(args.save_file, 'results file'), (best_path, 'best-model file'), (ckpt_path, 'checkpoint')]
    if args.export_topk:
        outputs.append((args.export_topk, 'top-K export'))
    if distributed.is_main():                    # rank 0 alone writes files (SPEC 7)
        check_outputs(outputs, [(args.tensorboard, 'TensorBoard folder')] if args.tensorboard else [])
        if args.tensorboard:
            check_writable(os.path.join(args.tensorboard, 'events'), 'TensorBoard folder')

    keep_freed_memory()
    if args.num_workers > 0:
        torch.set_num_threads(max(1, min(args.num_workers, os.cpu_count() or 1)))
    use_cuda = torch.cuda.is_available() and not args.no_cuda
    device = distributed.setup(use_cuda, args.dist_timeout) or torch.device('cuda' if use_cuda else 'cpu')
    sampler_rng = seed_everything(args.seed)

    with distributed.main_first():              # one rank prepares a dataset on first use
        folder = resolve_data(args)
    check_not_inputs(outputs, folder, args)    # every rank: it only reads, and all of them stop together
    data = load_dataset(folder, require_val=args.num_epoch > 0)
    data.features = {m: data.features[m] for m in select_modalities(args, data.modalities)}
    check_memory(args, data)
    if args.export_topk:            # the export reads the source ids at the end: their errors are found now
        for ids_file, count in (('user_ids.txt', data.num_user), ('item_ids.txt', data.num_item)):
            read_ids(folder, ids_file, count)
    print(data.summary())
    model = build_model(args, data)
    if args.PATH_weight_load:
        load_weights(model, args.PATH_weight_load)
    ckpt = read_checkpoint(ckpt_path, args, sampler_rng) if args.resume else None
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt['model'])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise InputError(f'{ckpt_path}: not a checkpoint of this run ({describe(e)})') from None
    model.to(device)
    # Built after every load: loading may replace a parameter (a larger official word table, WordMean).
    adam_decay = args.weight_decay if args.model_name == 'SLMRec' else 0.0   # SPEC 2, 6: the others' is λ
    optimizer = torch.optim.Adam(model.parameters(), lr=args.l_r, weight_decay=adam_decay)
    sampler = TrainSampler(data.train, data.num_item, args.batch_size, sampler_rng,
                           source=os.path.join(folder, 'train.npy'))
    uneven = distributed.check_batches(len(data.train), args.batch_size)
    if uneven:
        raise InputError(uneven)
    indptr, items = data.train_csr()
    indexes = {'val': SplitIndex(data.val, indptr, items), 'test': SplitIndex(data.test, indptr, items)}
    key = args.topK[0]
    trainer = distributed.wrap(model, device)   # the model itself in one process

    state = {'epoch': 0, 'best_epoch': None, 'best_val': None, 'best_test': None, 'best_recall': -1.0,
             'bad_evals': 0, 'history': []}
    if ckpt is not None:
        state = resume_from(ckpt, ckpt_path, optimizer, sampler_rng)
        print(f'resumed from {ckpt_path} after epoch {state["epoch"]}')

    def evaluate(epoch):
        metrics = full_ranking(model, indexes, args.topK, args.eval_batch)
        tqdm.write(f'epoch {epoch:4d}  Val   {format_metrics(metrics["val"])}')
        tqdm.write(f'epoch {epoch:4d}  Test  {format_metrics(metrics["test"])}')
        return metrics

    board = open_board(args.tensorboard, name, state) if distributed.is_main() else None
    status = 'done'
    try:
        if args.num_epoch == 0:
            metrics = evaluate(0)
            state.update(best_epoch=0, best_val=metrics['val'], best_test=metrics['test'])
            if board:
                board.epoch(0, None, {}, metrics, 0.0)
        while state['epoch'] < args.num_epoch and state['bad_evals'] < args.patience:
            epoch = state['epoch'] + 1
            t0 = time.time()
            loss, loss_parts = train_epoch(trainer, sampler, optimizer, device, epoch,
                                           show_bar=args.progress and distributed.is_main())
            tqdm.write(f'epoch {epoch:4d}  loss {loss:.4f}  ({time.time() - t0:.1f}s)')
            metrics = evaluate(epoch)
            seconds = time.time() - t0
            if board:
                board.epoch(epoch, loss, loss_parts, metrics, seconds)
            recall = metrics['val'][key]['recall']
            if recall > state['best_recall']:
                state.update(best_epoch=epoch, best_val=metrics['val'], best_test=metrics['test'],
                             best_recall=recall, bad_evals=0)
                if distributed.is_main():
                    atomic_save(model.state_dict(), best_path)
            else:
                state['bad_evals'] += 1
            state['epoch'] = epoch
            state['history'].append({'epoch': epoch, 'loss': loss, 'val_recall': recall, 'loss_parts': loss_parts,
                                     'val': metrics['val'], 'seconds': round(seconds, 3)})
            if distributed.is_main():           # every rank's RNG states are rank 0's
                atomic_save({'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                             'rng': rng_state(sampler_rng), 'state': state, 'args': hyper_params(args)}, ckpt_path)
        if state['bad_evals'] >= args.patience:
            print(f'early stop: no validation improvement in {args.patience} evaluations')
    except Divergence as e:
        status = 'diverged'
        kept = f'the best model so far is kept in {best_path}' if state['best_epoch'] else 'no best model was saved'
        print(f'training diverged: {e}; {kept}', file=sys.stderr)

    if board:
        board.close(args, state)
    if args.export_topk and distributed.is_main():
        export_best_topk(args, model, data, folder, best_path, state, device)
    wall = time.time() - started
    summary(state, key, status)
    if state['best_epoch'] and os.path.exists(best_path):
        print(f'best model: {best_path}')
    record = {'run': name, 'status': status, 'args': vars(args), 'best_epoch': state['best_epoch'],
              'val': state['best_val'], 'test': state['best_test'], 'epochs_run': state['epoch'],
              'wall_time_s': round(wall, 2), 'device': str(device), 'processes': distributed.world_size(),
              'device_name': torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu',
              'data': data.summary(), 'history': state['history']}
    if distributed.is_main():
        append_results_line(args.save_file, record)
    return EXIT_DIVERGED if status == 'diverged' else 0


def read_ids(folder, name, count):
    """The source ids of a prepared dataset (line n = index n), or None without the file."""
    from safe_read import read_regular
    path = os.path.join(folder, name)
    if not os.path.lexists(path):
        return None
    try:
        text = read_regular(path, 1 << 30).decode('utf-8')     # a regular file: a FIFO would hang
    except UnicodeDecodeError as e:
        raise InputError(f'{path}: not UTF-8 text (byte {e.start}: {e.reason})') from None
    lines = text.split('\n')             # prepare_data writes one id per '\n' line; str.splitlines would also
    if lines[-1] == '':                  # break at the separators an id may hold (\u2028, \x85, \x0c, ...)
        lines.pop()
    ids = [line[:-1] if line.endswith('\r') else line for line in lines]
    if len(ids) != count:
        raise InputError(f'{path}: {len(ids)} ids for {count} indices')
    return ids


def _csv_fields(ids):
    """Ids as CSV fields: quoted where they hold a comma, a quote or a line break (a CSV import keeps them)."""
    if ids is None:
        return None
    return [f'"{x.replace(chr(34), chr(34) * 2)}"' if any(c in x for c in ',"\r\n') else x for x in ids]


def export_best_topk(args, model, data, folder, best_path, state, device):
    """--export_topk: reload the best state dict (when training ran) and write every user's top list."""
    if args.num_epoch > 0:
        if state['best_epoch'] is None or not os.path.isfile(best_path):
            print(f'no best model to export; {args.export_topk} not written', file=sys.stderr)
            return
        model.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
    n = export_topk(model, data, folder, max(args.topK), args.eval_batch, args.export_topk)
    print(f'top-{max(args.topK)} lists of {n} users written to {args.export_topk}')


@torch.no_grad()
def export_topk(model, data, folder, k, eval_batch, path):
    """Write CSV user,rank,item,score atomically, ``eval_batch`` users at a time; returns the user count.

    Ids are the dataset's source ids where ``user_ids.txt``/``item_ids.txt``
    exist, else the 0-based indices (items without the user offset).
    """
    from Full_vt import top_items
    user_ids = _csv_fields(read_ids(folder, 'user_ids.txt', data.num_user))
    item_ids = _csv_fields(read_ids(folder, 'item_ids.txt', data.num_item))
    indptr, items = data.train_csr()
    was_training = model.training
    model.eval()
    try:
        z_user, z_item = model()
        with atomic_file(path, 'w') as f:
            f.write('user,rank,item,score\n')
            for users, top, scores in top_items(z_user, z_item, np.arange(data.num_user), indptr, items, k,
                                                eval_batch):
                for user, row, row_scores in zip(users.tolist(), top.tolist(), scores.tolist()):
                    name = user_ids[user] if user_ids else user
                    for rank, (item, score) in enumerate(zip(row, row_scores), start=1):
                        if score == -float('inf'):      # training item or padding: fewer than k candidates
                            break
                        f.write(f'{name},{rank},{item_ids[item] if item_ids else item},{score:.7g}\n')
    finally:
        model.train(was_training)
    return data.num_user


def summary(state, key, status):
    from Full_vt import format_metrics
    if state['best_epoch'] is None:
        print(f'finished ({status}) with no completed evaluation')
        return
    print(f'best epoch {state["best_epoch"]} (validation Recall@{key} {state["best_val"][key]["recall"]:.4f})')
    print(f'  Val   {format_metrics(state["best_val"])}')
    print(f'  Test  {format_metrics(state["best_test"])}')


def flush_denormals():
    """Treat subnormal floats as zero on the CPU; returns a function that restores the default.

    As training sharpens the in-batch softmaxes, many of their probabilities
    fall below 1.2e-38, where x86 arithmetic takes a slow path: an ML-100K
    SLMRec epoch went from 3.3 s to 13.4 s over five epochs, and stays at
    3.0 s with this (README, Performance).  Values that small change no
    reported digit.
    """
    if not torch.set_flush_denormal(True):
        return lambda: None
    return lambda: torch.set_flush_denormal(False)


def main(argv=None):
    from errors import DataError, one_line
    threads = torch.get_num_threads()
    restore = flush_denormals()
    try:
        return run(parse_args(argv))
    except (DataError, InputError) as e:
        if distributed.is_main():               # every rank meets the same bad input
            print(f'error: {one_line(e)}', file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print('interrupted: the last end-of-epoch checkpoint is intact (continue with --resume)', file=sys.stderr)
        return EXIT_INTERRUPTED
    except RuntimeError as e:                   # torch.distributed's errors are RuntimeErrors
        message = distributed.lost_peer(e)
        if message is None:
            raise
        print(f'error: {message}', file=sys.stderr)
        return 1
    finally:
        distributed.cleanup()
        restore()
        # an in-process caller (a test) gets its thread count back: threads started under the flush-to-zero
        # mode above keep it, and would flush its subnormals (BaseModel._amax_with_sources needs them)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


if __name__ == '__main__':
    sys.exit(main())
