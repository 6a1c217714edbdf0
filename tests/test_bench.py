"""The results script and the RecBole cross-check's data plumbing (RecBole itself is not needed)."""
import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'bench'))

import lightgcn_recbole  # noqa: E402
import results  # noqa: E402
from DataLoad import load_dataset  # noqa: E402


def _read_pairs(path):
    with open(path) as f:
        assert f.readline() == 'user_id:token\titem_id:token\n'
        return sorted(tuple(map(int, line.split('\t'))) for line in f)


def _records(out, folder):
    text = (out / f'results_{os.path.basename(folder)}.jsonl').read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_recbole_export_holds_exactly_our_split(tiny_plain, tmp_path):
    data = load_dataset(tiny_plain)
    lightgcn_recbole.export(data, str(tmp_path), 'x')
    assert _read_pairs(tmp_path / 'x' / 'x.train.inter') == sorted(map(tuple, data.train.tolist()))
    for part, split in (('valid', data.val), ('test', data.test)):
        expected = sorted((u, int(i)) for u, items in split.items() for i in items)
        assert _read_pairs(tmp_path / 'x' / f'x.{part}.inter') == expected


def test_recbole_embeddings_return_to_our_ids():
    # RecBole numbers tokens by first appearance, with '[PAD]' at 0; our item 2 never appeared.
    dataset = SimpleNamespace(field2id_token={'item_id': np.array(['[PAD]', '3', '0', '1'])})
    table = torch.tensor([[9.0], [30.0], [0.0], [10.0]])
    out = lightgcn_recbole.in_our_order(table, dataset, 'item_id', 4)
    assert out[[0, 1, 3], 0].tolist() == [0.0, 10.0, 30.0]
    assert torch.isnan(out[2, 0])


def test_results_table_selects_on_validation(tiny_plain, tmp_path):
    out = tmp_path / 'out'
    results.main_(['--dataset', tiny_plain, '--seeds', '1', '2', '--rows', 'ID', '--max_epoch', '2',
                   '--patience', '2', '--out', str(out)])
    records = _records(out, tiny_plain)
    assert len(records) == 3                          # two grid points with seed 1, then seed 2 at the chosen one
    grid = {r['args']['l_r']: r['val']['20']['recall'] for r in records[:2]}
    chosen = max(grid, key=grid.get)
    assert records[2]['args']['seed'] == 2 and records[2]['args']['l_r'] == chosen
    table = (out / f'results_{os.path.basename(tiny_plain)}.md').read_text()
    row = next(line for line in table.splitlines() if line.startswith('| ID only'))
    mean = np.mean([records[i]['test']['20']['recall'] for i in (2, [0, 1][list(grid).index(chosen)])])
    assert f'{mean:.4f} ± ' in row and f'--l_r {chosen}' in row


def test_results_without_grid_uses_published_rates(tiny_plain, tmp_path):
    out = tmp_path / 'out'
    results.main_(['--dataset', tiny_plain, '--seeds', '1', '--rows', 'ID,MMGCN', '--max_epoch', '1',
                   '--no-grid', '--out', str(out)])
    records = _records(out, tiny_plain)
    assert [(r['args']['model_name'], r['args']['l_r']) for r in records] == [('SLMRec', 0.01), ('MMGCN', 0.0005)]
    assert 'no grid: published learning rates' in (out / f'results_{os.path.basename(tiny_plain)}.md').read_text()
