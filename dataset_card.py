"""The dataset card: what a prepared dataset folder holds, in a dozen lines.

    python prepare_data.py info tiktok_hkuds       # any folder under Data/, or a path
    from dataset_card import card; print(card('Data/ml100k'))

Users, items and interactions per split, density, each modality's dimension
and how many items lack it (an all-zero feature row, or no words), the
validation/test items never seen in training, the users without training
items, and the source recorded in meta.json.  ``prepare_data.py`` prints it
when it finishes.
"""
import os

import numpy as np

from DataLoad import WordFeature, load_dataset
from errors import DataError


def stats(folder):
    """The card's numbers as a dict (tests read these; ``card`` formats them)."""
    data = load_dataset(folder, require_val=False)
    trained_items = np.zeros(data.num_item, dtype=bool)
    trained_items[data.train[:, 1]] = True
    trained_users = np.zeros(data.num_user, dtype=bool)
    trained_users[data.train[:, 0]] = True
    out = {'name': data.name, 'users': data.num_user, 'items': data.num_item,
           'users_without_train': int((~trained_users).sum()),
           'train': len(data.train), 'modalities': {}}
    for split in ('val', 'test'):
        pairs = getattr(data, split)
        items = np.concatenate(list(pairs.values())) if pairs else np.zeros(0, dtype=np.int64)
        out[split] = int(items.size)
        out[f'{split}_users'] = len(pairs)
        out[f'{split}_items_unseen'] = int(np.unique(items[~trained_items[items]]).size)
        out[f'{split}_pairs_unseen'] = int((~trained_items[items]).sum())
    total = out['train'] + out['val'] + out['test']
    out['density'] = total / (data.num_user * data.num_item)
    for m, feat in data.features.items():
        if isinstance(feat, WordFeature):
            has = np.zeros(data.num_item, dtype=bool)
            has[feat.item_index.numpy()] = True
            lacking = int((~has).sum())
        else:
            lacking = int((~feat.any(axis=1)).sum())
        out['modalities'][m] = {'dim': data.feature_dim(m), 'items_lacking': lacking}
    out['source'] = _source(folder)
    return out


def _source(folder):
    from safe_read import load_json
    path = os.path.join(folder, 'meta.json')
    if not os.path.exists(path):
        return {'kind': 'legacy folder (no meta.json)'}
    meta = load_json(path, 1 << 20)
    if not isinstance(meta, dict):
        raise DataError(path, 'not a JSON object')
    source = meta.get('source')
    return source if isinstance(source, dict) else {'kind': 'unknown (meta.json has no source)'}


def card(folder):
    """The card of the dataset folder ``folder`` as text."""
    s = stats(folder)
    lines = [f'dataset {s["name"]}  ({folder})',
             f'  users         {s["users"]:,} ({s["users_without_train"]:,} without training items)',
             f'  items         {s["items"]:,}',
             f'  interactions  train {s["train"]:,} | validation {s["val"]:,} ({s["val_users"]:,} users) | '
             f'test {s["test"]:,} ({s["test_users"]:,} users); density {s["density"]:.3g}']
    for split, label in (('val', 'validation'), ('test', 'test')):
        lines.append(f'  {label + " items never seen in training":<44}{s[f"{split}_items_unseen"]:,} '
                     f'({s[f"{split}_pairs_unseen"]:,} pairs)')
    for m, info in s['modalities'].items():
        lines.append(f'  modality {m:<4} dim {info["dim"]:<6} items lacking it: {info["items_lacking"]:,}')
    if not s['modalities']:
        lines.append('  modalities    none (an ID-only dataset)')
    source = dict(s['source'])
    kind = source.pop('kind', '?')
    where = source.pop('folder', None) or source.pop('file', None) or source.pop('package', None)
    lines.append(f'  source        {kind}{f" ({where})" if where else ""}')
    if 'split' in source:
        lines.append(f'    split: {source["split"]}')
    for split, label in (('val', 'validation'), ('test', 'test')):
        d = source.get('dropped', {})
        if d.get(f'{split}_pairs_of_users_without_train') or d.get(f'{split}_pairs_also_in_train'):
            lines.append(f'    dropped from {label}: {d[f"{split}_pairs_of_users_without_train"]:,} pairs of '
                         f'{d[f"{split}_users_without_train"]:,} users without training items, '
                         f'{d[f"{split}_pairs_also_in_train"]:,} pairs also in training')
    for m, notes in source.get('content', {}).items():
        lines.append(f'    modality {m} encoded by {notes.get("encoder")} from {notes.get("file") or notes.get("folder")}')
    return '\n'.join(lines)
