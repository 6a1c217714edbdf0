"""startup.py: the thread count and wait policy chosen before torch loads (the user's settings always win)."""
import os

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
