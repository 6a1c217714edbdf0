"""Reading untrusted files: nothing in a data, checkpoint or config file is ever executed (SPEC 1.4).

Plain arrays load with ``allow_pickle=False``, ``.pt`` files with
``weights_only=True``, the legacy pickled object arrays and the HKUDS layout's
pickled SciPy matrices through restricted unpicklers that admit only what
those files hold, and YAML with
``safe_load``.  Only regular files are read (a FIFO would hang).  Every
failure is a ``DataError`` (or, for YAML, an ``InputError``) naming the file.

    from safe_read import load_npy, load_matrix, load_sparse_pickle
    rows = load_npy('Data/x/val_full.npy', allow_object=True)
"""
import io
import os
import pickle
import stat

import numpy as np
import torch

from errors import DataError, InputError, describe


def check_regular(path):
    """Raise DataError unless ``path`` is a regular file (a FIFO or a device would hang or never end)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(path, 'file not found') from None
    except (OSError, ValueError) as e:           # ValueError: a path with a null byte
        raise DataError(path, f'cannot read ({getattr(e, "strerror", None) or e})') from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(path, 'not a regular file')
    return st.st_size


def read_regular(path, limit):
    """The bytes of the regular file ``path``, refused above ``limit`` bytes."""
    check_regular(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0))
        with os.fdopen(fd, 'rb') as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):   # swapped since the check
                raise DataError(path, 'not a regular file')
            data = f.read(limit + 1)
    except OSError as e:
        raise DataError(path, f'cannot read ({e.strerror or e})') from None
    if len(data) > limit:
        raise DataError(path, f'larger than {limit} bytes')
    return data


def _unique_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        twice = next(k for n, k in enumerate(keys) if k in keys[:n])
        raise ValueError(f'the key {twice[:40]!r} appears twice in one object')
    return dict(pairs)


def load_json(path, limit):
    """The JSON document in the regular file ``path`` (at most ``limit`` bytes); a key given twice in one object
    is refused (``json`` keeps the last silently).  Every failure is a ``DataError`` naming the file."""
    import json
    data = read_regular(path, limit)
    try:
        return json.loads(data, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as e:          # UnicodeDecodeError is a ValueError
        raise DataError(path, f'not valid JSON ({describe(e)})') from None


MAX_PICKLE_BYTES = 1 << 30      # a pickled split or dict file larger than 1 GiB is refused (SPEC 1.4)


class _ArrayClass:
    """Stands for ``numpy.ndarray`` inside a pickle: usable only as ``_reconstruct``'s first argument."""


PLAIN_KINDS = 'biufcO'          # bool, integers, floats, complex; object only for a list-pickled array


def _plain_dtype(spec, align=False, copy=False):
    """``numpy.dtype`` as pickles call it: a fresh plain dtype (no fields, no sub-array), held by a
    ``_DtypeSpec`` whose ``BUILD`` may set the byte order and nothing else.

    The real ``dtype.__setstate__`` takes names, fields, sizes and flags from the
    stream: a dtype that holds object fields while its flags deny it makes an
    array of attacker-chosen pointers (a segmentation fault, or worse).
    """
    try:
        dtype = np.dtype(spec if isinstance(spec, str) else bytes(spec).decode('ascii'))
    except (TypeError, ValueError, UnicodeDecodeError):
        raise pickle.UnpicklingError('refused a dtype that is not a plain type name') from None
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in PLAIN_KINDS:
        raise pickle.UnpicklingError(f'refused the dtype {dtype} (plain numbers or objects only)')
    return _DtypeSpec(dtype)


class _DtypeSpec:
    """A dtype read from a pickle; ``_real_dtype`` gives the dtype itself to the array builders."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __setstate__(self, state):
        """numpy's dtype state ``(3, byte order, None, None, None, size, alignment, flags)``: only the byte order
        is taken; sizes and flags must be the plain type's own (or -1, 'the default')."""
        d = self.dtype
        if not (isinstance(state, tuple) and len(state) == 8 and state[0] in (3, 4) and state[1] in '<>|='
                and state[2:5] == (None, None, None) and state[5] in (-1, d.itemsize)
                and state[6] in (-1, d.alignment) and isinstance(state[7], int)):
            raise pickle.UnpicklingError('refused a dtype state that is not a plain type\'s')
        if state[1] in '<>' and d.byteorder != '|':
            self.dtype = d.newbyteorder(state[1])


def _real_dtype(value):
    """The dtype an array builder was given: a ``_DtypeSpec``, or a type code as bytes (``_reconstruct``)."""
    if isinstance(value, _DtypeSpec):
        return value.dtype
    if isinstance(value, (bytes, str)):
        return _plain_dtype(value).dtype
    raise pickle.UnpicklingError(f'refused an array type given as {type(value).__name__}')


class _CheckedArray(np.ndarray):
    """The arrays a pickle makes: an ``ndarray`` whose ``BUILD`` (``__setstate__``) is checked first.

    numpy's own ``__setstate__`` allocates the shape the stream names before
    it compares an object array's list with it, and then reads past the list
    (a few bytes of pickle crash the process); here the data must fill the
    shape exactly (a list of one object per element, or the bytes of a plain
    dtype) before numpy sees it.
    """

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError('refused an array state that is not numpy\'s')
        version, (shape, dtype, fortran, raw) = (state[0], state[1:]) if len(state) == 5 else (1, state)
        dtype = _real_dtype(dtype)
        if not (isinstance(shape, tuple) and len(shape) <= 32
                and all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 0 for n in shape)):
            raise pickle.UnpicklingError('refused an array whose shape is not a tuple of sizes')
        count = 1
        for n in shape:
            count *= int(n)
        if dtype.hasobject:
            fits = isinstance(raw, list) and len(raw) == count
        else:
            fits = isinstance(raw, (bytes, bytearray)) and len(raw) == count * dtype.itemsize
        if not fits:
            raise pickle.UnpicklingError(f'refused an array whose data do not fill its shape {shape[:4]}')
        super().__setstate__((version, tuple(int(n) for n in shape), dtype, bool(fortran), raw))


def _bounded_reconstruct(subtype, shape, dtype):
    """numpy's ``_reconstruct`` as ``np.save`` pickles it: an empty array that BUILD then fills (and checks).

    A pickle that asks for any other shape could allocate without limit from a few bytes.
    """
    if subtype is not _ArrayClass or tuple(shape) != (0,):
        raise pickle.UnpicklingError('refused an array reconstructed with a non-empty shape')
    return _CheckedArray((0,), _real_dtype(dtype))


def _plain_scalar(dtype, data=None):
    """numpy's ``scalar`` (a pickled numpy number) as the plain Python number it holds."""
    dtype = _real_dtype(dtype)
    if dtype.hasobject or not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError('refused a numpy scalar that is not the bytes of a plain number')
    return np.frombuffer(data, dtype)[0].item()


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only what the legacy split/dict files hold (SPEC 1.4).

    Nothing it admits builds more than the stream spells out: arrays start
    empty and get their data from the stream (checked against their shape
    before numpy sees it), dtypes are plain types, numpy scalars become Python
    numbers, and the containers hold what the stream appends.  A shared
    sub-list (a "billion laughs" bomb) stays small here and is refused by the
    flat-row checks of ``_as_int_array`` before anything walks it.
    """

    ALLOWED = {
        ('builtins', 'set'), ('builtins', 'frozenset'), ('builtins', 'list'),
        ('builtins', 'dict'), ('builtins', 'int'), ('builtins', 'tuple'),
        ('collections', 'defaultdict'), ('collections', 'OrderedDict'),
    }
    NUMPY = {'_reconstruct': _bounded_reconstruct, 'scalar': _plain_scalar}

    def find_class(self, module, name):
        if module in ('numpy.core.multiarray', 'numpy._core.multiarray') and name in self.NUMPY:
            return self.NUMPY[name]
        if (module, name) == ('numpy', 'ndarray'):
            return _ArrayClass
        if (module, name) == ('numpy', 'dtype'):
            return _plain_dtype
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f'refused to load {module}.{name}')
        import importlib
        return getattr(importlib.import_module(module), name)


def _latin1_bytes(text, encoding='utf-8'):
    """``_codecs.encode`` as protocol-2 pickles use it for array bytes: a str to latin-1 bytes, nothing else."""
    if not isinstance(text, str) or encoding != 'latin1':
        raise pickle.UnpicklingError('refused _codecs.encode other than a string to latin1')
    return text.encode('latin1')


def _array_from_buffer(buffer, dtype, shape, order='C'):
    """numpy's ``_frombuffer`` (protocol 5): an array over bytes the stream holds; numpy checks the size."""
    dtype = _real_dtype(dtype)
    if not isinstance(buffer, (bytes, bytearray, pickle.PickleBuffer)) or dtype.hasobject or order not in ('C', 'F'):
        raise pickle.UnpicklingError('refused a buffer array that is not plain numeric bytes')
    return np.frombuffer(buffer, dtype).reshape(shape, order=order).copy().view(_CheckedArray)


SPARSE_NAMES = {f'{kind}_{suffix}': kind for kind in ('coo', 'csr') for suffix in ('matrix', 'array')}


class _SparseStandIn:
    """Stands for a SciPy COO/CSR class inside a pickle: made empty (``NEWOBJ``) and given its state dict
    (``BUILD``); called with arguments (``REDUCE``: ``csr_matrix((2**31 - 1, 200))`` allocates gigabytes) it
    refuses.  ``load_sparse_pickle`` reads the state's arrays and checks them; no SciPy code runs."""
    kind = None

    def __new__(cls, *args, **kwargs):
        if args or kwargs:
            raise pickle.UnpicklingError('refused a sparse matrix constructed from arguments (only its state '
                                         'is read)')
        return super().__new__(cls)


def _sparse_classes():
    """``{(module, class name): stand-in}`` for the four sparse classes, at their current and pre-1.8 paths."""
    classes = {}
    for name, kind in SPARSE_NAMES.items():
        stand_in = type(name, (_SparseStandIn,), {'kind': kind})
        for module in (f'scipy.sparse._{kind}', f'scipy.sparse.{kind}'):
            classes[(module, name)] = stand_in
    return classes


class _SparseUnpickler(_RestrictedUnpickler):
    """Admits what a pickled SciPy COO/CSR matrix holds (the HKUDS layout's trnMat.pkl): stand-ins for the
    four sparse classes, numpy's array reconstruction (checked as above) and dtypes, and nothing else.

    The stand-ins are only instantiated empty and given a state dict
    (``BUILD``); ``load_sparse_pickle`` then reads that dict's arrays and
    builds a fresh matrix from them, so nothing of the loaded object is
    trusted or called.
    """

    def find_class(self, module, name):
        if (module, name) in self.sparse:
            return self.sparse[(module, name)]
        if (module, name) == ('_codecs', 'encode'):
            return _latin1_bytes
        if (module, name) in (('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer')):
            return _array_from_buffer
        if module.startswith('builtins') or module.startswith('collections'):
            raise pickle.UnpicklingError(f'refused to load {module}.{name}')
        return super().find_class(module, name)

    def __init__(self, file):
        super().__init__(file)
        self.sparse = _sparse_classes()


def _index_array(state, key, path):
    arr = state.get(key)
    if not isinstance(arr, np.ndarray) or arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(path, f'the sparse matrix\'s {key} is not a 1-D integer array')
    return np.asarray(arr, dtype=np.int64)


def load_sparse_pickle(path, limit=MAX_PICKLE_BYTES):
    """A pickled SciPy sparse matrix (COO or CSR) as a fresh, checked ``(rows, cols, values, shape)``.

    Read through ``_SparseUnpickler``: a pickle naming anything else is
    refused before it runs.  Checked: a 2-D shape, integer indices inside it,
    as many values as indices, finite numeric values.
    """
    data = read_regular(path, limit)
    try:
        obj = _SparseUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        raise DataError(path, f'unsafe or corrupt pickle ({e})') from None
    except RecursionError:
        raise DataError(path, 'unsafe or corrupt pickle (nested too deeply)') from None
    except Exception as e:
        raise DataError(path, f'not a readable pickle ({describe(e)})') from None
    if not isinstance(obj, _SparseStandIn):
        raise DataError(path, f'expected a pickled SciPy sparse matrix, found {type(obj).__name__}')
    state = vars(obj)
    shape = state.get('_shape')
    if not (isinstance(shape, tuple) and len(shape) == 2 and all(isinstance(n, (int, np.integer)) and 0 <= n < 2 ** 31
                                                                 for n in shape)):
        raise DataError(path, f'expected a 2-D users x items matrix, found shape {str(shape)[:60]}')
    shape = (int(shape[0]), int(shape[1]))
    values = state.get('data')
    if not isinstance(values, np.ndarray) or values.ndim != 1 or values.dtype.hasobject \
            or not (np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_):
        raise DataError(path, 'the sparse matrix\'s data is not a 1-D numeric array')
    values = np.asarray(values)
    if obj.kind == 'coo':
        coords = state.get('coords', (state.get('row'), state.get('col')))
        if not isinstance(coords, tuple) or len(coords) != 2:
            raise DataError(path, 'the COO matrix does not hold two coordinate arrays (2-D)')
        rows, cols = (_index_array({'coords': c}, 'coords', path) for c in coords)
    else:
        indptr, cols = _index_array(state, 'indptr', path), _index_array(state, 'indices', path)
        if len(indptr) != shape[0] + 1 or indptr[0] != 0 or indptr[-1] != len(cols) or (np.diff(indptr) < 0).any():
            raise DataError(path, 'the CSR matrix\'s indptr does not fit its shape and indices')
        rows = np.repeat(np.arange(shape[0], dtype=np.int64), np.diff(indptr))
    if not (len(rows) == len(cols) == len(values)):
        raise DataError(path, f'the sparse matrix holds {len(values)} values for {len(cols)} indices')
    for what, idx, n in (('row', rows, shape[0]), ('column', cols, shape[1])):
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
            raise DataError(path, f'{what} index {bad} outside the shape {shape}')
    if not np.isfinite(values.astype(np.float64)).all():
        raise DataError(path, 'NaN or Inf among the matrix values')
    return rows, cols, values, shape


def load_npy(path, allow_object=False):
    """Load a ``.npy`` file; object arrays only when ``allow_object``, through the restricted unpickler.

    The file must be a regular file; a plain array must fill the file exactly
    (a header that understates the rows would silently drop data); a pickled
    one is refused above ``MAX_PICKLE_BYTES``.
    """
    size = check_regular(path)
    try:
        with open(path, 'rb') as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            if not dtype.hasobject:
                expected = f.tell() + int(np.prod(shape, dtype=object)) * dtype.itemsize
                if size > expected:
                    raise DataError(path, f'{size - expected} bytes after the array of shape {tuple(shape)} its '
                                          f'header describes (the header understates the rows?)')
                f.seek(0)
                return np.load(f, allow_pickle=False)
            if not allow_object:
                raise DataError(path, 'holds pickled objects where a numeric array is expected')
            if size > MAX_PICKLE_BYTES:
                raise DataError(path, f'a pickled file of {size} bytes; more than {MAX_PICKLE_BYTES} is refused')
            obj = _RestrictedUnpickler(f).load()
    except DataError:
        raise
    except pickle.UnpicklingError as e:
        raise DataError(path, f'unsafe or corrupt pickle ({e})') from None
    except RecursionError:
        raise DataError(path, 'unsafe or corrupt pickle (nested too deeply)') from None
    except Exception as e:  # truncated, not numpy, bad header ...
        raise DataError(path, f'not a readable .npy file ({describe(e)})') from None
    if not isinstance(obj, np.ndarray):
        raise DataError(path, f'expected a numpy array, found {type(obj).__name__}')
    return obj.view(np.ndarray)


def load_pt_tensor(path):
    """Load a tensor from ``.pt`` with ``weights_only=True``."""
    check_regular(path)
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise DataError(path, f'not a readable tensor file ({describe(e)})') from None
    if isinstance(obj, np.ndarray):
        obj = torch.from_numpy(obj)
    if not isinstance(obj, torch.Tensor):
        raise DataError(path, f'expected a tensor, found {type(obj).__name__}')
    if obj.is_nested or obj.layout != torch.strided or obj.device.type != 'cpu':
        layout = 'nested' if obj.is_nested else f'{obj.layout} on {obj.device}'.replace('torch.', '')
        raise DataError(path, f'expected a dense tensor, found a {layout} one')
    return obj.detach()


def load_matrix(path):
    """A dense 2-D float feature matrix from ``.npy`` or ``.pt``."""
    if path.endswith('.pt'):
        tensor = load_pt_tensor(path)
        if tensor.is_floating_point():          # bfloat16 and float8 have no numpy type
            tensor = tensor.double()
        arr = tensor.numpy()
    else:
        arr = load_npy(path)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise DataError(path, f'expected a 2-D feature matrix with at least one column, found shape {tuple(arr.shape)}')
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(path, f'expected numeric features, found dtype {arr.dtype}')
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise DataError(path, f'NaN or Inf in feature row {bad}')
    with np.errstate(over='ignore'):            # checked below: numpy's own warning would be a second line
        arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        bad = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise DataError(path, f'feature row {bad} holds a value beyond the float32 range')
    return arr


def _unique_key_loader():
    """yaml's SafeLoader, refusing a mapping that gives a key twice (it keeps the last silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != 'tag:yaml.org,2002:merge':
                    key = self.construct_object(key_node, deep=deep)
                    if key in seen:
                        raise yaml.constructor.ConstructorError(None, None, f'the key {str(key)[:40]!r} appears twice',
                                                                key_node.start_mark)
                    seen.add(key)
            return super().construct_mapping(node, deep)
    return UniqueKeyLoader


def read_yaml(path, what):
    """The YAML document in ``path`` (``what``: 'config file', 'space file'); any failure is one InputError,
    a key given twice in a mapping included."""
    import yaml
    try:
        if os.path.exists(path) and not os.path.isfile(path):
            raise OSError('not a regular file')      # a FIFO would hang
        with open(path) as f:
            return yaml.load(f, Loader=_unique_key_loader())
    except (OSError, ValueError) as e:               # ValueError: a path with a null byte, a file not UTF-8
        raise InputError(f'{path}: cannot read the {what} ({getattr(e, "strerror", None) or e})') from None
    except yaml.YAMLError as e:
        raise InputError(f'{path}: not valid YAML ({" ".join(str(e).split())})') from None

