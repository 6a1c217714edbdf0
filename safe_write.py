"""Writing outputs safely: atomically, never over an input, and checked before any work is done.

Every file this package writes (checkpoints, best models, the top-K export,
FREEDOM's kNN cache, sweep.py's chosen config) goes through ``atomic_file``:
a temporary beside the target, flushed, fsynced and renamed into place, so a
kill or a full disk leaves the old file as it was.  The results file is
appended in one write (``append_results_line``).  Before training,
``check_outputs`` proves every output writable and removes the temporaries a
killed run left, and ``check_not_inputs`` refuses outputs that would
overwrite the dataset, the config file or the loaded weights.  A folder
written whole (a dataset, an export, downloaded files) is filled in a marked
temporary sibling and renamed into place when complete (``staged_folder``).

    from safe_write import atomic_save
    atomic_save(model.state_dict(), 'runs/x.best.pt')
"""
import contextlib
import errno
import fcntl
import io
import json
import os
import re
import shutil
import stat
import tempfile

import torch

from errors import InputError


def check_writable(path, what):
    """Fail now, not after hours of training, when ``path`` cannot be written."""
    if not path:
        raise InputError(f"'': the {what} needs a file name")
    real = os.path.realpath(path)                  # a symbolic link: its target is written (atomic_file)
    folder = os.path.dirname(real)
    try:
        os.makedirs(folder, exist_ok=True)
        # as long as atomic_file's temporary name (so a name near the 255-byte limit fails here, not after
        # training), with '~' for its first '-' (so it is never taken for one)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f'.{os.path.basename(real)}~{os.getpid()}-'):
            pass
        if os.path.isdir(path):
            raise OSError('is a directory')
        if os.path.exists(path) and not os.path.isfile(path):
            raise OSError('not a regular file')        # e.g. /dev/null: atomic_save would replace it
        if os.path.exists(path) and not os.access(path, os.W_OK):
            raise OSError('permission denied')
    except OSError as e:
        raise InputError(f'{path}: cannot write the {what} ({e.strerror or e})') from None


@contextlib.contextmanager
def no_empty_folders_left(paths):
    """The folders above ``paths`` that do not exist yet are removed again after the block when they are still
    empty: a run refused before it wrote anything (a missing dataset, a bad flag) leaves no empty ``runs/``
    behind, though ``check_writable`` made it to prove the path writable."""
    missing = set()
    for path in paths:
        folder = os.path.dirname(os.path.realpath(path))
        while folder and not os.path.lexists(folder):
            missing.add(folder)
            folder = os.path.dirname(folder)
    try:
        yield
    finally:
        for folder in sorted(missing, key=len, reverse=True):     # deepest first
            try:
                os.rmdir(folder)
            except OSError:                        # it holds a file now (or is gone)
                pass


def check_outputs(outputs, folders=()):
    """``outputs``: [(path, what)]; distinct files, each writable, our stale temporaries beside them removed.
    ``folders`` ([(path, what)]) are output folders: none of the files may be one of them."""
    seen = {}
    for path, what in list(folders) + list(outputs):
        real = os.path.realpath(path)
        if real in seen:
            raise InputError(f'{path}: the {what} and the {seen[real]} are the same file; give each its own path')
        seen[real] = what
    for path, what in outputs:
        check_writable(path, what)
        remove_stale_temporaries(path)


def check_not_inputs(outputs, folder, args):
    """No output may overwrite an input: none inside the dataset folder (a results line appended to train.npy
    destroys the dataset), none the --config file, and none the --PATH_weight_load file when it is written (the
    best model and the checkpoint of a run that trains: its first evaluation would replace the weights it
    continues from; with --num_epoch 0 nothing replaces them)."""
    data = os.path.realpath(folder)
    weights = os.path.realpath(args.PATH_weight_load) if args.PATH_weight_load else None
    config = os.path.realpath(args.config) if args.config else None
    for path, what in outputs:
        real = os.path.realpath(path)
        if real.startswith(data + os.sep):
            raise InputError(f'{path}: the {what} would be written into the dataset folder {folder}; '
                             f'give it a path outside')
        # the best model and the checkpoint are written only by training (not by --num_epoch 0, which evaluates
        # the loaded weights); the first evaluation would replace the weights being continued from
        written = what in ('results file', 'top-K export') or args.num_epoch > 0
        if real == config or (real == weights and written):
            raise InputError(f'{path}: the {what} would overwrite the '
                             f'{"--config" if real == config else "--PATH_weight_load"} file; give it its own path')


def _temporary_prefix(path):
    return f'.{os.path.basename(path)}-'


def remove_stale_temporaries(path):
    """Remove what atomic_save left beside ``path`` when killed: ``.<name>-<pid>-XXXXXXXX`` of a process
    that is gone (or ``.<name>-XXXXXXXX``, the pattern before the pid was added); nothing else."""
    path = os.path.realpath(path)                  # where atomic_file writes
    folder = os.path.dirname(path)
    pattern = re.compile(re.escape(_temporary_prefix(path)) + r'(?:(\d+)-)?[a-z0-9_]{8}')
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry)
        tmp = os.path.join(folder, entry)
        if not match or os.path.islink(tmp) or not os.path.isfile(tmp):
            continue
        pid = int(match.group(1)) if match.group(1) else None
        if pid is not None and pid != os.getpid() and process_alive(pid):
            continue                               # another run is writing it now
        try:
            os.unlink(tmp)
        except OSError:
            pass


def process_alive(pid):
    """Whether process ``pid`` exists (a pid of 0 or below, as an empty pid file reads, names none)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):          # another user's process, or a pid beyond the platform's range
        return True
    return True


@contextlib.contextmanager
def atomic_file(path, mode='wb'):
    """A file for ``path`` written through a temporary beside it, flushed, fsynced and renamed into
    place on success; on any error or interruption the temporary is removed and ``path`` is untouched.
    A symbolic link is followed (its target is replaced, as an append to the results file would write there)."""
    path = os.path.realpath(path)
    folder, tmp = os.path.dirname(path), None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'{_temporary_prefix(path)}{os.getpid()}-')
        os.fchmod(fd, _plain_file_mode(path))     # mkstemp's 0600 would make every output private
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):               # a full disk, a quota: one line, not a traceback
            raise InputError(f'{path}: cannot write ({e.strerror or e}); the previous file, if any, is left '
                             f'as it was') from None
        raise


def _plain_file_mode(path):
    """The permissions ``open(path, 'w')`` would give: the existing file's, else 0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def atomic_save(obj, path):
    """torch.save through a temporary file, flushed and renamed, so a kill leaves the old file intact."""
    buffer = io.BytesIO()       # serialised first: torch's writer turns a failed write (a full disk) into a RuntimeError
    torch.save(obj, buffer)
    with atomic_file(path) as f:
        f.write(buffer.getbuffer())


def append_results_line(path, record):
    """Append ``record`` as one JSON line in a single write on an O_APPEND descriptor.

    A failed or short write (a full disk) truncates the file back to its old
    size and is an ``InputError``; a last line left unterminated by an older
    failure gets its newline first, so the new record is never glued to it.
    """
    line = (json.dumps(record, default=str) + '\n').encode()
    existed = os.path.lexists(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as e:
        raise InputError(f'{path}: cannot write the results file ({e.strerror or e})') from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)          # runs sharing the file append one at a time (and undo only their own)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b'\n':
            line = b'\n' + line
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(errno.ENOSPC, f'short write, {written} of {len(line)} bytes')
            os.fsync(fd)
        except OSError as e:
            try:
                os.ftruncate(fd, size)
                if not existed:
                    os.unlink(path)
            except OSError:
                pass
            raise InputError(f'{path}: cannot append the results line ({e.strerror or e}); '
                             f'the file is left as it was') from None
    finally:
        os.close(fd)



# --------------------------------------------------------------------------
# Folders written whole: a marked temporary sibling, renamed into place when complete

PARTIAL_MARKER = '.prepare_data-partial'     # in a temporary folder being written; holds the writer's pid


def mark_partial(path):
    """Mark the folder ``path`` as being written by this process (``remove_partials`` removes it once it is gone)."""
    with open(os.path.join(path, PARTIAL_MARKER), 'w') as f:
        f.write(str(os.getpid()))


def partial_sibling(folder):
    """A new, marked temporary sibling ``.<name>-XXXXXXXX`` of ``folder`` (its parent must exist)."""
    parent, base = os.path.split(os.path.abspath(folder))
    tmp = tempfile.mkdtemp(prefix=f'.{base}-', dir=parent)
    mark_partial(tmp)
    return tmp


def publish_partial(tmp, folder):
    """Rename the complete temporary ``tmp`` to ``folder`` (which must not exist) and unmark it; it gets the
    permissions a plain mkdir would give (mkdtemp's 0700 would make it private)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)
    os.replace(tmp, folder)
    os.unlink(os.path.join(folder, PARTIAL_MARKER))


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
                remove_partial(tmp)
            except OSError:
                pass


def remove_partial(path):
    """Remove a marked temporary folder, its marker last (an interrupted removal stays recognisable)."""
    for entry in os.listdir(path):
        if entry != PARTIAL_MARKER:
            target = os.path.join(path, entry)
            shutil.rmtree(target) if os.path.isdir(target) and not os.path.islink(target) else os.unlink(target)
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(folder, what):
    """A temporary sibling of ``folder`` to fill; renamed to ``folder`` when the block ends, removed (and ``folder``
    untouched) when it raises or is interrupted.  ``folder`` must be absent or an empty folder: anything else is
    refused before the block runs (an ``InputError`` naming it and ``what`` would have been written there)."""
    folder = os.path.abspath(folder)
    try:
        if os.path.islink(folder) or (os.path.lexists(folder) and not os.path.isdir(folder)):
            raise InputError(f'{folder}: exists and is not a folder; refusing to write the {what} there')
        if os.path.isdir(folder) and os.listdir(folder):
            raise InputError(f'{folder}: exists and is not empty; refusing to write the {what} there '
                             f'(give a new or empty folder)')
        remove_partials(folder)
        made = []                                  # the missing folders above it: removed again on failure
        parent = os.path.dirname(folder)
        while not os.path.lexists(parent):
            made.insert(0, parent)
            parent = os.path.dirname(parent)
        for path in made:
            os.mkdir(path)
        tmp = partial_sibling(folder)
    except (OSError, ValueError) as e:             # ValueError: a null byte in the path
        _remove_empty(made)
        raise InputError(f'{folder}: cannot write the {what} there ({getattr(e, "strerror", None) or e})') from None
    try:
        yield tmp
        if os.path.isdir(folder) and not os.path.islink(folder):
            os.rmdir(folder)                       # the empty folder it replaces (not empty now: OSError)
        publish_partial(tmp, folder)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(made)
        if isinstance(e, OSError):                 # a full disk, a quota: one line, not a traceback
            raise InputError(f'{folder}: cannot write the {what} ({e.strerror or e}); nothing was written') from None
        raise


def _remove_empty(folders):
    """Remove the folders ``staged_folder`` made above its target, deepest first, where they are still empty."""
    for path in reversed(folders):
        try:
            os.rmdir(path)
        except OSError:
            pass
