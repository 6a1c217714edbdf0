"""sweep.py: a grid finishes with distinct trials, failed trials are recorded and the sweep goes on, two
processes share a study (SQLite, and a real PostgreSQL server) without running a grid point twice, a killed
sweep resumes, the chosen configuration is a --config file."""
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

import config as main_config
from conftest import ROOT

optuna = pytest.importorskip('optuna')
import sweep  # noqa: E402

GRID = 'l_r: [0.01, 0.001]\nmodalities: [v, zz]\n'    # 'zz' is no modality of the data: main.py exits 2 (two fast
                                                       # failures; values refused by the flags' checks never run)


@pytest.fixture
def base(tiny_plain):
    return ['--data_path', tiny_plain, '--num_epoch', '1', '--batch_size', '512', '--ssl_task', 'FD',
            '--num_layer', '1']


def _read(path):
    with open(path) as f:
        return f.read()


def _space(tmp_path, text=GRID):
    path = tmp_path / 'space.yaml'
    path.write_text(text)
    return str(path)


def _load(tmp_path, name, storage=None):
    url = storage or f'sqlite:///{tmp_path}/runs/sweep-{name}.db'
    return optuna.load_study(study_name=name, storage=url)


def _runs(tmp_path, name):
    """main.py runs per trial folder, as the trial logs record them."""
    return {os.path.basename(os.path.dirname(p)): _read(p).count('# trial ')
            for p in glob.glob(str(tmp_path / 'runs' / f'sweep-{name}' / 'trial-*' / 'log.txt'))}


def _point(t):
    return t.params['l_r'], t.params['modalities']


def _cmd(tmp_path, name, base, *flags, space=GRID, heartbeat=10):
    return [sys.executable, os.path.join(ROOT, 'sweep.py'), '--space', _space(tmp_path, space), '--study', name,
            '--heartbeat', str(heartbeat), *flags, '--', *base]


def test_grid_of_four_finishes_with_four_distinct_trials_and_writes_the_config(tmp_path, base, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / 'best.yaml'
    assert sweep.cli(['--space', _space(tmp_path), '--study', 'g', '--write_config', str(config), '--', *base]) == 0
    out = capsys.readouterr().out
    study = _load(tmp_path, 'g')
    trials = study.get_trials()
    assert len(trials) == 4 and {_point(t) for t in trials} == {(a, b) for a in (0.01, 0.001) for b in ('v', 'zz')}
    for t in trials:
        if t.params['modalities'] == 'zz':   # a failed run is a failed trial, and the sweep went on
            assert t.state.name == 'FAIL' and t.user_attrs['exit'] == 2
            assert "--modalities: unknown modality 'zz'" in t.user_attrs['note']
            continue
        assert t.state.name == 'COMPLETE'  # the objective: the run's best validation Recall@10; test kept aside
        record = json.loads(_read(os.path.join(t.user_attrs['folder'], 'results.jsonl')).splitlines()[-1])
        assert t.value == record['val']['10']['recall'] and t.user_attrs['test'] == record['test']
        assert (record['args']['l_r'], record['args']['modalities']) == _point(t)
    best = max((t for t in trials if t.state.name == 'COMPLETE'), key=lambda t: t.value)
    assert study.best_trial.number == best.number
    assert f'best trial {best.number}: ' in out and out.count('COMPLETE') == 2 and out.count('FAIL ') == 2
    assert out.count('failed (bad input: error: --modalities: unknown modality') == 2
    chosen = main_config.parse_args(['--config', str(config)])
    assert (chosen.l_r, chosen.modalities, chosen.ssl_task, chosen.num_epoch, chosen.num_layer) == \
        (best.params['l_r'], 'v', 'FD', 1, 1)
    # started again, a finished study runs nothing more
    assert sweep.cli(['--space', _space(tmp_path), '--study', 'g', '--', *base]) == 0
    assert len(_load(tmp_path, 'g').get_trials()) == 4 and sorted(_runs(tmp_path, 'g').values()) == [1, 1, 1, 1]


def test_a_trial_ended_by_sigterm_is_retried_from_its_checkpoint(tmp_path, base, monkeypatch, capsys):
    """main.py exits 143 (a scheduler's SIGTERM): the worker stops with 143 and one line, the trial is not
    failed, and the next start retries it (with --resume when its checkpoint exists) and finishes the grid."""
    monkeypatch.chdir(tmp_path)
    real_run, calls = sweep.run_main, []

    def preempted_first(argv, log):
        calls.append(argv)
        if len(calls) == 1:
            return 143, 'terminated: resume with --resume\n'
        return real_run(argv, log)
    monkeypatch.setattr(sweep, 'run_main', preempted_first)
    space = _space(tmp_path, 'l_r: [0.01, 0.001]\n')
    assert sweep.cli(['--space', space, '--study', 't', '--', *base]) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith('terminated: run the same command again')
    assert sweep.cli(['--space', space, '--study', 't', '--', *base]) == 0
    trials = _load(tmp_path, 't').get_trials()
    assert sorted(t.params['l_r'] for t in trials if t.state.name == 'COMPLETE') == [0.001, 0.01]
    assert not any('exit' in t.user_attrs and t.user_attrs['exit'] == 143 for t in trials)


@pytest.mark.parametrize('text, message', [
    ('l_rr: [1]\n', "'l_rr' is not a flag the sweep can vary"),
    ('l_r: [0.1, x]\n', "l_r: invalid float value 'x'"),
    ('ssl_task: {low: 1, high: 2}\n', 'a range needs a numeric flag'),
    ('l_r: {low: 0.1, high: 0.01}\n', 'need low < high'),
    ('topK: [10, 20]\n', 'only single-valued flags'),
    ('save_file: [a, b]\n', 'not a flag the sweep can vary'),
])
def test_bad_space_is_one_line(tmp_path, capsys, text, message):
    space = _space(tmp_path, text)
    assert sweep.cli(['--space', space, '--study', 'b', '--']) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: {space}: ') and message in err and len(err.splitlines()) == 1
    assert not os.path.exists('runs/sweep-b.db')


def test_flag_both_in_space_and_command_line(tmp_path, capsys):
    assert sweep.cli(['--space', _space(tmp_path), '--study', 'b', '--', '--l_r=0.1']) == 2
    assert capsys.readouterr().err.startswith('error: l_r: both in ')


@pytest.mark.parametrize('text, flags', [
    ('l_r: [0.01, 0.001]\n', ['--select_on', 'test']),
    ('select_on: [val, test]\n', []),
    ('l_r: [0.01, 0.001]\n', ['--config', 'CONFIG']),
])
def test_the_sweep_selects_on_validation_only(tmp_path, capsys, base, text, flags):
    """--select_on test, given after --, in the space or in a --config file, is one line before any trial."""
    (tmp_path / 'c.yaml').write_text('select_on: test\n')
    flags = [str(tmp_path / 'c.yaml') if f == 'CONFIG' else f for f in flags]
    assert sweep.cli(['--space', _space(tmp_path, text), '--study', 'v', '--', *base, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: --select_on: the sweep selects on validation only') and len(err.splitlines()) == 1
    assert not os.path.exists('runs/sweep-v.db')


def _two_workers(tmp_path, name, base, *flags):
    # --heartbeat 10: a trial is stale after 30 s of silence, so a loaded machine does not retry a live one
    procs = [subprocess.Popen(_cmd(tmp_path, name, base, *flags), cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [p.returncode for p in procs] == [0, 0], outs
    return outs


def _assert_grid_once(trials, runs):
    ran = [t for t in trials if t.state.name != 'PRUNED']                     # PRUNED: a duplicate, not run
    assert len(ran) == 4 and len({_point(t) for t in ran}) == 4
    assert sorted(t.state.name for t in ran) == ['COMPLETE', 'COMPLETE', 'FAIL', 'FAIL']
    assert sorted(runs.values()) == [1, 1, 1, 1]                              # four main.py runs in all


def test_two_processes_share_one_sqlite_study(tmp_path, base):
    outs = _two_workers(tmp_path, 's', base)
    _assert_grid_once(_load(tmp_path, 's').get_trials(), _runs(tmp_path, 's'))
    assert all('best trial' in out for out in outs)
    assert sum(out.count('val R@10') for out in outs) == 2                    # the trials were split, not repeated


@pytest.mark.slow
def test_killed_sweep_resumes_where_it_stopped(tmp_path, base):
    flags = [x if x != '1' or base[i - 1] != '--num_epoch' else '6' for i, x in enumerate(base)]
    flags += ['--dim_latent', '8', '--patience', '10']
    space = 'l_r: [0.01, 0.001]\n'
    proc = subprocess.Popen(_cmd(tmp_path, 'k', flags, space=space, heartbeat=1), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:                    # kill during trial 1, after trial 0 finished
        if line.startswith('trial   0'):
            break
    log = tmp_path / 'runs' / 'sweep-k' / 'trial-1' / 'log.txt'
    for _ in range(1200):                       # ... once trial 1 has checkpointed an epoch
        if (log.parent / 'last.pt').exists():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    study = _load(tmp_path, 'k')
    assert [t.state.name for t in study.get_trials()][:2] == ['COMPLETE', 'RUNNING']
    time.sleep(0.5)
    for _ in range(10):                                                       # its main.py died with it
        if not _processes_mentioning(str(log.parent)):
            break
        time.sleep(0.05)
    assert not _processes_mentioning(str(log.parent))
    done = subprocess.run(_cmd(tmp_path, 'k', flags, space=space, heartbeat=1), cwd=tmp_path, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    trials = _load(tmp_path, 'k').get_trials()
    complete = [t for t in trials if t.state.name == 'COMPLETE']
    assert sorted(t.params['l_r'] for t in complete) == [0.001, 0.01]
    killed = [t for t in trials if t.state.name == 'FAIL']
    assert len(killed) == 1 and killed[0].number == 1 and 'exit' not in killed[0].user_attrs
    retry = next(t for t in trials if t.system_attrs.get('failed_trial') == 1)
    assert retry.state.name == 'COMPLETE' and retry.params == killed[0].params
    assert retry.user_attrs['folder'].endswith('trial-1')                    # continued in the killed one's folder
    assert 'resumed from' in _read(log) and retry.user_attrs['note'] == 'retry of #1, resumed'
    assert 'killed (no heartbeat), retried' in done.stdout


def _processes_mentioning(text):
    """Pids of live processes whose command line contains ``text`` (Linux /proc)."""
    found = []
    for cmdline in glob.glob('/proc/[0-9]*/cmdline'):
        try:
            with open(cmdline, 'rb') as f:
                if text.encode() in f.read():
                    found.append(int(cmdline.split('/')[2]))
        except OSError:
            pass
    return found


# --------------------------------------------------------------------------
# PostgreSQL: a real server in a temporary folder

def _pg_bin(name):
    found = shutil.which(name) or sorted(glob.glob(f'/usr/lib/postgresql/*/bin/{name}'))
    return found if isinstance(found, str) else (found[-1] if found else None)


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture
def request_cleanup():
    folders = []
    yield folders
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres(request_cleanup):
    """postgresql+psycopg2 URL of a fresh server on a free port; stopped afterwards."""
    pytest.importorskip('psycopg2', reason='the psycopg2-binary driver is not installed (requirements.txt)')
    initdb, pg_ctl = _pg_bin('initdb'), _pg_bin('pg_ctl')
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL's initdb/pg_ctl not found (Debian: apt-get install postgresql; .ci/run does)")
    import tempfile
    from pathlib import Path
    holder = tempfile.mkdtemp(prefix='sweep-pg-')      # outside pytest's private tmp_path: the server's user reads it
    data = Path(holder) / 'data'
    data.mkdir()
    request_cleanup.append(holder)
    prefix = []
    if os.geteuid() == 0:                       # postgres refuses to run as root: run it as an unprivileged user
        import pwd
        user = next((u for u in ('postgres', 'nobody') if _has_user(pwd, u)), None)
        if user is None:
            pytest.skip('running as root and no unprivileged user for the PostgreSQL server')
        shutil.chown(holder, user)
        shutil.chown(data, user)
        prefix = ['runuser', '-u', user, '--']
    port = _free_port()
    run = lambda *cmd: subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)  # noqa: E731
    init = run(initdb, '-D', str(data), '-U', 'sweep', '--auth=trust', '-E', 'UTF8')
    if init.returncode != 0:
        pytest.skip(f'initdb failed: {init.stderr.strip()[-300:]}')
    start = run(pg_ctl, '-D', str(data), '-l', str(data / 'log'), '-w', '-t', '60', '-o',
                f'-p {port} -k {data} -c listen_addresses=127.0.0.1', 'start')
    if start.returncode != 0:
        pytest.skip(f'the PostgreSQL server did not start: {start.stderr.strip()[-300:]}')
    try:
        yield f'postgresql+psycopg2://sweep@127.0.0.1:{port}/postgres'
    finally:
        run(pg_ctl, '-D', str(data), '-m', 'immediate', '-w', 'stop')


def _has_user(pwd, name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def test_two_processes_share_a_postgresql_study(tmp_path, base, postgres):
    outs = _two_workers(tmp_path, 'p', base, '--storage', postgres)
    _assert_grid_once(_load(tmp_path, 'p', postgres).get_trials(), _runs(tmp_path, 'p'))
    assert not (tmp_path / 'runs' / 'sweep-p.db').exists()
    assert sum(out.count('val R@10') for out in outs) == 2


def test_a_running_grid_point_is_not_run_again():
    """GridSampler hands out a running point again once every point has started; such a trial is skipped."""
    space = {'l_r': [0.01, 0.001]}
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(space), direction='maximize')
    first, second = study.ask(), study.ask()
    for t in (first, second):
        sweep.suggest(t, space)
    assert {first.params['l_r'], second.params['l_r']} == {0.01, 0.001}
    assert sweep.grid_started(study, space)
    assert not sweep.taken_by_earlier(first) and not sweep.taken_by_earlier(second)
    third = study.ask()                          # every point started: optuna picks a running one again
    sweep.suggest(third, space)
    assert third.params in (first.params, second.params) and sweep.taken_by_earlier(third)
    other = first if first.params != third.params else second
    study.tell(other, state=optuna.trial.TrialState.FAIL)          # killed (no exit code): its point is free again
    assert not sweep.grid_started(study, space)


@pytest.mark.slow
def test_tpe_over_a_range(tmp_path, base, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = _space(tmp_path, 'l_r: {low: 0.001, high: 0.05, log: true}\ndim_latent: {low: 4, high: 12}\n')
    assert sweep.cli(['--space', space, '--study', 't', '--trials', '2', '--', *base]) == 0
    trials = _load(tmp_path, 't').get_trials()
    assert len(trials) == 2 and all(t.state.name == 'COMPLETE' for t in trials)
    for t in trials:
        assert 0.001 <= t.params['l_r'] <= 0.05 and isinstance(t.params['dim_latent'], int)
        assert 4 <= t.params['dim_latent'] <= 12
