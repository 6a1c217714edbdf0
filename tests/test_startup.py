"""startup.py: the thread count and wait policy chosen before torch loads (the user's settings always win)."""
import os

import pytest

import startup


def test_cpus_come_from_affinity_quota_and_slurm(tmp_path):
    mine = len(os.sched_getaffinity(0))
    assert startup.usable_cpus({}, quota=lambda: None) == mine
    assert startup.usable_cpus({'SLURM_CPUS_PER_TASK': '1'}, quota=lambda: None) == 1
    assert startup.usable_cpus({'SLURM_CPUS_PER_TASK': 'x'}, quota=lambda: 1) == 1
    (tmp_path / 'cpu.max').write_text('150000 100000\n')          # cgroup v2: 1.5 CPUs -> 2
    assert startup.cgroup_cpu_quota(str(tmp_path)) == 2
    (tmp_path / 'cpu.max').write_text('max 100000\n')
    assert startup.cgroup_cpu_quota(str(tmp_path)) is None


def test_defaults_never_override_the_user():
    assert startup.thread_settings({}, cpus=os.cpu_count()) == {'OMP_WAIT_POLICY': 'PASSIVE'}   # torch's own count
    assert startup.thread_settings({'LOCAL_WORLD_SIZE': '2'}, cpus=4) == {'OMP_WAIT_POLICY': 'PASSIVE',
                                                                          'OMP_NUM_THREADS': '2'}
    assert startup.thread_settings({'OMP_NUM_THREADS': '3', 'OMP_WAIT_POLICY': 'ACTIVE', 'LOCAL_WORLD_SIZE': '2'},
                                   cpus=4) == {}
    assert startup.thread_settings({'GOMP_SPINCOUNT': '300000'}, cpus=os.cpu_count()) == {}
    environ = {'LOCAL_WORLD_SIZE': '8'}
    startup.configure_threads(environ)
    assert environ['OMP_NUM_THREADS'] == '1' and environ['OMP_WAIT_POLICY'] == 'PASSIVE'


def test_a_stop_request_ends_the_epoch_after_the_step_it_arrived_in(monkeypatch):
    """A SIGTERM during an epoch stops it after the step in progress (the scheduler's kill follows soon),
    not at the epoch's end: ``train_epoch`` takes the step, then raises ``Terminated``."""
    import numpy as np
    import torch

    from DataLoad import TrainSampler
    from Train import Terminated, train_epoch

    class Tiny(torch.nn.Module):
        needs_negatives = False

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(6))
            self.steps = 0

        def loss(self, users, items):
            self.steps += 1
            return (self.w[items] ** 2).sum(), {}

    model = Tiny()
    monkeypatch.setattr(startup, 'stop_requested', lambda: model.steps >= 2)     # arrives during step 2
    sampler = TrainSampler(np.array([[0, i] for i in range(6)]), 6, 1, np.random.default_rng(0))
    with pytest.raises(Terminated):
        train_epoch(model, sampler, torch.optim.SGD(model.parameters(), lr=0.1), 'cpu', 1, show_bar=False)
    assert model.steps == 2 and len(sampler) == 6
    assert int((model.w.detach() != 1).sum()) == 2        # both steps were taken
