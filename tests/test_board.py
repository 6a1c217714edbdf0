"""--tensorboard: the event files read back hold every epoch once, the loss parts, all metrics and the
hyper-parameters; a resumed run continues the same curves and drops what a killed process wrote after
its last checkpoint."""
import json
import os

import pytest

import main

event_accumulator = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')


def _run(tmp_path, folder, *flags):
    argv = ['--data_path', folder, '--save_file', str(tmp_path / 'r.jsonl'), '--no-progress',
            '--checkpoint', str(tmp_path / 'r.last.pt'), '--PATH_weight_save', str(tmp_path / 'r.best.pt'),
            '--dim_latent', '16', '--batch_size', '256', '--ssl_task', 'FD', '--topK', '5', '10',
            '--tensorboard', str(tmp_path / 'tb'), *flags]
    assert main.main(argv) == 0
    return json.loads((tmp_path / 'r.jsonl').read_text().splitlines()[-1])


def _scalars(folder):
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}


def test_two_epochs_then_resume(tiny_plain, tmp_path):
    record = _run(tmp_path, tiny_plain, '--num_epoch', '2')
    folder = tmp_path / 'tb' / record['run']
    curves = _scalars(folder)
    metric_tags = {f'{split}/{m}@{k}' for split in ('val', 'test') for m in ('precision', 'recall', 'ndcg')
                   for k in (5, 10)}
    assert {'loss/total', 'loss/main', 'loss/ssl', 'time/epoch_s'} | metric_tags <= set(curves)
    for tag in {'loss/total', 'loss/main', 'loss/ssl', 'time/epoch_s'} | metric_tags:
        assert [s for s, _ in curves[tag]] == [1, 2], tag
    history = record['history']
    assert [h['epoch'] for h in history] == [1, 2]
    assert [v for _, v in curves['loss/total']] == pytest.approx([h['loss'] for h in history], rel=1e-6)
    assert [v for _, v in curves['loss/ssl']] == pytest.approx([h['loss_parts']['ssl'] for h in history], rel=1e-6)
    assert [v for _, v in curves['val/recall@10']] == pytest.approx([h['val']['10']['recall'] for h in history])
    assert [v for _, v in curves['time/epoch_s']] == pytest.approx([h['seconds'] for h in history], abs=1e-3)
    best = record['best_epoch']
    assert curves['hparam/val/recall@5'] == [(best, pytest.approx(record['val']['5']['recall']))]
    assert curves['hparam/test/ndcg@10'] == [(best, pytest.approx(record['test']['10']['ndcg']))]

    # a killed process had written epoch 3 after the epoch-2 checkpoint; the resumed run replaces it
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(str(folder)) as stale:
        stale.add_scalar('loss/total', 999.0, 3)
    resumed = _run(tmp_path, tiny_plain, '--num_epoch', '4', '--resume')
    curves = _scalars(folder)
    assert [s for s, _ in curves['loss/total']] == [1, 2, 3, 4]
    assert [v for _, v in curves['loss/total']] == pytest.approx([h['loss'] for h in resumed['history']], rel=1e-6)
    assert [s for s, _ in curves['val/ndcg@5']] == [1, 2, 3, 4]
    assert sorted(os.listdir(tmp_path / 'tb')) == [folder.name]          # the same folder, no second run

    _run(tmp_path, tiny_plain, '--num_epoch', '1')                       # a new run: a folder of its own
    assert sorted(os.listdir(tmp_path / 'tb')) == [folder.name, folder.name + '-2']
    assert [s for s, _ in _scalars(str(folder) + '-2')['loss/total']] == [1]
