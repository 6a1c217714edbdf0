"""Issue 19: every bad input a one-line error (exit 2), nothing deleted that the project did not make,
divergence caught on parameters and scores, interruptions harmless."""
import json
import os

import numpy as np
import pytest
import torch

import main
import config
import errors
import safe_write
import prepare_data
from DataLoad import load_dataset
from errors import DataError
from conftest import one_line_error as _one_line_error  # noqa: E402


# ---------------------------------------------------------------- prepare_data --name

def _tree(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


@pytest.mark.parametrize('name', ['', '.', '..', '.hidden', 'a b', 'x*', 'é'])
def test_prepare_name_must_be_plain(name, tmp_path, monkeypatch, capsys):
    data_root = tmp_path / 'Data'
    data_root.mkdir()
    (data_root / 'README.md').write_text('tracked')
    monkeypatch.setattr(prepare_data, 'DATA_ROOT', str(data_root))
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    with pytest.raises(DataError, match='--name'):
        prepare_data.synthetic(name, num_user=20, num_item=30, root=str(data_root))
    argv = ['synthetic', '--num_user', '20', '--num_item', '30', '--name', name]
    assert prepare_data.main(argv) == 2
    _one_line_error(capsys, '--name')
    assert _tree(tmp_path) == before


def test_prepare_never_replaces_a_foreign_folder(tmp_path, capsys):
    foreign = tmp_path / 'mine'
    foreign.mkdir()
    (foreign / 'thesis.tex').write_text('precious')
    for force in ([], ['--force']):
        assert prepare_data.main(['synthetic', '--num_user', '20', '--num_item', '30', '--name', str(foreign),
                                  *force]) == 2
        _one_line_error(capsys, str(foreign), 'not written by prepare_data.py')
        assert _tree(foreign) == ['thesis.tex']
    # A foreign meta.json (not ours) does not make it ours; a published folder under Data/ neither.
    (foreign / 'meta.json').write_text('{"num_user": 3}')
    assert prepare_data.main(['synthetic', '--num_user', '20', '--num_item', '30', '--name', str(foreign),
                              '--force']) == 2
    assert (foreign / 'thesis.tex').read_text() == 'precious'
    with pytest.raises(DataError, match='not written by prepare_data.py'):
        prepare_data.synthetic('mine', num_user=20, num_item=30, root=str(tmp_path))
    with pytest.raises(DataError, match='not written by prepare_data.py'):
        prepare_data.write_dataset(str(foreign), 1, 1, np.array([[0, 0]]), {}, {}, [], {})
    assert (foreign / 'thesis.tex').read_text() == 'precious'


def test_prepare_path_of_our_own_folder_is_replaced_only_with_force(tmp_path):
    path = str(tmp_path / 'out' / 'syn')
    folder = prepare_data.synthetic(path, num_user=20, num_item=30, seed=1, root=str(tmp_path / 'Data'))
    assert folder == path and load_dataset(path).num_user == 20
    mtime = os.path.getmtime(os.path.join(path, 'meta.json'))
    prepare_data.synthetic(path, num_user=20, num_item=30, seed=1, root=str(tmp_path / 'Data'))
    assert os.path.getmtime(os.path.join(path, 'meta.json')) == mtime           # the same command: a no-op
    with pytest.raises(DataError, match="holds a dataset prepared .* other options \\(num_user 20 there, 25 now\\)"):
        prepare_data.synthetic(path, num_user=25, num_item=30, root=str(tmp_path / 'Data'))   # another: --force
    assert os.path.getmtime(os.path.join(path, 'meta.json')) == mtime
    prepare_data.synthetic(path, num_user=25, num_item=30, force=True, root=str(tmp_path / 'Data'))
    assert load_dataset(path).num_user == 25
    assert not os.path.exists(tmp_path / 'Data')


def test_prepare_removes_its_own_stale_partials_only(tmp_path):
    root = tmp_path / 'Data'
    root.mkdir()
    dead = root / '.syn-abcd1234'                 # an interrupted write of ours: marker with a dead pid
    dead.mkdir()
    (dead / prepare_data.PARTIAL_MARKER).write_text('999999999')
    (dead / 'train.npy').write_bytes(b'partial')
    live = root / '.syn-live0000'                 # a write in progress (this process's parent is alive)
    live.mkdir()
    (live / prepare_data.PARTIAL_MARKER).write_text(str(os.getppid()))
    foreign = root / '.syn-notours1'              # same name pattern, no marker: not ours
    foreign.mkdir()
    (foreign / 'x').write_text('keep')
    prepare_data.synthetic('syn', num_user=20, num_item=30, root=str(root))
    assert sorted(os.listdir(root)) == ['.syn-live0000', '.syn-notours1', 'syn']
    assert not os.path.exists(os.path.join(root, 'syn', prepare_data.PARTIAL_MARKER))


# ---------------------------------------------------------------- divergence beyond the loss

def _train_argv(folder, tmp_path, *flags, tag='run'):
    return ['--data_path', folder, '--no-progress', '--dim_latent', '16', '--save_file', str(tmp_path / f'{tag}.jsonl'),
            '--checkpoint', str(tmp_path / f'{tag}.last.pt'), '--PATH_weight_save', str(tmp_path / f'{tag}.best.pt'),
            *flags]


def _last_record(tmp_path, tag='run'):
    return json.loads((tmp_path / f'{tag}.jsonl').read_text().splitlines()[-1])


@pytest.mark.parametrize('l_r', ['1e30', '1e38'])
def test_huge_learning_rate_diverges_without_a_best_model(l_r, tiny_plain, tmp_path, capsys):
    # One step per epoch (batch > pairs): the loss is finite at every step, the weights or scores are not.
    code = main.main(_train_argv(tiny_plain, tmp_path, '--l_r', l_r, '--batch_size', '100000', '--num_epoch', '3'))
    assert code == errors.EXIT_DIVERGED
    err = capsys.readouterr().err
    assert 'training diverged' in err and 'no best model was saved' in err
    assert _last_record(tmp_path)['status'] == 'diverged' and _last_record(tmp_path)['best_epoch'] is None
    assert not (tmp_path / 'run.best.pt').exists()


def test_parameter_check_names_the_parameter():
    from Train import Divergence, check_finite_parameters
    model = torch.nn.Linear(2, 2)
    check_finite_parameters(model, 'now')
    with torch.no_grad():
        model.bias[1] = float('inf')
    with pytest.raises(Divergence, match='parameter bias is non-finite now'):
        check_finite_parameters(model, 'now')


def test_train_epoch_checks_the_parameters_after_the_epoch():
    from DataLoad import TrainSampler
    from Train import Divergence, train_epoch

    class Tiny(torch.nn.Module):
        needs_negatives = False

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))
            self.unused = torch.nn.Parameter(torch.ones(2))

        def loss(self, users, items):
            return (self.w[items] ** 2).sum(), {}

    class Poisoning(torch.optim.SGD):       # a finite loss at every step, a parameter that is not
        def step(self, closure=None):
            super().step(closure)
            with torch.no_grad():
                model.unused[0] = float('inf')
    model = Tiny()
    sampler = TrainSampler(np.array([[0, 0], [0, 1], [1, 2]]), 3, 2, np.random.default_rng(0))
    with pytest.raises(Divergence, match='parameter unused is non-finite after epoch 4'):
        train_epoch(model, sampler, Poisoning(model.parameters(), lr=0.1), 'cpu', 4, show_bar=False)


def test_score_check_against_the_plain_product():
    from Full_vt import check_finite_scores
    from Train import Divergence
    big = 1e20
    u = torch.tensor([[big, 0.0], [0.0, 1.0]])
    check_finite_scores(u, torch.tensor([[0.0, big], [1.0, 1.0]]))      # bound fails, every product is finite
    assert torch.isfinite(u @ torch.tensor([[0.0, big], [1.0, 1.0]]).t()).all()
    with pytest.raises(Divergence, match='overflows'):
        check_finite_scores(u, torch.tensor([[big, 0.0]]))              # 1e40 > float32 max
    with pytest.raises(Divergence, match='non-finite item representation'):
        check_finite_scores(u, torch.tensor([[float('nan'), 0.0]]))


def test_huge_loaded_weights_diverge_in_evaluation(tiny_plain, tmp_path, capsys):
    assert main.main(_train_argv(tiny_plain, tmp_path, '--num_epoch', '1', '--batch_size', '512')) == 0
    state = torch.load(tmp_path / 'run.best.pt', weights_only=True)
    torch.save({k: v * 1e19 if v.is_floating_point() else v for k, v in state.items()}, tmp_path / 'huge.pt')
    code = main.main(_train_argv(tiny_plain, tmp_path, '--num_epoch', '0', '--PATH_weight_load',
                                 str(tmp_path / 'huge.pt'), tag='eval'))
    assert code == errors.EXIT_DIVERGED and 'non-finite' in capsys.readouterr().err
    assert _last_record(tmp_path, 'eval')['val'] is None


@pytest.mark.parametrize('value', [float('nan'), float('inf')])
def test_non_finite_loaded_weights_are_a_one_line_error(value, tiny_plain, tmp_path, capsys):
    assert main.main(_train_argv(tiny_plain, tmp_path, '--num_epoch', '1', '--batch_size', '512')) == 0
    state = torch.load(tmp_path / 'run.best.pt', weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key][0] = value
    torch.save(state, tmp_path / 'nan.pt')
    capsys.readouterr()
    code = main.main(_train_argv(tiny_plain, tmp_path, '--num_epoch', '0', '--PATH_weight_load',
                                 str(tmp_path / 'nan.pt'), tag='eval'))
    assert code == 2
    _one_line_error(capsys, 'nan.pt', 'non-finite weights', key)
    assert not (tmp_path / 'eval.jsonl').exists()


# ---------------------------------------------------------------- the results line

def _failing_write(monkeypatch, target, short=False):
    real = os.write

    def write(fd, data):
        if os.path.realpath(f'/proc/self/fd/{fd}') != os.path.realpath(target):
            return real(fd, data)
        if short:
            return real(fd, data[:len(data) // 2])
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(os, 'write', write)


@pytest.mark.parametrize('short', [False, True])
def test_full_disk_leaves_the_results_file_as_it_was(short, tmp_path, monkeypatch, capsys):
    results = tmp_path / 'r.jsonl'
    results.write_bytes(b'{"run": "old"}\n')
    _failing_write(monkeypatch, results, short)
    with pytest.raises(errors.InputError, match='r.jsonl: cannot append the results line .*left as it was'):
        safe_write.append_results_line(str(results), {'run': 'new'})
    assert results.read_bytes() == b'{"run": "old"}\n'


def test_results_line_is_not_glued_to_a_partial_one(tmp_path):
    results = tmp_path / 'r.jsonl'
    results.write_bytes(b'{"run": "old"}\n{"run": "cut sh')
    safe_write.append_results_line(str(results), {'run': 'new'})
    assert results.read_bytes().splitlines()[-1] == b'{"run": "new"}'


def test_full_disk_at_the_end_of_a_run_is_one_line(tiny_plain, tmp_path, monkeypatch, capsys):
    results = tmp_path / 'run.jsonl'
    _failing_write(monkeypatch, results)
    code = main.main(_train_argv(tiny_plain, tmp_path, '--num_epoch', '1', '--batch_size', '512'))
    assert code == 2
    _one_line_error(capsys, 'run.jsonl', 'No space left on device')
    assert not results.exists()


# ---------------------------------------------------------------- the command line

def _main_code(argv):
    """main.main's exit status, argparse's SystemExit included."""
    try:
        return main.main(argv)
    except SystemExit as e:
        return e.code


BAD_FLAGS = [
    ['--l_r', '-0.1'], ['--l_r', '0'], ['--l_r', 'nan'], ['--l_r', 'inf'], ['--l_r', '1e400'],
    ['--weight_decay', '-1'], ['--weight_decay', 'nan'], ['--weight_decay', 'inf'],
    ['--seed', '-1'], ['--seed', '4294967296'], ['--seed', str(10 ** 30)],
    ['--batch_size', '0'], ['--num_epoch', '-1'], ['--num_workers', '-1'], ['--dim_latent', '1'],
    ['--dim_latent', str(10 ** 12)], ['--num_layer', '0'], ['--num_layer', '1000'], ['--topK', '0'],
    ['--topK', '10', str(10 ** 18)], ['--patience', '0'], ['--eval_batch', '0'], ['--dropout_rate', '1'],
    ['--dropout_rate', 'nan'], ['--temp', '0'], ['--temp', 'inf'], ['--ssl_temp', 'nan'], ['--ssl_alpha', '-1'],
    ['--ssl_alpha', 'inf'], ['--has_id', 'False'],
]


@pytest.mark.parametrize('flags', BAD_FLAGS, ids=lambda f: ' '.join(f)[:30])
def test_numeric_flags_outside_their_domain(flags, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _main_code(['--data_path', str(tmp_path / 'none'), *flags]) == 2
    _one_line_error(capsys, flags[0])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('flags', [['--l_r', 'x'], ['--seed', '1.5'], ['--bogus'], ['--topK'], ['--model_name', 'X'],
                                   ['--concat', 'maybe'], ['--batch_size']])
def test_argparse_errors_are_one_line(flags, capsys):
    assert _main_code(flags) == 2
    err = _one_line_error(capsys)
    assert err.endswith('--help)') and 'usage' not in err


def test_prepare_argparse_errors_are_one_line(capsys):
    assert pytest.raises(SystemExit, prepare_data.main, ['csv', '--inter', 'x']).value.code == 2
    assert _one_line_error(capsys, '--name').endswith('--help)')


# ---------------------------------------------------------------- issue 14's boundary defects

def test_user_with_every_item_is_a_one_line_error(tmp_path, capsys):
    from conftest import write_split
    folder = tmp_path / 'full'
    folder.mkdir()
    # user 0 has both items in training: MMGCN's BPR has no negative for it
    np.save(folder / 'train.npy', np.array([[0, 2], [0, 3], [1, 2]]))
    write_split(folder / 'val_full.npy', [[1, 3]])
    write_split(folder / 'test_full.npy', [[1, 3]])
    np.save(folder / 'feat_v.npy', np.eye(2, 3, dtype=np.float32))
    (folder / 'meta.json').write_text(json.dumps({'modalities': [{'name': 'v', 'file': 'feat_v.npy'}]}))
    code = main.main(_train_argv(str(folder), tmp_path, '--model_name', 'MMGCN', '--num_epoch', '1'))
    assert code == 2
    _one_line_error(capsys, 'train.npy', 'user 0 has interacted with every item')
    assert not (tmp_path / 'run.jsonl').exists() and not (tmp_path / 'run.last.pt').exists()


def test_split_pairs_that_are_training_pairs_are_dropped_with_one_warning(hand_folder, capsys):
    from conftest import write_split
    # hand_folder: user 0 trains on items 0, 1 (raw 2, 3), user 1 on items 1, 2 (raw 3, 4)
    write_split(hand_folder / 'val_full.npy', [[0, 4, 2], [1, 2, 3, 4]])   # 1 + 2 training pairs
    data = load_dataset(str(hand_folder))
    assert {u: v.tolist() for u, v in data.val.items()} == {0: [2], 1: [0]}
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f'warning: {hand_folder / "val_full.npy"}: dropped 3 validation pairs that are also training '
                   f'pairs (training items are masked out in ranking)']
    from Full_vt import SplitIndex, rank_metrics
    indptr, items = data.train_csr()
    index = SplitIndex(data.val, indptr, items)
    assert index.pos_count.tolist() == [1, 1]          # a positive that ranking masks would cap recall below 1


@pytest.mark.parametrize('split', ['val_full.npy', 'test_full.npy'])
@pytest.mark.parametrize('rows', [[], [[0], [1]], [[0, 2, 3], [1, 3]]], ids=['no rows', 'no items', 'fully masked'])
def test_empty_or_fully_masked_split_is_refused(split, rows, hand_folder, tmp_path, capsys):
    from conftest import write_split
    write_split(hand_folder / split, rows)
    what = 'validation' if split == 'val_full.npy' else 'test'
    with pytest.raises(DataError, match=f'{split}: the {what} split is empty'):
        load_dataset(str(hand_folder))
    code = main.main(_train_argv(str(hand_folder), tmp_path, '--num_epoch', '1'))
    assert code == 2
    _one_line_error(capsys, split, 'split is empty')
    assert not (tmp_path / 'run.jsonl').exists()
    if what == 'validation':        # evaluation alone needs no validation split
        assert load_dataset(str(hand_folder), require_val=False).val == {}
        assert main.main(_train_argv(str(hand_folder), tmp_path, '--num_epoch', '0', tag='eval')) == 0


# ---------------------------------------------------------------- --resume: structure, hyper-parameters, outputs

@pytest.fixture(scope='module')
def resumable(tmp_path_factory):
    """A 2-epoch run's checkpoint on a small dataset: (folder, tmp, checkpoint dict)."""
    root = tmp_path_factory.mktemp('resume')
    folder = prepare_data.synthetic('rs', like='none', num_user=30, num_item=40, inter_per_user=8, root=str(root))
    assert main.main(_train_argv(folder, root, '--num_epoch', '2', '--dim_latent', '8', '--batch_size', '64',
                                 tag='base')) == 0
    return folder, root, torch.load(root / 'base.last.pt', weights_only=True)


def _broken(ckpt, how):
    import copy
    c = copy.deepcopy(ckpt)
    s = c['state']
    edits = {
        'state empty': lambda: c.__setitem__('state', {}),
        'state a list': lambda: c.__setitem__('state', [1, 2]),
        'epoch a string': lambda: s.__setitem__('epoch', '2'),
        'epoch a bool': lambda: s.__setitem__('epoch', True),
        'best recall a string': lambda: s.__setitem__('best_recall', '0.5'),
        'best recall nan': lambda: s.__setitem__('best_recall', float('nan')),
        'no bad_evals': lambda: s.pop('bad_evals'),
        'no history': lambda: s.pop('history'),
        'history too short': lambda: s['history'].pop(),
        'best_val malformed': lambda: s.__setitem__('best_val', {10: {'recall': 'x'}}),
        'best_val other cut-off': lambda: s.__setitem__('best_val', {20: s['best_val'][10]}),
        'best_epoch after epoch': lambda: s.__setitem__('best_epoch', 7),
        'no rng': lambda: c.pop('rng'),
        'rng garbage': lambda: c['rng'].__setitem__('numpy', {'state': 3}),
        'optimizer shape': lambda: c['optimizer']['state'][0].__setitem__('exp_avg', torch.zeros(3)),
        'optimizer params': lambda: c['optimizer']['param_groups'][0].__setitem__('params', [0]),
        'model nan': lambda: next(v for v in c['model'].values() if v.is_floating_point()).fill_(float('nan')),
        'args a list': lambda: c.__setitem__('args', [1]),
    }
    if how == 'a bare tensor':
        return torch.zeros(3)
    if how == 'a list':
        return [c]
    edits[how]()
    return c


MALFORMED = ['state empty', 'state a list', 'epoch a string', 'epoch a bool', 'best recall a string',
             'best recall nan', 'no bad_evals', 'no history', 'history too short', 'best_val malformed',
             'best_val other cut-off', 'best_epoch after epoch', 'no rng', 'rng garbage', 'optimizer shape',
             'optimizer params', 'model nan', 'args a list', 'a bare tensor', 'a list']


@pytest.mark.parametrize('how', MALFORMED)
def test_malformed_resume_checkpoint(how, resumable, tmp_path, capsys):
    folder, root, ckpt = resumable
    bad = tmp_path / 'bad.pt'
    torch.save(_broken(ckpt, how), bad)
    before = bad.read_bytes()
    capsys.readouterr()
    code = main.main(_train_argv(folder, tmp_path, '--num_epoch', '3', '--dim_latent', '8', '--batch_size', '64',
                                 '--resume', '--checkpoint', str(bad)))
    assert code == 2, how
    _one_line_error(capsys, str(bad), 'malformed checkpoint')
    assert bad.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ['bad.pt']


@pytest.mark.parametrize('where, value', [('state', torch.tensor([[0., 0.]])), ('has_uint32', torch.arange(4)),
                                          ('bit_generator', 7)])
def test_numpy_random_state_holding_tensors_is_malformed(where, value, resumable, tmp_path, capsys):
    """Found by test_fuzz_robust: a tensor inside the sampler's NumPy state raised an IndexError (a traceback)."""
    import copy
    folder, root, ckpt = resumable
    bad_ckpt = copy.deepcopy(ckpt)
    bad_ckpt['rng']['numpy'][where] = value
    bad = tmp_path / 'bad.pt'
    torch.save(bad_ckpt, bad)
    capsys.readouterr()
    code = main.main(_train_argv(folder, tmp_path, '--num_epoch', '3', '--dim_latent', '8', '--batch_size', '64',
                                 '--resume', '--checkpoint', str(bad)))
    assert code == 2
    _one_line_error(capsys, str(bad), "malformed checkpoint: 'rng' holds an unusable random state")


def _resume_argv(folder, root, tmp_path, *flags):
    import shutil
    shutil.copy(root / 'base.last.pt', tmp_path / 'c.pt')
    return ['--data_path', folder, '--no-progress', '--dim_latent', '8', '--batch_size', '64', '--num_epoch', '3',
            '--resume', '--checkpoint', str(tmp_path / 'c.pt'), '--save_file', str(tmp_path / 'r.jsonl'),
            '--PATH_weight_save', str(tmp_path / 'b.pt'), *flags]


def test_resume_refuses_changed_hyper_parameters(resumable, tmp_path, capsys):
    folder, root, _ = resumable
    assert main.main(_resume_argv(folder, root, tmp_path, '--l_r', '0.02', '--ssl_alpha', '0.3')) == 2
    _one_line_error(capsys, 'c.pt', '--l_r 0.01 -> 0.02', '--ssl_alpha 0.1 -> 0.3', '--resume_override')
    assert not (tmp_path / 'r.jsonl').exists()
    # meant: the new value applies from the resumed epoch on (and is what the results line records)
    assert main.main(_resume_argv(folder, root, tmp_path, '--l_r', '0.02', '--ssl_alpha', '0.3',
                                  '--resume_override')) == 0
    assert 'resuming with changed hyper-parameters: --l_r 0.01 -> 0.02' in capsys.readouterr().out
    saved = torch.load(tmp_path / 'c.pt', weights_only=True)
    assert saved['optimizer']['param_groups'][0]['lr'] == 0.02 and saved['args']['l_r'] == 0.02
    assert json.loads((tmp_path / 'r.jsonl').read_text())['args']['l_r'] == 0.02
    # flags that do not change what is trained may differ
    assert main.main(_resume_argv(folder, root, tmp_path, '--num_epoch', '3', '--patience', '5',
                                  '--eval_batch', '7')) == 0


def test_resume_with_unchanged_flags_matches_the_uninterrupted_run(resumable, tmp_path):
    folder, root, _ = resumable
    assert main.main(_resume_argv(folder, root, tmp_path)) == 0
    full = tmp_path / 'full'
    full.mkdir()
    assert main.main(_train_argv(folder, full, '--num_epoch', '3', '--dim_latent', '8', '--batch_size', '64')) == 0
    a, b = (json.loads(p.read_text()) for p in (tmp_path / 'r.jsonl', full / 'run.jsonl'))
    assert (a['best_epoch'], a['val'], a['test']) == (b['best_epoch'], b['val'], b['test'])


@pytest.mark.parametrize('same', [('--checkpoint', '--PATH_weight_save'), ('--checkpoint', '--save_file'),
                                  ('--PATH_weight_save', '--save_file')])
def test_output_paths_must_differ(same, tiny_plain, tmp_path, capsys):
    argv = _train_argv(tiny_plain, tmp_path, '--num_epoch', '1')
    for flag in same:
        argv[argv.index(flag) + 1] = str(tmp_path / 'same')
    assert main.main(argv) == 2
    _one_line_error(capsys, 'same', 'the same file')
    assert os.listdir(tmp_path) == ['tiny_plain']


def test_stale_temporaries_of_ours_are_removed_at_the_next_start(tiny_plain, tmp_path):
    names = {'.run.last.pt-999999999-abcd_123': False,      # ours, writer gone
             '.run.best.pt-k2j4h5g6': False,                # ours, the pattern before the pid
             f'.run.last.pt-{os.getppid()}-abcdefgh': True,  # ours, writer alive
             '.run.last.pt-notours': True, '.other.pt-abcdefgh': True, 'run.last.pt-abcdefgh': True}
    for n in names:
        (tmp_path / n).write_bytes(b'x')
    assert main.main(_train_argv(tiny_plain, tmp_path, '--num_epoch', '0')) == 0
    assert {n for n in names if (tmp_path / n).exists()} == {n for n, kept in names.items() if kept}


# ---------------------------------------------------------------- run names and the README's commands

def _readme_main_commands():
    import shlex
    from conftest import ROOT
    with open(os.path.join(ROOT, 'README.md')) as f:
        text = f.read()
    block = text[text.index('## Running'):]
    block = block[block.index('```bash') + 7:]
    block = block[:block.index('```')].replace('\\\n', ' ')
    return [shlex.split(line.split('#')[0])[2:] for line in block.splitlines() if line.startswith('python main.py')]


def test_readme_commands_have_their_own_run_names():
    commands = _readme_main_commands()
    assert len(commands) >= 8
    runs = {}
    for argv in commands[:-1]:
        args = config.parse_args(argv)
        runs.setdefault(config.run_name(args), set()).add(json.dumps(config.hyper_params(args), sort_keys=True))
    assert all(len(v) == 1 for v in runs.values()), runs        # one name, one set of hyper-parameters
    assert len(runs) == len(commands) - 1                       # every command its own files
    evaluate = commands[-1]
    assert evaluate[evaluate.index('--PATH_weight_load') + 1] == f'runs/{config.run_name(config.parse_args([]))}.best.pt'
    assert config.run_name(config.parse_args([])) == 'ml100k-SLMRec-FAC-seed1'


def test_run_name_hash_covers_the_other_hyper_parameters():
    base = config.run_name(config.parse_args([]))
    assert config.run_name(config.parse_args(['--l_r', '0.01'])) == base            # the default, spelled out
    assert config.run_name(config.parse_args(['--num_epoch', '3', '--patience', '2'])) == base
    names = {config.run_name(config.parse_args(f)) for f in
             ([], ['--l_r', '0.02'], ['--weight_decay', '0.01'], ['--ssl_task', 'FD'], ['--seed', '2'],
              ['--modalities', 'none'], ['--dim_latent', '32'], ['--ssl_alpha', '0.2'])}
    assert len(names) == 8
    assert config.run_name(config.parse_args(['--model_name', 'MMGCN'])) == 'ml100k-MMGCN-seed1'


# ---------------------------------------------------------------- Ctrl-C

def test_ctrl_c_is_one_line_and_exit_130_with_the_checkpoint_intact(tmp_path):
    import signal
    import subprocess
    import sys
    from conftest import ROOT
    folder = prepare_data.synthetic('cc', like='none', num_user=60, num_item=80, inter_per_user=10, root=str(tmp_path))
    argv = [sys.executable, '-u', os.path.join(ROOT, 'main.py'), *_train_argv(folder, tmp_path, '--num_epoch', '50',
            '--batch_size', '16', '--patience', '100', '--dim_latent', '8')]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'})
    for line in proc.stdout:                     # interrupt around epoch 2's checkpoint write
        if line.startswith('epoch    2  Test'):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip() == 'interrupted: the last end-of-epoch checkpoint is intact (continue with --resume)'
    ckpt = torch.load(tmp_path / 'run.last.pt', weights_only=True)
    assert ckpt['state']['epoch'] in (1, 2, 3) and not (tmp_path / 'run.jsonl').exists()   # 2 may be mid-write
    assert not [n for n in os.listdir(tmp_path) if n.startswith('.run.')]      # no temporary left
    assert main.main(_train_argv(folder, tmp_path, '--num_epoch', str(ckpt['state']['epoch'] + 1), '--batch_size',
                                 '16', '--patience', '100', '--dim_latent', '8', '--resume')) == 0


# ---------------------------------------------------------------- dataset fields (DataLoad)

def _meta(folder, modalities, **sizes):
    (folder / 'meta.json').write_text(json.dumps({**sizes, 'modalities': modalities}))


@pytest.mark.parametrize('entry, problem', [
    ({'name': 'v', 'file': 3}, 'file must be a file name'),
    ({'name': 'v', 'file': None}, 'file must be a file name'),
    ({'name': 'v', 'file': '../hand/feat_v.npy'}, 'file must be a file name'),
    ({'name': 'v', 'file': '..'}, 'file must be a file name'),
    ({'name': 3, 'file': 'feat_v.npy'}, 'name must be a plain name'),
    ({'name': ['v'], 'file': 'feat_v.npy'}, 'name must be a plain name'),
    ({'name': 'a/b', 'file': 'feat_v.npy'}, 'name must be a plain name'),
    ({'name': 'v', 'file': 'feat_v.npy', 'kind': 7}, 'unknown kind'),
])
def test_meta_modality_fields_have_the_right_types(entry, problem, hand_folder):
    _meta(hand_folder, [entry])
    with pytest.raises(DataError, match=f'meta.json: .*{problem}'):
        load_dataset(str(hand_folder))


def test_duplicate_modality_names_are_refused(hand_folder):
    _meta(hand_folder, [{'name': 'v', 'file': 'feat_v.npy'}, {'name': 'v', 'file': 'feat_v.npy'}])
    with pytest.raises(DataError, match="meta.json: modality name 'v' appears twice"):
        load_dataset(str(hand_folder))


@pytest.mark.parametrize('sizes', [dict(num_user=10 ** 30, num_item=3), dict(num_user=True, num_item=3)])
def test_meta_sizes_in_range(sizes, hand_folder):
    _meta(hand_folder, [{'name': 'v', 'file': 'feat_v.npy'}], **sizes)
    with pytest.raises(DataError, match='meta.json: num_user must be a positive integer below 2'):
        load_dataset(str(hand_folder))


def test_zero_column_features_are_refused(hand_folder):
    np.save(hand_folder / 'feat_v.npy', np.zeros((3, 0), dtype=np.float32))
    with pytest.raises(DataError, match='feat_v.npy: expected a 2-D feature matrix with at least one column'):
        load_dataset(str(hand_folder))


def _no_hang(seconds=10):
    import signal

    def boom(*_):
        raise TimeoutError('hung')
    signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)


@pytest.mark.parametrize('target', ['meta.json', 'train.npy', 'val_full.npy', 'user_item_dict.npy', 'feat_v.npy'])
@pytest.mark.parametrize('kind', ['fifo', 'urandom'])
def test_special_files_are_refused_without_hanging(kind, target, hand_folder):
    import signal
    path = hand_folder / target
    path.unlink()
    if kind == 'fifo':
        os.mkfifo(path)
    else:
        os.symlink('/dev/urandom', path)
    _no_hang()
    try:
        with pytest.raises(DataError, match=f'{target}: not a regular file'):
            load_dataset(str(hand_folder))
    finally:
        signal.alarm(0)


def _laughs(depth=9):
    inner = [3] * 10
    for _ in range(depth):
        inner = [inner] * 10            # 10**10 ints if walked, 400 bytes as a pickle
    return inner


def test_pickle_bomb_in_user_item_dict_is_refused_fast(hand_folder):
    import time
    np.save(hand_folder / 'user_item_dict.npy', np.array({0: _laughs(), 1: {3, 4}}, dtype=object), allow_pickle=True)
    assert os.path.getsize(hand_folder / 'user_item_dict.npy') < 1000
    start = time.time()
    with pytest.raises(DataError, match='user_item_dict.npy: the items of user 0 is not a flat list of integers'):
        load_dataset(str(hand_folder))
    assert time.time() - start < 2


def test_pickle_bomb_in_a_split_row_is_refused(hand_folder):
    from conftest import write_split
    write_split(hand_folder / 'val_full.npy', [[0, 4], _laughs(6)])
    with pytest.raises(DataError, match='val_full.npy: row 1 is not a flat list of integers'):
        load_dataset(str(hand_folder))


def test_pickle_asking_for_a_huge_array_is_refused(hand_folder):
    # _reconstruct(ndarray, (10**12,), b'b'): a few bytes that would allocate a terabyte
    payload = (b'\x80\x03cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01\x8a\x06\x00\x10\xa5\xd4\xe8'
               b'\x00\x85q\x02C\x01bq\x03\x87q\x04Rq\x05.')
    with open(hand_folder / 'user_item_dict.npy', 'wb') as f:
        np.lib.format.write_array_header_1_0(f, {'descr': '|O', 'fortran_order': False, 'shape': ()})
        f.write(payload)
    with pytest.raises(DataError, match='user_item_dict.npy: unsafe or corrupt pickle .*non-empty shape'):
        load_dataset(str(hand_folder))


def test_pickled_file_size_is_capped(hand_folder, monkeypatch):
    import safe_read
    monkeypatch.setattr(safe_read, 'MAX_PICKLE_BYTES', 100)
    with pytest.raises(DataError, match='_full.npy: a pickled file of .* bytes; more than 100 is refused'):
        load_dataset(str(hand_folder))


def test_npy_header_that_understates_its_rows(hand_folder):
    rows = np.array([[0, 2], [0, 3], [1, 3], [1, 4]], dtype=np.int64)
    with open(hand_folder / 'train.npy', 'wb') as f:
        np.lib.format.write_array_header_1_0(f, {'descr': '<i8', 'fortran_order': False, 'shape': (2, 2)})
        f.write(rows.tobytes())
    with pytest.raises(DataError, match=r'train.npy: 32 bytes after the array of shape \(2, 2\)'):
        load_dataset(str(hand_folder))


@pytest.mark.parametrize('target', ['train.npy', 'val_full.npy', 'user_item_dict.npy'])
def test_ids_too_large_blame_their_file(target, hand_folder):
    from conftest import write_split
    huge = 2 ** 40
    if target == 'train.npy':
        np.save(hand_folder / target, np.array([[0, 2], [huge, 3]]))
    elif target == 'val_full.npy':
        write_split(hand_folder / target, [[0, 4], [1, 2 ** 70]])
    else:
        np.save(hand_folder / target, np.array({0: {2, 3}, 1: {3, huge}}, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=f'{target}: .*too large'):
        load_dataset(str(hand_folder))


# ---------------------------------------------------------------- prepare_data.py csv and its flags

def _csv(tmp_path, text, name='inter.csv', mode='w'):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


def _good_rows(n_user=6, n_item=12, per=10):
    return [f'u{u},{(u + k) % n_item},{k}' for u in range(n_user) for k in range(per)]


def _prepare_csv(tmp_path, inter, *flags):
    return prepare_data.main(['csv', '--inter', inter, '--name', str(tmp_path / 'out'), *flags])


@pytest.mark.parametrize('case', ['long line', 'long user id', 'latin-1 ids', 'rating header'])
def test_csv_bad_interaction_files(case, tmp_path, capsys):
    rows = _good_rows()
    if case == 'long line':
        rows.append('u1,' + 'x' * 200000 + ',1')
    elif case == 'long user id':
        rows.append('u' * 5000 + ',1,1')
    elif case == 'rating header':
        rows = ['user_id,item_id,rating'] + [r.rsplit(',', 1)[0] + ',4' for r in rows]
    text = '\n'.join(rows) + '\n'
    inter = _csv(tmp_path, text.encode('utf-8') + b'caf\xe9,1,1\n' if case == 'latin-1 ids' else text)
    assert _prepare_csv(tmp_path, inter) == 2
    needle = {'long line': 'line 61: field larger than field limit', 'long user id': 'longer than 256', 'latin-1 ids': 'not UTF-8',
              'rating header': "third column is 'rating', not a timestamp"}[case]
    _one_line_error(capsys, 'inter.csv', needle)
    assert not (tmp_path / 'out').exists()


def test_csv_rating_without_header_warns_once(tmp_path, capsys):
    rows = [r.rsplit(',', 1)[0] + f',{1 + n % 5}' for n, r in enumerate(_good_rows())]
    assert _prepare_csv(tmp_path, _csv(tmp_path, '\n'.join(rows) + '\n')) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('warning: ') and 'looks like a rating' in err[0]


def test_csv_rating_and_timestamp_header_uses_the_timestamp(tmp_path):
    rows = ['user,item,rating,timestamp'] + [f'{r.rsplit(",", 1)[0]},5,{100 - int(r.rsplit(",", 1)[1])}'
                                             for r in _good_rows()]
    assert _prepare_csv(tmp_path, _csv(tmp_path, '\n'.join(rows) + '\n')) == 0
    data = load_dataset(str(tmp_path / 'out'))
    ids = (tmp_path / 'out' / 'item_ids.txt').read_text().split()
    assert ids[int(data.test[0][0])] == '0'       # time 100 - k: user u0's newest item is its k=0 item, 0


def test_csv_utf8_bom_before_the_header(tmp_path):
    text = '\ufeffuser,item,time\n' + '\n'.join(_good_rows()) + '\n'
    assert _prepare_csv(tmp_path, _csv(tmp_path, text.encode('utf-8'))) == 0
    assert load_dataset(str(tmp_path / 'out')).num_user == 6


@pytest.mark.parametrize('feature', ['a/b', '..', 'v/../../x', 'v.x', ''])
def test_csv_feature_name_is_a_plain_name(feature, tmp_path, capsys):
    np.save(tmp_path / 'f.npy', np.ones((12, 2), dtype=np.float32))
    inter = _csv(tmp_path, '\n'.join(_good_rows()) + '\n')
    assert _prepare_csv(tmp_path, inter, '--feature', f'{feature}={tmp_path / "f.npy"}') == 2
    _one_line_error(capsys, '--feature')
    assert sorted(os.listdir(tmp_path)) == ['f.npy', 'inter.csv']


@pytest.mark.parametrize('kind', ['missing', 'directory'])
def test_csv_item_list_missing_or_a_directory(kind, tmp_path, capsys):
    np.save(tmp_path / 'f.npy', np.ones((12, 2), dtype=np.float32))
    inter = _csv(tmp_path, '\n'.join(_good_rows()) + '\n')
    item_list = tmp_path / 'items'
    if kind == 'directory':
        item_list.mkdir()
    assert _prepare_csv(tmp_path, inter, '--feature', f'v={tmp_path / "f.npy"}', '--item_list', str(item_list)) == 2
    _one_line_error(capsys, str(item_list), 'not found' if kind == 'missing' else 'not a regular file')


@pytest.mark.parametrize('flags', [['--scale', '0'], ['--scale', 'nan'], ['--scale', 'inf'], ['--seed', '-1'],
                                   ['--num_user', '0'], ['--num_item', '3'], ['--num_item', str(10 ** 12)],
                                   ['--inter_per_user', 'nan']])
def test_prepare_numeric_flags(flags, tmp_path, capsys):
    assert prepare_data.main(['synthetic', '--name', str(tmp_path / 'x'), *flags]) == 2
    _one_line_error(capsys, flags[0])
    assert os.listdir(tmp_path) == []


def test_an_output_file_may_not_be_the_tensorboard_folder(tiny_plain, tmp_path, capsys):
    """Found by the command-line property test: --export_topk and --tensorboard naming one path."""
    same = str(tmp_path / 'out')
    code = main.main(['--data_path', tiny_plain, '--num_epoch', '0', '--save_file', str(tmp_path / 'r.jsonl'),
                      '--checkpoint', str(tmp_path / 'c.pt'), '--PATH_weight_save', str(tmp_path / 'b.pt'),
                      '--export_topk', same, '--tensorboard', same, '--no-progress'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == errors.EXIT_BAD_INPUT and len(err) == 1 and 'are the same file' in err[0]
    assert not (tmp_path / 'out').exists()


def test_an_empty_output_path_is_refused_before_training(tiny_plain, tmp_path, capsys):
    """Found by the command-line property test: --save_file '' trained, wrote its models, then failed."""
    code = main.main(['--data_path', tiny_plain, '--num_epoch', '1', '--save_file', '',
                      '--checkpoint', str(tmp_path / 'c.pt'), '--PATH_weight_save', str(tmp_path / 'b.pt'),
                      '--no-progress'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == errors.EXIT_BAD_INPUT and err == ["error: '': the results file needs a file name"]
    assert not (tmp_path / 'c.pt').exists() and not (tmp_path / 'b.pt').exists()


def test_outputs_get_the_permissions_of_a_plain_write(tmp_path):
    """Atomic writes go through mkstemp/mkdtemp (0600/0700): the renamed outputs must still follow the
    umask like open() would, and an output that exists keeps its own mode."""
    old = os.umask(0o027)
    try:
        folder = prepare_data.synthetic('perm', like='none', num_user=30, num_item=40, inter_per_user=6,
                                        seed=1, root=str(tmp_path))
        (tmp_path / 'kept.csv').write_text('old\n')
        os.chmod(tmp_path / 'kept.csv', 0o604)
        assert main.main(_train_argv(folder, tmp_path, '--num_epoch', '1', '--export_topk',
                                     str(tmp_path / 'top.csv'))) == 0
        assert main.main(_train_argv(folder, tmp_path, '--num_epoch', '0', '--PATH_weight_load',
                                     str(tmp_path / 'run.best.pt'), '--export_topk', str(tmp_path / 'kept.csv'),
                                     tag='eval')) == 0
    finally:
        os.umask(old)
    mode = lambda path: os.stat(path).st_mode & 0o777        # noqa: E731
    assert mode(folder) == 0o750
    assert {mode(os.path.join(folder, f)) for f in os.listdir(folder)} == {0o640}
    for name in ('top.csv', 'run.best.pt', 'run.last.pt', 'run.jsonl'):
        assert mode(tmp_path / name) == 0o640, name
    assert mode(tmp_path / 'kept.csv') == 0o604 and (tmp_path / 'kept.csv').read_text() != 'old\n'
