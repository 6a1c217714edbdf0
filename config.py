"""The command line: flags (shared ones here, each model's own from the registry), YAML configs, validation,
run names.

    import config
    args = config.parse_args(['--model_name', 'MMGCN', '--l_r', '0.0005'])   # per-model defaults filled in
    config.run_name(args)       # 'ml100k-MMGCN-seed1-<hash of the flags that differ from the defaults>'

Every numeric flag is checked here (``validate_args``): a bad value is one
``InputError`` naming the flag.  A ``--config`` YAML file's values go through
the same type functions and choices as the command line, which overrides them.
"""
import argparse
import hashlib
import json
import os

import registry
from errors import InputError, OneLineParser
from safe_read import read_yaml


SELECT_ON = ('val', 'test')


def str2bool(value):
    if isinstance(value, bool):
        return value
    if value.lower() in ('true', '1', 'yes'):
        return True
    if value.lower() in ('false', '0', 'no'):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def build_parser():
    """The command line: the flags every model shares, then each model's own (from the registry)."""
    models = registry.entries()
    per_model = '; '.join(f'{m}: ' + ', '.join(f'{k}={v}' for k, v in e.defaults.items()) for m, e in models.items())
    p = OneLineParser(description=f'Train and evaluate {", ".join(models)} on a dataset in the MMGCN layout '
                                  f'(full-ranking Precision, Recall and NDCG; model selection on validation, or on test with --select_on test).',
                      epilog=f'Defaults of flags marked "per model": {per_model}.')
    a = p.add_argument
    a('--model_name', default='SLMRec', choices=registry.names_and_aliases(),
      help='model to train (default SLMRec): ' + '; '.join(f'{m}: {e.summary}' for m, e in models.items()))
    a('--data_path', default='ml100k', help='dataset folder under Data/ or a path (default ml100k, '
                                            'prepared on first use like ml1m)')
    a('--l_r', type=float, default=None, help='Adam learning rate (per model)')
    adam = [m for m, e in models.items() if e.adam_weight_decay]
    a('--weight_decay', type=float, default=None,
      help=f'{", ".join(adam)}: Adam weight decay; {", ".join(m for m in models if m not in adam)}: the loss '
           f'coefficient λ (FREEDOM: of its modality BPR terms), Adam then runs without decay (per model)')
    a('--batch_size', type=int, default=None, help='training pairs per step (per model)')
    a('--num_epoch', type=int, default=None, help='maximum epochs; 0 only evaluates (per model)')
    a('--num_workers', type=int, default=0,
      help='CPU threads for torch, capped at the core count (sampling is vectorised, no worker processes); '
           'default: OMP_NUM_THREADS if set, else torch\'s count capped at the CPUs this process may use (affinity, '
           'cgroup quota, SLURM_CPUS_PER_TASK; divided among torchrun\'s ranks on the node), waiting threads asleep '
           '(OMP_WAIT_POLICY=PASSIVE unless set) so that a busy neighbour costs only its share')
    a('--dim_latent', type=int, default=64, help='embedding size d')
    a('--num_layer', type=int, default=None,
      help='graph layers L (per model; FREEDOM: its user-item layers; BPR and VBPR have none)')
    dropping = [m for m, e in models.items() if 'dropout_rate' in e.defaults]
    a('--dropout_rate', type=float, default=None,
      help=f'the dropout of {", ".join(dropping)} (SLMRec: FD\'s; FREEDOM: the share ρ of training edges pruned '
           f'each epoch) (per model)')
    a('--has_v', type=str2bool, default=True, help='use the visual modality when present')
    a('--has_a', type=str2bool, default=True, help='use the acoustic modality when present')
    a('--has_t', type=str2bool, default=True, help='use the textual modality when present')
    a('--modalities', default=None,
      help="comma-separated modalities to use, in order (e.g. 'v,t'); 'none' for an ID-only model")
    a('--topK', type=int, nargs='+', default=[10], help='cut-offs, e.g. --topK 10 20 (first one selects the model)')
    a('--seed', type=int, default=1, help='random seed; CPU runs with the same seed repeat exactly')
    a('--no-cuda', dest='no_cuda', action='store_true', help='stay on the CPU even when CUDA is present')
    a('--patience', type=int, default=20, help='evaluations without validation improvement before stopping')
    a('--select_on', default='val', choices=SELECT_ON,
      help='the split whose Recall at the first --topK picks the best epoch and stops early: val (default, '
           'the honest protocol) or test, the protocol of papers whose code keeps the best test epoch (DiffMM, '
           'the official SLMRec); test-selected numbers are optimistic, every output of such a run says so, and '
           'its run name ends in -testsel')
    a('--eval_batch', type=int, default=1024, help='users per chunk in full-ranking evaluation')
    add_run_flags(a)
    add_model_flags(p)
    return p


def add_run_flags(a):
    """Flags of where a run reads and writes, how it resumes, and how it runs (not what it trains)."""
    a('--PATH_weight_load', default=None, help='initial weights: ours, or an official SLMRec state dict')
    a('--PATH_weight_save', default=None, help='where the best model is saved (default runs/<run>.best.pt)')
    a('--checkpoint', default=None,
      help='end-of-epoch checkpoint for --resume (default runs/<run>.last.pt); one run at a time per checkpoint: '
           'a second run on a checkpoint that a live run holds is refused (exit 2)')
    a('--resume', action='store_true',
      help='continue the run from --checkpoint (also after SIGTERM, a scheduler\'s preemption: the run stops at '
           'its next safe point, keeps the last completed epoch\'s checkpoint and exits 143; under torchrun the '
           'checkpoint resumes under any number of processes)')
    a('--resume_override', action='store_true',
      help='with --resume: continue although hyper-parameters differ from the checkpoint\'s (the new values apply; '
           'not --topK)')
    a('--save_file', default='results.jsonl', help='results file: one JSON line appended per run')
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
    a('--dist_mode', default='data', choices=('data', 'exact'),
      help='under torchrun (default data): data = each rank trains on its own share of each epoch\'s shuffled '
           'pairs in batches of --batch_size (1/W of the steps, effective batch W x --batch_size; in-batch losses '
           'contrast within a rank\'s batch); exact = every rank computes the one-process loss of each batch '
           '(no speed-up; for verification). One process: no effect')
    a('--lr_scale_ranks', action='store_true',
      help='under torchrun: the linear scaling rule, learning rate --l_r x W for W ranks (default off; follows '
           'the world size of a resumed run)')


def add_model_flags(p):
    """Each model's own flags, from the registry, in a --help group per model that declares them."""
    groups = {}
    for flag, readers in registry.model_flags():
        group = groups.get(readers[0]) or groups.setdefault(readers[0], p.add_argument_group(f'{readers[0]} flags'))
        extra = {'type': flag.type} if flag.type is not None else {}
        if flag.choices is not None:
            extra['choices'] = flag.choices
        group.add_argument(f'--{flag.name}', default=flag.default, help=f'{"/".join(readers)}: {flag.help}', **extra)


def config_defaults(parser, path):
    """The flag values of a --config YAML file, checked by the same type functions as the command line."""
    import difflib
    if path == '':
        raise InputError('--config: an empty path; give a YAML file of flag values')
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
        out[key] = config_value(path, key, action, value)
    return out


def config_value(path, key, action, value):
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
    parser = build_parser()
    pre = OneLineParser(add_help=False, prog=parser.prog)
    pre.add_argument('--config', default=None)
    config = pre.parse_known_args(argv)[0].config
    in_file = config_defaults(parser, config) if config is not None else {}
    parser.set_defaults(**in_file)
    args = parser.parse_args(argv)
    check_config_model(config, in_file.get('model_name'), explicit_values(parser, argv).get('model_name'))
    args.model_name = registry.entry(args.model_name).name          # an alias names its model
    for key, value in registry.entry(args.model_name).defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    validate_args(args)
    given = set(explicit_values(parser, argv)) | set(parser._defaults if config is not None else ())
    check_read(args.model_name, given)
    args.topK = list(dict.fromkeys(args.topK))
    return args


def check_config_model(path, in_file, given):
    """Refuse a --model_name that overrides the model a --config file names: the file's values (learning rate,
    weight decay, which means a loss coefficient for one model and Adam's decay for another) were chosen for its
    model, and would be run, unnoticed, with another."""
    if given is None or in_file is None or registry.entry(given).name == registry.entry(in_file).name:
        return
    raise InputError(f'--model_name: {given} on the command line, but {path} is a configuration of {in_file}; '
                     f'leave --model_name out, or give a configuration of {given}')


def explicit_values(parser, argv):
    """``{dest: value}`` of the flags ``argv`` itself gives (not their defaults)."""
    explicit = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:
        if action.option_strings and action.dest != 'help':
            explicit._add_action(_copy_action(action))
    return vars(explicit.parse_known_args(argv)[0])


def _copy_action(action):
    import copy
    action = copy.copy(action)
    action.default = argparse.SUPPRESS
    action.required = False
    return action


def check_read(model_name, given):
    """Refuse a flag (given on the command line or in --config) that the chosen model does not read: it would be
    accepted, do nothing, and change the run name (``registry.flag_readers``)."""
    readers = registry.flag_readers()
    for key in sorted(k for k in given if k in readers and model_name not in readers[k]):
        names = readers[key]
        raise InputError(f'--{key}: read by {", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]} '
                         f'only, not {model_name}; leave it out (it would change nothing but the run name)')


MAX_DIM, MAX_LAYER, MAX_TOPK, MAX_SEED = 4096, 32, 10000, 2 ** 32 - 1


def validate_args(args):
    """Every numeric flag inside its domain, else ``InputError`` naming the flag (one place for all of them).

    Non-finite floats are refused here (``--l_r inf`` is bad input, not a
    divergence); the upper bounds on sizes keep a typo from allocating the machine away.
    """
    finite = {k: registry.finite(getattr(args, k)) for k in ('l_r', 'weight_decay', 'dropout_rate', 'dist_timeout')}
    checks = [
        (finite['l_r'] and args.l_r > 0, '--l_r', 'must be a positive finite number'),
        (finite['weight_decay'] and args.weight_decay >= 0, '--weight_decay', 'must be a finite number >= 0'),
        (args.batch_size > 0, '--batch_size', 'must be positive'),
        (args.num_epoch >= 0, '--num_epoch', 'must be >= 0'),
        (args.num_workers >= 0, '--num_workers', 'must be >= 0'),
        (2 <= args.dim_latent <= MAX_DIM, '--dim_latent', f'must be in [2, {MAX_DIM}]'),
        (args.num_layer is None or 1 <= args.num_layer <= MAX_LAYER, '--num_layer', f'must be in [1, {MAX_LAYER}]'),
        (all(1 <= k <= MAX_TOPK for k in args.topK), '--topK', f'values must be in [1, {MAX_TOPK}]'),
        (0 <= args.seed <= MAX_SEED, '--seed', 'must be in [0, 2**32 - 1]'),
        (args.patience > 0, '--patience', 'must be positive'),
        (args.eval_batch > 0, '--eval_batch', 'must be positive'),
        (args.dropout_rate is None or (finite['dropout_rate'] and 0 <= args.dropout_rate < 1), '--dropout_rate',
         'must be in [0, 1)'),
        (finite['dist_timeout'] and args.dist_timeout > 0, '--dist_timeout', 'must be a positive finite number'),
    ]
    checks += [(flag.check(args), f'--{flag.name}', flag.problem) for flag, _ in registry.model_flags() if flag.check]
    checks.append((args.dist_mode != 'exact' or registry.entry(args.model_name).exact_split, '--dist_mode',
                   f'{args.model_name}\'s loss cannot be split across ranks exactly (a whole-batch normalisation or '
                   f'contrast); use --dist_mode data'))
    for ok, flag, problem in checks:
        if not ok:
            value = getattr(args, flag[2:])
            shown = ' '.join(map(str, value)) if isinstance(value, list) else value
            raise InputError(f'{flag}: {problem}, got {shown}')


def run_name(args):
    """``<data>-<model>[-<ssl task>]-seed<seed>[-<hash>][-testsel]``: the hash (8 hex digits) covers every other
    hyper-parameter that differs from the model's defaults, so runs that train differently never share
    their output files, and the default run keeps a readable name; ``-testsel`` marks a run selected on test
    (``--select_on test``), whose files never mix with the validation-selected run's."""
    data = os.path.basename(os.path.normpath(args.data_path))
    tag = registry.entry(args.model_name).run_tag
    task = tag(args) if tag else ''
    defaults = hyper_params(parse_args(['--model_name', args.model_name]))
    named = ('data_path', 'model_name', 'ssl_task', 'seed', 'select_on')
    differ = {k: v for k, v in hyper_params(args).items() if k not in named and v != defaults.get(k)}
    digest = hashlib.sha1(json.dumps(differ, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return (f'{data}-{args.model_name}{task}-seed{args.seed}' + (f'-{digest}' if differ else '')
            + ('-testsel' if getattr(args, 'select_on', 'val') == 'test' else ''))


# Flags that change where a run writes, how fast it runs, or when it stops, not what it trains:
# they may differ on --resume and do not enter the run name.  Every other flag is a hyper-parameter.
# dist_mode and lr_scale_ranks are here like the world size itself: one process trains the same with any value,
# and a checkpoint resumes under another world size or mode (docs/torchrun.md).
NOT_HYPER = {'resume', 'resume_override', 'checkpoint', 'PATH_weight_save', 'PATH_weight_load', 'save_file',
             'num_epoch', 'patience', 'num_workers', 'eval_batch', 'progress', 'no_cuda', 'tensorboard',
             'export_topk', 'config', 'dist_timeout', 'dist_mode', 'lr_scale_ranks'}


def hyper_params(args):
    return {k: v for k, v in sorted(vars(args).items()) if k not in NOT_HYPER}



def print_run_name(argv):
    """``python config.py <main.py flags>``: the run name main.py gives those flags, or main.py's one line
    for flags it refuses, exit 2 (scripts/slurm_torchrun.sbatch names a job's files by it)."""
    import sys
    from errors import EXIT_BAD_INPUT, one_line
    try:
        print(run_name(parse_args(argv)))
    except InputError as e:
        print(f'error: {one_line(e)}', file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == '__main__':
    import sys
    sys.exit(print_run_name(sys.argv[1:]))
