"""Issue 19, the independent adversarial round: cases of its own, each found ending in a traceback, a hang,
a second stderr line or a silent loss before its fix (one regression test per case)."""
import os
import re

import numpy as np
import pytest
import torch

from DataLoad import DataError, load_dataset


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
