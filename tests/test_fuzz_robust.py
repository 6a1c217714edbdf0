"""Property-based hostile input, end to end and in-process (issue 19): the command line (any flag, any
value), checkpoint contents for --resume and --PATH_weight_load, meta.json, and the CSV importer.

Every example must end in exit 0 or 2 (or 3, diverged, for a valid but absurd value on the command line),
never a traceback; exit 2 leaves exactly one line on stderr and no new file in the output folders.  Examples are bounded (a minute or two for the file on 2 CPU cores).
"""
import copy
import json
import os
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import main
import config
import errors
import prepare_data

SETTINGS = dict(deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate], suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                      HealthCheck.filter_too_much])


def _files(root):
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs}


def _outcome(call, capsys):
    """(exit status, stderr lines) of an in-process main, argparse's SystemExit included."""
    capsys.readouterr()
    try:
        code = call()
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err.strip().splitlines()


def _assert_clean(code, err, before, after, diverge=False):
    """``diverge``: valid but absurd hyper-parameters (--weight_decay 1e270) may also end as diverged (exit 3)."""
    if diverge and code == errors.EXIT_DIVERGED:
        assert len(err) == 1 and err[0].startswith('training diverged: '), err
        return
    assert code in (0, 2), (code, err)
    if code == 2:
        assert len(err) == 1 and err[0].startswith('error: '), err
        assert after - before == set(), after - before


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """A tiny dataset and a trained checkpoint: (root, dataset folder, checkpoint dict, best state dict)."""
    root = tmp_path_factory.mktemp('fuzz_robust')
    folder = prepare_data.synthetic('fz', like='none', num_user=24, num_item=30, inter_per_user=8, seed=2,
                                    root=str(root))
    out = root / 'base'
    out.mkdir()
    assert main.main(['--data_path', folder, '--num_epoch', '1', '--dim_latent', '8', '--batch_size', '64',
                      '--num_layer', '1', '--no-progress', '--save_file', str(out / 'r.jsonl'),
                      '--checkpoint', str(out / 'c.pt'), '--PATH_weight_save', str(out / 'b.pt')]) == 0
    return World((root, folder, torch.load(out / 'c.pt', weights_only=True),
                  torch.load(out / 'b.pt', weights_only=True)))


class World(tuple):
    def __repr__(self):           # hypothesis prints the fixture with a failing example: keep it short
        return 'World(...)'


def _fresh(root, name):
    out = root / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    return out


# ---------------------------------------------------------------- the command line

ACTIONS = sorted((a for a in config.build_parser()._actions
                  if any(o.startswith('--') for o in a.option_strings) and a.dest not in ('help', 'data_path')),
                 key=lambda a: a.dest)
EDGES = st.sampled_from(['', ' ', 'x', '-1', '0', '1', '2', '1.5', '-0.1', 'nan', 'inf', '-inf', '1e400', '1e30',
                         '4294967296', str(2 ** 64), str(10 ** 30), 'True', 'False', 'none', 'FAC', 'v,t', ',', '--',
                         '\u00e9', '/', '..', 'a/b'])
INTS = st.one_of(st.sampled_from([-1, 0, 1, 2, 2 ** 31, 2 ** 32, 2 ** 63, 10 ** 30, -(2 ** 63)]),
                 st.integers(-10 ** 20, 10 ** 20)).map(str)
FLOATS = st.one_of(st.sampled_from(['-1', '-0.1', '0', 'nan', 'inf', '-inf', '1e400', '1e30', '1e-320']),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr))
TEXT = st.one_of(EDGES, st.text(max_size=8))


def _values(action):
    """Values of the flag's own type at and beyond its domain's edges, and of every other type."""
    own = {int: INTS, float: FLOATS}.get(action.type, TEXT)
    return st.one_of(own, own, own, TEXT, INTS, FLOATS)             # its own type three times as often


FLAG_VALUE = st.sampled_from(ACTIONS).flatmap(
    lambda a: st.tuples(st.just(a.option_strings[-1]), _values(a), st.integers(0, 9).map(bool)))
# A parsed command line is run only when it is cheap (the property is about the boundary, not training).
CHEAP = dict(num_epoch=2, dim_latent=32, num_layer=3, topK=50, patience=10 ** 9)


def _cheap(args):
    return (args.num_epoch <= CHEAP['num_epoch'] and args.dim_latent <= CHEAP['dim_latent']
            and args.num_layer <= CHEAP['num_layer'] and max(args.topK) <= CHEAP['topK'] and args.batch_size >= 16
            and args.eval_batch >= 8 and not args.resume and args.PATH_weight_load is None)


@settings(max_examples=200, **SETTINGS)
@given(st.lists(FLAG_VALUE, min_size=1, max_size=2))
def test_any_flag_any_value(world, capsys, flags):
    root, folder, _, _ = world
    out = _fresh(root, 'cli')
    argv = ['--data_path', folder, '--num_epoch', '1', '--dim_latent', '8', '--batch_size', '64', '--no-progress',
            '--save_file', str(out / 'r.jsonl'), '--checkpoint', str(out / 'c.pt'),
            '--PATH_weight_save', str(out / 'b.pt')]
    for flag, value, with_value in flags:
        if flag in ('--save_file', '--checkpoint', '--PATH_weight_save', '--PATH_weight_load'):
            value = str(out / value.replace('/', '_').replace('\x00', '')) if value.strip('. ') else value
        argv += [flag, value] if with_value else [flag]
    try:
        args = config.parse_args(argv)
    except (errors.InputError, SystemExit):
        args = None
    if args is not None and not _cheap(args):
        return
    before = _files(root)
    cwd = os.getcwd()
    os.chdir(out)                         # default outputs (runs/, results.jsonl) land in the output folder
    try:
        code, err = _outcome(lambda: main.main(argv), capsys)
    finally:
        os.chdir(cwd)
    _assert_clean(code, err, before, _files(root), diverge=True)
    for best in (out / 'b.pt', *(out / 'runs').glob('*.best.pt')):
        if best.exists():                  # a best model is never saved with non-finite weights
            assert all(torch.isfinite(v).all() for v in torch.load(best, weights_only=True).values()
                       if v.is_floating_point())


# ---------------------------------------------------------------- checkpoint contents

LEAVES = st.one_of(
    st.sampled_from([None, 0, -1, 1.5, float('nan'), 'x', True, [], {}, (), [1, 2], {'a': 1}, 2 ** 70]),
    st.builds(lambda shape, fill: torch.full(shape, fill), st.lists(st.integers(0, 3), max_size=2).map(tuple),
              st.sampled_from([0.0, 1.0, float('nan'), float('inf')])),
    st.builds(lambda n: torch.arange(n), st.integers(0, 5)),
)


def _paths(obj, prefix=()):
    """Every key path into nested dicts/lists of ``obj``."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for n, v in enumerate(obj[:3]):
            yield from _paths(v, prefix + (n,))


def _mutate(obj, path, leaf, delete):
    if not path:
        return leaf
    obj = copy.deepcopy(obj)
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = leaf
    return obj


@settings(max_examples=60, **SETTINGS)
@given(st.sampled_from(['--resume', '--PATH_weight_load', '--PATH_weight_load checkpoint']),
       st.lists(st.tuples(st.integers(0, 10 ** 6), LEAVES, st.booleans()), min_size=1, max_size=2))
def test_checkpoint_contents(world, capsys, flag, mutations):
    root, folder, ckpt, best = world
    mutated = best if flag == '--PATH_weight_load' else ckpt
    flag = flag.split()[0]
    for index, leaf, delete in mutations:
        paths = sorted(_paths(mutated), key=repr)
        mutated = _mutate(mutated, paths[index % len(paths)], leaf, delete)
    out = _fresh(root, 'ckpt')
    torch.save(mutated, out / 'in.pt')
    blob = (out / 'in.pt').read_bytes()
    target = (['--resume', '--checkpoint', str(out / 'in.pt'), '--num_epoch', '2'] if flag == '--resume'
              else ['--PATH_weight_load', str(out / 'in.pt'), '--num_epoch', '0',
                    '--checkpoint', str(out / 'c.pt')])
    argv = ['--data_path', folder, '--dim_latent', '8', '--batch_size', '64', '--num_layer', '1', '--no-progress',
            '--save_file', str(out / 'r.jsonl'), '--PATH_weight_save', str(out / 'b.pt'), *target]
    before = _files(root)
    code, err = _outcome(lambda: main.main(argv), capsys)
    _assert_clean(code, err, before, _files(root))
    if code == 2:
        assert (out / 'in.pt').read_bytes() == blob              # a refused checkpoint is left untouched


# ---------------------------------------------------------------- meta.json

JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 2 ** 40), st.floats(), st.text(max_size=6),
                              st.sampled_from(['v', 'feat_v.npy', 'dense', 'words', '../x', '', '.'])),
                    lambda kids: st.one_of(st.lists(kids, max_size=3),
                                           st.dictionaries(st.sampled_from(['name', 'file', 'kind', 'dim']), kids,
                                                           max_size=4)),
                    max_leaves=8)
MODALITY = st.fixed_dictionaries({}, optional={'name': JSON, 'file': JSON, 'kind': JSON})
META = st.fixed_dictionaries({}, optional={'num_user': JSON, 'num_item': JSON,
                                           'modalities': st.one_of(JSON, st.lists(MODALITY, max_size=3))})


@settings(max_examples=120, **SETTINGS)
@given(st.one_of(META, JSON))
def test_meta_json(world, capsys, meta):
    root, folder, _, _ = world
    work = _fresh(root, 'meta')
    data = work / 'd'
    shutil.copytree(folder, data)
    (data / 'meta.json').write_text(json.dumps(meta))
    out = work / 'o'
    argv = ['--data_path', str(data), '--num_epoch', '0', '--dim_latent', '8', '--num_layer', '1', '--no-progress',
            '--save_file', str(out / 'r.jsonl'), '--checkpoint', str(out / 'c.pt'),
            '--PATH_weight_save', str(out / 'b.pt')]
    before = _files(root)
    code, err = _outcome(lambda: main.main(argv), capsys)
    _assert_clean(code, err, before, _files(root))
    if code == 2:
        assert str(data) in err[0] or 'error: --' in err[0], err          # names a file of the dataset or a flag


# ---------------------------------------------------------------- the CSV importer

FIELD = st.one_of(st.sampled_from(['u1', 'u2', 'i1', 'i2', '3', '0', '1e9', 'nan', '', ' ', '"', 'a,b', '\ufeff',
                                   'x' * 300]),
                  st.text(max_size=6), st.integers(-5, 40).map(str))
ROW = st.lists(FIELD, min_size=0, max_size=4)


@settings(max_examples=80, **SETTINGS)
@given(st.one_of(st.lists(ROW, max_size=40).map(lambda rows: '\n'.join(','.join(r) for r in rows).encode()),
                 st.lists(st.tuples(st.integers(0, 6), st.integers(0, 9), st.integers(0, 30)), min_size=1, max_size=80)
                 .map(lambda rows: '\n'.join(f'u{u},{i},{t}' for u, i, t in rows).encode()),
                 st.binary(max_size=80)),
       st.sampled_from([[], ['--feature', 'v=feat.npy'], ['--feature', 'v/x=feat.npy'], ['--item_list', 'items.txt'],
                        ['--min_inter', '2'], ['--seed', '-3']]))
def test_csv_importer(world, capsys, blob, flags):
    root, _, _, _ = world
    work = _fresh(root, 'csv')
    (work / 'inter.csv').write_bytes(blob)
    np.save(work / 'feat.npy', np.ones((10, 2), dtype=np.float32))
    (work / 'items.txt').write_text(''.join(f'{i}\n' for i in range(10)))
    flags = [str(work / f) if f.endswith(('.npy', '.txt')) and '=' not in f else f for f in flags]
    flags = [f.replace('=feat.npy', f'={work / "feat.npy"}') for f in flags]
    before = _files(root)
    code, err = _outcome(lambda: prepare_data.main(['csv', '--inter', str(work / 'inter.csv'),
                                                    '--name', str(work / 'out'), *flags]), capsys)
    _assert_clean(code, err, before, _files(root))
    assert not [n for n in os.listdir(work) if n.startswith('.out-')]     # no temporary folder left
