"""torchrun (SPEC 7): in exact mode 2 CPU ranks (gloo) compute what one process computes on the same global
batches; in data mode (the default) they deal the pairs, stop together on SIGTERM and resume under any world size.

The tests start real torchrun jobs (``--standalone``: a free port on this
machine), each bounded by a timeout; the data are tiny so that two ranks on
two shared cores stay within seconds.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import distributed
import prepare_data
from conftest import ROOT
from dist_steps import record_steps

TORCHRUN = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2']
ENV = dict(os.environ, OMP_NUM_THREADS='1')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """120 users, 150 items, 1620 training pairs, three dense modalities."""
    return prepare_data.synthetic('dist', like='none', num_user=120, num_item=150, inter_per_user=15, seed=5,
                                  root=str(tmp_path_factory.mktemp('dist')))


# ---------------------------------------------------------------- the helpers in one process

def test_one_process_helpers_are_the_identity():
    assert not distributed.requested() and not distributed.active()
    assert distributed.is_main() and distributed.world_size() == 1
    assert distributed.row_share(7) == (0, 7, 1.0)
    assert distributed.my_chunks([0, 4, 8]) == [0, 4, 8]
    values = np.arange(6.0)
    assert distributed.sum_over_ranks(values) is values
    loss = torch.tensor(2.5)
    assert distributed.global_values(loss, {'main': 1.5}) == (2.5, {'main': 1.5}, False)
    assert distributed.global_values(loss, {'main': 1.5}, stop=True)[2] is True
    assert distributed.check_batches(1620, 37) is None
    assert distributed.sampler_share() == (1, 0) and not distributed.exact() and not distributed.data_parallel()
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.5)
    assert distributed.scale_lr(optimizer, True) == 1 and optimizer.param_groups[0]['lr'] == 0.5


@pytest.mark.parametrize('negatives', [False, True])
def test_data_mode_deals_the_one_process_permutation(negatives):
    """2 ranks' batches of 4 pairs, side by side, are one process's batches of 8 (negatives included), and every
    rank's sampler RNG ends the epoch where one process's does: the state a checkpoint keeps means the same under
    any world size, so whoever resumes draws the same next permutation."""
    from DataLoad import TrainSampler
    train = np.array([(u, i) for u in range(5) for i in range(u % 3, 9, 2)])        # 19 pairs: a last batch of 3
    one = TrainSampler(train, 10, 8, np.random.default_rng(3))
    ranks = [TrainSampler(train, 10, 4, np.random.default_rng(3), ranks=2, rank=r) for r in (0, 1)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 3
    for whole, *halves in zip(one.batches(negatives), *(s.batches(negatives) for s in ranks)):
        for k, column in enumerate(whole):
            assert torch.equal(torch.cat([h[k] for h in halves]), column)
        assert abs(len(halves[0][0]) - len(halves[1][0])) <= 1
    assert ranks[0].rng.bit_generator.state == ranks[1].rng.bit_generator.state == one.rng.bit_generator.state


def test_batches_smaller_than_the_ranks_are_refused(monkeypatch):
    monkeypatch.setattr(distributed, 'world_size', lambda: 4)
    assert distributed.check_batches(1620, 2) is not None           # every batch: 2 pairs for 4 ranks
    message = distributed.check_batches(1621, 4)                     # the last batch holds 1 pair
    assert message.startswith('--batch_size: a batch of 1 training pairs cannot be split across 4 processes')
    assert distributed.check_batches(1622, 4) is not None            # last batch 2
    assert distributed.check_batches(1624, 4) is None and distributed.check_batches(1623, 8) is None  # last 7


# ---------------------------------------------------------------- one step, 2 ranks against one process

STEP_RUNS = {
    'FAC': ['--ssl_task', 'FAC'],
    'FD': ['--ssl_task', 'FD'],
    'FM': ['--ssl_task', 'FM'],
    'FD+FM, mmgcn backbone': ['--ssl_task', 'FD+FM', '--backbone', 'mmgcn'],
    'MMGCN': ['--model_name', 'MMGCN', '--l_r', '0.005'],
}


@pytest.fixture(scope='module')
def steps(data, tmp_path_factory):
    """Two steps of each run in STEP_RUNS: (one process, rank 0, rank 1, learning rate)."""
    # 37 pairs a batch: the ranks get 18 and 19 rows, so an uneven split is weighed at every step.
    runs = [['--data_path', data, '--batch_size', '37', '--dim_latent', '16', '--num_layer', '2', *flags]
            for flags in STEP_RUNS.values()]
    out = tmp_path_factory.mktemp('steps') / 'steps'
    job = subprocess.run(TORCHRUN + [os.path.join(ROOT, 'tests', 'dist_steps.py'), str(out), '2', json.dumps(runs)],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr[-3000:]
    reference = record_steps(runs, 2)
    ranks = [torch.load(f'{out}.rank{r}', weights_only=False) for r in (0, 1)]
    return {name: (reference[n], ranks[0][n], ranks[1][n], 0.005 if name == 'MMGCN' else 0.01)
            for n, name in enumerate(STEP_RUNS)}


@pytest.mark.slow
@pytest.mark.parametrize('name', list(STEP_RUNS))
def test_one_step_of_two_ranks_is_one_process(steps, name):
    """Loss, gradients and parameters after Adam of the first step, float32 throughout.

    Tolerances.  Loss: relative 1e-6 (measured 1e-7: the same sums in another
    order).  Gradients: rtol 1e-4, atol 1e-6 (measured below 3e-7: sums over
    the batch's rows split in two and added by DDP).  Parameters: an element
    whose Adam input ``g + weight_decay · p`` exceeds 1e-5 moves by the same
    step to 1e-6.  Where that input is itself near rounding level (the decay
    cancels the gradient, or the gradient is mathematically zero, e.g. the
    biases of FAC's y-heads: a constant shift of all columns leaves a softmax
    unchanged), Adam's first step ``lr · g / (|g| + ε)`` turns rounding noise
    into a step of up to ``lr``, so there only ``|Δ| ≤ 2 lr`` is required.
    """
    one, rank0, rank1, lr = steps[name]
    first, dist_first = one['steps'][0], rank0['steps'][0]
    assert dist_first['loss'] == pytest.approx(first['loss'], rel=1e-6)
    for part, value in first['parts'].items():
        assert dist_first['parts'][part] == pytest.approx(value, rel=1e-5, abs=1e-7)
    assert set(dist_first['grad']) == set(first['grad'])
    for p in first['grad']:
        torch.testing.assert_close(dist_first['grad'][p], first['grad'][p], rtol=1e-4, atol=1e-6, msg=p)
        g = first['adam_input'][p].abs()
        diff = (dist_first['param'][p] - first['param'][p]).abs()
        assert torch.all(diff[g > 1e-5] <= 1e-6), p
        assert diff.max() <= 2 * lr, p
    # The ranks hold the same parameters and gradients, bit for bit (DDP's average), at every step.
    for mine, other in zip(rank0['steps'], rank1['steps']):
        assert mine['loss'] == other['loss']
        assert all(torch.equal(mine[k][p], other[k][p]) for k in ('grad', 'param') for p in mine['grad'])


@pytest.mark.slow
@pytest.mark.parametrize('name', list(STEP_RUNS))
def test_ranks_draw_the_random_numbers_of_one_process(steps, name):
    """FD's dropout masks and FM's branch pair come from the torch RNG: after two steps every rank's
    stream stands where one process's does, and the second step's loss is one process's too."""
    one, rank0, rank1, _ = steps[name]
    assert torch.equal(rank0['rng'], one['rng']) and torch.equal(rank1['rng'], one['rng'])
    assert rank0['steps'][1]['loss'] == pytest.approx(one['steps'][1]['loss'], rel=1e-5)


# ---------------------------------------------------------------- whole runs through main.py

RUN_FLAGS = ['--ssl_task', 'FD', '--batch_size', '37', '--num_epoch', '3', '--dim_latent', '16', '--num_layer', '2',
             '--no-progress', '--dist_timeout', '120', '--eval_batch', '16',    # chunks of 16 users: the ranks share 7
             '--dist_mode', 'exact']


def _files(folder, tag):
    return ['--save_file', str(folder / f'{tag}.jsonl'), '--checkpoint', str(folder / f'{tag}.last.pt'),
            '--PATH_weight_save', str(folder / f'{tag}.best.pt')]


def _torchrun_main(data, folder, tag, *extra):
    return TORCHRUN + [os.path.join(ROOT, 'main.py'), '--data_path', data, *RUN_FLAGS, *_files(folder, tag), *extra]


def _result(folder, tag):
    lines = (folder / f'{tag}.jsonl').read_text().splitlines()
    assert len(lines) == 1          # rank 0 alone appends the results line
    return json.loads(lines[0])


@pytest.fixture(scope='module')
def two_rank_run(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp('run2')
    job = subprocess.run(_torchrun_main(data, folder, 'full'), env=ENV, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-3000:]
    return folder, job.stdout


@pytest.mark.slow
def test_two_ranks_give_the_one_process_run(data, two_rank_run, tmp_path):
    import main
    folder, stdout = two_rank_run
    assert main.main(['--data_path', data, *RUN_FLAGS, *_files(tmp_path, 'one')]) == 0
    one, two = _result(tmp_path, 'one'), _result(folder, 'full')
    assert two['processes'] == 2 and one['processes'] == 1
    assert (two['best_epoch'], two['epochs_run']) == (one['best_epoch'], 3)
    for split in ('val', 'test'):
        for k, metrics in one[split].items():
            assert two[split][k] == pytest.approx(metrics, abs=1e-12), (split, k)
    losses = [torch.load(f / f'{t}.last.pt', weights_only=True)['state']['history'] for f, t in
              ((tmp_path, 'one'), (folder, 'full'))]
    assert [h['loss'] for h in losses[1]] == pytest.approx([h['loss'] for h in losses[0]], rel=1e-5)
    assert stdout.count('Val ') == 3 + 1           # rank 0 alone prints: three evaluations and the summary


def _pid_of_rank(agent, rank):
    """The worker of torchrun process ``agent`` whose environment says RANK=rank."""
    for entry in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{entry}/stat') as f:
                parent = int(f.read().rsplit(')', 1)[1].split()[1])
            with open(f'/proc/{entry}/environ', 'rb') as f:
                env = f.read().split(b'\0')
        except OSError:
            continue
        if parent == agent and f'RANK={rank}'.encode() in env:
            return int(entry)
    return None


@pytest.mark.slow
def test_killed_rank_ends_the_job_and_resume_completes_the_run(data, two_rank_run, tmp_path):
    folder, _ = two_rank_run
    env = dict(ENV, PYTHONUNBUFFERED='1')
    job = subprocess.Popen(_torchrun_main(data, tmp_path, 'killed'), env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    checkpoint = tmp_path / 'killed.last.pt'
    try:
        for line in job.stdout:                 # epoch 1 evaluated: its checkpoint follows, then epoch 2
            if line.startswith('epoch    1  Test'):
                break
        deadline = time.time() + 60
        while not checkpoint.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        victim = _pid_of_rank(job.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        killed = time.time()
        output = job.communicate(timeout=60)[0]
    finally:
        job.kill()
    assert job.returncode != 0 and time.time() - killed < 60      # torchrun stops rank 0 at once
    assert 'SIGKILL' in output                                      # torchrun names the rank that died
    assert not (tmp_path / 'killed.jsonl').exists()
    state = torch.load(checkpoint, weights_only=True)['state']       # intact
    assert 1 <= state['epoch'] < 3
    resumed = subprocess.run(_torchrun_main(data, tmp_path, 'killed', '--resume'), env=ENV, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f'resumed from {checkpoint} after epoch {state["epoch"]}' in resumed.stdout
    full, done = _result(folder, 'full'), _result(tmp_path, 'killed')
    assert (done['best_epoch'], done['val'], done['test']) == (full['best_epoch'], full['val'], full['test'])


@pytest.mark.slow
def test_hung_rank_fails_the_job_after_the_timeout(data, tmp_path):
    """Rank 1 stops (SIGSTOP) mid-epoch: rank 0's next collective gives up after --dist_timeout with one line."""
    command = _torchrun_main(data, tmp_path, 'hung', '--num_epoch', '5', '--dist_timeout', '8')
    job = subprocess.Popen(command, env=dict(ENV, PYTHONUNBUFFERED='1'), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    victim = None
    try:
        for line in job.stdout:
            if line.startswith('epoch    1  Test'):
                break
        time.sleep(0.2)
        victim = _pid_of_rank(job.pid, 1)
        os.kill(victim, signal.SIGSTOP)
        stopped = time.time()
        for line in job.stdout:
            if line.startswith('error: rank 0: another process stopped answering'):
                break
        waited = time.time() - stopped
        os.kill(victim, signal.SIGCONT)            # let torchrun's SIGTERM end it at once
        job.communicate(timeout=60)
    finally:
        job.kill()
    # The collective may have begun a little before the stop; a loaded machine adds its delays.
    assert 'hung for longer than --dist_timeout' in line and 6 <= waited < 60
    assert job.returncode != 0


# ---------------------------------------------------------------- data mode: split work, SIGTERM, other world sizes

DATA_FLAGS = [f for f in RUN_FLAGS if f not in ('--dist_mode', 'exact')]      # the default mode


def _run_data(data, folder, tag, *extra, ranks=2):
    command = TORCHRUN[:-1] + [str(ranks)] if ranks > 1 else [sys.executable]
    return subprocess.run(command + [os.path.join(ROOT, 'main.py'), '--data_path', data, *DATA_FLAGS,
                                     *_files(folder, tag), *extra],
                          env=ENV, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def data_run(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp('data_mode')
    job = _run_data(data, folder, 'full')
    assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-3000:]
    return folder, job.stdout


@pytest.mark.slow
def test_sigterm_stops_every_rank_and_resume_gives_the_uninterrupted_run(data, data_run, tmp_path):
    """SIGTERM reaches rank 1 alone: both ranks stop at the same safe point and exit 143; rank 0 prints the line
    once; the checkpoint of the last completed epoch resumes to the uninterrupted run's result."""
    folder, stdout = data_run
    assert 'torchrun: 2 processes, --dist_mode data: 2 x 37 pairs a step (effective batch 74)' in stdout
    command = TORCHRUN + [os.path.join(ROOT, 'main.py'), '--data_path', data, *DATA_FLAGS, *_files(tmp_path, 'cut')]
    job = subprocess.Popen(command, env=dict(ENV, PYTHONUNBUFFERED='1'), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        for line in job.stdout:
            if line.startswith('epoch    1  Test'):
                break
        os.kill(_pid_of_rank(job.pid, 1), signal.SIGTERM)
        output = job.communicate(timeout=60)[0]
    finally:
        job.kill()
    assert output.count('terminated: resume with --resume') == 1
    # torchrun lists the ranks that had exited when it looked (one or both), then ends the others
    codes = re.findall(r'exitcode  : (\S+)', output)
    assert codes and set(codes) == {'143'} and job.returncode != 0
    assert not (tmp_path / 'cut.jsonl').exists()
    state = torch.load(tmp_path / 'cut.last.pt', weights_only=True)['state']
    assert 1 <= state['epoch'] < 3
    resumed = _run_data(data, tmp_path, 'cut', '--resume')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full, done = _result(folder, 'full'), _result(tmp_path, 'cut')
    assert (done['best_epoch'], done['val'], done['test']) == (full['best_epoch'], full['val'], full['test'])


@pytest.mark.slow
def test_a_checkpoint_resumes_under_another_world_size(data, data_run, tmp_path):
    """2 ranks' checkpoint -> one process (epoch 4) -> 2 ranks again (epoch 5); the sampler's position is the
    epoch boundary and its RNG state, which means the same under any world size (the deal test above)."""
    import shutil
    folder, _ = data_run
    shutil.copy(folder / 'full.last.pt', tmp_path / 'moved.last.pt')
    one = _run_data(data, tmp_path, 'moved', '--resume', '--num_epoch', '4', ranks=1)
    assert one.returncode == 0, one.stderr[-3000:]
    assert 'resumed from' in one.stdout and 'after epoch 3' in one.stdout
    two = _run_data(data, tmp_path, 'moved', '--resume', '--num_epoch', '5')
    assert two.returncode == 0, two.stderr[-3000:]
    lines = [json.loads(x) for x in (tmp_path / 'moved.jsonl').read_text().splitlines()]
    assert [(r['processes'], r['epochs_run']) for r in lines] == [(1, 4), (2, 5)]
