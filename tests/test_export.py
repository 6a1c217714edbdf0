"""--export_topk: the exported lists are the evaluator's own top-K (training items excluded), in source ids."""
import csv
import os

import numpy as np
import pytest
import torch

import main
import config
import errors
import registry
from DataLoad import load_dataset
from Full_vt import SplitIndex, rank_metrics, top_items


def _read(path):
    with open(path) as f:
        reader = csv.reader(f)
        assert next(reader) == ['user', 'rank', 'item', 'score']
        return [(u, int(r), i, float(s)) for u, r, i, s in reader]


def _reference_top(z_user, z_item, indptr, items, k):
    """Per user, from the definition: score all items, training items −∞, the k best finite ones."""
    out = {}
    for user in range(len(z_user)):
        scores = z_user[user] @ z_item.t()
        scores[torch.as_tensor(items[indptr[user]:indptr[user + 1]], dtype=torch.long)] = -torch.inf
        top = torch.topk(scores, min(k, len(scores)))
        out[user] = [(int(i), float(s)) for i, s in zip(top.indices, top.values) if s > -torch.inf]
    return out


@pytest.mark.parametrize('item_block', ['auto', None, 32])
def test_top_items_equal_the_plain_ranking(item_block):
    gen = torch.Generator().manual_seed(0)
    z_user, z_item = torch.randn(7, 4, generator=gen), torch.randn(70, 4, generator=gen)
    train = {0: [1, 2, 3], 1: list(range(66)), 2: [], 3: [69], 4: [0], 5: [5, 6], 6: list(range(70))}
    indptr = np.concatenate([[0], np.cumsum([len(train[u]) for u in range(7)])])
    items = np.concatenate([np.asarray(train[u], dtype=np.int64) for u in range(7)])
    expected = _reference_top(z_user, z_item, indptr, items, 5)
    got = {}
    for users, top, scores in top_items(z_user, z_item, np.arange(7), indptr, items, 5, eval_batch=3,
                                        item_block=item_block):
        for u, row, srow in zip(users, top, scores):
            got[int(u)] = [(int(i), float(s)) for i, s in zip(row, srow) if s > -np.inf]
    assert {u: [i for i, _ in v] for u, v in got.items()} == {u: [i for i, _ in v] for u, v in expected.items()}
    assert len(got[1]) == 4 and got[6] == []
    for u in got:
        assert np.allclose([s for _, s in got[u]], [s for _, s in expected[u]], atol=1e-5)


def _train(tmp_path, folder, *flags, tag='run'):
    argv = ['--data_path', folder, '--save_file', str(tmp_path / f'{tag}.jsonl'), '--no-progress',
            '--checkpoint', str(tmp_path / f'{tag}.last.pt'), '--PATH_weight_save', str(tmp_path / f'{tag}.best.pt'),
            '--dim_latent', '16', '--batch_size', '256', *flags]
    return main.main(argv)


def test_export_is_the_evaluators_top_k_in_source_ids(tiny_plain, tmp_path, monkeypatch):
    import Full_vt
    real, calls = Full_vt.full_ranking, []

    def first_epoch_best(*a, **kw):                 # later epochs look worse on validation: best = epoch 1
        metrics = real(*a, **kw)
        calls.append(1)
        if len(calls) > 1:
            for k in metrics['val']:
                metrics['val'][k]['recall'] -= 1.0
        return metrics
    monkeypatch.setattr(Full_vt, 'full_ranking', first_epoch_best)
    data = load_dataset(tiny_plain)
    user_ids = [f'u{7 * n + 3}' for n in range(data.num_user)]
    item_ids = [f'movie-{n * 11}' for n in range(data.num_item)]
    for name, ids in (('user_ids.txt', user_ids), ('item_ids.txt', item_ids)):
        with open(os.path.join(tiny_plain, name), 'w') as f:
            f.writelines(f'{x}\n' for x in ids)
    out = tmp_path / 'top.csv'
    assert _train(tmp_path, tiny_plain, '--num_epoch', '3', '--topK', '5', '12', '--export_topk', str(out),
                  '--eval_batch', '16') == 0
    rows = _read(out)
    assert not [p for p in os.listdir(tmp_path) if p.startswith('.top.csv')]        # no temporary left

    # the best epoch's model, as the evaluator saw it
    model = registry.build_model(config.parse_args(['--data_path', tiny_plain, '--dim_latent', '16']), data)
    model.load_state_dict(torch.load(tmp_path / 'run.best.pt', weights_only=True))
    model.eval()
    with torch.no_grad():
        z_user, z_item = model()
    indptr, items = data.train_csr()
    expected = _reference_top(z_user, z_item, indptr, items, 12)
    by_user = {}
    for u, r, i, s in rows:
        by_user.setdefault(u, []).append((r, i, s))
    assert set(by_user) == set(user_ids)
    for user in range(data.num_user):
        got = by_user[user_ids[user]]
        assert [r for r, _, _ in got] == list(range(1, len(expected[user]) + 1))
        assert [i for _, i, _ in got] == [item_ids[i] for i, _ in expected[user]]
        assert np.allclose([s for _, _, s in got], [s for _, s in expected[user]], rtol=1e-5, atol=1e-5)

    # the lists reproduce the run's own best test metrics at K = 12
    record = __import__('json').loads((tmp_path / 'run.jsonl').read_text().splitlines()[-1])
    assert (record['best_epoch'], record['epochs_run']) == (1, 3)
    index = SplitIndex(data.test, indptr, items)
    recall = np.mean([len({item_ids[i] for i in data.test[u]} & {i for _, i, _ in by_user[user_ids[u]]})
                      / len(data.test[u]) for u in index.users])
    assert recall == pytest.approx(record['test']['12']['recall'], abs=1e-9)
    assert recall == pytest.approx(rank_metrics(z_user, z_item, index, [12])[12]['recall'], abs=1e-9)


def test_export_of_a_loaded_model_with_indices(tiny_plain, tmp_path, capsys):
    assert _train(tmp_path, tiny_plain, '--num_epoch', '2') == 0
    out = tmp_path / 'eval.csv'
    assert _train(tmp_path, tiny_plain, '--num_epoch', '0', '--PATH_weight_load', str(tmp_path / 'run.best.pt'),
                  '--export_topk', str(out), tag='eval') == 0
    rows = _read(out)
    data = load_dataset(tiny_plain)
    assert len(rows) == 10 * data.num_user                  # K = 10, every user has more than 10 candidates
    indptr, items = data.train_csr()
    for u, _, i, _ in rows:                                 # indices, no training item
        assert 0 <= int(i) < data.num_item and int(i) not in items[indptr[int(u)]:indptr[int(u) + 1]]
    assert 'top-10 lists of 120 users written to' in capsys.readouterr().out


def test_unwritable_export_fails_before_training(tiny_plain, tmp_path, capsys):
    assert _train(tmp_path, tiny_plain, '--num_epoch', '2', '--export_topk', str(tmp_path)) == errors.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith(f'error: {tmp_path}: cannot write the top-K export') and not (tmp_path / 'run.jsonl').exists()


def _temporaries(folder, name):
    return [p for p in os.listdir(folder) if p.startswith(f'.{name}-')]


@pytest.mark.slow
@pytest.mark.parametrize('moment', ['export of a loaded model', 'export after training'])
def test_killed_export_leaves_no_partial_file_and_the_rerun_loses_nothing(tmp_path, moment):
    """SIGKILL while the CSV is being written: no export file, only our temporary; the rerun (``--resume``
    after training) removes the temporary and writes exactly the uninterrupted run's file and record."""
    import json
    import signal
    import subprocess
    import sys
    import time
    import prepare_data
    folder = prepare_data.synthetic('many_users', like='none', num_user=1500, num_item=120, inter_per_user=6,
                                    seed=2, root=str(tmp_path))
    flags = ['--data_path', folder, '--dim_latent', '16', '--batch_size', '2048', '--topK', '40',
             '--eval_batch', '32', '--no-progress', '--seed', '3']
    if moment == 'export of a loaded model':
        assert _train(tmp_path, folder, '--num_epoch', '1', tag='weights') == 0
        flags += ['--num_epoch', '0', '--PATH_weight_load', str(tmp_path / 'weights.best.pt')]
    else:
        flags += ['--num_epoch', '2', '--patience', '50']

    def cmd(tag, *extra):
        return [sys.executable, os.path.join(os.path.dirname(os.path.abspath(main.__file__)), 'main.py'), *flags, '--export_topk', str(tmp_path / f'{tag}.csv'),
                '--save_file', str(tmp_path / f'{tag}.jsonl'), '--checkpoint', str(tmp_path / f'{tag}.last.pt'),
                '--PATH_weight_save', str(tmp_path / f'{tag}.best.pt'), *extra]
    subprocess.run(cmd('full'), check=True, capture_output=True, cwd=tmp_path)
    proc = subprocess.Popen(cmd('killed'), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:        # kill once the CSV is half written
        tmp = _temporaries(tmp_path, 'killed.csv')
        if tmp and os.path.getsize(tmp_path / tmp[0]) > 20000:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, 'the export ended before it could be killed'
    assert not (tmp_path / 'killed.csv').exists() and not (tmp_path / 'killed.jsonl').exists()
    assert len(_temporaries(tmp_path, 'killed.csv')) == 1

    rerun = cmd('killed', '--resume') if moment == 'export after training' else cmd('killed')
    done = subprocess.run(rerun, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / 'killed.csv').read_bytes() == (tmp_path / 'full.csv').read_bytes()
    assert not _temporaries(tmp_path, 'killed.csv')
    full, resumed = (json.loads((tmp_path / f'{tag}.jsonl').read_text()) for tag in ('full', 'killed'))
    assert (resumed['best_epoch'], resumed['val'], resumed['test'], resumed['epochs_run']) == \
        (full['best_epoch'], full['val'], full['test'], full['epochs_run'])
