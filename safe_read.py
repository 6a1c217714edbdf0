"""Reading untrusted files: nothing in a data, checkpoint or config file is ever executed (SPEC 1.4).

Plain arrays load with ``allow_pickle=False``, ``.pt`` files with
``weights_only=True``, the legacy pickled object arrays through a restricted
unpickler that admits only what those files hold, and YAML with
``safe_load``.  Only regular files are read (a FIFO would hang).  Every
failure is a ``DataError`` (or, for YAML, an ``InputError``) naming the file.

    from safe_read import load_npy, load_matrix
    rows = load_npy('Data/x/val_full.npy', allow_object=True)
"""
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


MAX_PICKLE_BYTES = 1 << 30      # a pickled split or dict file larger than 1 GiB is refused (SPEC 1.4)


class _ArrayClass:
    """Stands for ``numpy.ndarray`` inside a pickle: usable only as ``_reconstruct``'s first argument."""


def _bounded_reconstruct(subtype, shape, dtype):
    """numpy's ``_reconstruct`` as ``np.save`` pickles it: an empty array that BUILD then fills (and checks).

    A pickle that asks for any other shape could allocate without limit from a few bytes.
    """
    if subtype is not _ArrayClass or tuple(shape) != (0,):
        raise pickle.UnpicklingError('refused an array reconstructed with a non-empty shape')
    return np.ndarray.__new__(np.ndarray, (0,), dtype)


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only what the legacy split/dict files hold (SPEC 1.4).

    Nothing it admits builds more than the stream spells out: arrays start
    empty and get their data from the stream (numpy checks its size), and the
    containers hold what the stream appends.  A shared sub-list (a "billion
    laughs" bomb) stays small here and is refused by the flat-row checks of
    ``_as_int_array`` before anything walks it.
    """

    ALLOWED = {
        ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'), ('numpy', 'dtype'),
        ('builtins', 'set'), ('builtins', 'frozenset'), ('builtins', 'list'),
        ('builtins', 'dict'), ('builtins', 'int'), ('builtins', 'tuple'),
        ('collections', 'defaultdict'), ('collections', 'OrderedDict'),
    }

    def find_class(self, module, name):
        if (module, name) in (('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct')):
            return _bounded_reconstruct
        if (module, name) == ('numpy', 'ndarray'):
            return _ArrayClass
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f'refused to load {module}.{name}')
        import importlib
        return getattr(importlib.import_module(module), name)


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
    return obj


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


def read_yaml(path, what):
    """The YAML document in ``path`` (``what``: 'config file', 'space file'); any failure is one InputError."""
    import yaml
    try:
        if os.path.exists(path) and not os.path.isfile(path):
            raise OSError('not a regular file')      # a FIFO would hang
        with open(path) as f:
            return yaml.safe_load(f)
    except (OSError, ValueError) as e:               # ValueError: a path with a null byte, a file not UTF-8
        raise InputError(f'{path}: cannot read the {what} ({getattr(e, "strerror", None) or e})') from None
    except yaml.YAMLError as e:
        raise InputError(f'{path}: not valid YAML ({" ".join(str(e).split())})') from None

