"""``prepare_data.py export NAME --to mmrec|hkuds|json --folder OUT`` (issue #33): each layout read back by its
import gives the same dataset card and the same training run; what a layout cannot carry is named."""
import json
import os
import pickle

import numpy as np
import pytest
import scipy.sparse as sp

import main
import prepare_data
from conftest import one_line_error
from DataLoad import load_dataset
from dataset_card import stats

IMPORT = {'mmrec': prepare_data.import_mmrec, 'hkuds': prepare_data.import_hkuds, 'json': prepare_data.import_json}


def _card(folder):
    """The card's numbers, less what names the folder and its source."""
    s = stats(folder)
    return {k: v for k, v in s.items() if k not in ('name', 'source')}


def _train(tmp_path, folder, tag, modalities):
    argv = ['--data_path', str(folder), '--model_name', 'VBPR', '--modalities', modalities, '--num_epoch', '2',
            '--dim_latent', '8', '--batch_size', '128', '--topK', '5', '10', '--no-progress',
            '--save_file', str(tmp_path / f'{tag}.jsonl'), '--checkpoint', str(tmp_path / f'{tag}.last.pt'),
            '--PATH_weight_save', str(tmp_path / f'{tag}.best.pt')]
    assert main.main(argv) == 0
    record = json.loads((tmp_path / f'{tag}.jsonl').read_text().splitlines()[-1])
    return record['val'], record['test'], [h['loss'] for h in record['history']]


@pytest.mark.parametrize('layout', ['hkuds', 'json', 'mmrec'])
def test_round_trip_gives_the_same_card_and_training(tiny_plain, tmp_path, capsys, layout):
    out = tmp_path / 'out' / 'tiny'
    assert prepare_data.main(['export', tiny_plain, '--to', layout, '--folder', str(out)]) == 0
    printed = capsys.readouterr()
    back = IMPORT[layout]('back', str(out), root=str(tmp_path / 'Data'))
    expected = _card(tiny_plain)                  # v, a, t; MMRec reads image and text only
    if layout == 'mmrec':
        del expected['modalities']['a']
        assert printed.err.strip() == ("note: modality 'a' is left out of the mmrec export (MMRec reads only "
                                       "image_feat.npy (v), text_feat.npy (t))")
        assert sorted(os.listdir(out)) == ['image_feat.npy', 'text_feat.npy', 'tiny.inter']
    else:
        assert printed.err == ''
    assert _card(back) == expected
    original, again = load_dataset(tiny_plain), load_dataset(back)
    for m in again.features:
        assert np.array_equal(original.features[m], again.features[m])
    modalities = 'v,t' if layout == 'mmrec' else 'v,a,t'       # the same order on both (the layouts keep none)
    assert _train(tmp_path, tiny_plain, 'before', modalities) == _train(tmp_path, back, 'after', modalities)


def test_exported_files_are_what_the_other_frameworks_load(tiny_plain, tmp_path, capsys):
    """Read as the authors' loaders read them: the pickles with pickle and SciPy, the JSON with json, the .inter
    as a tab-separated table with a header (MMRec's RecDataset: pandas.read_csv, sep '\\t')."""
    import csv
    data = load_dataset(tiny_plain)
    for layout in ('hkuds', 'json', 'mmrec'):
        assert prepare_data.main(['export', tiny_plain, '--to', layout, '--folder', str(tmp_path / layout)]) == 0
    pairs = {'train': {(int(u), int(i)) for u, i in data.train}}
    for split in ('val', 'test'):
        pairs[split] = {(u, int(i)) for u, items in getattr(data, split).items() for i in items}
    for split, fname in (('train', 'trnMat.pkl'), ('val', 'valMat.pkl'), ('test', 'tstMat.pkl')):
        with open(tmp_path / 'hkuds' / fname, 'rb') as f:
            loaded = pickle.load(f)
        assert type(loaded) is sp.csr_matrix        # CSR: a COO pickled by SciPy 1.13+ does not load in older SciPy
        matrix = sp.coo_matrix((loaded != 0).astype(np.float32))                # as DiffMM's loadOneFile
        assert matrix.shape == (data.num_user, data.num_item)
        assert set(zip(matrix.row.tolist(), matrix.col.tolist())) == pairs[split]
    for split in ('train', 'val', 'test'):
        lists = json.loads((tmp_path / 'json' / f'{split}.json').read_text())
        assert {(int(u), i) for u, items in lists.items() for i in items} == pairs[split]
    with open(tmp_path / 'mmrec' / 'mmrec.inter', newline='') as f:
        inter = list(csv.DictReader(f, delimiter='\t'))
    for label, split in enumerate(('train', 'val', 'test')):
        rows = [r for r in inter if r['x_label'] == str(label)]
        assert {(int(r['userID']), int(r['itemID'])) for r in rows} == pairs[split]
    for layout, fname, m in (('hkuds', 'audio_feat.npy', 'a'), ('json', 'text_feat.npy', 't'),
                             ('mmrec', 'image_feat.npy', 'v')):
        assert np.array_equal(np.load(tmp_path / layout / fname), data.features[m])


def test_existing_folder_is_refused_and_nothing_is_left(tiny_plain, tmp_path, capsys, monkeypatch):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'mine.txt').write_text('keep me')
    assert prepare_data.main(['export', tiny_plain, '--to', 'hkuds', '--folder', str(out)]) == 2
    one_line_error(capsys, str(out), 'exists and is not empty')
    assert os.listdir(out) == ['mine.txt']
    assert prepare_data.main(['export', tiny_plain, '--to', 'json', '--folder', os.path.join(tiny_plain, 'x')]) == 2
    one_line_error(capsys, 'would be written into the dataset folder')
    # an empty folder is taken; a failure while writing leaves it as it was, with no temporary beside it
    (out / 'mine.txt').unlink()

    def full_disk(*a, **k):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(np, 'save', full_disk)
    assert prepare_data.main(['export', tiny_plain, '--to', 'json', '--folder', str(out)]) == 2
    monkeypatch.undo()
    one_line_error(capsys, 'No space left on device', 'nothing was written')
    assert sorted(os.listdir(tmp_path)) == ['out', 'tiny_plain'] and os.listdir(out) == []
    assert prepare_data.main(['export', tiny_plain, '--to', 'json', '--folder', str(out)]) == 0
    assert sorted(os.listdir(out)) == ['audio_feat.npy', 'image_feat.npy', 'test.json', 'text_feat.npy',
                                       'train.json', 'val.json']


def test_what_a_layout_cannot_carry_is_named(tmp_path, capsys):
    """An ID-only HKUDS set whose last user and last item have no interaction: the HKUDS export keeps both counts
    (the matrices' shape); JSON counts users and items up to the largest ids, and says what it loses."""
    src = tmp_path / 'src'
    src.mkdir()
    train, val, test = [(0, 0), (0, 1), (1, 1), (1, 2), (2, 0)], [(0, 2), (1, 0)], [(0, 3), (2, 2)]
    for fname, pairs in (('trnMat.pkl', train), ('valMat.pkl', val), ('tstMat.pkl', test)):
        rows, cols = zip(*pairs)
        matrix = sp.coo_matrix((np.ones(len(pairs), dtype=np.float32), (rows, cols)), shape=(4, 5))
        (src / fname).write_bytes(pickle.dumps(matrix, protocol=4))
    folder = prepare_data.import_hkuds('hk', str(src), root=str(tmp_path / 'Data'))
    for layout in ('hkuds', 'json'):
        assert prepare_data.main(['export', folder, '--to', layout, '--folder', str(tmp_path / layout)]) == 0
    notes = capsys.readouterr().err.strip().splitlines()
    assert notes == ['note: the last 1 users have no interaction; the json layout counts users up to the largest '
                     'id, so it holds 3 of 4',
                     'note: the last 1 items have no interaction; the json layout counts items up to the largest '
                     'id, so it holds 4 of 5']
    assert _card(prepare_data.import_hkuds('b', str(tmp_path / 'hkuds'), root=str(tmp_path / 'Data'))) == _card(folder)
    assert (stats(prepare_data.import_json('j', str(tmp_path / 'json'), root=str(tmp_path / 'Data')))['users'],
            stats(folder)['users']) == (3, 4)
