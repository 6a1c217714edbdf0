"""torchrun for main.py, with main.py's exit statuses and its one-line errors (docs/torchrun.md).

    python launch.py --standalone --nproc_per_node 2 main.py --data_path ml100k
    python launch.py --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint HOST0:29500 \\
        --rdzv_id run1 main.py --data_path ml1m

It takes torchrun's own options (``python -m torch.distributed.run --help``), then ``main.py`` and its flags,
and starts the same processes torchrun starts.  What differs is what the launcher itself says and exits with:

* main.py's flags and output paths are checked before any process starts: a bad one is main.py's one line,
  exit 2 (under plain torchrun: rank 0's line, then torchrun's 40-line ``ChildFailedError`` report, exit 1);
* the job ends with rank 0's exit status (2 bad input, 3 diverged, 130 Ctrl-C, 143 SIGTERM), after rank 0's
  one line and nothing else; a rank that crashed or was killed is one line naming it, exit 1;
* SIGTERM to the launcher (a scheduler's preemption, ``kill``) is passed to every rank, which stops at its next
  safe point (``Train.stop_point``) with the last epoch's checkpoint; the launcher then exits 143 with the
  one line (plain torchrun: a ``SignalException`` traceback, exit 1, and the ranks are SIGKILLed once its
  shutdown timeout has passed).  Ctrl-C likewise, 130.

Rank 0 writes its exit status to the file ``$SLMREC_LAUNCH_STATUS`` names (main.py, at its end); torchrun's own
log lines are silenced (its errors still end the launch, as one line).
"""
import os
import signal
import sys

STATUS_ENV = 'SLMREC_LAUNCH_STATUS'
_STOP = {'signal': None}


class Stopped(Exception):
    """A SIGTERM or SIGINT reached the launcher before any rank had started."""


def _ranks():
    """The pids of this process's children (the ranks torchrun's agent started)."""
    pids = []
    try:
        for task in os.listdir('/proc/self/task'):
            with open(f'/proc/self/task/{task}/children') as f:
                pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return pids


def _in_the_foreground():
    """Whether this process group owns the terminal: a Ctrl-C there has reached every rank already."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        return False


def _on_signal(signum, frame):
    """SIGTERM/SIGINT: pass it on to the ranks (each stops at its next safe point and exits 143 or 130, which
    ends the launch); before any rank started, stop the launch now."""
    _STOP['signal'] = signum
    ranks = _ranks()
    if not ranks:
        raise Stopped()
    if signum == signal.SIGINT and _in_the_foreground():
        return
    for pid in ranks:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


if __name__ == '__main__':
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


ROOT = os.path.dirname(os.path.abspath(__file__))
MAIN = os.path.join(ROOT, 'main.py')


def _fail(code, line):
    print(line, file=sys.stderr)
    return code


def stopped_line(signum):
    from errors import EXIT_INTERRUPTED, EXIT_TERMINATED
    if signum == signal.SIGINT:
        return EXIT_INTERRUPTED, 'interrupted: the ranks stopped before they reported (continue with --resume ' \
                                 'where a checkpoint was written)'
    return EXIT_TERMINATED, 'terminated: the ranks stopped before they reported (resume with --resume where a ' \
                            'checkpoint was written)'


def parse(argv):
    """torchrun's options (its own parser, errors as one line) and main.py's flags."""
    from torch.distributed import run as torchrun
    parser = torchrun.get_args_parser()
    parser.prog = 'launch.py'

    def one_line(message):
        parser.exit(2, f'error: {" ".join(message.split())} (see python launch.py --help)\n')
    parser.error = one_line
    args = parser.parse_args(argv)
    if os.path.realpath(args.training_script) != os.path.realpath(MAIN) or args.module or args.no_python:
        parser.error(f'launch.py starts {MAIN} only, got {args.training_script}')
    return args


def check_main_args(flags):
    """What main.py would refuse before any work, refused now: its flags and its output paths (one line)."""
    import config
    import main
    args = config.parse_args(flags)             # argparse's own errors: its one line and exit 2
    main.output_paths(args, config.run_name(args))


def rank0_status(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def launch(argv):
    import logging
    import tempfile
    from errors import EXIT_BAD_INPUT, DataError, InputError, describe, one_line
    args = parse(argv)
    try:
        check_main_args(args.training_script_args)
    except (DataError, InputError) as e:
        return _fail(EXIT_BAD_INPUT, f'error: {one_line(e)}')
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    logging.getLogger('torch.distributed').setLevel(logging.CRITICAL)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith('torch.distributed'):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ['LOGLEVEL'] = 'CRITICAL'                  # the elastic loggers made later
    args.signals_to_handle = 'SIGHUP,SIGQUIT'            # SIGTERM and SIGINT are ours (_on_signal)
    with tempfile.TemporaryDirectory(prefix='slmrec-launch-') as folder:
        status = os.path.join(folder, 'rank0')
        os.environ[STATUS_ENV] = status
        try:
            torchrun.run(args)
            return 0
        except Stopped:
            return _fail(*stopped_line(_STOP['signal']))
        except ChildFailedError as e:
            code = rank0_status(status)
            if code:                                     # rank 0 said why, in its one line
                return code
            if _STOP['signal'] is not None:
                return _fail(*stopped_line(_STOP['signal']))
            rank, failure = min(e.failures.items())
            how = (f'was killed by {failure.signal_name()}' if failure.exitcode < 0
                   else f'exited with status {failure.exitcode}')
            return _fail(1, f'error: rank {rank} (pid {failure.pid}) {how}; see its output above')
        except Exception as e:                           # a rendezvous that fails, a signal torchrun handles
            return _fail(1, f'error: torchrun: {one_line(describe(e))}')


def main(argv=None):
    try:
        return launch(sys.argv[1:] if argv is None else argv)
    except Stopped:
        return _fail(*stopped_line(_STOP['signal']))


if __name__ == '__main__':
    sys.exit(main())
