"""Property-based hostile input (hypothesis): malformed dataset folders and checkpoints
end in the one-line error of SPEC 1.4, never a traceback, never code execution."""
import json
import os
import pickle
import shutil
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import main
from conftest import write_split
from DataLoad import load_dataset
from errors import DataError

MARKER = os.path.join(tempfile.gettempdir(), 'slmrec_fuzz_pwned')
FILES = ['train.npy', 'val_full.npy', 'test_full.npy', 'user_item_dict.npy', 'feat_v.npy', 'meta.json']


class Exploit:
    def __reduce__(self):
        return (os.system, (f'touch {MARKER}',))


def _valid_folder(root):
    """3 users, 4 items, one dense modality."""
    folder = os.path.join(root, 'd')
    os.makedirs(folder)
    np.save(os.path.join(folder, 'train.npy'), np.array([[0, 3], [0, 4], [1, 5], [2, 6], [2, 3]]))
    write_split(os.path.join(folder, 'val_full.npy'), [[0, 5], [1, 3], [2]])
    write_split(os.path.join(folder, 'test_full.npy'), [[0, 6], [1, 4]])
    np.save(os.path.join(folder, 'user_item_dict.npy'),
            np.array({0: {3, 4}, 1: {5}, 2: {6, 3}}, dtype=object), allow_pickle=True)
    np.save(os.path.join(folder, 'feat_v.npy'), np.ones((4, 3), dtype=np.float32))
    with open(os.path.join(folder, 'meta.json'), 'w') as f:
        json.dump({'num_user': 3, 'num_item': 4, 'modalities': [{'name': 'v', 'file': 'feat_v.npy'}]}, f)
    return folder


ints = st.integers(min_value=-5, max_value=12)
mutation = st.one_of(
    st.tuples(st.just('truncate'), st.sampled_from(FILES), st.floats(0, 0.99)),
    st.tuples(st.just('garbage'), st.sampled_from(FILES), st.binary(max_size=64)),
    st.tuples(st.just('delete'), st.sampled_from(FILES)),
    st.tuples(st.just('train'), st.lists(st.lists(ints, min_size=0, max_size=3), max_size=6),
              st.sampled_from(['int64', 'float64', 'int8', 'bool', 'U3', 'object'])),
    st.tuples(st.just('split'), st.sampled_from(['val_full.npy', 'test_full.npy']),
              st.lists(st.lists(ints, max_size=4), max_size=4)),
    st.tuples(st.just('feature'), st.integers(0, 6), st.integers(0, 4),
              st.sampled_from([np.nan, np.inf, -np.inf, 1.0]), st.sampled_from(['float32', 'int32', 'U2', 'complex64'])),
    st.tuples(st.just('exploit'), st.sampled_from(['val_full.npy', 'test_full.npy', 'user_item_dict.npy', 'train.npy',
                                                   'feat_v.npy'])),
    st.tuples(st.just('meta'), st.sampled_from(['{', '[]', '{"num_user": -1}', '{"num_user": "x", "num_item": 4}',
                                                '{"modalities": [{"name": "v"}]}',
                                                '{"modalities": [{"name": "v", "file": "nope.npy"}]}',
                                                '{"modalities": [{"name": "v", "file": "feat_v.npy", "kind": "odd"}]}'])),
    st.tuples(st.just('uid'), st.dictionaries(ints, st.lists(ints, max_size=3), max_size=4)),
)


def _apply(folder, m):
    kind = m[0]
    if kind in ('truncate', 'delete') and not os.path.exists(os.path.join(folder, m[1])):
        return
    if kind == 'truncate':
        path = os.path.join(folder, m[1])
        with open(path, 'rb') as f:
            data = f.read()
        with open(path, 'wb') as f:
            f.write(data[:int(len(data) * m[2])])
    elif kind == 'garbage':
        with open(os.path.join(folder, m[1]), 'wb') as f:
            f.write(m[2])
    elif kind == 'delete':
        os.remove(os.path.join(folder, m[1]))
    elif kind == 'train':
        rows = m[1]
        width = {len(r) for r in rows}
        arr = np.array(rows, dtype=object if len(width) > 1 else None)
        if arr.dtype != object:
            arr = arr.astype(m[2])
        np.save(os.path.join(folder, 'train.npy'), arr, allow_pickle=True)
    elif kind == 'split':
        write_split(os.path.join(folder, m[1]), m[2])
    elif kind == 'feature':
        feat = np.ones((m[1], 3), dtype=np.float64)
        if m[1]:
            feat[m[2] % m[1], 0] = m[3]
        with np.errstate(invalid='ignore'):
            feat = feat.astype(m[4]) if m[4] != 'U2' else feat.astype(str)
        np.save(os.path.join(folder, 'feat_v.npy'), feat)
    elif kind == 'exploit':
        arr = np.empty(1, dtype=object)
        arr[0] = [0, 5, Exploit()]
        with open(os.path.join(folder, m[1]), 'wb') as f:
            np.save(f, arr, allow_pickle=True)
    elif kind == 'meta':
        with open(os.path.join(folder, 'meta.json'), 'w') as f:
            f.write(m[1])
    elif kind == 'uid':
        np.save(os.path.join(folder, 'user_item_dict.npy'), np.array(m[1], dtype=object), allow_pickle=True)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutation, min_size=1, max_size=3))
def test_malformed_dataset_folders(mutations):
    root = tempfile.mkdtemp()
    try:
        folder = _valid_folder(root)
        for m in mutations:
            _apply(folder, m)
        try:
            data = load_dataset(folder)
        except DataError as e:
            text = str(e)
            assert '\n' not in text
            assert e.path.startswith(folder), text            # names a file of the dataset
        else:
            assert data.num_user > 0 and len(data.train) > 0   # a benign mutation still loads consistently
            assert data.train[:, 1].max() < data.num_item
    finally:
        shutil.rmtree(root)
    assert not os.path.exists(MARKER)


def _checkpoint_variants(good_path):
    with open(good_path, 'rb') as f:
        good = f.read()
    yield 'truncated', good[:len(good) // 2]
    yield 'garbage', b'\x80\x04garbage'
    yield 'empty', b''
    yield 'exploit', pickle.dumps(Exploit())
    for obj in ({'model': 3}, [1, 2], {'state': {}}, {'x': torch.zeros(2)}, {'model': {'a': 'b'}}):
        path = good_path + '.tmp'
        torch.save(obj, path)
        with open(path, 'rb') as f:
            yield repr(obj)[:20], f.read()


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    import prepare_data
    root = tmp_path_factory.mktemp('ckpt')
    folder = prepare_data.synthetic('fz', like='none', num_user=30, num_item=40, inter_per_user=8, root=str(root))
    assert main.main(['--data_path', folder, '--num_epoch', '1', '--dim_latent', '8', '--no-progress',
                      '--save_file', str(root / 'r.jsonl'), '--checkpoint', str(root / 'last.pt'),
                      '--PATH_weight_save', str(root / 'best.pt')]) == 0
    return folder, root


@pytest.mark.parametrize('flag', ['--PATH_weight_load', '--resume'])
def test_malformed_checkpoints(trained, flag, capsys):
    folder, root = trained
    for name, blob in _checkpoint_variants(str(root / 'last.pt')):
        bad = root / 'bad.pt'
        bad.write_bytes(blob)
        target = ['--PATH_weight_load', str(bad)] if flag == '--PATH_weight_load' else ['--resume', '--checkpoint', str(bad)]
        code = main.main(['--data_path', folder, '--num_epoch', '1', '--dim_latent', '8', '--no-progress',
                          '--save_file', str(root / 'r.jsonl'), '--PATH_weight_save', str(root / 'b2.pt'), *target])
        err = capsys.readouterr().err.strip()
        assert code == 2, name
        assert err.startswith('error: ') and '\n' not in err and str(bad) in err, (name, err)
        assert not os.path.exists(MARKER)
