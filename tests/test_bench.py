"""The results script and the RecBole cross-check's data plumbing (RecBole itself is not needed)."""
import json
import mmap
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'bench'))

import bench  # noqa: E402
import lightgcn_recbole  # noqa: E402
import mmrec_side_by_side  # noqa: E402
import results  # noqa: E402
from DataLoad import load_dataset  # noqa: E402
from conftest import one_line_error  # noqa: E402


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


def _table_rows(out, folder):
    text = (out / f'results_{os.path.basename(folder)}.md').read_text()
    return [line for line in text.splitlines() if line.startswith('| ') and 'model' not in line]


def test_results_reuse_finished_runs_of_the_same_protocol(tiny_plain, tmp_path, monkeypatch):
    out = tmp_path / 'out'
    argv = ['--dataset', tiny_plain, '--seeds', '1', '--rows', 'ID', '--no-grid', '--out', str(out)]
    results.main_(argv + ['--max_epoch', '1'])
    table = _table_rows(out, tiny_plain)
    calls = []
    real_main = results.main.main
    monkeypatch.setattr(results.main, 'main', lambda a: calls.append(a) or real_main(a))
    results.main_(argv + ['--max_epoch', '1'])           # everything reused: nothing trains
    assert calls == [] and _table_rows(out, tiny_plain) == table
    assert len(_records(out, tiny_plain)) == 1
    results.main_(argv + ['--max_epoch', '2'])           # another protocol trains again
    assert len(calls) == 1 and _records(out, tiny_plain)[-1]['args']['num_epoch'] == 2


def test_results_in_parallel_processes_match_the_sequential_runs(tiny_plain, tmp_path):
    argv = ['--dataset', tiny_plain, '--seeds', '1', '2', '--rows', 'ID', '--max_epoch', '1', '--no-grid', '--no-cuda']
    results.main_(argv + ['--out', str(tmp_path / 'seq')])
    results.main_(argv + ['--out', str(tmp_path / 'par'), '--jobs', '2'])
    seq, par = (_records(tmp_path / d, tiny_plain) for d in ('seq', 'par'))
    by_seed = {r['args']['seed']: r for r in seq}
    assert sorted(r['args']['seed'] for r in par) == [1, 2]
    for r in par:
        assert r['test'] == by_seed[r['args']['seed']]['test'] and r['val'] == by_seed[r['args']['seed']]['val']
    without_time = [[row.rsplit('|', 2)[0] for row in _table_rows(tmp_path / d, tiny_plain)] for d in ('seq', 'par')]
    assert without_time[0] == without_time[1]
    assert len(list((tmp_path / 'par' / 'runs').glob('*.log'))) == 2      # each process's output kept


@pytest.mark.parametrize('flags, needle', [
    (['--rows', 'FAC,NoSuchRow'], "--rows: unknown row(s) 'NoSuchRow'; choose from FAC"),
    (['--rows', 'BPR,'], "--rows: unknown row(s) ''"),
    (['--rows', 'BPR', '--dataset', 'no_such_dataset'], 'no_such_dataset: dataset folder not found'),
    (['--rows', 'BPR', '--configs', 'no_such_folder'], '--configs: no_such_folder: folder not found')])
def test_results_refusals_are_one_line_before_anything_is_written(flags, needle, tiny_plain, tmp_path, capsys):
    # found: an unknown row was argparse's usage block after --out was made; a missing dataset ran every row's
    # grid into failed runs (exit 1) with their runs/ folder; a missing --configs fell back to the grid silently
    with pytest.raises(SystemExit) as stop:
        results.main_(['--dataset', tiny_plain, '--out', str(tmp_path / 'out'), *flags])
    assert stop.value.code == 2
    one_line_error(capsys, needle)
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('kernel_peak', [True, False], ids=['VmHWM', 'sampled'])
def test_peak_memory_sees_a_freed_allocation(kernel_peak, monkeypatch):
    if kernel_peak and not bench._reset_peak_rss():
        pytest.skip('no resettable VmHWM on this system')
    if not kernel_peak:
        monkeypatch.setattr(bench, '_reset_peak_rss', lambda: False)
    before = bench._rss()
    with bench.PeakMemory(torch.device('cpu')) as mem:
        block = mmap.mmap(-1, 64 * 2 ** 20)           # 64 MiB of its own pages, whatever malloc is told
        block.write(b'x' * len(block))
        if not kernel_peak:
            import time
            time.sleep(0.05)                          # the sampler needs a moment to see it
        block.close()
    assert mem.peak >= before + 60
    assert bench._rss() < mem.peak - 30               # freed: the peak is not the current size


def test_swept_row_takes_its_grid_from_sweep_py(tiny_plain, tmp_path, monkeypatch):
    import optuna
    monkeypatch.setattr(results, 'SWEPT', {'FAC-tuned': {'ssl_alpha': [0.01, 1.0]}})
    out = tmp_path / 'out'
    argv = ['--dataset', tiny_plain, '--seeds', '1', '2', '--rows', 'FAC-tuned', '--max_epoch', '2',
            '--patience', '2', '--out', str(out)]
    results.main_(argv)
    storage = f'sqlite:///{out}/sweep-results-{os.path.basename(tiny_plain)}-FAC-tuned-e2-p2.db'
    study = optuna.load_study(study_name=f'results-{os.path.basename(tiny_plain)}-FAC-tuned-e2-p2', storage=storage)
    trials = {t.params['ssl_alpha']: t for t in study.trials if t.state.name == 'COMPLETE'}
    assert sorted(trials) == [0.01, 1.0]
    chosen = max(trials, key=lambda a: trials[a].value)
    seed2, = _records(out, tiny_plain)               # the grid's runs are the sweep's; seed 2 is results.py's
    assert (seed2['args']['seed'], seed2['args']['ssl_alpha'], seed2['args']['ssl_task']) == (2, chosen, 'FAC')
    row = next(line for line in (out / f'results_{os.path.basename(tiny_plain)}.md').read_text().splitlines()
               if line.startswith('| SLMRec, FAC, tuned'))
    mean = np.mean([trials[chosen].user_attrs['test']['20']['recall'], seed2['test']['20']['recall']])
    assert f'{mean:.4f} ± ' in row and f'--ssl_alpha {chosen}' in row
    results.main_(argv)                               # everything reused: the study is finished, seed 2 kept
    assert len(optuna.load_study(study_name=study.study_name, storage=storage).trials) == 2


def test_results_table_of_tuned_configurations_in_three_renderings(tiny_plain, tmp_path, monkeypatch):
    """Issue #33: a model with configs/<dataset>/<Model>.yaml runs with it (every seed, no grid, its epochs and
    patience), the others take the grid; Markdown with the published numbers and a test-selected column
    where such runs exist, LaTeX and a PNG chart."""
    name = os.path.basename(tiny_plain)
    configs = tmp_path / 'configs' / name
    configs.mkdir(parents=True)
    (configs / 'BPR.yaml').write_text('# tuned\nmodel_name: BPR\nl_r: 0.01\nweight_decay: 0.001\n'
                                      'num_epoch: 2\npatience: 3\n')
    monkeypatch.setitem(results.PUBLISHED, name, {'BPR': ({'recall': 0.1234, 'precision': None, 'ndcg': 0.0567},
                                                          'DiffMM')})
    out = tmp_path / 'out'
    argv = ['--dataset', tiny_plain, '--seeds', '1', '2', '--rows', 'BPR,LightGCN', '--configs',
            str(tmp_path / 'configs'), '--out', str(out)]
    results.main_(argv)
    records = _records(out, tiny_plain)
    bpr = [r for r in records if r['args']['model_name'] == 'BPR']
    assert [(r['args']['seed'], r['args']['l_r'], r['args']['weight_decay'], r['args']['num_epoch'],
             r['args']['patience']) for r in bpr] == [(1, 0.01, 0.001, 2, 3), (2, 0.01, 0.001, 2, 3)]
    assert len([r for r in records if r['args']['model_name'] == 'LightGCN']) == 3    # grid, then seed 2
    table = (out / f'results_{name}.md').read_text()
    row = next(line for line in table.splitlines() if line.startswith('| MF-BPR'))
    mean = np.mean([r['test']['20']['recall'] for r in bpr])
    assert f'{mean:.4f} ± ' in row and 'tuned: l_r 0.01, weight_decay 0.001' in row
    assert '0.1234 | 0.0567 (DiffMM)' in row and 'Published (DiffMM): Jiang et al.' in table
    assert 'selected on test' not in table
    tex = (out / f'results_{name}.tex').read_text()
    assert tex.count('\\\\') == 3 and '\\begin{tabular}{lcccccc}' in tex and f'{mean:.4f} $\\pm$' in tex
    assert (out / f'results_{name}.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    # runs of the same rows selected on test (records beside them): a column of their own, labelled
    for path in (out / 'runs').glob('*-tuned-*-seed?.json'):
        record = json.loads(path.read_text())
        record['test']['20']['recall'] = 0.5
        (path.parent / (path.stem + '-testsel.json')).write_text(json.dumps(record))
    results.main_(argv)                                   # everything reused
    table = (out / f'results_{name}.md').read_text()
    assert 'R@20 selected on test (optimistic)' in table
    assert '0.5000 ± 0.0000' in next(line for line in table.splitlines() if line.startswith('| MF-BPR'))


def test_with_tuned_configurations_the_default_rows_are_one_per_model(tmp_path):
    import registry
    args = SimpleNamespace(dataset='tiktok', tuned=True, configs=str(tmp_path))
    assert results.default_rows(args) == [k for k in results.ROWS if k not in results.SWEPT]
    (tmp_path / 'tiktok').mkdir()
    rows = results.default_rows(args)
    assert len(rows) == len(registry.entries()) and rows[0] == 'FAC' and 'FD' not in rows


def test_runs_selected_on_test_are_their_own_records_and_the_tables_labelled_column(tiny_plain, tmp_path):
    """Issue #32: --select_on test runs each row at a point fixed without test (here a tuned file), names its
    records <run>-testsel.json, lists them labelled optimistic, and the validation table shows their R@20 in its
    own column; the two protocols never reuse each other's records."""
    name = os.path.basename(tiny_plain)
    configs = tmp_path / 'configs' / name
    configs.mkdir(parents=True)
    (configs / 'BPR.yaml').write_text('# tuned\nmodel_name: BPR\nl_r: 0.01\nnum_epoch: 2\npatience: 3\n')
    out = tmp_path / 'out'
    argv = ['--dataset', tiny_plain, '--seeds', '1', '--rows', 'BPR', '--configs', str(tmp_path / 'configs'),
            '--out', str(out)]
    results.main_(argv + ['--select_on', 'test'])
    testsel = list((out / 'runs').glob('*-testsel.json'))
    assert len(testsel) == 1
    record = json.loads(testsel[0].read_text())
    assert record['args']['select_on'] == 'test' and record['optimistic']
    listed = (out / f'results_{name}-testsel.md').read_text()
    assert 'Selected on TEST' in listed and f'{record["test"]["20"]["recall"]:.4f}' in listed
    results.main_(argv)                                   # the validation runs: trained, not the test record
    runs = {path.name: json.loads(path.read_text())['args']['select_on'] for path in (out / 'runs').glob('*.json')}
    assert sorted(runs.values()) == ['test', 'val'] and runs[testsel[0].name] == 'test'
    table = (out / f'results_{name}.md').read_text()
    assert 'R@20 selected on test (optimistic)' in table
    row = next(line for line in table.splitlines() if line.startswith('| MF-BPR'))
    assert row.split(' | ')[7] == f'{record["test"]["20"]["recall"]:.4f}'
    with pytest.raises(SystemExit, match='sweep.py, on validation only'):
        results.main_(['--dataset', tiny_plain, '--rows', 'FAC-tuned', '--select_on', 'test', '--out', str(out)])


FAKE_MMREC = '''
import json, os
import numpy as np
import scipy.sparse as sp
from torchvision.transforms.functional import pad              # MMRec's data_utils imports these
from utils.utils import get_trainer


def quick_start(model, dataset, config_dict, save_model=True):
    with open(os.path.join(config_dict['data_path'] + dataset, config_dict['inter_file_name'])) as f:
        header, *rows = [line.rstrip('\\n').split('\\t') for line in f]
    assert header == [config_dict['USER_ID_FIELD'], config_dict['ITEM_ID_FIELD'], 'x_label']
    dok = sp.dok_matrix((1, 1), dtype=np.float32)
    dok._update({(0, 0): 1.0})                                   # removed from SciPy 1.12
    counts = {label: sum(r[2] == label for r in rows) * np.float(dok[0, 0]) for label in '012'}
    counts['2+0'] = counts['2'] + counts['0']                    # the test metric: a swap with val shows
    with open('received.jsonl', 'a') as f:
        f.write(json.dumps(config_dict) + '\\n')
    get_trainer()().fit(counts)
'''


def test_mmrec_side_by_side_trains_on_the_export(tiny_plain, tmp_path, capsys):
    # A stand-in MMRec whose "training" counts the exported split's x_labels and reports them as metrics.
    src = tmp_path / 'MMRec' / 'src'
    (src / 'utils').mkdir(parents=True)
    (src / 'configs' / 'model').mkdir(parents=True)
    (src / 'configs' / 'model' / 'Fake.yaml').write_text('reg_weight: [0.1, 0.01]\ndropout: [0.8, 0.9]\n'
                                                         'hyper_parameters: ["reg_weight", "dropout"]\n')
    (src / 'utils' / '__init__.py').write_text('')
    (src / 'utils' / 'quick_start.py').write_text(FAKE_MMREC)
    (src / 'utils' / 'utils.py').write_text(
        'class Trainer:\n    def fit(self, counts):\n'
        '        return 0, *({f"{m}@{k}": counts[x] for m in ("precision", "recall", "ndcg") for k in (10, 20)}'
        ' for x in ("1", "2+0"))\n\ndef get_trainer():\n    return Trainer\n')
    out = tmp_path / 'out'
    subprocess.run([sys.executable, os.path.join(ROOT, 'bench', 'mmrec_side_by_side.py'), '--mmrec',
                    str(tmp_path / 'MMRec'), '--dataset', tiny_plain, '--model', 'Fake', '--seeds', '4', '5',
                    '--set', 'learning_rate=0.01', 'reg_weight=1e-3', 'dropout=0.8', '--out', str(out)], check=True)
    data = load_dataset(tiny_plain)
    name = os.path.basename(tiny_plain)
    records = [json.loads(line) for line in (out / f'mmrec_{name}_Fake.jsonl').read_text().splitlines()]
    assert [r['seed'] for r in records] == [4, 5]
    for r in records:
        assert r['val']['recall@20'] == sum(map(len, data.val.values()))
        assert r['test']['ndcg@10'] == sum(map(len, data.test.values())) + len(data.train)
    received = [json.loads(line) for line in (src / 'received.jsonl').read_text().splitlines()]
    assert [c['seed'] for c in received] == [[4], [5]]
    assert received[0]['reg_weight'] == [0.001] and received[0]['learning_rate'] == 0.01   # one grid point
    assert 'MMRec Fake' in (out / f'mmrec_{name}_Fake.md').read_text()
    # a grid-searched key left out would make a seed a grid search: refused before anything runs
    with pytest.raises(SystemExit) as e:
        mmrec_side_by_side.main_(['--mmrec', str(tmp_path / 'MMRec'), '--dataset', tiny_plain, '--model', 'Fake',
                                  '--set', 'reg_weight=1e-3', '--out', str(tmp_path / 'out2')])
    assert e.value.code == 2
    one_line_error(capsys, 'dropout', 'Fake.yaml')
    assert not (tmp_path / 'out2').exists()
