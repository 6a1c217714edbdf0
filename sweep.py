"""Tune main.py's flags with Optuna: a grid or TPE search, selected on validation only.

    python sweep.py --space space.yaml --study slmrec-ml100k -- --data_path ml100k --model_name SLMRec
    python sweep.py --space space.yaml --study s --storage postgresql+psycopg2://user@host/db -- ...   # many workers
    python sweep.py --space space.yaml --study slmrec-ml100k --write_config best.yaml -- ...             # then: main.py --config best.yaml

The space file maps main.py flags (dest names, as in a --config file) to a
list of values or a range:

    l_r: [0.01, 0.001]                      # a list on every flag: the full grid (GridSampler)
    ssl_temp: {low: 0.05, high: 1.0, log: true}   # any range: TPE (lists become categorical choices)
    num_layer: {low: 1, high: 4}            # both ends integers: an integer range

Each trial runs ``python main.py <flags after --> <the trial's flags>`` in a
subprocess of its own, in ``runs/sweep-<study>/trial-<n>/`` (log, results
line, best model, checkpoint).  The objective is the run's best validation
Recall at its first --topK (early stopping as in main.py); the test metrics
are stored with the trial (user attributes) and never used to choose.  A run
that exits non-zero (2 bad value, 3 diverged) is recorded as a failed trial
and the sweep goes on.

The study lives in an SQLite file (default ``runs/sweep-<study>.db``) or any
database URL (``--storage``, e.g. PostgreSQL): every process started with the
same --study and storage takes trials from it, and a grid point is never run
twice.  Running trials send a heartbeat; a trial whose process was killed is
marked failed once its heartbeat is ``3 x --heartbeat`` seconds old and is
retried from its own checkpoint (``--resume``), so a killed sweep started
again carries on where it stopped.  The sweep ends with a table of all trials
and the best trial's validation and test metrics.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings


class TrialTerminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's preemption, exit 143) reached the sweep or stopped a trial's main.py: like Ctrl-C,
    the running trial is retried from its checkpoint at the next start, and this worker stops with 143."""


RUNNING = set()                     # the trials' main.py processes now running (Popen)
_TERM = {'requested': False}


def _terminate(signum, frame):
    """SIGTERM: pass it on to the running trials (each stops at its next safe point and exits 143, which stops
    the sweep); with none running, stop now."""
    _TERM['requested'] = True
    alive = [p for p in list(RUNNING) if p.poll() is None]
    for proc in alive:
        proc.send_signal(signal.SIGTERM)
    if not alive:
        raise TrialTerminated()


if __name__ == '__main__':
    signal.signal(signal.SIGTERM, _terminate)      # before torch loads: the one line, not a silent death

try:
    import config
    from errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED, InputError
    from safe_read import read_yaml
    from safe_write import atomic_file, check_writable
except KeyboardInterrupt as stop:  # Ctrl-C (or SIGTERM) while torch loads: the one line, not a traceback
    if __name__ != '__main__':
        raise
    terminated = isinstance(stop, TrialTerminated)
    print(f'{"terminated" if terminated else "interrupted"} before anything was run', file=sys.stderr)
    sys.exit(143 if terminated else 130)

ROOT = os.path.dirname(os.path.abspath(__file__))
MAIN = os.path.join(ROOT, 'main.py')
OWN_OUTPUTS = ('save_file', 'checkpoint', 'PATH_weight_save', 'resume', 'progress', 'config')
# The child sets PR_SET_PDEATHSIG (SIGKILL) on itself before running main.py, so a trial never outlives a
# killed sweep; then exits at once if the sweep already died (its parent is no longer the one that started it).
CHILD = ('import ctypes, os, runpy, signal, sys\n'
         'try:\n    ctypes.CDLL(None).prctl(1, signal.SIGKILL)\nexcept (OSError, AttributeError):\n    pass\n'
         'if os.getppid() != int(os.environ["SWEEP_PID"]):\n    sys.exit(1)\n'
         'sys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name="__main__")\n')


class TrialFailed(Exception):
    """main.py exited non-zero: the trial is recorded as failed."""


# --------------------------------------------------------------------------
# The search space

def load_space(path, parser):
    """{dest: list of values | (low, high, log)} from the YAML space file, checked like a --config file."""
    raw = read_yaml(path, 'space file')
    if not isinstance(raw, dict) or not raw:
        raise InputError(f'{path}: expected a mapping of flag names to lists or ranges')
    actions = {a.dest: a for a in parser._actions}
    space = {}
    for key, value in raw.items():
        if key in OWN_OUTPUTS or key not in actions or key == 'help':
            raise InputError(f'{path}: {key!r} is not a flag the sweep can vary')
        action = actions[key]
        if action.nargs is not None or not action.option_strings or action.const is not None:
            raise InputError(f'{path}: {key}: only single-valued flags can be searched')
        if isinstance(value, list):
            if not value:
                raise InputError(f'{path}: {key}: an empty list')
            space[key] = [config.config_value(path, key, action, v) for v in value]
            if len(set(map(str, space[key]))) != len(value):
                raise InputError(f'{path}: {key}: a value appears twice')
        elif isinstance(value, dict) and set(value) <= {'low', 'high', 'log'} and {'low', 'high'} <= set(value):
            if action.type not in (int, float):
                raise InputError(f'{path}: {key}: a range needs a numeric flag; give a list')
            low, high = (config.config_value(path, key, action, value[end]) for end in ('low', 'high'))
            if not low < high or (value.get('log') and low <= 0):
                raise InputError(f'{path}: {key}: need low < high (and low > 0 with log)')
            space[key] = (low, high, bool(value.get('log', False)))
        else:
            raise InputError(f'{path}: {key}: expected a list of values or {{low: .., high: .., log: ..}}')
    return space


def is_grid(space):
    return all(isinstance(v, list) for v in space.values())


def suggest(trial, space):
    params = {}
    for key, spec in space.items():
        if isinstance(spec, list):
            params[key] = trial.suggest_categorical(key, spec)
        elif isinstance(spec[0], int):
            params[key] = trial.suggest_int(key, spec[0], spec[1], log=spec[2])
        else:
            params[key] = trial.suggest_float(key, spec[0], spec[1], log=spec[2])
    return params


def flag_argv(parser, params):
    """--flag value pairs for main.py (booleans as True/False, as the published commands write them)."""
    options = {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings}
    return [x for key, value in params.items() for x in (options[key], str(value))]


# --------------------------------------------------------------------------
# Trials

def run_trial(trial, space, base, folder, parser, lock):
    """One main.py run in its own process; the best validation Recall@K, or TrialFailed."""
    import optuna
    if _TERM['requested']:                       # no new trial after a SIGTERM
        raise TrialTerminated()
    params = suggest(trial, space)
    if is_grid(space) and taken_by_earlier(trial):
        trial.set_user_attr('note', 'duplicate grid point, not run')
        raise optuna.TrialPruned()
    # the numbers of the killed trials this one retries, oldest first (set by RetryHeartbeatStaleTrialCallback)
    retried = trial.study._storage.get_trial(trial._trial_id).system_attrs.get('retry_history', [])
    first = retried[0] if retried else trial.number          # a retry continues its original's folder
    out = os.path.join(folder, f'trial-{first}')
    os.makedirs(out, exist_ok=True)
    results, ckpt = os.path.join(out, 'results.jsonl'), os.path.join(out, 'last.pt')
    argv = [*base, *flag_argv(parser, params), '--save_file', results, '--checkpoint', ckpt,
            '--PATH_weight_save', os.path.join(out, 'best.pt'), '--no-progress']
    if retried and os.path.isfile(ckpt):
        argv.append('--resume')
        trial.set_user_attr('note', f'retry of #{retried[-1]}, resumed')
    started = time.time()
    with open(os.path.join(out, 'log.txt'), 'a') as log:
        log.write(f'# trial {trial.number}: main.py {" ".join(argv)}\n')
        log.flush()
        code, stderr = run_main(argv, log)
        log.write(stderr)
    if code == EXIT_INTERRUPTED:                 # Ctrl-C reached the run first: retried, not failed
        raise KeyboardInterrupt
    if code == EXIT_TERMINATED or (_TERM['requested'] and code != 0):
        raise TrialTerminated                   # so did a scheduler's SIGTERM (the run's own, or the sweep's)
    trial.set_user_attr('exit', code)
    trial.set_user_attr('folder', out)
    trial.set_user_attr('wall_s', round(time.time() - started, 1))
    record = None
    if os.path.isfile(results):
        with open(results) as f:
            lines = f.read().splitlines()
        record = json.loads(lines[-1]) if lines else None
    if record is not None:
        trial.set_user_attr('val', record['val'])
        trial.set_user_attr('test', record['test'])          # recorded, never used to choose
        trial.set_user_attr('best_epoch', record['best_epoch'])
    if code != 0:
        reason = {2: 'bad input', 3: 'diverged'}.get(code, f'exit {code}')
        last = (stderr.strip().splitlines() or [''])[-1]
        trial.set_user_attr('note', f'{reason}: {last}'[:200])
        with lock:                               # one line (optuna's own report of the failure is silenced)
            print(f'trial {trial.number:3d}  failed ({reason}: {last[:200]})  {params}', flush=True)
        raise TrialFailed(reason)
    key = str(record['args']['topK'][0])
    value = record['val'][key]['recall']
    with lock:
        print(f'trial {trial.number:3d}  val R@{key} {value:.4f}  test R@{key} {record["test"][key]["recall"]:.4f}'
              f'  {params}', flush=True)
    return value


def run_main(argv, log):
    """``main.py argv`` in a process of its own (``CHILD``), stdout to the file ``log``: ``(exit status, its
    stderr)``.  While it runs it is in ``RUNNING``, where a SIGTERM to the sweep finds it (``_terminate``)."""
    with subprocess.Popen([sys.executable, '-c', CHILD, MAIN, *argv], stdout=log, stderr=subprocess.PIPE,
                          text=True, env=dict(os.environ, SWEEP_PID=str(os.getpid())), cwd=ROOT) as proc:
        RUNNING.add(proc)
        try:
            stderr = proc.communicate()[1]
        finally:
            RUNNING.discard(proc)
    return proc.returncode, stderr


def taken_by_earlier(trial):
    """Whether a lower-numbered trial runs or ran this grid point (GridSampler alone can repeat a running one)."""
    from optuna.trial import TrialState
    me = trial.study._storage.get_trial(trial._trial_id)
    for t in trial.study.get_trials(deepcopy=False):
        if t.number < me.number and t.params == me.params:
            ran = t.state == TrialState.FAIL and 'exit' in t.user_attrs       # a stale (killed) one is retried
            if t.state in (TrialState.RUNNING, TrialState.COMPLETE) or ran:
                return True
    return False


def grid_started(study, space):
    """Every grid point is finished or running (a retry waiting counts as started)."""
    from optuna.trial import TrialState
    points = 1
    for values in space.values():
        points *= len(values)
    seen = {tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.WAITING)
            or (t.state == TrialState.FAIL and 'exit' in t.user_attrs)}
    return len(seen) >= points


def finished(study):
    """Finished trials, the killed originals of retried ones left out."""
    from optuna.trial import TrialState
    trials = study.get_trials(deepcopy=False)
    retried = {r for t in trials for r in t.system_attrs.get('retry_history', [])}
    return sum(t.state in (TrialState.COMPLETE, TrialState.FAIL) and t.number not in retried for t in trials)


# --------------------------------------------------------------------------
# Storage, the table, the chosen configuration

def open_study(args, space):
    import optuna
    from optuna.exceptions import ExperimentalWarning
    url = args.storage or 'sqlite:///' + os.path.abspath(os.path.join('runs', f'sweep-{args.study}.db'))
    if url.startswith('sqlite:///'):
        os.makedirs(os.path.dirname(url[len('sqlite:///'):]) or '.', exist_ok=True)
    engine = {'connect_args': {'timeout': 60}} if url.startswith('sqlite') else {'pool_pre_ping': True}
    for attempt in range(5):    # processes starting together race to create the schema: the loser retries
        with warnings.catch_warnings():      # heartbeats are marked experimental; they are what resumes a sweep
            warnings.simplefilter('ignore', ExperimentalWarning)
            try:
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs=engine, heartbeat_interval=args.heartbeat, grace_period=3 * args.heartbeat,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))
                break
            except Exception as e:             # a bad URL, a missing driver, an unreachable server
                if attempt == 4 or not type(e).__name__ in ('IntegrityError', 'OperationalError'):
                    raise InputError(f'--storage: cannot open {url} ({type(e).__name__}: '
                                          f'{" ".join(str(e).split())[:300]})') from None
                time.sleep(0.5 + attempt)
    if is_grid(space):
        sampler = optuna.samplers.GridSampler(space, seed=args.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=args.seed)
    study = optuna.create_study(study_name=args.study, storage=storage, sampler=sampler, direction='maximize',
                                load_if_exists=True)
    return study, url


def table(study):
    from optuna.trial import TrialState
    lines = [f'{"#":>4}  {"state":9}  {"val":>7}  {"test":>7}  {"epoch":>5}  params / note']
    for t in study.get_trials(deepcopy=False):
        val = f'{t.value:.4f}' if t.state == TrialState.COMPLETE else '—'
        test = t.user_attrs.get('test')
        key = str(next(iter(test))) if test else None
        test_r = f'{test[key]["recall"]:.4f}' if test else '—'
        note = t.user_attrs.get('note', '')
        if t.state == TrialState.FAIL and 'exit' not in t.user_attrs:
            note = note or ('interrupted (Ctrl-C), retried' if t.user_attrs.get('interrupted')
                            else 'killed (no heartbeat), retried')
        params = ', '.join(f'{k}={v}' for k, v in t.params.items())
        lines.append(f'{t.number:4d}  {t.state.name:9}  {val:>7}  {test_r:>7}  {str(t.user_attrs.get("best_epoch", "—")):>5}'
                     f'  {params}{"  (" + note + ")" if note else ""}')
    return '\n'.join(lines)


def chosen_config(parser, base, params):
    """The flags given after -- plus the best trial's, as a --config mapping (dest: value)."""
    given = config.explicit_values(parser, base)
    chosen = config.config_defaults(parser, given['config']) if given.get('config') else {}
    chosen.update({k: v for k, v in given.items() if k not in OWN_OUTPUTS})
    chosen.update(params)
    return chosen


def write_config(path, config, study_name, trial):
    import yaml
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_file(path, 'w') as f:
        f.write(f'# sweep.py study {study_name!r}: trial {trial.number}, '
                f'validation Recall {trial.value:.4f} (chosen on validation only)\n')
        yaml.safe_dump(config, f, sort_keys=False)


# --------------------------------------------------------------------------

def build_parser():
    from errors import OneLineParser
    p = OneLineParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage='python sweep.py --space FILE.yaml --study NAME [options] -- <main.py flags>')
    p.add_argument('--space', required=True, metavar='FILE.yaml', help='flags to search: lists (grid) or ranges (TPE)')
    p.add_argument('--study', required=True, help='study name; processes with the same name and storage share it')
    p.add_argument('--storage', default=None, metavar='URL',
                   help='database URL, e.g. postgresql+psycopg2://user@host:5432/db (default sqlite runs/sweep-<study>.db)')
    p.add_argument('--trials', type=int, default=None,
                   help='stop once the study holds this many finished trials (default: the grid size; TPE 20)')
    p.add_argument('--n_jobs', type=int, default=1, help='trials at a time in this process (each its own main.py)')
    p.add_argument('--seed', type=int, default=0, help="the sampler's seed (grid order, TPE draws)")
    p.add_argument('--heartbeat', type=int, default=10,
                   help='seconds between a running trial\'s heartbeats; a trial silent for 3x this is retried')
    p.add_argument('--write_config', default=None, metavar='FILE.yaml',
                   help='write the best trial\'s configuration as a main.py --config file')
    return p


def parse(argv):
    argv = list(sys.argv[1:] if argv is None else argv)
    base = argv[argv.index('--') + 1:] if '--' in argv else []
    own = argv[:argv.index('--')] if '--' in argv else argv
    return build_parser().parse_args(own), base


MAX_CHECKED_POINTS = 1000       # a grid up to this size is checked point by point; a larger one value by value


def check_sweep(args, base, parser, space):
    """Everything that can be refused before a trial runs: the space against the main.py flags after --,
    those flags themselves with every value of the space (each grid point, or each value and each range's ends
    with the other flags at their first: main.py would refuse a trial of them, one failed trial each), and
    the output file."""
    for key in space:
        if any(a == o or a.startswith(o + '=') for a in base for o in
               next(x for x in parser._actions if x.dest == key).option_strings):
            raise InputError(f'{key}: both in {args.space} and in the main.py flags')
    if args.trials is not None and args.trials < 1 or args.n_jobs < 1 or args.heartbeat < 1:
        raise InputError('--trials, --n_jobs and --heartbeat must be positive')
    first = {k: v[0] for k, v in space.items()}
    try:
        config.parse_args(base + flag_argv(parser, first))            # the main.py flags are checked now, once
    except SystemExit:
        raise InputError('the main.py flags after -- do not parse (see above)') from None
    except InputError as e:
        if not any(str(e).startswith(f'--{k}:') for k in space):
            raise
    for point in points_to_check(space):
        try:
            parsed = config.parse_args(base + flag_argv(parser, {**first, **point}))
        except InputError as e:
            shown = ', '.join(f'{k} {v!r}' for k, v in point.items() if str(e).startswith(f'--{k}:')) or \
                ', '.join(f'{k} {v!r}' for k, v in point.items())
            raise InputError(f'{args.space}: {shown}: main.py refuses it ({e}); every trial of it would fail') from None
        if parsed.select_on != 'val' or 'select_on' in space:
            raise InputError('--select_on: the sweep selects on validation only (a grid chosen on the test split '
                             'would be optimistic twice); run main.py --select_on test on the chosen point instead')
    for path, what in ((args.write_config, 'config file'),):
        if path and os.path.realpath(path) == os.path.realpath(args.space):
            raise InputError(f'{path}: --write_config would overwrite the --space file; give it its own path')
        if path:
            check_writable(path, what)


def points_to_check(space):
    """The points ``check_sweep`` parses: every grid point of a small space, else each value (a list's, a range's
    two ends) on its own."""
    import itertools
    values = {k: v if isinstance(v, list) else [v[0], v[1]] for k, v in space.items()}
    size = 1
    for v in values.values():
        size *= len(v)
    if size <= MAX_CHECKED_POINTS:
        return [dict(zip(values, combo)) for combo in itertools.product(*values.values())]
    return [{k: x} for k, v in values.items() for x in v]


STUDY_NAME = re.compile(r'[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,99}')     # runs/sweep-<study>/ and runs/sweep-<study>.db


def sweep(args, base):
    import optuna
    if not STUDY_NAME.fullmatch(args.study):
        raise InputError(f'--study: {args.study[:80]!r} is not a plain name (letters, digits, _, +, - and ., not '
                         f'starting with .; at most 100): it names runs/sweep-<study>/ and its trials\' files')
    parser = config.build_parser()
    space = load_space(args.space, parser)
    check_sweep(args, base, parser, space)
    optuna.logging.set_verbosity(optuna.logging.ERROR)     # a failed trial is our one line, not a traceback
    study, url = open_study(args, space)
    folder = os.path.abspath(os.path.join('runs', f'sweep-{args.study}'))
    trials = args.trials or (len(optuna.samplers.GridSampler(space)._all_grids) if is_grid(space) else 20)
    print(f'study {args.study!r} in {url}: {finished(study)} of {trials} trials finished; '
          f'{"grid" if is_grid(space) else "TPE"} over {", ".join(space)}', flush=True)
    lock = threading.Lock()

    def work_left(study):
        if finished(study) >= trials:
            return False
        return not is_grid(space) or not grid_started(study, space) or _waiting(study)

    def stop_when_done(study, _trial):
        if not work_left(study):
            study.stop()

    def objective(trial):
        try:
            return run_trial(trial, space, base, folder, parser, lock)
        except KeyboardInterrupt:
            trial.set_user_attr('interrupted', True)    # retried at the next start (retry_interrupted)
            optuna.logging.set_verbosity(optuna.logging.ERROR)   # not optuna's traceback: cli's one line
            raise

    idle_since = time.time()
    while True:         # until nothing is left to run here
        fail_stale(study)                               # a killed process's trials: failed, retried (waiting)
        retry_interrupted(study)
        if work_left(study):
            with warnings.catch_warnings():     # optimize calls the (experimental) stale-trial check itself
                warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
                study.optimize(objective, n_jobs=args.n_jobs,
                               catch=(TrialFailed,), callbacks=[stop_when_done])
            idle_since = time.time()
        elif (any(t.state == optuna.trial.TrialState.RUNNING for t in study.get_trials(deepcopy=False))
              and time.time() - idle_since < 3 * args.heartbeat + 5):
            time.sleep(min(args.heartbeat, 2))
            if _TERM['requested']:
                raise TrialTerminated()  # long enough to see another process's trial go stale and retry it
        else:
            break                               # trials other processes still run show as RUNNING in the table
    return report(study, args, parser, base)


def report(study, args, parser, base):
    """The table of all trials, the best one's metrics, and --write_config; exit status 1 when none finished."""
    import optuna
    from Full_vt import format_metrics
    print(table(study))
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        refused = [t for t in trials if t.user_attrs.get('exit') == EXIT_BAD_INPUT]
        if refused and all(t.user_attrs.get('exit') in (EXIT_BAD_INPUT, None) for t in trials):
            print(f'error: no trial completed: main.py refused every trial (trial {refused[0].number}: '
                  f'{refused[0].user_attrs.get("note", "")})', file=sys.stderr)
            return EXIT_BAD_INPUT
        print('no trial completed', file=sys.stderr)
        return 1
    best = study.best_trial
    print(f'best trial {best.number}: {best.params}')
    print(f'  Val   {format_metrics(best.user_attrs["val"])}')
    print(f'  Test  {format_metrics(best.user_attrs["test"])}')
    if args.write_config:
        write_config(args.write_config, chosen_config(parser, base, best.params), args.study, best)
        print(f'configuration written to {args.write_config} (python main.py --config {args.write_config})')
    return 0


def retry_interrupted(study):
    """Queue a retry (as for a killed trial) of each trial that Ctrl-C ended: optuna marks it failed, with
    no exit status of ours; without the retry its grid point would count as run and never be."""
    import optuna
    from optuna.trial import TrialState
    trials = study.get_trials(deepcopy=False)
    retried = {r for t in trials for r in t.system_attrs.get('retry_history', [])}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
    for t in trials:
        if t.state == TrialState.FAIL and 'exit' not in t.user_attrs and t.number not in retried \
                and t.user_attrs.get('interrupted'):
            retry(study, t)


def fail_stale(study):
    import optuna
    from optuna.exceptions import ExperimentalWarning
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _waiting(study):
    from optuna.trial import TrialState
    return any(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))


def cli(argv=None):
    args, base = parse(argv)
    try:
        return sweep(args, base)
    except InputError as e:
        from errors import one_line
        print(f'error: {one_line(e)}', file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as e:
        stopped = 'terminated' if isinstance(e, TrialTerminated) else 'interrupted'
        print(f'{stopped}: run the same command again to continue (an interrupted trial resumes from its '
              'checkpoint)', file=sys.stderr)
        return EXIT_TERMINATED if isinstance(e, TrialTerminated) else EXIT_INTERRUPTED


if __name__ == '__main__':
    sys.exit(cli())
