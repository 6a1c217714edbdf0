"""End to end: training beats a random ranking, runs repeat exactly, resume after a
real SIGKILL, divergence, output paths, evaluation-only runs."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import main
import config
import errors
from conftest import ROOT
from DataLoad import load_dataset


def _random_recall_at_10(folder):
    """Expected Recall@10 of a uniformly random ranking of the non-training items."""
    data = load_dataset(folder)
    train_count = np.bincount(data.train[:, 0], minlength=data.num_user)
    return float(np.mean([min(1.0, 10 / (data.num_item - train_count[u])) for u in data.test]))


def _run(tmp_path, folder, *flags, tag='run'):
    results = tmp_path / f'{tag}.jsonl'
    argv = ['--data_path', folder, '--save_file', str(results), '--no-progress',
            '--checkpoint', str(tmp_path / f'{tag}.last.pt'), '--PATH_weight_save', str(tmp_path / f'{tag}.best.pt'),
            *flags]
    code = main.main(argv)
    lines = results.read_text().splitlines() if results.exists() else []
    return code, (json.loads(lines[-1]) if lines else None)


def test_mmgcn_published_command_beats_random(tiny_plain, tmp_path):
    code, record = _run(tmp_path, tiny_plain, '--model_name=MMGCN', '--l_r=0.005', '--weight_decay=0.1',
                        '--batch_size=256', '--dim_latent=32', '--num_workers=30', '--aggr_mode=mean',
                        '--num_layer=2', '--concat=False', '--num_epoch=15', '--topK', '10', '20')
    assert code == 0 and record['status'] == 'done'
    assert set(record['test']) == {'10', '20'} or set(record['test']) == {10, 20}
    recall = record['test']['10']['recall']
    assert recall > 3 * _random_recall_at_10(tiny_plain)
    assert record['args']['model_name'] == 'MMGCN' and record['args']['l_r'] == 0.005


@pytest.mark.parametrize('task', ['FAC', 'FD', 'FM', 'FD+FM', 'none'])
def test_slmrec_each_ssl_task_beats_random(task, tiny_plain, tmp_path):
    code, record = _run(tmp_path, tiny_plain, '--ssl_task', task, '--batch_size', '256', '--num_epoch', '10',
                        '--dim_latent', '32', '--num_layer', '2')
    assert code == 0
    assert record['test']['10']['recall'] > 3 * _random_recall_at_10(tiny_plain)


def test_slmrec_mmgcn_backbone_and_words_train(tiny_tiktok, tmp_path):
    code, record = _run(tmp_path, tiny_tiktok, '--backbone', 'mmgcn', '--ssl_task', 'FD', '--batch_size', '128',
                        '--num_epoch', '2', '--dim_latent', '16')
    assert code == 0 and record['best_epoch'] in (1, 2)


def test_same_seed_same_metrics(tiny_plain, tmp_path):
    flags = ('--ssl_task', 'FD+FM', '--batch_size', '256', '--num_epoch', '3', '--dim_latent', '16', '--seed', '7')
    _, first = _run(tmp_path, tiny_plain, *flags, tag='a')
    _, second = _run(tmp_path, tiny_plain, *flags, tag='b')
    assert first['val'] == second['val'] and first['test'] == second['test']
    _, other = _run(tmp_path, tiny_plain, *flags[:-1], '8', tag='c')
    assert other['val'] != first['val']


def test_eval_only_reproduces_best_epoch(tiny_plain, tmp_path):
    _, trained = _run(tmp_path, tiny_plain, '--batch_size', '256', '--num_epoch', '3', '--dim_latent', '16')
    code, evaluated = _run(tmp_path, tiny_plain, '--num_epoch', '0', '--dim_latent', '16',
                           '--PATH_weight_load', str(tmp_path / 'run.best.pt'), tag='eval')
    assert code == 0 and evaluated['test'] == trained['test']


def test_divergence_stops_and_keeps_best(tiny_plain, tmp_path, monkeypatch, capsys):
    import model_SSL
    calls = {'n': 0}
    original = model_SSL.SLMRec.loss

    def poisoned(self, users, items):
        calls['n'] += 1
        loss, parts = original(self, users, items)
        return (loss * float('nan'), parts) if calls['n'] > 16 else (loss, parts)
    monkeypatch.setattr(model_SSL.SLMRec, 'loss', poisoned)
    code, record = _run(tmp_path, tiny_plain, '--batch_size', '256', '--num_epoch', '10', '--dim_latent', '16')
    assert code == errors.EXIT_DIVERGED == 3
    assert record['status'] == 'diverged' and record['best_epoch'] == 2
    assert 'training diverged: loss is nan at epoch 3' in capsys.readouterr().err
    state = torch.load(tmp_path / 'run.best.pt', weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values())


def test_unwritable_outputs_fail_before_training(tiny_plain, tmp_path, capsys):
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    code = main.main(['--data_path', tiny_plain, '--save_file', str(blocker / 'results.jsonl'), '--no-progress'])
    assert code == 2
    err = capsys.readouterr()
    assert 'results.jsonl: cannot write the results file' in err.err and 'epoch' not in err.out
    code = main.main(['--data_path', tiny_plain, '--save_file', str(tmp_path / 'r.jsonl'),
                      '--checkpoint', str(blocker / 'x.pt'), '--no-progress'])
    assert code == 2 and 'x.pt: cannot write the checkpoint' in capsys.readouterr().err


def test_bad_checkpoints_are_one_line_errors(tiny_plain, tmp_path, capsys):
    bad = tmp_path / 'bad.pt'
    bad.write_bytes(b'not a checkpoint')
    code, _ = _run(tmp_path, tiny_plain, '--num_epoch', '0', '--PATH_weight_load', str(bad))
    assert code == 2 and f'{bad}: not a readable weight file' in capsys.readouterr().err
    torch.save({'embedding_user.weight': torch.zeros(2, 2)}, bad)
    code, _ = _run(tmp_path, tiny_plain, '--num_epoch', '0', '--PATH_weight_load', str(bad))
    assert code == 2 and 'does not fit this model' in capsys.readouterr().err
    torch.save({'state': 1}, tmp_path / 'run.last.pt')
    code, _ = _run(tmp_path, tiny_plain, '--resume')
    assert code == 2 and 'malformed checkpoint' in capsys.readouterr().err


def test_unknown_values_list_the_valid_ones(capsys):
    with pytest.raises(SystemExit):
        config.parse_args(['--ssl_task', 'XYZ'])
    assert "choose from 'FAC', 'FD', 'FM', 'FD+FM', 'none'" in capsys.readouterr().err


def test_per_model_defaults():
    slm = config.parse_args([])
    assert (slm.l_r, slm.weight_decay, slm.batch_size, slm.num_layer, slm.num_epoch) == (0.01, 1e-4, 2048, 3, 1000)
    mm = config.parse_args(['--model_name', 'MMGCN'])
    assert (mm.l_r, mm.weight_decay, mm.batch_size, mm.num_layer) == (0.0005, 0.1, 1024, 2)
    assert config.parse_args(['--model_name', 'MMGCN', '--num_layer', '4']).num_layer == 4
    assert config.parse_args(['--concat=True']).concat is True


def _checkpoint_epoch(path):
    return torch.load(path, weights_only=True)['state']['epoch'] if path.exists() else 0


def kill_during_next_epoch(proc, checkpoint, kill_after):
    """SIGKILL ``proc`` (main.py started with ``-u``) during epoch ``kill_after + 1``, once epoch ``kill_after``'s
    checkpoint is written; returns when it is gone."""
    for line in proc.stdout:
        if line.startswith(f'epoch {kill_after:4d}  Test'):
            # The checkpoint follows the Test line: wait for it (written atomically, so always whole).
            deadline = time.time() + 60
            while time.time() < deadline and not _checkpoint_epoch(checkpoint) >= kill_after:
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    proc.stdout.close()


def kill_then_resume(tmp_path, flags, num_epoch=8, kill_after=3):
    """Run main.py to the end, and again killed (SIGKILL) during epoch ``kill_after + 1`` then resumed;
    returns both result records (the caller compares them)."""
    flags = [*flags, '--num_epoch', str(num_epoch), '--no-progress', '--patience', '50']

    def cmd(tag, *extra):
        return [sys.executable, '-u', os.path.join(ROOT, 'main.py'), *flags, '--save_file', str(tmp_path / f'{tag}.jsonl'),
                '--checkpoint', str(tmp_path / f'{tag}.last.pt'), '--PATH_weight_save', str(tmp_path / f'{tag}.best.pt'),
                *extra]
    subprocess.run(cmd('full'), check=True, capture_output=True, cwd=tmp_path)
    proc = subprocess.Popen(cmd('killed'), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=tmp_path)
    kill_during_next_epoch(proc, tmp_path / 'killed.last.pt', kill_after)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / 'killed.jsonl').exists()
    ckpt = torch.load(tmp_path / 'killed.last.pt', weights_only=True)
    assert kill_after <= ckpt['state']['epoch'] < num_epoch
    done = subprocess.run(cmd('killed', '--resume'), capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and 'resumed from' in done.stdout
    return json.loads((tmp_path / 'full.jsonl').read_text()), json.loads((tmp_path / 'killed.jsonl').read_text())


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tiny_plain, tmp_path):
    full, resumed = kill_then_resume(tmp_path, ['--data_path', tiny_plain, '--ssl_task', 'FD', '--batch_size', '32',
                                                '--dim_latent', '16'])
    assert (resumed['best_epoch'], resumed['val'], resumed['test']) == (full['best_epoch'], full['val'], full['test'])
