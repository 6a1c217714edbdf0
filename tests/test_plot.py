"""bench/plot.py: a readable PNG of the documented size from the results lines' histories."""
import json
import os
import struct
import sys
import zlib

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, 'bench'))
pytest.importorskip('matplotlib')
import plot  # noqa: E402


def _record(run, ssl_task, losses, recalls, best):
    history = [{'epoch': e, 'loss': loss, 'val': {'10': {'precision': 0.1, 'recall': r, 'ndcg': 0.1}}, 'seconds': 1.0}
               for e, (loss, r) in enumerate(zip(losses, recalls), start=1)]
    return {'run': run, 'status': 'done', 'args': {'topK': [10], 'ssl_task': ssl_task, 'save_file': run},
            'best_epoch': best, 'history': history}


def _png_size_and_check(path):
    """(width, height) from IHDR, after checking the signature and every chunk's CRC up to IEND."""
    with open(path, 'rb') as f:
        data = f.read()
    assert data[:8] == b'\x89PNG\r\n\x1a\n'
    pos, kinds = 8, []
    while pos < len(data):
        length, kind = struct.unpack('>I4s', data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        assert struct.unpack('>I', data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body)
        kinds.append(kind)
        pos += 12 + length
    assert kinds[0] == b'IHDR' and kinds[-1] == b'IEND' and b'IDAT' in kinds
    width, height = struct.unpack('>II', data[16:24])
    return width, height


def test_writes_a_png_of_the_documented_size(tmp_path, capsys):
    results = tmp_path / 'r.jsonl'
    lines = [_record('a-SLMRec-seed1', 'FD', [5, 4, 3.5], [0.1, 0.2, 0.15], 2),
             _record('a-SLMRec-seed1', 'FM', [5, 4.5, 4], [0.1, 0.12, 0.18], 3),
             _record('a-MMGCN-seed1', 'FAC', [1, 0.8], [0.05, 0.06], 2),
             {'run': 'old', 'args': {'topK': [10]}, 'best_epoch': 1}]          # a line from before histories
    results.write_text(''.join(json.dumps(r) + '\n' for r in lines))
    out = tmp_path / 'curves.png'
    assert plot.main([str(results), '--out', str(out)]) == 0
    assert '3 runs' in capsys.readouterr().out
    assert _png_size_and_check(out) == (int(plot.FIGSIZE[0] * plot.DPI), int(plot.FIGSIZE[1] * plot.DPI))
    labels = [label for label, _ in plot.load_runs(str(results))]
    assert labels == ['a-SLMRec-seed1 ssl_task=FD', 'a-SLMRec-seed1 ssl_task=FM', 'a-MMGCN-seed1']
    assert [label for label, _ in plot.load_runs(str(results), ['a-MMGCN-seed1'])] == ['a-MMGCN-seed1']
    assert plot.main([str(results), '--runs', 'a-MMGCN-seed1', '--out', str(tmp_path / 'one.png')]) == 0
    assert (tmp_path / 'one.png').stat().st_size != out.stat().st_size      # a different picture
    assert not [p for p in os.listdir(tmp_path) if p.startswith('.')]


@pytest.mark.parametrize('content, flags, message', [
    ('{"run": "a", "args": {"topK": [10]}}\n', [], 'no run with a per-epoch history'),
    ('not json\n', [], 'line 1 is not JSON'),
    ('', ['--runs', 'b'], "no run named 'b'"),
])
def test_bad_input_is_one_line(tmp_path, capsys, content, flags, message):
    results = tmp_path / 'r.jsonl'
    results.write_text(content)
    assert plot.main([str(results), *flags, '--out', str(tmp_path / 'c.png')]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: {results}: ') and message in err and not (tmp_path / 'c.png').exists()
