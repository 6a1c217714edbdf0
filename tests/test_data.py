"""The data layer (SPEC 1): layout, sizes, legacy files, and every bad input of SPEC 1.4."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, write_split
from DataLoad import TrainSampler, load_dataset
from errors import DataError
from safe_read import load_npy


def test_hand_folder_loads_with_offset_removed(hand_folder):
    data = load_dataset(str(hand_folder))
    assert (data.num_user, data.num_item) == (2, 3)
    assert data.train.tolist() == [[0, 0], [0, 1], [1, 1], [1, 2]]
    assert {u: v.tolist() for u, v in data.val.items()} == {0: [2], 1: [0]}
    assert {u: v.tolist() for u, v in data.test.items()} == {0: [2]}      # user 1's row holds the user alone
    assert data.modalities == ['v'] and data.features['v'].shape == (3, 4)


def test_duplicate_training_pairs_count_once(hand_folder):
    np.save(hand_folder / 'train.npy', np.array([[0, 2], [0, 2], [0, 3], [1, 3], [1, 4]]))
    os.remove(hand_folder / 'user_item_dict.npy')
    assert len(load_dataset(str(hand_folder)).train) == 4


def test_synthetic_tiktok_has_legacy_files(tiny_tiktok):
    names = set(os.listdir(tiny_tiktok))
    assert {'train.npy', 'val_full.npy', 'test_full.npy', 'user_item_dict.npy', 'feat_v.pt', 'feat_a.pt',
            'feat_t.pt', 'meta.json'} <= names
    data = load_dataset(tiny_tiktok)
    assert data.modalities == ['v', 'a', 't']
    words = data.features['t']
    assert words.item_index.max() < data.num_item and words.vocab_size <= 50
    assert all(u in set(data.train[:, 0]) for u in data.test)


def test_legacy_name_uses_published_sizes(tmp_path):
    folder = tmp_path / 'Kwai'
    folder.mkdir()
    U, I = 7010, 86483
    np.save(folder / 'train.npy', np.array([[0, U], [1, U + 5]]))
    write_split(folder / 'val_full.npy', [[0, U + 7]])
    write_split(folder / 'test_full.npy', [[1, U + I - 1]])
    torch.save(torch.zeros(I, 4), folder / 'feat_v.pt')
    data = load_dataset(str(folder))
    assert (data.num_user, data.num_item) == (U, I) and data.modalities == ['v']
    torch.save(torch.zeros(I - 1, 4), folder / 'feat_v.pt')
    with pytest.raises(DataError, match='feat_v.pt: has 86482 rows, expected one per item'):
        load_dataset(str(folder))


def test_modality_selection(tiny_tiktok):
    assert load_dataset(tiny_tiktok, ['t', 'v']).modalities == ['t', 'v']
    with pytest.raises(DataError, match="unknown modality 'x'"):
        load_dataset(tiny_tiktok, ['x'])


# ---------------------------------------------------------------- bad input (SPEC 1.4)

def _bad(folder, match):
    with pytest.raises(DataError, match=match) as err:
        load_dataset(str(folder))
    assert '\n' not in str(err.value)
    return err.value


def test_missing_file(hand_folder):
    os.remove(hand_folder / 'test_full.npy')
    assert _bad(hand_folder, 'test_full.npy: file not found').path.endswith('test_full.npy')


def test_wrong_feature_row_count(hand_folder):
    (hand_folder / 'meta.json').write_text(json.dumps(
        {'num_user': 2, 'num_item': 3, 'modalities': [{'name': 'v', 'file': 'feat_v.npy'}]}))
    np.save(hand_folder / 'feat_v.npy', np.ones((5, 4), dtype=np.float32))
    _bad(hand_folder, r'feat_v.npy: has 5 rows, expected one per item \(3\)')


def test_item_not_offset(hand_folder):
    np.save(hand_folder / 'train.npy', np.array([[0, 2], [1, 1]]))
    _bad(hand_folder, 'train.npy: .*item id 1 is smaller than the user count 2')


def test_item_out_of_range(hand_folder):
    write_split(hand_folder / 'val_full.npy', [[0, 9]])
    _bad(hand_folder, 'val_full.npy: user 0: item id 9 out of range')


def test_user_out_of_range(hand_folder):
    (hand_folder / 'meta.json').write_text(json.dumps(
        {'num_user': 2, 'num_item': 3, 'modalities': [{'name': 'v', 'file': 'feat_v.npy'}]}))
    np.save(hand_folder / 'train.npy', np.array([[0, 2], [5, 3]]))
    _bad(hand_folder, 'train.npy: user id 5 out of range')


def test_nan_feature(hand_folder):
    feat = np.eye(3, 4, dtype=np.float32)
    feat[1, 2] = np.nan
    np.save(hand_folder / 'feat_v.npy', feat)
    _bad(hand_folder, 'feat_v.npy: NaN or Inf in feature row 1')


def test_empty_training_set(hand_folder):
    np.save(hand_folder / 'train.npy', np.zeros((0, 2), dtype=np.int64))
    _bad(hand_folder, 'train.npy: the training set is empty')


def test_split_user_unknown_to_training(hand_folder):
    (hand_folder / 'meta.json').write_text(json.dumps(
        {'num_user': 3, 'num_item': 3, 'modalities': [{'name': 'v', 'file': 'feat_v.npy'}]}))
    np.save(hand_folder / 'train.npy', np.array([[0, 3], [1, 4]]))
    os.remove(hand_folder / 'user_item_dict.npy')
    write_split(hand_folder / 'val_full.npy', [[0, 4]])
    write_split(hand_folder / 'test_full.npy', [[2, 4]])
    _bad(hand_folder, 'test_full.npy: user 2 has no training interaction')


def test_truncated_file(hand_folder):
    data = (hand_folder / 'train.npy').read_bytes()
    (hand_folder / 'train.npy').write_bytes(data[:len(data) - 7])
    _bad(hand_folder, 'train.npy: not a readable .npy file')


def test_not_numpy(hand_folder):
    (hand_folder / 'val_full.npy').write_text('user,item\n0,4\n')
    _bad(hand_folder, 'val_full.npy: not a readable .npy file')


def test_pickled_object_where_array_expected(hand_folder):
    np.save(hand_folder / 'train.npy', np.array([[0, 2], [1, 'x']], dtype=object), allow_pickle=True)
    _bad(hand_folder, 'train.npy: holds pickled objects where a numeric array is expected')


class _Exploit:
    def __reduce__(self):
        return (os.system, ('touch /tmp/slmrec_pwned',))


def test_pickle_that_would_run_code_is_refused(hand_folder, tmp_path):
    marker = '/tmp/slmrec_pwned'
    if os.path.exists(marker):
        os.remove(marker)
    arr = np.empty(1, dtype=object)
    arr[0] = [0, 4, _Exploit()]
    np.save(hand_folder / 'val_full.npy', arr, allow_pickle=True)
    _bad(hand_folder, r'val_full.npy: unsafe or corrupt pickle \(refused to load (posix|os).system\)')
    assert not os.path.exists(marker)


def test_pt_file_with_code_is_refused(tmp_path):
    path = tmp_path / 'feat_v.pt'
    with open(path, 'wb') as f:
        pickle.dump(_Exploit(), f)
    with pytest.raises(DataError, match='feat_v.pt: not a readable tensor file'):
        from safe_read import load_pt_tensor
        load_pt_tensor(str(path))
    assert not os.path.exists('/tmp/slmrec_pwned')


def test_user_item_dict_must_agree_with_train(hand_folder):
    np.save(hand_folder / 'user_item_dict.npy', np.array({0: {2}, 1: {3, 4}}, dtype=object), allow_pickle=True)
    _bad(hand_folder, 'user_item_dict.npy: disagrees with train.npy on user 0 item 3')


def test_words_out_of_range(tiny_tiktok):
    torch.save(torch.tensor([[0, 80], [1, 2]]), os.path.join(tiny_tiktok, 'feat_t.pt'))
    _bad(tiny_tiktok, r'feat_t.pt: item index 80 out of range')


def test_restricted_unpickler_reads_legacy_split(tmp_path):
    path = tmp_path / 'split.npy'
    write_split(path, [[0, np.int64(5), 6], [1]])
    assert [list(r) for r in load_npy(str(path), allow_object=True)] == [[0, 5, 6], [1]]


def test_cli_bad_input_is_one_line_and_exit_2(hand_folder, tmp_path):
    (hand_folder / 'train.npy').write_text('0,1\n')
    results = tmp_path / 'results.jsonl'
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), '--data_path', str(hand_folder),
                           '--save_file', str(results), '--checkpoint', str(tmp_path / 'c.pt'),
                           '--PATH_weight_save', str(tmp_path / 'b.pt')],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count('\n') == 0
    assert proc.stderr.startswith('error: ') and 'train.npy' in proc.stderr
    assert not results.exists() and not (tmp_path / 'c.pt').exists()


# ---------------------------------------------------------------- sampler

def test_negatives_avoid_training_items():
    train = np.array([[0, 0], [0, 1], [0, 2], [1, 3]])
    sampler = TrainSampler(train, 4, 2, np.random.default_rng(0))
    neg = sampler.sample_negatives(np.zeros(2000, dtype=np.int64))
    assert set(neg.tolist()) == {3}
    neg = sampler.sample_negatives(np.ones(3000, dtype=np.int64))
    assert set(neg.tolist()) == {0, 1, 2}
    counts = np.bincount(neg, minlength=3)
    assert counts.min() > 850                      # uniform over the three allowed items


def test_sampler_covers_every_pair_once():
    train = np.array([[u, i] for u in range(5) for i in range(u, u + 3)])
    sampler = TrainSampler(train, 10, 4, np.random.default_rng(1))
    pairs = [(int(u), int(i)) for users, items, _ in sampler.batches(True) for u, i in zip(users, items)]
    assert sorted(pairs) == sorted(map(tuple, train.tolist()))
    assert len(sampler) == 4


def test_in_sorted_is_isin():
    from DataLoad import in_sorted
    rng = np.random.default_rng(0)
    for size in (0, 1, 7, 500):
        keys = np.unique(rng.integers(0, 1000, size)).astype(np.int64)
        query = rng.integers(-5, 1010, 300)
        assert np.array_equal(in_sorted(keys, query), np.isin(query, keys))
    assert in_sorted(np.array([3, 8]), np.array([8, 3, 9, 2, 5])).tolist() == [True, True, False, False, False]
