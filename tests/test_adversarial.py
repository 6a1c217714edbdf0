"""Issue 19, the independent adversarial round: cases of its own, each found ending in a traceback, a hang,
a second stderr line or a silent loss before its fix (one regression test per case)."""
import contextlib
import os
import re

import numpy as np
import pytest
import torch

from DataLoad import load_dataset
from errors import DataError


# ---------------------------------------------------------------- dataset files

@pytest.mark.parametrize('value, shape', [(np.array(5), '()'), (np.array([0, 4]), '(2,)'),
                                          (np.array({0: [4]}, dtype=object), '()')],
                         ids=['0-d int', '1-d int', '0-d dict'])
def test_split_that_is_not_a_list_of_rows(value, shape, hand_folder):
    np.save(hand_folder / 'val_full.npy', value, allow_pickle=True)
    with pytest.raises(DataError, match=r'val_full.npy: expected one row .* array of shape ' + re.escape(shape)):
        load_dataset(str(hand_folder))


@pytest.mark.parametrize('row, kind', [(7, 'int'), ('ab', 'str'), ({0, 4}, 'set')])
def test_split_row_that_is_not_a_list(row, kind, hand_folder):
    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = row, [1, 2]
    np.save(hand_folder / 'val_full.npy', arr, allow_pickle=True)
    with pytest.raises(DataError, match=f'val_full.npy: row 0 is a {kind}, not a list'):
        load_dataset(str(hand_folder))


def test_float64_features_beyond_float32_are_one_error_without_a_warning(hand_folder):
    feat = np.eye(3, 4)
    feat[1, 2] = 1e300
    np.save(hand_folder / 'feat_v.npy', feat)           # pytest.ini: numpy's overflow warning would fail here
    with pytest.raises(DataError, match='feat_v.npy: feature row 1 holds a value beyond the float32 range'):
        load_dataset(str(hand_folder))


def _tiktok_v(folder, tensor):
    torch.save(tensor, os.path.join(folder, 'feat_v.pt'))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float8_e4m3fn])
def test_pt_features_without_a_numpy_type_load(dtype, tiny_tiktok):
    before = load_dataset(tiny_tiktok).features['v']
    _tiktok_v(tiny_tiktok, torch.from_numpy(before).to(dtype))
    after = load_dataset(tiny_tiktok).features['v']
    assert after.dtype == np.float32
    assert np.array_equal(after, torch.from_numpy(before).to(dtype).float().numpy())


def test_pt_features_that_require_grad_load(tiny_tiktok):
    before = load_dataset(tiny_tiktok).features['v']
    _tiktok_v(tiny_tiktok, torch.from_numpy(before).requires_grad_())
    assert np.array_equal(load_dataset(tiny_tiktok).features['v'], before)


@pytest.mark.parametrize('file, how, layout', [('feat_v.pt', 'sparse', 'sparse_coo on cpu'),
                                               ('feat_v.pt', 'meta', 'strided on meta'),
                                               ('feat_t.pt', 'sparse', 'sparse_coo on cpu')])
def test_pt_tensor_that_is_not_dense(file, how, layout, tiny_tiktok):
    path = os.path.join(tiny_tiktok, file)
    tensor = torch.load(path, weights_only=True)
    torch.save(tensor.to_sparse() if how == 'sparse' else torch.empty(tensor.shape, device='meta'), path)
    with pytest.raises(DataError, match=f'{file}: expected a dense tensor, found a {layout} one'):
        load_dataset(tiny_tiktok)


def test_word_ids_that_would_allocate_the_machine_away(tiny_tiktok):
    # found: word id 2**25 built a 16 GiB word table (the run was killed by the OOM killer)
    path = os.path.join(tiny_tiktok, 'feat_t.pt')
    pairs = torch.load(path, weights_only=True)
    pairs[1, 0] = 2 ** 20 - 1
    torch.save(pairs, path)
    assert load_dataset(tiny_tiktok).features['t'].vocab_size == 2 ** 20
    pairs[1, 0] = 2 ** 20
    torch.save(pairs, path)
    with pytest.raises(DataError, match='feat_t.pt: word id 1048576 is too large'):
        load_dataset(tiny_tiktok)


# ---------------------------------------------------------------- main.py: config, outputs, weights, resume

import subprocess  # noqa: E402
import sys  # noqa: E402

import main  # noqa: E402
import prepare_data  # noqa: E402
from conftest import one_line_error as _one_line_error  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def _within(seconds):
    """Fail instead of hanging (a FIFO opened for reading waits for a writer forever)."""
    import signal

    def hung(*_):
        raise TimeoutError(f'hung for {seconds} s')
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_config_alias_bomb_is_a_short_error(tmp_path, capsys):
    # found: 'seed: [&a [x, ...x9], &b [*a x9], ...]' of 400 bytes printed (tried to print) 9**9 items: a minute, 3 GB
    names = 'abcdefg'
    parts = ['&a [x, x, x, x, x, x, x, x, x]'] + [f'&{c} [{", ".join([f"*{p}"] * 9)}]' for p, c in zip(names, names[1:])]
    config = tmp_path / 'bomb.yaml'
    config.write_text('seed: [' + ', '.join(parts) + ']\n')
    assert main.main(['--config', str(config)]) == 2
    err = _one_line_error(capsys, 'bomb.yaml: seed: expected one value, got [[')
    assert len(err) < 1000


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A tiny dataset and one trained run's outputs: (dataset folder, output folder, base argv)."""
    root = tmp_path_factory.mktemp('adversarial')
    folder = prepare_data.synthetic('adv', like='none', num_user=24, num_item=30, inter_per_user=8, seed=2,
                                    root=str(root))
    base = ['--data_path', folder, '--num_epoch', '1', '--dim_latent', '8', '--batch_size', '64', '--num_layer', '1',
            '--no-progress']
    out = root / 'run'
    assert main.main(base + ['--save_file', str(out / 'r.jsonl'), '--checkpoint', str(out / 'c.pt'),
                             '--PATH_weight_save', str(out / 'b.pt')]) == 0
    return folder, out, base


def _outputs(tmp_path):
    return ['--save_file', str(tmp_path / 'r.jsonl'), '--PATH_weight_save', str(tmp_path / 'b.pt')]


def test_output_name_too_long_for_its_temporary_is_refused_before_training(trained, tmp_path, capsys):
    # found: a 244-byte checkpoint name passed the check, trained, then atomic_save's temporary
    # '.<name>-<pid>-XXXXXXXX' exceeded 255 bytes: an OSError traceback after the first epoch
    _, _, base = trained
    long = tmp_path / ('c' * 240 + '.pt')
    assert main.main(base + _outputs(tmp_path) + ['--checkpoint', str(long)]) == 2
    _one_line_error(capsys, 'cannot write the checkpoint (File name too long)')
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('how', ['sparse', 'complex', 'int key'])
def test_weight_file_of_odd_tensors(how, trained, tmp_path, capsys):
    # found: sparse tensors and an int key were tracebacks, complex ones loaded with torch's cast warning
    folder, out, base = trained
    state = torch.load(out / 'b.pt', weights_only=True)
    if how == 'int key':
        state = {n: v for n, v in enumerate(state.values())}
    else:
        state = {k: v.to_sparse() if how == 'sparse' else v.to(torch.complex64) for k, v in state.items()}
    torch.save(state, tmp_path / 'w.pt')
    assert main.main(base + _outputs(tmp_path) + ['--checkpoint', str(tmp_path / 'c.pt'), '--num_epoch', '0',
                                                  '--PATH_weight_load', str(tmp_path / 'w.pt')]) == 2
    _one_line_error(capsys, 'w.pt: expected a state dict of dense real tensors')


def test_resume_checkpoint_with_sparse_weights_is_malformed(trained, tmp_path, capsys):
    _, out, base = trained
    ckpt = torch.load(out / 'c.pt', weights_only=True)
    ckpt['model'] = {k: v.to_sparse() for k, v in ckpt['model'].items()}
    torch.save(ckpt, tmp_path / 'c.pt')
    before = (tmp_path / 'c.pt').read_bytes()
    assert main.main(base + _outputs(tmp_path) + ['--checkpoint', str(tmp_path / 'c.pt'), '--resume']) == 2
    _one_line_error(capsys, "malformed checkpoint: 'model' must be a state dict of dense real tensors")
    assert (tmp_path / 'c.pt').read_bytes() == before


@pytest.mark.parametrize('override', [[], ['--resume_override']])
def test_resume_with_other_cut_offs_names_top_k_not_a_malformed_checkpoint(override, trained, tmp_path, capsys):
    # found: '--resume --topK 5' called a sound checkpoint 'malformed', and --resume_override could not help
    _, out, base = trained
    args = base + ['--save_file', str(tmp_path / 'r.jsonl'), '--checkpoint', str(out / 'c.pt'),
                   '--PATH_weight_save', str(tmp_path / 'b.pt'), '--resume', '--topK', '5', *override]
    assert main.main(args) == 2
    err = _one_line_error(capsys, 'c.pt: checkpoint of a run with --topK 10; --resume needs the same cut-offs')
    assert 'malformed' not in err


def test_resume_checkpoint_with_a_tensor_among_its_cut_offs_is_malformed(trained, tmp_path, capsys):
    # found (tests/test_fuzz_robust.py): args['topK'] = [tensor([])] was compared with this run's cut-offs before
    # the checkpoint was validated: "RuntimeError: Boolean value of Tensor with no values is ambiguous"
    _, out, base = trained
    ckpt = torch.load(out / 'c.pt', weights_only=True)
    ckpt['args']['topK'] = [torch.tensor([])]
    torch.save(ckpt, tmp_path / 'c.pt')
    args = base + ['--save_file', str(tmp_path / 'r.jsonl'), '--checkpoint', str(tmp_path / 'c.pt'),
                   '--PATH_weight_save', str(tmp_path / 'b.pt'), '--resume']
    assert main.main(args) == 2
    _one_line_error(capsys, "malformed checkpoint: 'args' must map flag names to plain values")


def _interrupted_import(tmp_path, script, *args):
    """Run ``script`` with a numpy whose import is interrupted by Ctrl-C (as a user pressing it while torch loads)."""
    fake = tmp_path / 'fake'
    fake.mkdir()
    (fake / 'numpy.py').write_text('import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n')
    env = dict(os.environ, PYTHONPATH=str(fake))
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)


@pytest.mark.parametrize('script, args', [('main.py', ['--data_path', 'x']),
                                          ('prepare_data.py', ['synthetic', '--name', 'x'])])
def test_ctrl_c_while_the_imports_load_is_one_line(script, args, tmp_path):
    # found: Ctrl-C in the first second or two (numpy and torch loading) printed an 8-24-line traceback
    proc = _interrupted_import(tmp_path, script, *args)
    assert proc.returncode == 130, proc
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith('interrupted'), proc.stderr
    assert sorted(os.listdir(tmp_path)) == ['fake']


# ---------------------------------------------------------------- sweep.py

@pytest.mark.slow
@pytest.mark.parametrize('target', ['sweep', 'group'])
def test_ctrl_c_on_a_sweep_is_one_line_and_the_rerun_runs_the_interrupted_point(target, trained, tmp_path):
    # found: Ctrl-C printed a 53-line traceback, and optuna had marked the running trial failed, so the
    # rerun counted it as finished and never ran its grid point ('1 of 2 trials finished')
    pytest.importorskip('optuna')
    import signal
    import time
    folder, _, _ = trained
    (tmp_path / 'space.yaml').write_text('l_r: [0.01, 0.001]\n')
    cmd = [sys.executable, os.path.join(ROOT, 'sweep.py'), '--space', 'space.yaml', '--study', 'i', '--heartbeat', '1',
           '--', '--data_path', folder, '--num_epoch', '15', '--patience', '100', '--dim_latent', '8',
           '--batch_size', '64', '--num_layer', '1']
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    ckpt = tmp_path / 'runs' / 'sweep-i' / 'trial-0' / 'last.pt'
    for _ in range(1200):                       # interrupt trial 0 once it has checkpointed an epoch
        if ckpt.exists():
            break
        time.sleep(0.05)
    if target == 'sweep':
        proc.send_signal(signal.SIGINT)         # the sweep alone: its run is stopped with it
    else:
        os.killpg(proc.pid, signal.SIGINT)      # a terminal's Ctrl-C: the sweep and its run
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and len(err.strip().splitlines()) == 1, err
    assert err.startswith('interrupted: run the same command again to continue')
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240)   # the same command
    assert done.returncode == 0, done.stdout + done.stderr
    import optuna
    trials = optuna.load_study(study_name='i', storage=f'sqlite:///{tmp_path}/runs/sweep-i.db').get_trials()
    assert sorted(t.params['l_r'] for t in trials if t.state.name == 'COMPLETE') == [0.001, 0.01]
    assert 'interrupted (Ctrl-C), retried' in done.stdout and 'resumed from' in (ckpt.parent / 'log.txt').read_text()


@pytest.mark.parametrize('kind', ['fifo', 'latin-1'])
def test_sweep_space_file_that_is_a_fifo_or_not_utf8(kind, tmp_path, capsys):
    # found: a FIFO as --space hung; a byte that is not UTF-8 was a UnicodeDecodeError traceback
    pytest.importorskip('optuna')
    import sweep
    space = tmp_path / 'space.yaml'
    if kind == 'fifo':
        os.mkfifo(space)
    else:
        space.write_bytes(b'l_r: [0.01]  # \xe9\xff\n')
    with _within(20):
        assert sweep.cli(['--space', str(space), '--study', 'f', '--']) == 2
    _one_line_error(capsys, 'space.yaml: cannot read the space file')
    assert os.listdir(tmp_path) == ['space.yaml']


def test_sweep_argparse_errors_are_one_line(capsys):
    # found: sweep.py printed argparse's whole usage block (main.py and prepare_data.py print one line)
    pytest.importorskip('optuna')
    import sweep
    with pytest.raises(SystemExit) as stop:
        sweep.cli(['--space', 'x.yaml', '--study', 's', '--trials', 'many'])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --trials: invalid int value: 'many' (see ") and err.count('\n') == 1, err


# ---------------------------------------------------------------- prepare_data.py

def _mmrec_lines(extra=()):
    lines = ['userID\titemID\tx_label']
    lines += [f'{u}\t{(u + i) % 8}\t{0 if i < 3 else (1 if i == 3 else 2)}' for u in range(6) for i in range(5)]
    return lines + list(extra)


@pytest.mark.parametrize('case, problem', [
    ('latin-1', 'not UTF-8 text'),
    ('folder', 'not a regular file'),
    ('id 10**30', 'an id is too large (ids must be below 2**31)'),
    ('id 2**40', 'id 1099511627776 is too large'),
    ('no validation line', 'no line has x_label 1: the validation split would be empty'),
    ('no training line', 'no line has x_label 0: the training split would be empty'),
])
def test_mmrec_bad_interaction_file(case, problem, tmp_path, capsys):
    # found: latin-1 bytes, a folder named *.inter and an id over 2**63 were tracebacks; an id of 2**40 and a
    # missing split wrote a dataset ("dataset ready") that main.py then refused
    src = tmp_path / 'baby'
    src.mkdir()
    inter = src / 'baby.inter'
    lines = _mmrec_lines()
    if case == 'latin-1':
        inter.write_bytes('\n'.join(lines).encode() + b'\n1\t2\t0\t\xe9\n')
    elif case == 'folder':
        inter.mkdir()
    else:
        lines += {'id 10**30': [f'{10 ** 30}\t1\t0'], 'id 2**40': [f'{2 ** 40}\t1\t0']}.get(case, [])
        if case.startswith('no '):
            drop = '\t1' if 'validation' in case else '\t0'
            lines = [line if not line.endswith(drop) else line[:-1] + '2' for line in lines]
        inter.write_text('\n'.join(lines) + '\n')
    assert prepare_data.main(['mmrec', '--folder', str(src), '--name', str(tmp_path / 'out')]) == 2
    _one_line_error(capsys, 'baby.inter: ' + problem)
    assert sorted(os.listdir(tmp_path)) == ['baby']


def test_csv_without_validation_and_test_pairs_is_refused(tmp_path, capsys):
    # found: users with fewer than 10 interactions each get no validation or test pair (floor(0.1 n)); the
    # import said "dataset ready" and main.py then refused the folder
    (tmp_path / 'few.csv').write_text('user,item\n' + ''.join(f'u{u},i{(u + k) % 9}\n' for u in range(20) for k in range(3)))
    assert prepare_data.main(['csv', '--inter', str(tmp_path / 'few.csv'), '--name', str(tmp_path / 'out')]) == 2
    _one_line_error(capsys, 'few.csv: the validation and test splits are empty')
    assert os.listdir(tmp_path) == ['few.csv']


# ---------------------------------------------------------------- bench/plot.py

def _plot():
    pytest.importorskip('matplotlib')
    sys.path.insert(0, os.path.join(ROOT, 'bench'))
    import plot
    return plot


GOOD = {'run': 'a', 'args': {'topK': [10]}, 'best_epoch': 1,
        'history': [{'epoch': 1, 'loss': 0.5, 'val': {'10': {'precision': 0.1, 'recall': 0.2, 'ndcg': 0.1}}}]}


@pytest.mark.parametrize('change', [dict(history='abc'), dict(history=[1, 2]), dict(history=[{'loss': 1.0}]),
                                    dict(history=[{'epoch': 1, 'loss': 'x'}]), dict(args=None), dict(args={}),
                                    dict(run=['a']), dict(run=1)],
                         ids=lambda c: str(c)[:30])
def test_plot_refuses_malformed_results_lines(change, tmp_path, capsys):
    # found: each was a TypeError/KeyError traceback, or (history 'abc') exit 0 with matplotlib's warning lines
    import json
    plot = _plot()
    (tmp_path / 'r.jsonl').write_text(json.dumps({**GOOD, **change}) + '\n')
    assert plot.main([str(tmp_path / 'r.jsonl'), '--out', str(tmp_path / 'c.png')]) == 2
    _one_line_error(capsys, 'r.jsonl: line 1 is not a main.py results line')
    assert os.listdir(tmp_path) == ['r.jsonl']


@pytest.mark.parametrize('content, problem', [(b'\xff\xfe{}\n', 'cannot read the results file'),
                                              (b'[' * 100000 + b']' * 100000 + b'\n', 'line 1 is not JSON'),
                                              ('fifo', 'cannot read the results file (not a regular file)')],
                         ids=['not UTF-8', 'nested too deeply', 'fifo'])
def test_plot_unreadable_results_file(content, problem, tmp_path, capsys):
    plot = _plot()
    results = tmp_path / 'r.jsonl'
    if content == 'fifo':
        os.mkfifo(results)
    else:
        results.write_bytes(content)
    with _within(20):
        assert plot.main([str(results), '--out', str(tmp_path / 'c.png')]) == 2
    _one_line_error(capsys, 'r.jsonl: ' + problem)


def test_plot_out_folder_and_argparse_errors_are_one_line(tmp_path, capsys):
    import json
    plot = _plot()
    (tmp_path / 'r.jsonl').write_text(json.dumps(GOOD) + '\n')
    assert plot.main([str(tmp_path / 'r.jsonl'), '--out', str(tmp_path)]) == 2
    _one_line_error(capsys, f'{tmp_path}: --out is a folder')
    with pytest.raises(SystemExit):
        plot.main([str(tmp_path / 'r.jsonl'), '--k', 'x'])
    _one_line_error(capsys, "--k: invalid int value: 'x'")
    assert os.listdir(tmp_path) == ['r.jsonl']


# ---------------------------------------------------------------- a full disk under the atomic writes

class _FullDisk:
    """The file os.fdopen returns, on a disk with 64 bytes left: a write beyond them fails with ENOSPC."""

    def __init__(self, f):
        self.f, self.left = f, 64

    def write(self, data):
        import errno
        if len(data) > self.left:
            raise OSError(errno.ENOSPC, 'No space left on device')
        self.left -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_previous_one(trained, tmp_path, monkeypatch, capsys):
    # found: torch.save into the temporary on a full disk raised torch's 'unexpected pos 64 vs 0' RuntimeError
    # (a best-model or export write an OSError): a traceback, exit 1
    _, _, base = trained
    args = [x if x != '1' or base[n - 1] != '--num_epoch' else '2' for n, x in enumerate(base)]
    args += _outputs(tmp_path) + ['--checkpoint', str(tmp_path / 'c.pt')]
    real_fdopen, saves = os.fdopen, []

    def fdopen(fd, *a, **k):
        name = os.readlink(f'/proc/self/fd/{fd}')
        f = real_fdopen(fd, *a, **k)
        if name.startswith(str(tmp_path / '.c.pt-')):
            saves.append(name)
            if len(saves) == 2:                          # the second checkpoint write fails
                return _FullDisk(f)
        return f
    monkeypatch.setattr(main.os, 'fdopen', fdopen)
    assert main.main(args) == 2
    _one_line_error(capsys, 'c.pt: cannot write (No space left on device); the previous file')
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ['b.pt', 'c.pt']           # no temporary, no results line
    assert torch.load(tmp_path / 'c.pt', weights_only=True)['state']['epoch'] == 1
    assert main.main(args + ['--resume']) == 0


def test_full_disk_while_preparing_a_dataset_is_one_line(tmp_path, monkeypatch, capsys):
    # found on a 200 KiB tmpfs: np.save's 'OSError: 1974 requested and 496 written' was a traceback
    import errno
    real_save, calls = np.save, []

    def save(*a, **k):
        calls.append(a[0])
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real_save(*a, **k)
    monkeypatch.setattr(prepare_data.np, 'save', save)
    assert prepare_data.main(['synthetic', '--name', str(tmp_path / 'syn'), '--num_user', '30', '--num_item', '40']) == 2
    _one_line_error(capsys, 'syn: cannot write the dataset (No space left on device)')
    assert os.listdir(tmp_path) == []


def test_sizes_that_cannot_fit_in_memory_are_refused_before_anything_is_built(hand_folder, tmp_path, capsys,
                                                                             monkeypatch):
    # found: meta.json's num_item is checked only against the ids, so an ID-only dataset claiming 2**31 items
    # went on to build a 16 GiB degree vector and a 512 GiB item table (a traceback under a memory limit; without
    # one the OOM killer). Before the fix this test is safe only under `ulimit -v`.  Since issue 30 a size the data
    # do not back is refused while loading (DataLoad.check_backed); one that fits the data but not this machine's
    # memory is refused before the graph or the model is built (registry.check_memory).
    import json
    import registry
    (hand_folder / 'meta.json').write_text(json.dumps({'num_user': 2, 'num_item': 2 ** 31 - 3, 'modalities': []}))
    argv = ['--data_path', str(hand_folder), '--model_name', 'LightGCN', '--num_epoch', '0',
            '--save_file', str(tmp_path / 'out' / 'r.jsonl'), '--checkpoint', str(tmp_path / 'out' / 'c.pt'),
            '--PATH_weight_save', str(tmp_path / 'out' / 'b.pt')]
    assert main.main(argv) == 2
    _one_line_error(capsys, 'meta.json: 2147483645 items declared, but only 3 of them')
    (hand_folder / 'meta.json').write_text(json.dumps({'num_user': 2, 'num_item': 3, 'modalities': []}))
    monkeypatch.setattr(registry.os, 'sysconf', lambda name: {'SC_PAGE_SIZE': 4096, 'SC_PHYS_PAGES': 4}[name])
    assert main.main(argv + ['--dim_latent', '4096']) == 2
    _one_line_error(capsys, 'hand: 2 users and 3 items need ', 'this machine has 0 GiB')
    assert not (tmp_path / 'out').exists()         # made to check it, removed again


@pytest.mark.parametrize('change, problem', [
    (dict(board_dir=5), "'state' board_dir must be a folder name"),                  # found: a TypeError traceback
    (dict(best_recall=1e300), "'state' best_recall must be a recall"),                # found: accepted, never improved
])
def test_resume_checkpoint_state_fields(change, problem, trained, tmp_path, capsys):
    _, out, base = trained
    ckpt = torch.load(out / 'c.pt', weights_only=True)
    ckpt['state'].update(change)
    torch.save(ckpt, tmp_path / 'c.pt')
    assert main.main(base + _outputs(tmp_path) + ['--checkpoint', str(tmp_path / 'c.pt'), '--resume', '--num_epoch',
                                                  '2', '--tensorboard', str(tmp_path / 'tb')]) == 2
    _one_line_error(capsys, 'c.pt: malformed checkpoint: ' + problem)
    assert [f for _, _, fs in os.walk(tmp_path) for f in fs] == ['c.pt']      # (the checked folders may exist)


@pytest.mark.parametrize('spelling', ['trailing slash', './relative', 'symlink'])
def test_resume_with_the_same_dataset_spelled_otherwise(spelling, trained, tmp_path, monkeypatch):
    # found: '--data_path x/' or a relative path after an absolute one was refused as a changed hyper-parameter
    folder, out, base = trained
    ckpt = tmp_path / 'c.pt'
    ckpt.write_bytes((out / 'c.pt').read_bytes())
    if spelling == 'trailing slash':
        path = folder + '/'
    elif spelling == 'symlink':
        path = str(tmp_path / 'link')
        os.symlink(folder, path)
    else:
        monkeypatch.chdir(os.path.dirname(folder))
        path = os.path.join('.', os.path.basename(folder))
    args = [path if x == folder else x for x in base]
    args = [x if x != '1' or args[n - 1] != '--num_epoch' else '2' for n, x in enumerate(args)]
    assert main.main(args + _outputs(tmp_path) + ['--checkpoint', str(ckpt), '--resume']) == 0
    assert torch.load(ckpt, weights_only=True)['state']['epoch'] == 2


# ---------------------------------------------------------------- the top-K export's source ids

@pytest.fixture
def with_ids(tmp_path):
    """A CSV import (it writes user_ids.txt and item_ids.txt) of 12 users, whose first user id holds a comma."""
    inter = tmp_path / 'inter.csv'
    inter.write_text('user,item,timestamp\n' + ''.join(f'"u{u}{", x" if u == 0 else ""}",i{(u * 7 + k) % 25},{k}\n'
                                                          for u in range(12) for k in range(12)))
    return prepare_data.import_csv('ids', str(inter), {}, root=str(tmp_path / 'Data'))


def _export(folder, tmp_path, *extra):
    return main.main(['--data_path', folder, '--model_name', 'LightGCN', '--dim_latent', '8', '--num_epoch', '1',
                      '--no-progress', '--topK', '3', '--export_topk', str(tmp_path / 'out' / 'top.csv'),
                      '--save_file', str(tmp_path / 'out' / 'r.jsonl'), '--checkpoint', str(tmp_path / 'out' / 'c.pt'),
                      '--PATH_weight_save', str(tmp_path / 'out' / 'b.pt'), *extra])


@pytest.mark.parametrize('how, problem', [('latin-1', 'user_ids.txt: not UTF-8 text'),
                                          ('fifo', 'user_ids.txt: not a regular file'),
                                          ('folder', 'user_ids.txt: not a regular file')])
def test_unreadable_ids_file_is_refused_before_training(how, problem, with_ids, tmp_path, capsys):
    # found: latin-1 bytes were a UnicodeDecodeError traceback after training; a FIFO or a folder silently
    # exported indices instead of the source ids
    path = os.path.join(with_ids, 'user_ids.txt')
    if how == 'latin-1':
        with open(path, 'ab') as f:
            f.write(b'\xe9\n')
    else:
        os.remove(path)
        os.mkfifo(path) if how == 'fifo' else os.mkdir(path)
    with _within(60):
        assert _export(with_ids, tmp_path) == 2
    _one_line_error(capsys, problem)
    assert not (tmp_path / 'out').exists()                    # refused before training: no best model


def test_exported_ids_are_csv_fields(with_ids, tmp_path):
    # found: the id 'u0, x' (a quoted CSV field at import) was written bare, so its rows had five columns;
    # an id holding U+2028 (a line separator to str.splitlines) miscounted the ids file
    import csv
    path = os.path.join(with_ids, 'user_ids.txt')
    with open(path, encoding='utf-8') as f:
        ids = f.read().split('\n')[:-1]
    ids[1] = 'u1\u2028y'
    with open(path, 'w', encoding='utf-8') as f:
        f.write(''.join(f'{x}\n' for x in ids))
    assert _export(with_ids, tmp_path) == 0
    with open(tmp_path / 'out' / 'top.csv', newline='', encoding='utf-8') as f:
        rows = list(csv.reader(f))
    assert {len(r) for r in rows} == {4}
    assert {r[0] for r in rows[1:]} == set(ids)


# ---------------------------------------------------------------- outputs over inputs

def _contents(folder):
    out = {}
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), 'rb') as f:
            out[name] = f.read()
    return out


@pytest.mark.parametrize('flag, target, problem', [
    ('--save_file', 'train.npy', 'would be written into the dataset folder'),
    ('--export_topk', 'item_ids.txt', 'would be written into the dataset folder'),
    ('--checkpoint', 'new.pt', 'would be written into the dataset folder'),
    ('--save_file', 'config', 'the results file would overwrite the --config file'),
    ('--save_file', 'weights', 'the results file would overwrite the --PATH_weight_load file'),
])
def test_an_output_may_not_overwrite_an_input(flag, target, problem, trained, tmp_path, capsys):
    # found: '--save_file Data/x/train.npy' trained and appended its JSON line to the array file (the dataset
    # then failed to load: '1621 bytes after the array'); '--save_file' = the --config file broke the YAML
    folder, out, base = trained
    config = tmp_path / 'config.yaml'
    config.write_text('seed: 1\n')
    weights = tmp_path / 'w.pt'
    weights.write_bytes((out / 'b.pt').read_bytes())
    path = {'config': config, 'weights': weights}.get(target, os.path.join(folder, target))
    args = base + ['--config', str(config), '--PATH_weight_load', str(weights), '--save_file', str(tmp_path / 'r.jsonl'),
                   '--checkpoint', str(tmp_path / 'c.pt'), '--PATH_weight_save', str(tmp_path / 'b.pt'), flag, str(path)]
    before = _contents(folder)
    assert main.main(args) == 2
    _one_line_error(capsys, problem)
    assert _contents(folder) == before
    assert config.read_text() == 'seed: 1\n' and weights.read_bytes() == (out / 'b.pt').read_bytes()
    assert sorted(os.listdir(tmp_path)) == ['config.yaml', 'w.pt']


def test_sweep_config_may_not_overwrite_its_space(tmp_path, capsys, monkeypatch):
    # found: '--write_config space.yaml' replaced the user's space with the chosen configuration
    pytest.importorskip('optuna')
    import sweep
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'space.yaml').write_text('l_r: [0.01, 0.001]\n')
    assert sweep.cli(['--space', 'space.yaml', '--study', 'w', '--write_config', './space.yaml', '--',
                      '--data_path', str(tmp_path / 'none'), '--num_epoch', '1']) == 2
    _one_line_error(capsys, './space.yaml: --write_config would overwrite the --space file')
    assert os.listdir(tmp_path) == ['space.yaml'] and (tmp_path / 'space.yaml').read_text() == 'l_r: [0.01, 0.001]\n'


def test_ctrl_c_while_force_replaces_a_dataset_never_leaves_it_half_deleted(tmp_path, monkeypatch, capsys):
    # found: --force removed the old folder (shutil.rmtree) before renaming the new one into place; Ctrl-C
    # during that removal left the old one half-deleted and removed the new one ("interrupted: nothing was written")
    name = str(tmp_path / 'syn')
    flags = ['synthetic', '--name', name, '--num_user', '30', '--num_item', '40']
    assert prepare_data.main(flags + ['--seed', '1']) == 0
    real_rmtree, calls = prepare_data.shutil.rmtree, []

    def rmtree(path, *a, **k):
        calls.append(path)
        if len(calls) == 1:                      # the first removal is interrupted after one file
            train = os.path.join(path, 'train.npy')
            if os.path.exists(train):
                os.unlink(train)
            raise KeyboardInterrupt
        return real_rmtree(path, *a, **k)
    monkeypatch.setattr(prepare_data.shutil, 'rmtree', rmtree)
    assert prepare_data.main(flags + ['--seed', '2', '--force']) == 130
    monkeypatch.undo()
    capsys.readouterr()
    data = load_dataset(name)                    # whole: the new one (the old is gone only once it is in place)
    import json
    with open(os.path.join(name, 'meta.json')) as f:
        assert json.load(f)['source']['seed'] == 2
    assert prepare_data.PARTIAL_MARKER not in os.listdir(name) and data.num_user == 30


def test_ctrl_c_before_the_new_dataset_is_in_place_keeps_the_old_one(tmp_path, monkeypatch, capsys):
    import json
    name = str(tmp_path / 'syn')
    flags = ['synthetic', '--name', name, '--num_user', '30', '--num_item', '40']
    assert prepare_data.main(flags + ['--seed', '1']) == 0

    def chmod(*_):                               # just before the rename that puts the new folder in place
        raise KeyboardInterrupt
    monkeypatch.setattr(prepare_data.os, 'chmod', chmod)
    assert prepare_data.main(flags + ['--seed', '2', '--force']) == 130
    monkeypatch.undo()
    capsys.readouterr()
    load_dataset(name)
    with open(os.path.join(name, 'meta.json')) as f:
        assert json.load(f)['source']['seed'] == 1
    assert os.listdir(tmp_path) == ['syn'] and prepare_data.PARTIAL_MARKER not in os.listdir(name)


def test_duplicate_modalities_flag_is_refused(trained, tmp_path, capsys):
    # found: '--modalities v,v' silently trained on 'v' once (as duplicate names in meta.json did before issue 19)
    _, _, base = trained
    assert main.main(base + _outputs(tmp_path) + ['--checkpoint', str(tmp_path / 'c.pt'), '--modalities', 'v,a,v']) == 2
    _one_line_error(capsys, "--modalities: 'v' given twice")


def test_outputs_through_a_symlink_keep_the_link(trained, tmp_path):
    # found: the checkpoint and best model replaced a symbolic link given as their path with a regular file
    # (the user's link deleted, its target left stale), while the results file was appended through its link
    _, _, base = trained
    (tmp_path / 'store').mkdir()
    for name in ('c.pt', 'b.pt', 'top.csv'):
        os.symlink(tmp_path / 'store' / name, tmp_path / name)
    args = base + ['--save_file', str(tmp_path / 'r.jsonl'), '--checkpoint', str(tmp_path / 'c.pt'),
                   '--PATH_weight_save', str(tmp_path / 'b.pt'), '--export_topk', str(tmp_path / 'top.csv')]
    assert main.main(args) == 0
    for name in ('c.pt', 'b.pt', 'top.csv'):
        assert os.path.islink(tmp_path / name) and (tmp_path / 'store' / name).stat().st_size > 0
    assert torch.load(tmp_path / 'c.pt', weights_only=True)['state']['epoch'] == 1
    assert sorted(os.listdir(tmp_path / 'store')) == ['b.pt', 'c.pt', 'top.csv']     # no temporary left


# ---------------------------------------------------------------- one line, whatever the path holds; no leaked state

@pytest.mark.parametrize('tool', ['main', 'prepare_data', 'sweep', 'plot'])
def test_a_line_break_in_a_path_stays_inside_the_one_line(tool, tmp_path, capsys):
    # found by test_fuzz_robust (--config 'kø1\n'): the error line quoted the path with its line break: two lines
    bad = str(tmp_path / 'a\nb\u2028c.yaml')
    if tool == 'main':
        code = main.main(['--config', bad])
    elif tool == 'prepare_data':
        code = prepare_data.main(['csv', '--inter', bad, '--name', str(tmp_path / 'out')])
    elif tool == 'sweep':
        pytest.importorskip('optuna')
        import sweep
        code = sweep.cli(['--space', bad, '--study', 's', '--'])
    else:
        code = _plot().main([bad, '--out', str(tmp_path / 'c.png')])
    assert code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and 'a\\nb\\u2028c.yaml' in err, err


def test_an_in_process_run_gives_back_the_thread_count(trained, tmp_path):
    # found: after main.main(['--num_workers', '2']) in a process with one torch thread, the threads started
    # under main's flush-to-zero mode kept it: BaseModel._amax_with_sources then lost its subnormal ids (the
    # by-hand test in test_graph.py failed whenever hypothesis had drawn --num_workers 2 in test_fuzz_robust.py)
    from BaseModel import _amax_with_sources, csr_adjacency
    _, _, base = trained
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main.main(base + _outputs(tmp_path) + ['--checkpoint', str(tmp_path / 'c.pt'), '--num_workers', '2']) == 0
        assert torch.get_num_threads() == 1
        adj = csr_adjacency(torch.tensor([[0, 1], [1, 0]]), 2)
        assert _amax_with_sources(adj, torch.tensor([[0.], [0.]]), torch.tensor([False, False])) is not None
    finally:
        torch.set_num_threads(before)
