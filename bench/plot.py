"""Training curves from a results file: validation Recall@K and loss against epochs, one PNG.

    python bench/plot.py results.jsonl --out curves.png
    python bench/plot.py results.jsonl --runs ml100k-SLMRec-seed1 ml100k-MMGCN-seed1 --k 20 --out curves.png

Each line of the results file that main.py appends carries the run's
per-epoch ``history``; every selected run (all by default, or those named by
``--runs``) becomes one line in each panel, its best epoch (the one main.py
selected) marked with a star on the recall curve and a dotted line on the
loss.  Runs sharing a name (e.g. two SSL tasks, same seed) are labelled with
the flags that differ between them (else their line number in the file).  Matplotlib's Agg backend: no display needed.
"""
import argparse
import json
import os
import sys

FIGSIZE, DPI = (11.0, 4.2), 100           # 1100 x 420 pixels


class PlotError(Exception):
    """Bad input: one line for the user."""


def read_results(path):
    """[(line number, record)] of every main.py results line in ``path``; PlotError names the file and the line
    that is not one."""
    try:
        if os.path.exists(path) and not os.path.isfile(path):
            raise OSError('not a regular file')      # a FIFO would hang
        with open(path) as f:
            lines = f.read().splitlines()
    except (OSError, ValueError) as e:               # ValueError: not UTF-8
        raise PlotError(f'{path}: cannot read the results file ({getattr(e, "strerror", None) or e})') from None
    records = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise PlotError(f'{path}: line {n} is not JSON ({e.msg})') from None
        except RecursionError:
            raise PlotError(f'{path}: line {n} is not JSON (nested too deeply)') from None
        if not _is_results_line(record):
            raise PlotError(f'{path}: line {n} is not a main.py results line')
        records.append((n, record))
    return records


def load_runs(path, names=None):
    """[(label, record)] of the records with a history, in file order, restricted to ``names`` if given."""
    records = [(n, r) for n, r in read_results(path) if names is None or r['run'] in names]
    if names is not None:
        missing = [name for name in names if name not in {r['run'] for _, r in records}]
        if missing:
            raise PlotError(f'{path}: no run named {missing[0]!r}')
    records = [(n, r) for n, r in records if r.get('history')]
    if not records:
        raise PlotError(f'{path}: no run with a per-epoch history to plot')
    groups = {}
    for n, r in records:
        groups.setdefault(r['run'], []).append((n, r))
    return [(_label(n, r, groups[r['run']]), r) for n, r in records]


def _is_results_line(record):
    """The fields plot reads, with their types: run, args.topK, and history entries with epoch and loss."""
    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool)
    return (isinstance(record, dict) and isinstance(record.get('run'), str) and isinstance(record.get('args'), dict)
            and isinstance(record['args'].get('topK'), list) and record['args']['topK']
            and isinstance(record.get('history', []), list)
            and all(isinstance(h, dict) and number(h.get('epoch')) and number(h.get('loss'))
                    and isinstance(h.get('val', {}), dict) for h in record.get('history') or []))


OUTPUT_FLAGS = ('save_file', 'PATH_weight_save', 'checkpoint', 'export_topk', 'tensorboard', 'config', 'progress')


def _label(n, record, group):
    """The run name, plus the flags that differ within runs of the same name (or the line number)."""
    if len(group) == 1:
        return record['run']
    args = [r.get('args', {}) for _, r in group]
    keys = sorted({k for a in args for k in a if k not in OUTPUT_FLAGS and len({str(b.get(k)) for b in args}) > 1})
    if keys:
        return f'{record["run"]} ' + ', '.join(f'{k}={record["args"].get(k)}' for k in keys)
    return f'{record["run"]} (line {n})'


def plot(runs, out, k=None):
    """Write the two-panel figure for [(label, record)] to ``out`` (PNG); returns the K plotted."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax_recall, ax_loss) = plt.subplots(1, 2, figsize=FIGSIZE, dpi=DPI)
    chosen_k = k
    for label, record in runs:
        ks = record['args']['topK']
        run_k = str(k if k is not None else ks[0])
        chosen_k = chosen_k or run_k
        history = [h for h in record['history'] if 'val' in h]
        if not history:
            continue
        if run_k not in history[0]['val']:
            raise PlotError(f'{label}: no Recall@{run_k} in its history (its --topK: {ks})')
        epochs = [h['epoch'] for h in history]
        recall = [h['val'][run_k]['recall'] for h in history]
        line, = ax_recall.plot(epochs, recall, label=label)
        ax_loss.plot(epochs, [h['loss'] for h in history], color=line.get_color(), label=label)
        best = record.get('best_epoch')
        if best in epochs:
            ax_recall.plot([best], [recall[epochs.index(best)]], marker='*', markersize=12, color=line.get_color())
            ax_loss.axvline(best, color=line.get_color(), linestyle=':', linewidth=1)
    ax_recall.set(xlabel='epoch', ylabel=f'validation Recall@{chosen_k}',
                  title=f'validation Recall@{chosen_k} (star: best epoch)')
    ax_loss.set(xlabel='epoch', ylabel='training loss (mean per batch)', title='training loss (dotted: best epoch)')
    for ax in (ax_recall, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize='small')
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f'.{os.path.basename(out)}-{os.getpid()}.png')
    try:
        fig.savefig(tmp, dpi=DPI, format='png')
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return chosen_k


def main(argv=None):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from errors import OneLineParser
    p = OneLineParser(description=__doc__.split('\n\n')[0])
    p.add_argument('results', help='results file written by main.py (--save_file)')
    p.add_argument('--runs', nargs='+', default=None, metavar='NAME', help='run names to plot (default all)')
    p.add_argument('--k', type=int, default=None, help='the K of Recall@K (default each run\'s first --topK)')
    p.add_argument('--out', default='curves.png', help='PNG to write (default curves.png)')
    args = p.parse_args(argv)
    try:
        if os.path.isdir(args.out):
            raise PlotError(f'{args.out}: --out is a folder; give a .png file name')
        runs = load_runs(args.results, args.runs)
        k = plot(runs, args.out, args.k)
    except (PlotError, OSError) as e:
        from errors import one_line
        print(f'error: {one_line(e)}', file=sys.stderr)
        return 2
    print(f'{len(runs)} runs, validation Recall@{k} and loss, written to {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
