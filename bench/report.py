"""A results table rendered three ways: Markdown (the README's), a LaTeX ``tabular`` ready for a paper, and a
bar chart of Recall@20 and NDCG@20 with error bars (PNG).  ``bench/results.py`` builds the rows and calls
these; nothing here trains or reads runs.

A row is a dict:

    label      the model's name in the table
    metrics    {(k, metric): [one value per seed]}, metric in 'precision', 'recall', 'ndcg'
    chosen     what was tuned and how ('tuned: l_r 0.001, weight_decay 1e-4', 'l_r 0.01 (grid)')
    epochs     the best epoch of each seed, '12/14/15'
    epoch_s    mean seconds per training epoch (with its evaluation) on the machine that made it
    published  (metrics at 20, source key) of the published number, or None
    test_selected  {(k, metric): [values]} of the same runs selected on test (--select_on test), or None
"""
import numpy as np

KS = (10, 20)
METRICS = (('precision', 'P'), ('recall', 'R'), ('ndcg', 'N'))


def mean_std(values):
    return float(np.mean(values)), float(np.std(values))


def cell(values):
    mean, std = mean_std(values)
    return f'{mean:.4f} ± {std:.4f}' if len(values) > 1 else f'{mean:.4f}'


def best_rows(rows, key):
    """The labels of the rows with the highest mean at ``key`` (ties all marked)."""
    means = {r['label']: mean_std(r['metrics'][key])[0] for r in rows if key in r['metrics']}
    top = max(means.values(), default=None)
    return {label for label, m in means.items() if top is not None and round(m, 4) == round(top, 4)}


def published_cell(row, metric):
    if not row.get('published'):
        return '—'
    value = row['published'][0].get(metric)
    return '—' if value is None else f'{value:.4f}'


def markdown(rows, footer, sources=None):
    """The Markdown table: ours at 20 and 10 (mean ± std, the best of each column bold), the test-selected
    Recall@20 where there is one (a column of its own), the published numbers and their sources."""
    with_test = any(r.get('test_selected') for r in rows)
    with_published = any(r.get('published') for r in rows)
    head = ['model'] + [f'{short}@{k}' for k in (20, 10) for _, short in METRICS]
    head += ['R@20 selected on test (optimistic)'] if with_test else []
    head += ['published R@20', 'published N@20'] if with_published else []
    head += ['chosen', 'best epochs', 's/epoch']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    bold = {(k, m): best_rows(rows, (k, m)) for k in KS for m, _ in METRICS}
    for r in rows:
        cols = [r['label']]
        for k in (20, 10):
            for m, _ in METRICS:
                text = cell(r['metrics'][(k, m)])
                cols.append(f'**{text}**' if r['label'] in bold[(k, m)] and len(rows) > 1 else text)
        if with_test:
            test = r.get('test_selected')
            cols.append(cell(test[(20, 'recall')]) if test else '—')
        if with_published:
            cols += [published_cell(r, 'recall'), published_cell(r, 'ndcg')]
            if r.get('published'):
                cols[-1] += f' ({r["published"][1]})'
        cols += [r['chosen'], r['epochs'], f'{r["epoch_s"]:.1f}']
        lines.append('| ' + ' | '.join(cols) + ' |')
    lines += ['', footer]
    if with_published and sources:
        used = sorted({r['published'][1] for r in rows if r.get('published')})
        lines += [''] + [f'Published ({key}): {sources[key]}.' for key in used]
    return '\n'.join(lines) + '\n'


def latex(rows, caption):
    """A booktabs ``tabular`` (``\\usepackage{booktabs}``): P, R and N at 20 and 10, mean ± std, the best of
    each column bold; the caption as a comment above it."""
    def tex(values, best):
        mean, std = mean_std(values)
        text = f'{mean:.4f}' + (f' $\\pm$ {std:.4f}' if len(values) > 1 else '')
        return f'\\textbf{{{text}}}' if best else text
    bold = {(k, m): best_rows(rows, (k, m)) for k in KS for m, _ in METRICS}
    head = ' & '.join(['Model'] + [f'{short}@{k}' for k in (20, 10) for _, short in METRICS])
    lines = [f'% {caption}', '\\begin{tabular}{l' + 'c' * 6 + '}', '\\toprule', head + ' \\\\', '\\midrule']
    for r in rows:
        label = r['label'].replace('_', '\\_').replace('&', '\\&').replace('%', '\\%')
        cells = [tex(r['metrics'][(k, m)], r['label'] in bold[(k, m)] and len(rows) > 1)
                 for k in (20, 10) for m, _ in METRICS]
        lines.append(' & '.join([label] + cells) + ' \\\\')
    lines += ['\\bottomrule', '\\end{tabular}']
    return '\n'.join(lines) + '\n'


def bar_chart(rows, path, title):
    """Recall@20 and NDCG@20 per model, mean with a std error bar, the published number as a black mark."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 0.55 * len(rows) + 3), 4.6), dpi=100)
    x = np.arange(len(rows))
    for ax, (metric, name) in zip(axes, (('recall', 'Recall@20'), ('ndcg', 'NDCG@20'))):
        stats = [mean_std(r['metrics'][(20, metric)]) for r in rows]
        ax.bar(x, [m for m, _ in stats], yerr=[s for _, s in stats], capsize=3, color='tab:blue', label='ours')
        published = [(n, r['published'][0].get(metric)) for n, r in enumerate(rows) if r.get('published')]
        published = [(n, v) for n, v in published if v is not None]
        if published:
            ax.scatter([n for n, _ in published], [v for _, v in published], marker='_', s=300, color='black',
                       zorder=3, label='published')
        ax.set_xticks(x)
        ax.set_xticklabels([r['label'] for r in rows], rotation=60, ha='right', fontsize=8)
        ax.set_title(name)
        ax.grid(axis='y', alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
