"""Datasets in the MMGCN folder layout and the training sampler.

A dataset is a folder ``Data/<name>/`` (SPEC 1.1):

    train.npy            int [E, 2], rows (user, item + U)
    val_full.npy         object array, rows [user, item+U, ...]
    test_full.npy        same as val_full.npy
    user_item_dict.npy   pickled dict user -> training items (item + U), optional
    features             per modality, see LEGACY_FEATURES and meta.json
    meta.json            sizes and modality list (written by prepare_data.py)

Item ids are offset by the number of users in every file; inside the code
items are 0-based.  Every malformed input raises ``DataError`` whose text
names the file and the problem (SPEC 1.4); nothing in a data file is ever
executed: plain arrays load with ``allow_pickle=False``, ``.pt`` files with
``weights_only=True`` and the legacy pickled object arrays through a
restricted unpickler.

    from DataLoad import load_dataset
    data = load_dataset('Data/tiktok_small')
"""
import os
import re
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from errors import DataError, InputError
from safe_read import load_json, load_matrix, load_npy, load_pt_tensor

# Published sizes of the three legacy datasets (SPEC 1.1).
LEGACY_SIZES = {'movielens': (55485, 5986), 'tiktok': (36656, 76085), 'kwai': (7010, 86483)}

# Legacy feature files (SPEC 1.2): modality -> (file, kind); kind 'dense' or 'words'.
LEGACY_FEATURES = {
    'movielens': {'v': ('FeatureVideo_normal.npy', 'dense'),
                  'a': ('FeatureAudio_avg_normal.npy', 'dense'),
                  't': ('FeatureText_stl_normal.npy', 'dense')},
    'tiktok': {'v': ('feat_v.pt', 'dense'), 'a': ('feat_a.pt', 'dense'), 't': ('feat_t.pt', 'words')},
    'kwai': {'v': ('feat_v.pt', 'dense')},
}

# Where --data_path and prepare_data.py --name look for a dataset folder given by name.
DATA_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'Data')

# A modality name (it becomes a file name and a flag value) and a file name inside the folder.
MODALITY_NAME = re.compile(r'[A-Za-z0-9_-]+')
PLAIN_FILE = re.compile(r'[A-Za-z0-9_.-]+')

# Width of the trainable word embedding behind a word-id text modality (SPEC 1.2).
WORD_DIM = 128



MAX_WORD_ID = 2 ** 20 - 1       # a word table of 2**20 rows is 512 MiB at 128 dims (the official Tiktok one: 11,574)
MAX_ID = 2 ** 31 - 1            # user and item ids, and the sizes, stay below this: no int64 overflow in user*I+item


def check_backed(path, what, declared, used):
    """Refuse a declared number of users or items that the data do not back: at most as many ids without any
    interaction (or feature row) as ids with one.  A size is only checked against the ids otherwise, so a few bytes
    (a JSON user id 2147483646, a sparse matrix of shape (120, 50000000), a meta.json count) would make every
    per-user or per-item structure that long."""
    if declared > 2 * used:
        raise DataError(path, f'{declared} {what} declared, but only {used} of them have an interaction'
                              f'{" or a feature row" if what == "items" else ""}: a size not backed by the data '
                              f'(at most half of the {what} may be without data) is refused')


def _as_int_array(values, path, what):
    if isinstance(values, (list, tuple, set, frozenset)):
        # Flat rows only: a nested (possibly shared, exponentially large) structure is never walked.
        if not all(isinstance(x, (int, float, np.integer, np.floating)) for x in values):
            raise DataError(path, f'{what} is not a flat list of integers')
    elif isinstance(values, np.ndarray) and values.dtype == object and values.ndim > 0:
        if not all(isinstance(x, (int, float, np.integer, np.floating)) for x in values.reshape(-1)):
            raise DataError(path, f'{what} is not a flat list of integers')
    try:
        arr = np.asarray(values)
    except Exception:
        raise DataError(path, f'{what} is not a list of integers') from None
    if arr.size == 0:
        return arr.astype(np.int64).reshape(-1)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.integer):
        if arr.dtype == object or np.issubdtype(arr.dtype, np.floating):
            try:
                as_float = arr.astype(np.float64)
            except (TypeError, ValueError, OverflowError):
                raise DataError(path, f'{what} holds a non-integer value') from None
            if not np.all(np.isfinite(as_float)) or np.any(as_float != np.round(as_float)):
                raise DataError(path, f'{what} holds a non-integer value')
            arr = as_float
        else:
            raise DataError(path, f'{what} holds a non-integer value (dtype {arr.dtype})')
    extreme = arr.max() if arr.max() > -arr.min() else arr.min()
    if abs(extreme) > MAX_ID:
        raise DataError(path, f'{what}: id {int(extreme)} is too large (ids must be below 2**31)')
    return arr.astype(np.int64).reshape(-1)


# --------------------------------------------------------------------------
# The dataset

@dataclass
class WordFeature:
    """Word-id text (Tiktok's ``feat_t.pt``): item i's feature is the mean of its words' embeddings."""
    item_index: torch.Tensor   # [W] 0-based item of each (item, word) pair
    word_id: torch.Tensor      # [W]
    vocab_size: int
    dim: int = WORD_DIM


@dataclass
class Dataset:
    """A loaded dataset; items are 0-based everywhere in here."""
    name: str
    path: str
    num_user: int
    num_item: int
    train: np.ndarray                      # [E, 2] unique (user, item) pairs
    val: dict                              # user -> np.ndarray of items
    test: dict
    features: dict = field(default_factory=dict)   # modality -> np.ndarray [I, f] or WordFeature
    available: list = None      # the modalities the dataset has (``features`` may hold a selection of them)

    def __post_init__(self):
        if self.available is None:
            self.available = list(self.features)

    @property
    def modalities(self):
        return list(self.features)

    def feature_dim(self, modality):
        feat = self.features[modality]
        return feat.dim if isinstance(feat, WordFeature) else feat.shape[1]

    def train_csr(self):
        """(indptr, items) of the training items per user, items sorted."""
        order = np.lexsort((self.train[:, 1], self.train[:, 0]))
        pairs = self.train[order]
        indptr = np.zeros(self.num_user + 1, dtype=np.int64)
        np.add.at(indptr, pairs[:, 0] + 1, 1)
        return np.cumsum(indptr), pairs[:, 1].copy()

    def summary(self):
        mods = ', '.join(f'{m}:{self.feature_dim(m)}' for m in self.modalities) or 'none'
        return (f'{self.name}: {self.num_user} users, {self.num_item} items, {len(self.train)} train / '
                f'{sum(map(len, self.val.values()))} val / {sum(map(len, self.test.values()))} test '
                f'interactions; modalities {mods}')


AUTO_PREPARED = ('ml100k', 'ml1m')      # real MovieLens sets that --data_path prepares on first use


def dataset_path(data_path):
    """The folder ``--data_path`` names: a folder as given, else a name under ``Data/``."""
    return data_path if os.path.isdir(data_path) else os.path.join(DATA_ROOT, data_path)


def resolve_data(data_path):
    """The dataset folder; the real MovieLens sets are prepared on first use."""
    path = dataset_path(data_path)
    if not os.path.isdir(path) and data_path in AUTO_PREPARED:
        import prepare_data
        print(f'preparing {data_path} (first use) ...')
        prepare_data.movielens(data_path)
    return path


def select_modalities(args, available):
    """The modalities a run uses, in order: ``--modalities`` when given, else the available ones less those
    switched off by ``--has_v/--has_a/--has_t False``."""
    if args.modalities is not None:
        names = [] if args.modalities.strip().lower() == 'none' else [m.strip() for m in args.modalities.split(',') if m.strip()]
        unknown = [m for m in names if m not in available]
        if unknown:
            raise InputError(f'--modalities: unknown modality {unknown[0]!r}; valid: {", ".join(available) or "none"}')
        twice = [m for n, m in enumerate(names) if m in names[:n]]
        if twice:
            raise InputError(f'--modalities: {twice[0]!r} given twice')
        return names
    off = {m for m, flag in (('v', args.has_v), ('a', args.has_a), ('t', args.has_t)) if not flag}
    return [m for m in available if m not in off]


def legacy_key(name):
    key = os.path.basename(os.path.normpath(name)).lower()
    return key if key in LEGACY_SIZES else None


def _read_meta(folder):
    path = os.path.join(folder, 'meta.json')
    if not os.path.lexists(path):
        return None
    meta = load_json(path, 1 << 20)
    if not isinstance(meta, dict):
        raise DataError(path, 'expected a JSON object')
    for key in ('num_user', 'num_item'):
        if key in meta and (not isinstance(meta[key], int) or isinstance(meta[key], bool)
                            or not 0 < meta[key] <= MAX_ID):
            raise DataError(path, f'{key} must be a positive integer below 2**31, found {str(meta[key])[:40]}')
    mods = meta.get('modalities', [])
    if not isinstance(mods, list) or not all(isinstance(m, dict) and 'name' in m and 'file' in m for m in mods):
        raise DataError(path, "'modalities' must be a list of objects with 'name' and 'file'")
    seen = set()
    for n, m in enumerate(mods):
        name, file, kind = m['name'], m['file'], m.get('kind', 'dense')
        if not isinstance(name, str) or not MODALITY_NAME.fullmatch(name):
            raise DataError(path, f'modality {n}: name must be a plain name (letters, digits, _, -), '
                                  f'found {str(name)[:40]!r}')
        if name in seen:
            raise DataError(path, f'modality name {name!r} appears twice')
        seen.add(name)
        if not isinstance(file, str) or not PLAIN_FILE.fullmatch(file) or file in ('.', '..'):
            raise DataError(path, f'modality {name!r}: file must be a file name in the folder, found {str(file)[:40]!r}')
        if kind not in ('dense', 'words'):
            raise DataError(path, f'modality {name!r} has unknown kind {str(kind)[:40]!r} (dense or words)')
    return meta


def _modality_files(folder, meta):
    """Ordered modality -> (file path, kind)."""
    if meta is not None and 'modalities' in meta:
        return {m['name']: (os.path.join(folder, m['file']), m.get('kind', 'dense')) for m in meta['modalities']}
    key = legacy_key(folder)
    if key is not None:
        table = LEGACY_FEATURES[key]
        return {m: (os.path.join(folder, f), k) for m, (f, k) in table.items()}
    # Unknown folder without meta.json: take whichever legacy file names are present.
    found = {}
    for table in LEGACY_FEATURES.values():
        for m, (f, k) in table.items():
            if m not in found and os.path.exists(os.path.join(folder, f)):
                found[m] = (os.path.join(folder, f), k)
    return {m: found[m] for m in ('v', 'a', 't') if m in found}


def _load_train(path):
    arr = load_npy(path)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise DataError(path, f'expected an int array of shape [E, 2], found shape {tuple(arr.shape)}')
    arr = _as_int_array(arr, path, 'train.npy').reshape(-1, 2)
    if len(arr) == 0:
        raise DataError(path, 'the training set is empty')
    if arr.min() < 0:
        raise DataError(path, f'negative id {int(arr.min())}')
    return arr


def _load_split(path):
    """user -> list of raw (offset) item ids, merged over rows."""
    arr = load_npy(path, allow_object=True)
    if not (arr.ndim == 2 or (arr.ndim == 1 and arr.dtype == object)):
        raise DataError(path, f'expected one row [user, item+U, ...] per entry, found an array of shape {arr.shape}')
    rows = arr.tolist() if arr.dtype == object else [list(r) for r in arr]
    out = {}
    for n, row in enumerate(rows):
        if not isinstance(row, (list, tuple, np.ndarray)):
            raise DataError(path, f'row {n} is a {type(row).__name__}, not a list [user, item+U, ...]')
        ids = _as_int_array(row, path, f'row {n}')
        if ids.size == 0:
            raise DataError(path, f'row {n} is empty (expected [user, item+U, ...])')
        out.setdefault(int(ids[0]), []).append(ids[1:])
    return {u: np.concatenate(v) for u, v in out.items()}


def _load_user_item_dict(path):
    arr = load_npy(path, allow_object=True)
    obj = arr.item() if arr.dtype == object and arr.shape == () else None
    if not isinstance(obj, dict):
        raise DataError(path, 'expected a pickled dict user -> items')
    out = {}
    for u, items in obj.items():
        uid = _as_int_array([u], path, 'a user key')[0]
        if not isinstance(items, (list, tuple, set, frozenset, np.ndarray)):
            raise DataError(path, f'the items of user {uid} are not a list or set')
        out[int(uid)] = _as_int_array(list(items), path, f'the items of user {uid}')
    return out


def _check_items(items, num_user, num_item, path, where):
    """Raw (offset) item ids -> 0-based, with the offset and range checked."""
    if items.size == 0:
        return items
    low, high = int(items.min()), int(items.max())
    if low < num_user:
        raise DataError(path, f'{where}: item id {low} is smaller than the user count {num_user} '
                              f'(item ids must be offset by the number of users)')
    if high >= num_user + num_item:
        raise DataError(path, f'{where}: item id {high} out of range (items are {num_user}..{num_user + num_item - 1})')
    return items - num_user


def in_sorted(sorted_keys, query):
    """``np.isin(query, sorted_keys)`` for sorted ``sorted_keys``, by binary search: isin sorts its
    whole second argument at every call, which made one call per user take minutes at Tiktok size."""
    if len(sorted_keys) == 0:
        return np.zeros(np.shape(query), dtype=bool)
    pos = np.searchsorted(sorted_keys, query)
    return sorted_keys[np.minimum(pos, len(sorted_keys) - 1)] == query


def load_dataset(folder, modalities=None, require_val=True):
    """Load ``folder`` in the MMGCN layout; ``modalities`` (list) keeps only those, in that order.

    Validation and test pairs that are also training pairs are dropped, with
    one warning line per file on stderr; an empty test split is an error, and
    so is an empty validation split when ``require_val`` (training selects its
    best epoch on it; evaluation alone does not need it).
    """
    folder = os.path.normpath(folder)
    name = os.path.basename(folder)
    if not os.path.isdir(folder):
        raise DataError(folder, 'dataset folder not found')
    meta = _read_meta(folder)
    files = _modality_files(folder, meta)
    if modalities is not None:
        unknown = [m for m in modalities if m not in files]
        if unknown:
            raise DataError(folder, f'unknown modality {unknown[0]!r}; this dataset has {sorted(files) or "none"}')
        files = {m: files[m] for m in modalities}

    train_path = os.path.join(folder, 'train.npy')
    train_raw = _load_train(train_path)
    val_path, test_path = os.path.join(folder, 'val_full.npy'), os.path.join(folder, 'test_full.npy')
    val_raw, test_raw = _load_split(val_path), _load_split(test_path)

    # Load features before the sizes: their row count is the item count of an unknown dataset.
    dense, words = {}, {}
    for m, (path, kind) in files.items():
        if kind == 'words':
            words[m] = path
        elif kind == 'dense':
            dense[m] = load_matrix(path)
        else:
            raise DataError(os.path.join(folder, 'meta.json'), f'modality {m!r} has unknown kind {kind!r}')
    num_user, num_item, size_src = _dataset_sizes(folder, meta, train_raw, dense)
    if size_src.endswith(('meta.json', 'train.npy')):      # sizes a file declares (a legacy name's are published)
        check_backed(size_src, 'users', num_user, len(np.unique(train_raw[:, 0])))
        if not any(f.shape[0] == num_item for f in dense.values()):     # rows for every item back the item count
            raw_items = np.concatenate([train_raw[:, 1], *val_raw.values(), *test_raw.values()])
            check_backed(size_src, 'items', num_item, len(np.unique(raw_items)))

    users = train_raw[:, 0]
    if users.max() >= num_user:
        raise DataError(train_path, f'user id {int(users.max())} out of range (dataset has {num_user} users, {size_src})')
    items = _check_items(train_raw[:, 1], num_user, num_item, train_path, 'training pair')
    keys = np.unique(users * num_item + items)
    train = np.stack([keys // num_item, keys % num_item], axis=1)

    trained_users = np.zeros(num_user, dtype=bool)
    trained_users[train[:, 0]] = True
    splits, warnings = [], []
    for path, raw, what in ((val_path, val_raw, 'validation'), (test_path, test_raw, 'test')):
        split, warning = _evaluation_split(path, raw, what, num_user, num_item, keys, trained_users,
                                           required=what == 'test' or require_val)
        splits.append(split)
        warnings += [warning] if warning else []
    _check_user_item_dict(os.path.join(folder, 'user_item_dict.npy'), num_user, num_item, keys)

    features = {}
    for m in files:
        if m in dense:
            feat = dense[m]
            if feat.shape[0] != num_item:
                raise DataError(files[m][0], f'has {feat.shape[0]} rows, expected one per item ({num_item})')
            features[m] = feat
        else:
            features[m] = _load_words(words[m], num_item)
    for line in warnings:       # only for a dataset that loads: an error stays the one line
        print(line, file=sys.stderr)
    return Dataset(name, folder, num_user, num_item, train, splits[0], splits[1], features)


def _dataset_sizes(folder, meta, train_raw, dense):
    """``(num_user, num_item, where they come from)``: meta.json, the published sizes of a legacy name,
    or inferred (users: largest id + 1; items: feature rows, else largest item id - U + 1; SPEC 1.1)."""
    train_path = os.path.join(folder, 'train.npy')
    if meta is not None and 'num_user' in meta and 'num_item' in meta:
        return meta['num_user'], meta['num_item'], os.path.join(folder, 'meta.json')
    key = legacy_key(folder)
    if key is not None:
        return (*LEGACY_SIZES[key], f'{folder} (published {os.path.basename(folder)} sizes)')
    num_user = int(train_raw[:, 0].max()) + 1
    if dense:
        num_item = next(iter(dense.values())).shape[0]
    else:
        num_item = int(train_raw[:, 1].max()) - num_user + 1
    if num_item <= 0:
        raise DataError(train_path, f'item id {int(train_raw[:, 1].max())} is smaller than the user count '
                                    f'{num_user} (item ids must be offset by the number of users)')
    return num_user, num_item, train_path


def _evaluation_split(path, raw, what, num_user, num_item, train_keys, trained_users, required):
    """``(user -> items, warning line or None)`` of a validation or test file: ids checked, users known to
    training, pairs that are also training pairs dropped (masked out in ranking, they could never be found)."""
    split, dropped = {}, 0
    for u, its in raw.items():
        if u < 0 or u >= num_user:
            raise DataError(path, f'user id {u} out of range (dataset has {num_user} users)')
        its = np.unique(_check_items(its, num_user, num_item, path, f'user {u}'))
        if its.size == 0:
            continue
        if not trained_users[u]:
            raise DataError(path, f'user {u} has no training interaction (unknown to train.npy)')
        in_train = in_sorted(train_keys, u * num_item + its)
        dropped += int(in_train.sum())
        if in_train.all():
            continue
        split[u] = its[~in_train]
    if not split and required:
        also = f' ({dropped} pairs dropped as training pairs)' if dropped else ''
        raise DataError(path, f'the {what} split is empty{also}: nothing to '
                              f'{"select the best epoch by" if what == "validation" else "evaluate"}')
    warning = (f'warning: {path}: dropped {dropped} {what} pairs that are also training pairs '
               f'(training items are masked out in ranking)') if dropped else None
    return split, warning


def _check_user_item_dict(path, num_user, num_item, train_keys):
    """The optional ``user_item_dict.npy`` must hold exactly the training pairs."""
    if not os.path.exists(path):
        return
    uid = _load_user_item_dict(path)
    pairs = [(u, _check_items(its, num_user, num_item, path, f'user {u}')) for u, its in uid.items()]
    for u, _ in pairs:
        if u < 0 or u >= num_user:
            raise DataError(path, f'user id {u} out of range (dataset has {num_user} users)')
    uid_keys = np.unique(np.concatenate([u * num_item + its for u, its in pairs] or [np.zeros(0, np.int64)]))
    if not np.array_equal(uid_keys, train_keys):
        diff = np.setxor1d(uid_keys, train_keys)[0]
        raise DataError(path, f'disagrees with train.npy on user {int(diff // num_item)} '
                              f'item {int(diff % num_item) + num_user}')


def _load_words(path, num_item):
    pairs = load_pt_tensor(path)
    if pairs.dim() != 2 or pairs.shape[0] != 2:
        raise DataError(path, f'expected a LongTensor [2, W] of (item, word id) pairs, found shape {tuple(pairs.shape)}')
    if pairs.dtype.is_floating_point or pairs.dtype == torch.bool:
        raise DataError(path, f'expected integer (item, word id) pairs, found dtype {pairs.dtype}')
    pairs = pairs.long()
    if pairs.shape[1] == 0:
        raise DataError(path, 'holds no (item, word id) pair')
    if pairs.min() < 0:
        raise DataError(path, f'negative id {int(pairs.min())}')
    if pairs[0].max() >= num_item:
        raise DataError(path, f'item index {int(pairs[0].max())} out of range (items are 0..{num_item - 1}, not offset)')
    if pairs[1].max() > MAX_WORD_ID:    # the vocabulary is the largest id + 1: one embedding row per id
        raise DataError(path, f'word id {int(pairs[1].max())} is too large (word ids must be below 2**20; '
                              f'number the words densely)')
    return WordFeature(pairs[0].clone(), pairs[1].clone(), int(pairs[1].max()) + 1)


# --------------------------------------------------------------------------
# Training batches

class TrainSampler:
    """Shuffled batches of training pairs, with one uniform negative per pair when asked.

    Negatives are drawn for a whole batch at once; collisions with the user's
    training items are found by binary search over the sorted ``user*I+item``
    keys and redrawn, so there is no per-sample scan of the item set.

    Under torchrun's data mode (SPEC 7) the pairs are dealt: ``ranks`` = W,
    ``rank`` = r.  Each epoch draws one permutation of all pairs from ``rng``
    (as one process does), cuts it into global batches of ``W · batch_size``
    pairs, draws the negatives of the whole global batch, and yields rank r's
    rows ``r/W .. (r+1)/W`` of each.  Every rank thus consumes ``rng`` alike, and
    its state at an epoch's end means the same under any W: whoever resumes
    from it draws the same next permutation.  ``ranks=1``: one process, as before.
    """

    def __init__(self, train, num_item, batch_size, rng, source='train.npy', ranks=1, rank=0):
        self.source = source
        self.users = torch.from_numpy(train[:, 0].astype(np.int64))
        self.items = torch.from_numpy(train[:, 1].astype(np.int64))
        self.keys = np.sort(train[:, 0].astype(np.int64) * num_item + train[:, 1])
        self.num_item, self.batch_size, self.rng = num_item, batch_size, rng
        self.ranks, self.rank = ranks, rank
        self.user_counts = np.bincount(train[:, 0])

    def __len__(self):
        step = self.batch_size * self.ranks
        return (len(self.users) + step - 1) // step

    def sample_negatives(self, users):
        """One item per user, uniform over the items the user has not interacted with."""
        users = np.asarray(users, dtype=np.int64)
        neg = self.rng.integers(0, self.num_item, size=len(users))
        todo = np.arange(len(users))
        while todo.size:
            keys = users[todo] * self.num_item + neg[todo]
            pos = np.searchsorted(self.keys, keys)
            hit = self.keys[np.minimum(pos, len(self.keys) - 1)] == keys
            todo = todo[hit]
            neg[todo] = self.rng.integers(0, self.num_item, size=todo.size)
        return neg

    def batches(self, negatives):
        """Yield (users, items[, negatives]) LongTensors for one epoch (this rank's rows of each global batch)."""
        if negatives and self.user_counts.max() >= self.num_item:
            raise DataError(self.source, f'user {int(self.user_counts.argmax())} has interacted with every item: '
                                         f'no negative to sample')
        order = torch.from_numpy(self.rng.permutation(len(self.users)))
        step = self.batch_size * self.ranks
        for start in range(0, len(order), step):
            idx = order[start:start + step]
            batch = [self.users[idx], self.items[idx]]
            if negatives:
                batch.append(torch.from_numpy(self.sample_negatives(batch[0].numpy())))
            if self.ranks > 1:
                lo, hi = self.rank * len(idx) // self.ranks, (self.rank + 1) * len(idx) // self.ranks
                batch = [t[lo:hi] for t in batch]
            yield tuple(batch)
