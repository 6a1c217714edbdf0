"""A scheduler's SIGTERM and one run per checkpoint, in one process (torchrun's side: tests/test_distributed.py).

SIGTERM stops main.py at its next safe point (between two steps, or after an
epoch's checkpoint) with ``terminated: resume with --resume`` (or, before the first epoch's checkpoint,
a line saying there is nothing to resume) and exit 143;
``--resume`` then gives the uninterrupted run's metrics.  A second run on a
checkpoint that a live run holds is refused with one line (exit 2); the lock
of a killed run never blocks.
"""
import json
import os
import signal
import subprocess
import sys

import pytest

import prepare_data
from conftest import ROOT

ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
# Batches of 8 pairs: about 200 steps an epoch, so a SIGTERM sent after an epoch's lines lands among steps.
FLAGS = ['--batch_size', '8', '--num_epoch', '3', '--dim_latent', '16', '--num_layer', '2', '--no-progress']


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return prepare_data.synthetic('preempt', like='none', num_user=120, num_item=150, inter_per_user=15, seed=5,
                                  root=str(tmp_path_factory.mktemp('preempt')))


def _command(data, folder, *extra):
    return [sys.executable, os.path.join(ROOT, 'main.py'), '--data_path', data, *FLAGS,
            '--save_file', str(folder / 'r.jsonl'), '--checkpoint', str(folder / 'last.pt'),
            '--PATH_weight_save', str(folder / 'best.pt'), *extra]


def _result(folder):
    return json.loads((folder / 'r.jsonl').read_text().splitlines()[-1])


@pytest.fixture(scope='module')
def uninterrupted(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp('whole')
    job = subprocess.run(_command(data, folder), env=ENV, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr[-3000:]
    return _result(folder)


@pytest.mark.slow
@pytest.mark.parametrize('after, epochs', [('preempt:', (0,)),                 # loading: before any step
                                           ('epoch    1  Test', (1, 2)),       # among epoch 2's steps
                                           ('epoch    2  loss', (2,))])        # evaluating epoch 2
def test_sigterm_stops_at_a_safe_point_and_resume_gives_the_same_metrics(data, uninterrupted, tmp_path, after,
                                                                          epochs):
    job = subprocess.Popen(_command(data, tmp_path), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        for line in job.stdout:
            if line.startswith(after):
                break
        job.send_signal(signal.SIGTERM)
        _, stderr = job.communicate(timeout=60)
    finally:
        job.kill()
    line = ('terminated before the first epoch ended: no checkpoint was written; run the same command again '
            '(without --resume)') if epochs == (0,) else 'terminated: resume with --resume'
    assert job.returncode == 143 and stderr.strip().splitlines() == [line]
    assert not (tmp_path / 'r.jsonl').exists()
    if epochs == (0,):
        assert not (tmp_path / 'last.pt').exists()
        return
    import torch
    assert torch.load(tmp_path / 'last.pt', weights_only=True)['state']['epoch'] in epochs
    resumed = subprocess.run(_command(data, tmp_path, '--resume'), env=ENV, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    done = _result(tmp_path)
    assert (done['best_epoch'], done['val'], done['test']) == \
        (uninterrupted['best_epoch'], uninterrupted['val'], uninterrupted['test'])


def test_a_held_checkpoint_is_refused_and_a_killed_holder_never_blocks(data, tmp_path):
    holder = subprocess.Popen([sys.executable, '-c', 'import sys, time; sys.path.insert(0, sys.argv[1]); '
                               'import checkpoint; lock = checkpoint.checkpoint_lock(sys.argv[2]); lock.__enter__(); '
                               'print("held", flush=True); time.sleep(120)', ROOT, str(tmp_path / 'last.pt')],
                              env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        refused = subprocess.run(_command(data, tmp_path, '--num_epoch', '1'), env=ENV, capture_output=True,
                                 text=True, timeout=300)
        assert refused.returncode == 2 and refused.stderr.splitlines() == [
            f'error: {tmp_path / "last.pt"}: another run (pid {holder.pid}) is using this checkpoint; wait for it '
            f'to end, or give this run another --checkpoint']
        assert 'users' not in refused.stdout                        # refused before the data were read
    finally:
        holder.kill()                                               # SIGKILL: no clean-up ran
        holder.communicate()
    assert (tmp_path / "last.pt.lock").exists()                    # left by the killed holder, unlocked
    again = subprocess.run(_command(data, tmp_path, '--num_epoch', '1'), env=ENV, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not (tmp_path / 'last.pt.lock').exists()                 # a run that ends removes its lock file
