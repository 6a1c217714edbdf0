"""Sharing a machine: main.py's epoch time on a quiet machine and with one core kept busy by another process,
before and after startup.py's thread defaults (OMP_WAIT_POLICY=PASSIVE, threads from the usable CPUs).

    python bench/sharing.py                      # base 292e3f0 (before) against this tree (after), 2 rounds
    python bench/sharing.py --base HEAD~1 --rounds 3 --scale 1.0

"before" runs the main.py of ``--base`` (exported with ``git archive``, as
bench/compare_commits.py does) and "after" this tree's, both with no OMP_*
variable set (their own defaults); "1 thread" is this tree with
OMP_NUM_THREADS=1.  The busy neighbour is a Python busy loop (one core).
Data: ML-100K-shaped synthetic (943 users, 1,682 items, about 100k pairs,
dense v/a/t features), SLMRec with its defaults; epoch 2's training time
(the first warms up).  Each round runs every configuration once, side by side.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'bench'))


def epoch_seconds(tree, data, work, env):
    command = [sys.executable, os.path.join(tree, 'main.py'), '--data_path', data, '--num_epoch', '2',
               '--no-progress', '--no-cuda', '--save_file', 'r.jsonl']
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f'{tree}: failed\n{done.stderr[-2000:]}')
    return float(re.findall(r'^epoch +2  loss \S+  \(([0-9.]+)s\)$', done.stdout, re.M)[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--base', default='292e3f0', help='the commit before the thread defaults')
    p.add_argument('--rounds', type=int, default=2)
    p.add_argument('--scale', type=float, default=1.0, help='fraction of the ML-100K size')
    p.add_argument('--spin', type=int, nargs='*', default=[],
                   help='also this tree with GOMP_SPINCOUNT=N (libgomp spins N times, then sleeps), e.g. 10000')
    p.add_argument('--skip', nargs='*', default=[], help="configurations left out, e.g. '1 thread'")
    args = p.parse_args(argv)
    import prepare_data
    from compare_commits import export_commit
    s = args.scale
    data = prepare_data.synthetic(f'ml100k_like_{s:g}', like='none', num_user=max(20, round(943 * s)),
                                  num_item=max(30, round(1682 * s)), inter_per_user=106, seed=1)
    plain = {k: v for k, v in os.environ.items() if not k.startswith(('OMP_', 'GOMP_', 'KMP_'))}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        old = os.path.join(tmp, 'old')
        export_commit(args.base, old)
        configs = {'before': (old, plain), 'after': (ROOT, plain), '1 thread': (ROOT, dict(plain, OMP_NUM_THREADS='1'))}
        configs.update({f'spin {n}': (ROOT, dict(plain, GOMP_SPINCOUNT=str(n))) for n in args.spin})
        configs = {k: v for k, v in configs.items() if k not in args.skip}
        for r in range(args.rounds):
            for load in ('quiet', 'one busy core'):
                busy = subprocess.Popen([sys.executable, '-c', 'while True: pass']) if load != 'quiet' else None
                try:
                    for name, (tree, env) in configs.items():
                        work = os.path.join(tmp, f'{name}-{load}-{r}'.replace(' ', '_'))
                        os.makedirs(work)
                        seconds = epoch_seconds(tree, data, work, env)
                        results.setdefault((load, name), []).append(seconds)
                        print(f'round {r + 1}  {load:14s} {name:9s} {seconds:6.1f} s', flush=True)
                finally:
                    if busy:
                        busy.kill()
                        busy.wait()
    print(f'\nload average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other jobs count too)')
    print(f'{"epoch 2, seconds (median)":28s} {"quiet":>8s} {"busy core":>10s} {"busy / quiet":>13s}')
    for name in configs:
        quiet = statistics.median(results[('quiet', name)])
        busy = statistics.median(results[('one busy core', name)])
        print(f'{name:28s} {quiet:8.1f} {busy:10.1f} {busy / quiet:12.2f}x')


if __name__ == '__main__':
    main()
