"""What main.py sets up before torch loads: CPU threads that share a machine, and SIGTERM as a stop request.

    import startup
    startup.configure_threads()      # before `import torch`: OMP_NUM_THREADS, OMP_WAIT_POLICY
    startup.catch_sigterm()          # a scheduler's SIGTERM stops the run at its next safe point (Train.stop_point)

Threads.  torch starts one OpenMP thread per core it sees, and OpenMP threads
spin while they wait for each other.  Where another process keeps a core busy
(a cluster node's other jobs, a workstation), a spinning thread waits for a
descheduled partner: measured on a 2-core machine with one core busy, an
ML-100K SLMRec epoch took 11 s with 2 spinning threads, 6.6 s with
``OMP_WAIT_POLICY=PASSIVE`` and 5.4 s with one thread, against 3 s on a quiet
machine (bench/RESULTS.md, "Sharing a machine").  So, unless the user set them:

* ``OMP_WAIT_POLICY=PASSIVE``: a waiting thread sleeps instead of spinning;
* ``OMP_NUM_THREADS`` = the CPUs this process may use (``usable_cpus``: its
  affinity mask, the cgroup's CPU quota, ``SLURM_CPUS_PER_TASK``), divided
  by the processes torchrun starts on this node (``LOCAL_WORLD_SIZE``), when
  that is fewer than the machine's CPUs: torch itself counts the machine's
  cores, which a container or a SLURM allocation does not give it.

An explicit ``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` (and
``--num_workers``, applied later by main.py) always wins: on a machine of one's
own, ``GOMP_SPINCOUNT=300000`` restores libgomp's default spinning (about 3 ms),
which was faster there in one measurement (bench/RESULTS.md).  On a machine whose cores are all this
process's, the thread count is torch's own, so results do not change.
"""
import math
import os
import signal

_STOP = {'requested': False}


def cgroup_cpu_quota(root='/sys/fs/cgroup'):
    """The CPUs the cgroup quota allows (rounded up), or None without a quota (cgroup v2, then v1)."""
    try:
        with open(os.path.join(root, 'cpu.max')) as f:
            quota, period = f.read().split()[:2]
        return None if quota == 'max' else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, 'cpu', 'cpu.cfs_quota_us')) as f:
            quota = int(f.read())
        with open(os.path.join(root, 'cpu', 'cpu.cfs_period_us')) as f:
            period = int(f.read())
        return None if quota <= 0 or period <= 0 else max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        return None


def usable_cpus(environ=os.environ, quota=cgroup_cpu_quota):
    """The CPUs this process may use: the affinity mask, capped by the cgroup quota and SLURM_CPUS_PER_TASK."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    limits = [quota()]
    try:
        limits.append(int(environ.get('SLURM_CPUS_PER_TASK', '')))
    except ValueError:
        pass
    return max(1, min([cpus] + [n for n in limits if n and n > 0]))


def thread_settings(environ=os.environ, cpus=None):
    """The variables ``configure_threads`` would set: ``{name: value}`` for those the user left unset."""
    cpus = usable_cpus(environ) if cpus is None else cpus
    try:
        local_ranks = max(1, int(environ.get('LOCAL_WORLD_SIZE', '1')))
    except ValueError:
        local_ranks = 1
    wanted = {}
    if not any(environ.get(k) for k in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')):   # the user chose how threads wait
        wanted['OMP_WAIT_POLICY'] = 'PASSIVE'
    if cpus < (os.cpu_count() or 1) or local_ranks > 1:     # else torch's own count (its physical cores) stays
        wanted['OMP_NUM_THREADS'] = str(max(1, cpus // local_ranks))
    return {k: v for k, v in wanted.items() if not environ.get(k)}


def configure_threads(environ=os.environ):
    """Set the thread count and wait policy in ``environ`` (before torch loads); returns what was set."""
    settings = thread_settings(environ)
    environ.update(settings)
    return settings


def _request_stop(signum, frame):
    _STOP['requested'] = True


def catch_sigterm():
    """From now on SIGTERM asks the run to stop at its next safe point instead of killing it."""
    signal.signal(signal.SIGTERM, _request_stop)


def ignore_sigterm():
    """A run that is stopping ignores further SIGTERMs (so it exits with its own status, 143)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def stop_requested():
    return _STOP['requested']
