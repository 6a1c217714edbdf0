"""Writing a prepared dataset in the other camps' layouts, exactly as ``importers.py`` reads them back, so another
framework runs on our split (and ``import -> export -> import`` gives the same dataset card):

    python prepare_data.py export tiktok --to mmrec --folder out/tiktok     # MMRec: tiktok.inter + *_feat.npy
    python prepare_data.py export tiktok --to hkuds --folder out/tiktok_hk  # MMSSL, DiffMM: trn/val/tstMat.pkl
    python prepare_data.py export tiktok --to json --folder out/tiktok_js   # LATTICE: train/val/test.json

    from exporters import export
    notes = export('Data/tiktok', 'hkuds', 'out/tiktok_hk')

Users and items are our 0-based indices (``user_ids.txt`` / ``item_ids.txt`` of the dataset map them back to
the source's ids).  A modality the layout has no file for is left out, and a count the layout cannot carry
(users or items after the last one with an interaction, where the layout counts them from the largest id) is
lost: each is named in a note the caller prints.  The folder is written whole (``safe_write.staged_folder``):
an existing non-empty folder is refused, an error leaves nothing.
"""
import json
import os
import pickle

import numpy as np

from DataLoad import WordFeature, load_dataset
from errors import InputError
from importers import HKUDS_FEATURES, MMREC_FEATURES
from safe_write import staged_folder

# layout -> (modality, feature file) the reader of that layout reads
LAYOUT_FEATURES = {'mmrec': MMREC_FEATURES, 'hkuds': HKUDS_FEATURES, 'json': HKUDS_FEATURES}
READERS = {'mmrec': 'MMRec reads', 'hkuds': 'the HKUDS loaders read', 'json': 'the LATTICE layout holds'}


def export(dataset, layout, out):
    """Write the prepared dataset folder ``dataset`` to the new (or empty) folder ``out`` in ``layout``
    (mmrec, hkuds or json); returns the notes on what the layout could not carry (one line each)."""
    dataset, out = os.path.abspath(dataset), os.path.abspath(out)
    if out == dataset or out.startswith(dataset + os.sep):
        raise InputError(f'{out}: the export would be written into the dataset folder {dataset}; give a folder '
                         f'outside it')
    data = load_dataset(dataset)
    slots = dict(LAYOUT_FEATURES[layout])
    features = {m: feat for m, feat in data.features.items() if m in slots and not isinstance(feat, WordFeature)}
    notes = _left_out(data, layout, slots, features)
    splits = [('train', _pairs_by_user(data.train)), ('val', data.val), ('test', data.test)]
    with staged_folder(out, f'{layout} export') as tmp:
        WRITERS[layout](tmp, os.path.basename(out), data.num_user, data.num_item, splits)
        for m, feat in features.items():
            np.save(os.path.join(tmp, slots[m]), np.asarray(feat, dtype=np.float32))
    return notes


def _pairs_by_user(train):
    """[E, 2] (user, item) -> user -> sorted items."""
    order = np.lexsort((train[:, 1], train[:, 0]))
    pairs = train[order]
    bounds = np.flatnonzero(np.diff(pairs[:, 0])) + 1
    return {int(g[0, 0]): g[:, 1] for g in np.split(pairs, bounds) if len(g)}


def _left_out(data, layout, slots, features):
    """The notes: modalities without a file in ``layout``, and users/items whose count the layout would lose."""
    notes = []
    for m, feat in data.features.items():
        if m not in features:
            why = ('word-id text is no feature matrix' if isinstance(feat, WordFeature) else
                   f'{READERS[layout]} only {", ".join(f"{f} ({n})" for n, f in slots.items())}')
            notes.append(f'note: modality {m!r} is left out of the {layout} export ({why})')
    if layout == 'hkuds':                      # the matrices' shape carries both counts
        return notes
    used = [data.train] + [np.stack([np.full(len(v), u), v], axis=1) for s in (data.val, data.test)
                           for u, v in s.items()]
    pairs = np.concatenate(used)
    counts = [('users', data.num_user, int(pairs[:, 0].max()) + 1)]
    if not features:                           # the feature rows carry the item count
        counts.append(('items', data.num_item, int(pairs[:, 1].max()) + 1))
    for what, total, counted in counts:
        if counted < total:
            notes.append(f'note: the last {total - counted} {what} have no interaction; the {layout} layout counts '
                         f'{what} up to the largest id, so it holds {counted:,} of {total:,}')
    return notes


def _write_hkuds(folder, name, num_user, num_item, splits):
    """trnMat.pkl, valMat.pkl, tstMat.pkl: pickled SciPy CSR users x items matrices of ones (CSR pickles load
    in SciPy 1.8 and later alike; a COO pickled by SciPy 1.13+ holds ``coords``, which older SciPy cannot read)."""
    import scipy.sparse as sp
    for split, fname in zip(splits, ('trnMat.pkl', 'valMat.pkl', 'tstMat.pkl')):
        rows, cols = _rows_cols(split[1])
        matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(num_user, num_item))
        with open(os.path.join(folder, fname), 'wb') as f:
            pickle.dump(matrix, f, protocol=4)


def _write_json(folder, name, num_user, num_item, splits):
    """train.json, val.json, test.json: {"user": [items]} for the users with items in that split."""
    for split, fname in zip(splits, ('train.json', 'val.json', 'test.json')):
        with open(os.path.join(folder, fname), 'w') as f:
            json.dump({str(u): [int(i) for i in split[1][u]] for u in sorted(split[1])}, f)


def _write_mmrec(folder, name, num_user, num_item, splits):
    """``<name>.inter``: userID, itemID, x_label (0 train, 1 validation, 2 test), tab-separated, as MMRec's
    ``RecDataset`` reads it (``inter_file_name``, ``inter_splitting_label``)."""
    with open(os.path.join(folder, f'{name}.inter'), 'w') as f:
        f.write('userID\titemID\tx_label\n')
        for label, (_, split) in enumerate(splits):
            for u in sorted(split):
                f.writelines(f'{u}\t{int(i)}\t{label}\n' for i in split[u])


def _rows_cols(split):
    """user -> items  ->  (rows, cols) of its pairs."""
    users = sorted(split)
    rows = np.concatenate([np.full(len(split[u]), u, dtype=np.int64) for u in users])
    return rows, np.concatenate([np.asarray(split[u], dtype=np.int64) for u in users])


WRITERS = {'mmrec': _write_mmrec, 'hkuds': _write_hkuds, 'json': _write_json}
