"""Issue 30, the outside audit's hostile inputs: each case found ending in a traceback, a crash, an allocation of
gigabytes from a few bytes, a silent merge or drop, or a misleading line (one regression test per case)."""
import json
import os
import pickle
import sys

import numpy as np
import pytest

import main
import prepare_data
from DataLoad import load_dataset
from errors import DataError
from conftest import ROOT, one_line_error


# ---------------------------------------------------------------- pickles: nothing built before it is checked

def _object_npy(path, payload, shape=(2,)):
    with open(path, 'wb') as f:
        np.lib.format.write_array_header_1_0(f, {'descr': '|O', 'fortran_order': False, 'shape': shape})
        f.write(payload)


class _Reduce:
    """Pickles as ``func(*args)`` followed by ``BUILD state``: a hand-made stream of admitted names."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def _array_state(shape, raw, dtype=np.dtype(object)):
    return _Reduce(np._core.multiarray._reconstruct, (np.ndarray, (0,), b'b'), (1, shape, dtype, False, raw))


def _load_in_a_child(folder):
    """``load_dataset(folder)`` in a process of its own (a regression here is a segmentation fault): its error."""
    import subprocess
    code = ('import sys; sys.path.insert(0, sys.argv[1]); from DataLoad import load_dataset; from errors import DataError\n'
            'try:\n    load_dataset(sys.argv[2])\nexcept DataError as e:\n    print(e)')
    child = subprocess.run([sys.executable, '-c', code, ROOT, str(folder)], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    return child.stdout.strip()


def test_object_array_whose_list_is_shorter_than_its_shape(hand_folder):
    # found: numpy's __setstate__ allocates the named shape, then reads past a shorter list: shape (10**8,) with an
    # empty list was a segmentation fault (exit 139, no line) from a 300-byte val_full.npy
    _object_npy(hand_folder / 'val_full.npy', pickle.dumps(_array_state((3,), [[0, 4], [1, 2]]), protocol=3))
    assert 'val_full.npy: unsafe or corrupt pickle (refused an array whose data do not fill its shape (3,))' \
        in _load_in_a_child(hand_folder)


def test_object_array_whose_list_is_longer_than_its_shape(hand_folder):
    # found: the rows beyond the shape were dropped silently
    _object_npy(hand_folder / 'test_full.npy', pickle.dumps(_array_state((1,), [[0, 4], [1, 2]]), protocol=3))
    with pytest.raises(DataError, match=r'test_full.npy: unsafe or corrupt pickle \(refused an array whose data do '
                                        r'not fill its shape'):
        load_dataset(str(hand_folder))


def test_dtype_whose_flags_hide_object_fields(hand_folder):
    # found: dtype('V8') given the state (3, '|', None, ('a',), {'a': (dtype('O'), 0)}, 8, 1, 0) holds an object
    # field while saying it holds none: an array of its bytes is an array of pointers the file chooses
    hidden = _Reduce(np.dtype, ('V8', False, True), (3, '|', None, ('a',), {'a': (np.dtype('O'), 0)}, 8, 1, 0))
    _object_npy(hand_folder / 'val_full.npy', pickle.dumps(_array_state((1,), b'A' * 8, hidden), protocol=3))
    with pytest.raises(DataError, match=r'val_full.npy: unsafe or corrupt pickle \(refused the dtype'):
        load_dataset(str(hand_folder))


def test_a_sparse_class_called_with_a_shape_is_refused_before_it_allocates(tmp_path):
    # found: a 43-byte valMat.pkl calling csr_matrix((2**31 - 1, 200)) through the admitted class allocated 8 GiB,
    # then 16 GiB, before any check (here 10**6 rows: 12 MB if it ever regresses)
    from safe_read import load_sparse_pickle
    path = tmp_path / 'valMat.pkl'
    path.write_bytes(b'\x80\x02cscipy.sparse._csr\ncsr_matrix\nJ' + (10 ** 6).to_bytes(4, 'little') + b'K\xc8\x86\x85R.')
    with pytest.raises(DataError, match=r'valMat.pkl: unsafe or corrupt pickle \(refused a sparse matrix constructed '
                                        r'from arguments'):
        load_sparse_pickle(str(path))


def test_genuine_sparse_pickles_still_load(tmp_path):
    import scipy.sparse as sp
    from safe_read import load_sparse_pickle
    matrix = sp.random(7, 5, density=0.4, format='csr', random_state=0)
    for protocol in (2, 4, 5):
        for kind in ('csr', 'coo'):
            path = tmp_path / f'{kind}{protocol}.pkl'
            path.write_bytes(pickle.dumps(matrix.asformat(kind), protocol=protocol))
            rows, cols, values, shape = load_sparse_pickle(str(path))
            assert shape == (7, 5)
            assert np.array_equal(sp.coo_matrix((values, (rows, cols)), shape=shape).toarray(), matrix.toarray())


# ---------------------------------------------------------------- JSON: one spelling per key, sizes backed by data

def _json_source(folder, train='{"0": [0, 1], "1": [1, 2], "2": [0, 2]}', val='{"0": [2], "1": [0]}',
                 test='{"0": [2], "2": [1]}'):
    folder.mkdir()
    for name, text in (('train.json', train), ('val.json', val), ('test.json', test)):
        (folder / name).write_text(text)
    return folder


@pytest.mark.parametrize('train, problem', [
    ('{"0": [0, 1], "\u00b2": [1, 2], "2": [0, 2]}', "user id '\u00b2' is not a non-negative integer"),    # a traceback
    ('{"0": [0, 1], "1": [1, 2], "01": [0, 2]}', "user id '01' is not a non-negative integer"),    # merged with '1'
    ('{"0": [0, 1], "1": [1, 2], "1": [0, 2]}', "not valid JSON (ValueError: the key '1' appears twice"),   # merged
    ('{"0": [0, 1], "1": [1, 2], "\uff12": [0, 2]}', "user id '\uff12' is not a non-negative integer"),
    ('{"0": [0, 1], "1": [1, 2], "2147483646": [0, 2]}', '2147483647 users declared, but only 4 of them'),
], ids=['superscript two', 'leading zero', 'duplicate key', 'fullwidth two', 'huge id'])
def test_json_user_keys_are_plain_digits_given_once(train, problem, tmp_path, capsys):
    # found: '²' passed str.isdigit and int() raised (a traceback); '01' and a repeated key merged lists silently;
    # a user id 2147483646 built per-user lists of 2**31 entries
    src = _json_source(tmp_path / 'src', train=train)
    assert prepare_data.main(['json', '--folder', str(src), '--name', str(tmp_path / 'out')]) == 2
    one_line_error(capsys, problem)
    assert sorted(os.listdir(tmp_path)) == ['src']


def test_meta_json_with_a_key_twice_is_refused(hand_folder):
    (hand_folder / 'meta.json').write_text('{"modalities": [], "modalities": [{"name": "v", "file": "feat_v.npy"}]}')
    with pytest.raises(DataError, match="meta.json: not valid JSON .*the key 'modalities' appears twice"):
        load_dataset(str(hand_folder))


def test_hkuds_shape_not_backed_by_the_data_is_refused_before_anything_per_item(tmp_path, capsys):
    # found: a 300-byte COO pickle of shape (120, 50_000_000) made the import build 50 million item ids
    import scipy.sparse as sp
    src = tmp_path / 'src'
    src.mkdir()
    for name, rows in (('trnMat.pkl', [0, 1, 2, 0]), ('tstMat.pkl', [0, 1])):
        m = sp.coo_matrix((np.ones(len(rows)), (rows, list(range(len(rows))))), shape=(120, 50_000_000))
        (src / name).write_bytes(pickle.dumps(m, protocol=4))
    assert prepare_data.main(['hkuds', '--folder', str(src), '--name', str(tmp_path / 'out')]) == 2
    one_line_error(capsys, 'trnMat.pkl (shape (120, 50000000)): 120 users declared, but only 3 of them')
    assert sorted(os.listdir(tmp_path)) == ['src']


@pytest.mark.parametrize('change, problem', [
    (dict(num_user=5), 'meta.json: 5 users declared, but only 2 of them have an interaction'),
    (dict(num_item=1000, modalities=[]), 'meta.json: 1000 items declared, but only 3 of them'),
])
def test_meta_sizes_not_backed_by_the_data(change, problem, hand_folder):
    meta = {'num_user': 2, 'num_item': 3, 'modalities': [{'name': 'v', 'file': 'feat_v.npy'}], **change}
    (hand_folder / 'meta.json').write_text(json.dumps(meta))
    with pytest.raises(DataError, match=problem):
        load_dataset(str(hand_folder))


def test_a_train_npy_user_id_that_is_huge_is_refused_before_anything_per_user(hand_folder):
    # without meta.json sizes the user count is the largest id + 1: one row of train.npy declared 2**31 users
    np.save(hand_folder / 'train.npy', np.array([[0, 2], [0, 3], [1, 3], [2 ** 31 - 2, 4]]))
    with pytest.raises(DataError, match='train.npy: 2147483647 users declared, but only 3 of them'):
        load_dataset(str(hand_folder))


def test_hold_out_that_holds_out_nothing_names_val_fraction(tmp_path, capsys):
    # found: '--val_fraction 0.01' on users with a few items each said 'tstMat.pkl ... no val pair is left'
    import scipy.sparse as sp
    src = tmp_path / 'src'
    src.mkdir()
    for name, rows in (('trnMat.pkl', [0, 0, 1, 1, 2, 2]), ('tstMat.pkl', [0, 1, 2])):
        m = sp.coo_matrix((np.ones(len(rows)), (rows, [n % 4 for n in range(len(rows))])), shape=(3, 4))
        (src / name).write_bytes(pickle.dumps(m, protocol=4))
    assert prepare_data.main(['hkuds', '--folder', str(src), '--name', str(tmp_path / 'out'),
                              '--val_fraction', '0.2']) == 2
    one_line_error(capsys, '--val_fraction: 0.2 of each user\'s training items holds out none', 'n = 2',
                   'add valMat.pkl')


@pytest.mark.parametrize('tool', ['config', 'space'])
def test_yaml_key_given_twice_is_refused(tool, tmp_path, capsys, monkeypatch):
    # the JSON case's twin: YAML keeps the last of two keys silently ('l_r: 0.1' then 'l_r: 0.001')
    monkeypatch.chdir(tmp_path)                  # (accepted, the run would fail fast on the missing dataset)
    (tmp_path / 'f.yaml').write_text('l_r: [0.1]\nseed: [1]\nl_r: [0.001]\n' if tool == 'space'
                                     else 'l_r: 0.1\nseed: 1\nl_r: 0.001\n')
    if tool == 'config':
        assert main.main(['--config', str(tmp_path / 'f.yaml'), '--data_path', str(tmp_path / 'none')]) == 2
    else:
        pytest.importorskip('optuna')
        import sweep
        assert sweep.cli(['--space', str(tmp_path / 'f.yaml'), '--study', 's', '--', '--data_path',
                          str(tmp_path / 'none')]) == 2
    one_line_error(capsys, "f.yaml: not valid YAML (the key 'l_r' appears twice")


@pytest.mark.parametrize('user', ['07', '\u0667', '+7'])
def test_mmrec_ids_are_plain_digits(user, tmp_path, capsys):
    # found with the JSON case: int() reads '07', '+7' and the Arabic-Indic digit '\u0667' as user 7 (merged)
    src = tmp_path / 'baby'
    src.mkdir()
    lines = ['userID\titemID\tx_label'] + [f'{u}\t{(u + i) % 8}\t{0 if i < 3 else (1 if i == 3 else 2)}'
                                           for u in range(8) for i in range(5)]
    (src / 'baby.inter').write_text('\n'.join(lines + [f'{user}\t2\t0']) + '\n')
    assert prepare_data.main(['mmrec', '--folder', str(src), '--name', str(tmp_path / 'out')]) == 2
    one_line_error(capsys, 'baby.inter: line 42: userID, itemID and x_label must be integers written in the digits 0-9')


# ---------------------------------------------------------------- raw content: every line names an item

def _fake_embed(texts):
    return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)


@pytest.mark.parametrize('lines, problem', [
    ('0\ta\n1\tb\n2\tc\n7\tnot an item\n', "items.tsv: line 4: item '7' is not an item of the source (1 of 4"),
    ('1\ta\n2\tb\n3\tc\n', "items.tsv: line 3: item '3' is not an item of the source (1 of 3 named so); items are "
                           "numbered 0..2 here"),
], ids=['not an item', 'one-based'])
def test_text_lines_that_name_no_item_are_refused(lines, problem, tmp_path, capsys):
    # found: a line for an id the dataset does not have was dropped silently, and a file counting from 1 put
    # every text on the next item (the last one's dropped)
    src = _json_source(tmp_path / 'src')
    (tmp_path / 'items.tsv').write_text(lines)
    from features import Content
    with pytest.raises(DataError, match=problem.replace('(', r'\(').replace(')', r'\)')):
        prepare_data.import_json('js', str(src), root=str(tmp_path / 'Data'),
                                 content=Content(text_file=str(tmp_path / 'items.tsv'), embed=_fake_embed))
    assert not os.path.exists(tmp_path / 'Data' / 'js')


def test_text_file_without_item_zero_warns_once(tmp_path, capsys):
    src = _json_source(tmp_path / 'src')
    (tmp_path / 'items.tsv').write_text('1\tb\n2\tc\n')
    from features import Content
    folder = prepare_data.import_json('js', str(src), root=str(tmp_path / 'Data'),
                                      content=Content(text_file=str(tmp_path / 'items.tsv'), embed=_fake_embed))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'items.tsv: no line or image names item 0' in err[0]
    assert load_dataset(folder).features['t'][:, 0].tolist() == [0, 1, 1]


def test_csv_text_lines_follow_the_source_ids_and_refuse_strangers(tmp_path):
    from features import Content
    rows = ['user,item,time'] + [f'u{u},i{(u + k) % 12},{k}' for u in range(4) for k in range(10)]
    (tmp_path / 'r.csv').write_text('\n'.join(rows) + '\n')
    (tmp_path / 'items.tsv').write_text('i2\tfour\ni5\ta longer text\nj9\tno such item\n')
    content = Content(text_file=str(tmp_path / 'items.tsv'), embed=_fake_embed)
    with pytest.raises(DataError, match="items.tsv: line 3: item 'j9' is not an item of the source"):
        prepare_data.import_csv('c', str(tmp_path / 'r.csv'), {}, root=str(tmp_path / 'Data'), content=content)


# ---------------------------------------------------------------- prepare_data: where it writes, what it replaces

@pytest.mark.parametrize('where, problem', [('file', 'is not a folder'), ('under a file', 'is not a folder'),
                                            ('proc', 'cannot write the dataset there'),
                                            ('long', 'cannot write the dataset there (File name too long)')])
def test_name_whose_parent_cannot_take_it_is_one_line_before_reading(where, problem, tmp_path, capsys):
    # found: a --name under a file, under /proc or of 300 characters was an OSError traceback (after the source
    # had been read)
    (tmp_path / 'f').write_text('x')
    name = {'file': tmp_path / 'f' / 'x', 'under a file': tmp_path / 'f' / 'a' / 'b', 'proc': '/proc/slmrec-x/y',
            'long': tmp_path / ('n' * 300)}[where]
    assert prepare_data.main(['synthetic', '--num_user', '20', '--num_item', '30', '--name', str(name)]) == 2
    one_line_error(capsys, problem)
    assert os.listdir(tmp_path) == ['f']


@pytest.mark.parametrize('change', ['another folder', 'other options', 'missing folder'])
def test_import_over_a_dataset_from_another_source_needs_force(change, tmp_path, capsys):
    # found: the same --name with another --folder printed the old dataset's card and "dataset ready"
    first = _json_source(tmp_path / 'a')
    other = _json_source(tmp_path / 'b', train='{"0": [0, 1], "1": [1, 2], "2": [0, 1, 2]}')
    name = str(tmp_path / 'Data' / 'js')
    assert prepare_data.main(['json', '--folder', str(first), '--name', name]) == 0
    assert prepare_data.main(['json', '--folder', str(first), '--name', name]) == 0      # the same command: ready
    assert capsys.readouterr().out.endswith(f'dataset ready: {name}\n')
    argv = {'another folder': ['json', '--folder', str(other)], 'missing folder': ['json', '--folder', str(tmp_path / 'c')],
            'other options': ['hkuds', '--folder', str(first)]}[change]
    assert prepare_data.main(argv + ['--name', name]) == 2
    err = one_line_error(capsys)
    assert 'js: holds a dataset prepared from another source or with other options' in err and '--force' in err
    assert len(load_dataset(name).train) == 6
    if change == 'missing folder':                      # the same command, its source since removed
        import shutil
        shutil.rmtree(first)
        assert prepare_data.main(['json', '--folder', str(first), '--name', name]) == 2
        one_line_error(capsys, 'a: not found')
    if change == 'another folder':
        assert prepare_data.main(argv + ['--name', name, '--force']) == 0
        assert len(load_dataset(name).train) == 7


# ---------------------------------------------------------------- flags the chosen model does not read

@pytest.mark.parametrize('flags, flag, model, reader', [
    (['--knn_k', '5'], 'knn_k', 'SLMRec', 'FREEDOM'),
    (['--model_name', 'LightGCN', '--dropout_rate', '0.2'], 'dropout_rate', 'LightGCN', 'BM3'),
    (['--model_name', 'BPR', '--cl_weight', '0.1'], 'cl_weight', 'BPR', 'LGMRec'),
    (['--model_name', 'MMGCN', '--ssl_task', 'FAC'], 'ssl_task', 'MMGCN', 'SLMRec'),
    (['--model_name', 'SLMRec', '--has_id', 'True'], 'has_id', 'SLMRec', 'MMGCN'),
    (['--model_name', 'BPR', '--num_layer', '2'], 'num_layer', 'BPR', 'LightGCN'),          # MF has no graph
    (['--model_name', 'VBPR', '--num_layer', '2'], 'num_layer', 'VBPR', 'SLMRec'),
    (['--model_name', 'LightGCN', '--modalities', 't'], 'modalities', 'LightGCN', 'VBPR'),  # ID only
    (['--model_name', 'BPR', '--has_v', 'False'], 'has_v', 'BPR', 'MMGCN'),
])
def test_a_flag_the_model_does_not_read_is_refused(flags, flag, model, reader, tmp_path, capsys, monkeypatch):
    # found: '--knn_k 5' on SLMRec was accepted, did nothing, and gave the run another name (another checkpoint);
    # so did --num_layer on MF-BPR and VBPR, and --modalities on the ID-only models
    import registry
    monkeypatch.chdir(tmp_path)
    assert main.main(flags + ['--data_path', str(tmp_path / 'none')]) == 2
    readers = registry.flag_readers()[flag]
    assert reader in readers and model not in readers
    one_line_error(capsys, refusal(flag, model), 'would change nothing but the run name')


def refusal(flag, model):
    """The start of config.check_read's line for ``--flag`` given to ``model``, its readers from the registry (a new
    model that reads the flag changes the line, not the test)."""
    import registry
    readers = registry.flag_readers()[flag]
    named = readers[0] if len(readers) == 1 else f'{", ".join(readers[:-1])} and {readers[-1]}'
    return f'--{flag}: read by {named} only, not {model}'


def test_a_config_key_the_model_does_not_read_is_refused_and_readers_accept_it(tmp_path):
    import config
    from errors import InputError
    (tmp_path / 'c.yaml').write_text('knn_k: 5\n')
    with pytest.raises(InputError, match='--knn_k: read by FREEDOM, LATTICE, MGCN.* only, not SLMRec'):
        config.parse_args(['--config', str(tmp_path / 'c.yaml')])
    for name in ('FREEDOM', 'LATTICE', 'MGCN'):
        assert config.parse_args(['--config', str(tmp_path / 'c.yaml'), '--model_name', name]).knn_k == 5
    assert config.parse_args(['--model_name', 'SLMRec', '--concat', 'True']).concat is True    # its mmgcn backbone


def test_usage_table_names_each_flags_readers():
    # found: docs/usage.md said --knn_k was FREEDOM's and --dropout_rate 'unused by the others' (BM3 and LGMRec
    # read it): every row of a flag that not every model reads must name exactly the registry's readers
    import re
    import registry
    with open(os.path.join(ROOT, 'docs', 'usage.md'), encoding='utf-8') as f:
        rows = dict(re.findall(r'^\| `--(\w+)` \| [^|]* \| (.*) \|$', f.read(), re.M))
    for flag, readers in registry.flag_readers().items():
        assert flag in rows, f'docs/usage.md has no row for --{flag}'
        named = [m for m in registry.entries() if re.search(rf'(?<!\w){re.escape(m)}(?!\w)', rows[flag])]
        if 'every model but' in rows[flag]:         # a flag nearly every model reads names the others
            named = [m for m in registry.entries() if m not in named]
        assert sorted(named) == sorted(readers), (flag, named, readers)


# ---------------------------------------------------------------- every run's files its own

@pytest.fixture(scope='module')
def small(tmp_path_factory):
    """A tiny dataset and the flags of a cheap run (no outputs)."""
    folder = prepare_data.synthetic('small', like='none', num_user=24, num_item=30, inter_per_user=8, seed=2,
                                    root=str(tmp_path_factory.mktemp('hostile')))
    return folder, ['--data_path', folder, '--num_epoch', '1', '--dim_latent', '8', '--batch_size', '64',
                    '--num_layer', '1', '--no-progress']


def _outputs(folder, tag='x'):
    return ['--save_file', str(folder / f'{tag}.jsonl'), '--checkpoint', str(folder / f'{tag}.last.pt'),
            '--PATH_weight_save', str(folder / f'{tag}.best.pt')]


@pytest.mark.parametrize('flag, what', [('--PATH_weight_save', 'best-model file'), ('--export_topk', 'top-K export')])
def test_two_live_runs_never_share_a_best_model_or_an_export(flag, what, small, tmp_path, capsys):
    # found: only the checkpoint was locked; two live runs with one --PATH_weight_save replaced each other's best model
    import fcntl
    _, base = small
    shared = tmp_path / 'shared.out'
    with open(f'{shared}.lock', 'a+') as holder:         # what a live run holding the file keeps locked
        holder.write('4242\n')
        holder.flush()
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main.main(base + _outputs(tmp_path) + [flag, str(shared)]) == 2
    one_line_error(capsys, f'shared.out: another run (pid 4242) is using this {what}; wait for it to end, or give '
                           f'this run another {flag}')
    assert sorted(os.listdir(tmp_path)) == ['shared.out.lock']


def test_runs_sharing_a_results_file_append_one_at_a_time(tmp_path):
    import fcntl
    import threading
    from safe_write import append_results_line
    path = tmp_path / 'r.jsonl'
    path.write_text('{"run": "a"}')                       # a line left unterminated by an older failure
    with open(path, 'a') as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)                # another run in the middle of its append
        writer = threading.Thread(target=append_results_line, args=(str(path), {'run': 'b'}))
        writer.start()
        writer.join(0.5)
        assert writer.is_alive()                          # it waits for the lock
        holder.write('\n{"run": "c"}\n')
        holder.flush()
    writer.join(10)
    assert path.read_text().splitlines() == ['{"run": "a"}', '{"run": "c"}', '{"run": "b"}']


def test_training_may_not_overwrite_the_weights_it_loads(small, tmp_path, capsys):
    # found: '--PATH_weight_load runs/X.best.pt' under the same run name replaced the loaded file at the first
    # evaluation (with a worse model, as a new run's best starts from nothing)
    _, base = small
    assert main.main(base + _outputs(tmp_path)) == 0
    before = (tmp_path / 'x.best.pt').read_bytes()
    for target in ('x.best.pt', 'x.last.pt'):
        assert main.main(base + _outputs(tmp_path) + ['--PATH_weight_load', str(tmp_path / target)]) == 2
        one_line_error(capsys, 'would overwrite the --PATH_weight_load file; give it its own path')
    assert (tmp_path / 'x.best.pt').read_bytes() == before
    evaluate = base + ['--num_epoch', '0']               # writes neither: evaluating the file is fine
    assert main.main(evaluate + _outputs(tmp_path) + ['--PATH_weight_load', str(tmp_path / 'x.best.pt')]) == 0
    assert (tmp_path / 'x.best.pt').read_bytes() == before


# ---------------------------------------------------------------- lines that say what happened

@pytest.mark.parametrize('resume', [False, True])
def test_sigterm_before_any_checkpoint_does_not_say_resume(resume, small, tmp_path, capsys, monkeypatch):
    # found: SIGTERM while the data loaded printed 'terminated: resume with --resume'; --resume then said
    # 'checkpoint not found'
    import startup
    _, base = small
    if resume:
        assert main.main(base + _outputs(tmp_path)) == 0
        capsys.readouterr()
    monkeypatch.setitem(startup._STOP, 'requested', True)            # a SIGTERM before training began
    flags = base + _outputs(tmp_path) + (['--resume', '--num_epoch', '2'] if resume else [])
    assert main.main(flags) == 143
    err = capsys.readouterr().err.strip()
    assert err == ('terminated: resume with --resume' if resume else 'terminated before the first epoch ended: no '
                   'checkpoint was written; run the same command again (without --resume)')


def test_a_dataset_without_features_is_not_a_modalities_problem(small, tmp_path, capsys):
    # found: 'error: VBPR needs at least one modality (see --modalities)' for a dataset that has none at all
    folder, base = small
    data = tmp_path / 'ids'
    import shutil
    shutil.copytree(folder, data)
    meta = json.loads((data / 'meta.json').read_text())
    meta['modalities'] = []
    (data / 'meta.json').write_text(json.dumps(meta))
    at = base.index('--num_layer')
    base = base[:at] + base[at + 2:]                                  # VBPR reads no --num_layer
    args = [x if x != folder else str(data) for x in base] + _outputs(tmp_path)
    assert main.main(args + ['--model_name', 'VBPR']) == 2
    err = one_line_error(capsys, 'ids: VBPR needs item features, and this dataset has none (no modality)')
    assert '--modalities' not in err
    assert main.main(args + ['--model_name', 'SLMRec']) == 2          # FAC's own words, with the dataset's lack
    one_line_error(capsys, 'ids: this dataset has no item features (no modality), and --ssl_task FAC contrasts')
    assert main.main(base + _outputs(tmp_path) + ['--model_name', 'VBPR', '--modalities', 'none']) == 2
    one_line_error(capsys, 'VBPR needs at least one modality (see --modalities)')


def test_a_refused_run_leaves_no_folder_it_made_and_a_run_keeps_its_own(small, tmp_path, capsys, monkeypatch):
    # found: a missing dataset was one line, but left an empty runs/ (made to prove the outputs writable)
    folder, base = small
    monkeypatch.chdir(tmp_path)
    nested = ['--checkpoint', 'a/b/c.last.pt', '--save_file', 'r/x.jsonl']
    assert main.main(['--data_path', str(tmp_path / 'nosuch'), '--no-progress'] + nested) == 2
    one_line_error(capsys, 'nosuch: dataset folder not found')
    assert os.listdir(tmp_path) == []
    assert main.main(base + nested) == 0                                  # the same outputs, written
    assert sorted(os.listdir(tmp_path)) == ['a', 'r', 'runs']
    assert os.listdir(tmp_path / 'a' / 'b') == ['c.last.pt'] and os.listdir(tmp_path / 'r') == ['x.jsonl']


@pytest.mark.parametrize('argv, problem', [
    (['export', '', '--to', 'json', '--folder', 'out'], "DATASET: '' is not a plain name"),
    (['info', ''], "DATASET: '' is not a plain name"),
    (['export', 'small', '--to', 'json', '--folder', ''], '--folder: an empty path'),
])
def test_empty_dataset_names_and_folders_name_their_argument(argv, problem, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert prepare_data.main(argv) == 2
    one_line_error(capsys, problem)
    assert os.listdir(tmp_path) == []


def test_an_empty_config_path_is_named(capsys):
    assert main.main(['--config', '']) == 2
    one_line_error(capsys, '--config: an empty path')


# ---------------------------------------------------------------- sweep.py

@pytest.mark.parametrize('study', ['../evil', 'a/b', '.hidden', 'x' * 101])
def test_sweep_study_name_must_be_plain(study, tmp_path, capsys, monkeypatch):
    # found: '--study ../evil' wrote runs/../evil's database and trial folders outside runs/
    pytest.importorskip('optuna')
    import sweep
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'space.yaml').write_text('l_r: [0.01]\n')
    assert sweep.cli(['--space', 'space.yaml', '--study', study, '--', '--data_path', 'x']) == 2
    one_line_error(capsys, '--study: ', 'is not a plain name')
    assert os.listdir(tmp_path) == ['space.yaml']


@pytest.mark.parametrize('space, problem', [
    ('num_layer: [1, 40]\n', 'space.yaml: num_layer 40: main.py refuses it (--num_layer: must be in [1, 32], got 40)'),
    ('dropout_rate: {low: 0.1, high: 1.0}\n', 'dropout_rate 1.0: main.py refuses it (--dropout_rate: must be in [0, 1)'),
    ('knn_k: [5, 10]\n', 'knn_k 5: main.py refuses it (' + refusal('knn_k', 'SLMRec')),
])
def test_sweep_space_values_main_refuses_are_refused_before_any_trial(space, problem, tmp_path, capsys, monkeypatch):
    # found: a space admitting values main.py refuses ran them: a failed trial (and optuna's traceback) each, exit 0
    pytest.importorskip('optuna')
    import sweep
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'space.yaml').write_text(space)
    assert sweep.cli(['--space', 'space.yaml', '--study', 's', '--', '--data_path', 'x']) == 2
    one_line_error(capsys, problem)
    assert os.listdir(tmp_path) == ['space.yaml']


def test_sweep_whose_every_trial_is_refused_is_one_line_and_exit_2(small, tmp_path):
    # found: each failed trial printed optuna's 12-line traceback of TrialFailed; the sweep ended as a success
    pytest.importorskip('optuna')
    import subprocess
    folder, _ = small
    (tmp_path / 'space.yaml').write_text('modalities: [zz]\n')               # unknown to the data: not checkable
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'sweep.py'), '--space', 'space.yaml', '--study', 's',
                           '--heartbeat', '1',
                           '--', '--data_path', folder, '--num_epoch', '1'], cwd=tmp_path, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith('error: no trial completed: main.py refused every trial') and \
        len(done.stderr.splitlines()) == 1, done.stderr
    assert "failed (bad input: error: --modalities: unknown modality 'zz'" in done.stdout


@pytest.mark.slow
def test_sigterm_to_a_sweep_stops_its_trial_at_a_safe_point_with_one_line(small, tmp_path):
    # found: SIGTERM killed sweep.py at once (exit 143 by the signal, no line) and its trial with SIGKILL
    pytest.importorskip('optuna')
    import signal
    import subprocess
    import time
    folder, _ = small
    (tmp_path / 'space.yaml').write_text('l_r: [0.01, 0.001]\n')
    job = subprocess.Popen([sys.executable, os.path.join(ROOT, 'sweep.py'), '--space', 'space.yaml', '--study', 't',
                            '--heartbeat', '1', '--', '--data_path', folder, '--num_epoch', '40', '--patience', '100', '--dim_latent', '8',
                            '--batch_size', '64', '--num_layer', '1'], cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    trial = tmp_path / 'runs' / 'sweep-t' / 'trial-0'
    for _ in range(1200):                       # once trial 0 has checkpointed an epoch
        if (trial / 'last.pt').exists():
            break
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 143 and err == ('terminated: run the same command again to continue (an interrupted '
                                             'trial resumes from its checkpoint)\n'), err
    assert (trial / 'log.txt').read_text().rstrip().endswith('terminated: resume with --resume')   # its own stop


# ---------------------------------------------------------------- torchrun: launch.py's exit statuses and lines

LAUNCH = [sys.executable, os.path.join(ROOT, 'launch.py'), '--standalone', '--nproc_per_node', '2']


@pytest.mark.parametrize('flags, problem', [(['--l_r', '-1'], '--l_r: must be a positive finite number'),
                                            (['--knn_k', '5'], refusal('knn_k', 'SLMRec'))])
def test_a_bad_argument_under_the_launcher_is_one_line_and_exit_2(flags, problem, tmp_path, capsys, monkeypatch):
    # found: under torchrun, rank 0's line was followed by torchrun's 40-line ChildFailedError report, exit 1;
    # launch.py checks main.py's flags before any rank starts
    import launch
    monkeypatch.chdir(tmp_path)
    assert launch.main(LAUNCH[2:] + [os.path.join(ROOT, 'main.py'), '--data_path', str(tmp_path), *flags]) == 2
    one_line_error(capsys, problem)
    assert os.listdir(tmp_path) == []
    with pytest.raises(SystemExit) as stop:                       # torchrun's own options: one line too
        launch.main(['--nproc_per_node', '2', '--bogus', 'main.py'])
    assert stop.value.code == 2
    one_line_error(capsys, 'unrecognized arguments: --bogus (see python launch.py --help)')


@pytest.mark.slow
def test_sigterm_to_the_launcher_ends_143_with_one_line_and_an_intact_checkpoint(small, tmp_path):
    # found: kill -TERM to torchrun printed a SignalException traceback and exited 1
    import signal
    import subprocess
    import torch
    folder, _ = small
    job = subprocess.Popen(LAUNCH + [os.path.join(ROOT, 'main.py'), '--data_path', folder, '--num_epoch', '40',
                                     '--patience', '100', '--dim_latent', '8', '--batch_size', '10', '--no-progress',
                                     *_outputs(tmp_path)],
                           env=dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1'), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        for line in job.stdout:
            if line.startswith('epoch    1  Test'):
                break
        job.send_signal(signal.SIGTERM)
        _, err = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode == 143 and err == 'terminated: resume with --resume\n', err
    assert torch.load(tmp_path / 'x.last.pt', weights_only=True)['state']['epoch'] >= 1
    assert not (tmp_path / 'x.jsonl').exists()


# ---------------------------------------------------------------- the SLURM scripts (srun and scontrol faked)

def _slurm(tmp_path, script, *args, **env):
    """Run ``scripts/<script>`` as SLURM would, in a submit folder that links the package; the fake srun writes
    the command it was given to srun.txt.  Returns (exit status, stderr, srun's arguments or None)."""
    import subprocess
    submit, fake = tmp_path / 'submit', tmp_path / 'bin'
    if not submit.exists():
        submit.mkdir()
        fake.mkdir()
        for name in os.listdir(ROOT):
            if name.endswith('.py'):
                os.symlink(os.path.join(ROOT, name), submit / name)
        (fake / 'srun').write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$SLURM_SUBMIT_DIR/srun.txt"\n')
        (fake / 'scontrol').write_text('#!/bin/sh\necho node1\n')
        for tool in ('srun', 'scontrol'):
            os.chmod(fake / tool, 0o755)
    (submit / 'srun.txt').unlink(missing_ok=True)
    done = subprocess.run(['bash', os.path.join(ROOT, 'scripts', script), *args], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PATH=f'{fake}:{os.environ["PATH"]}',
                                                SLURM_SUBMIT_DIR=str(submit), SLURM_JOB_NODELIST='node1',
                                                SLURM_NNODES='1', SLURM_JOB_ID='77', SLURM_JOB_NAME='slmrec', **env))
    called = (submit / 'srun.txt').read_text().splitlines() if (submit / 'srun.txt').exists() else None
    return done.returncode, done.stderr, called


@pytest.mark.slow
def test_slurm_torchrun_names_each_run_by_its_flags_and_resumes_only_its_own(tmp_path):
    # found: every job's run was named after the job name: a second job with another seed resumed the first one's
    # checkpoint (and the rendezvous port was 29500 for every job on a node)
    import config
    flags = ['--data_path', 'ml100k', '--model_name', 'LightGCN']
    names = [config.run_name(config.parse_args(flags + ['--seed', seed])) for seed in ('1', '2')]
    assert names[0] != names[1]                      # a job with another seed has files of its own
    code, _, first = _slurm(tmp_path, 'slurm_torchrun.sbatch', *flags, '--seed', '1')
    assert code == 0 and f'runs/{names[0]}.last.pt' in first and '--resume' not in first
    assert first[1:3] == ['python', 'launch.py'] and first[first.index('--rdzv_endpoint') + 1] != 'node1:29500'
    (tmp_path / 'submit' / 'runs').mkdir()
    (tmp_path / 'submit' / 'runs' / f'{names[1]}.last.pt').write_bytes(b'')     # the seed-2 job was preempted
    code, _, again = _slurm(tmp_path, 'slurm_torchrun.sbatch', *flags, '--seed', '2')     # ... and requeued
    assert code == 0 and f'runs/{names[1]}.last.pt' in again and '--resume' in again


def test_the_run_name_the_slurm_script_asks_for_or_one_line(capsys):
    import config
    assert config.print_run_name(['--data_path', 'ml100k', '--seed', '3']) == 0
    assert capsys.readouterr().out == 'ml100k-SLMRec-FAC-seed3\n'
    assert config.print_run_name(['--model_name', 'LightGCN', '--knn_k', '5']) == 2     # before srun starts anything
    one_line_error(capsys, refusal('knn_k', 'LightGCN'))


def test_slurm_sweep_passes_empty_flag_lists_and_forwards_its_arguments(tmp_path):
    code, err, called = _slurm(tmp_path, 'slurm_sweep.sbatch', '--space', 's.yaml', '--study', 't', STORAGE='sqlite:///x')
    assert code == 0, err
    assert called == ['--kill-on-bad-exit=0', 'python', 'sweep.py', '--space', 's.yaml', '--study', 't', '--storage', 'sqlite:///x',
                      '--n_jobs', '1', '--']
    with open(os.path.join(ROOT, 'scripts', 'slurm_sweep.sbatch')) as f:
        assert '#SBATCH --signal=B:USR1@300' in f.read()
