"""The models of issue #24: one training step's time and peak memory at Tiktok's size, and LATTICE's kNN
graphs at Amazon-Electronics' size.  Each model has its own function here (``grcn_lattice_step``,
``lattice_knn_electronics``), so others can be added beside them.

    python bench/models_grcn_lattice.py step --models GRCN LATTICE --scale 1.0     # synthetic Tiktok (36,656 x 76,085)
    python bench/models_grcn_lattice.py step --models GRCN --scale 0.2            # GRCN fast vs plain, smaller
    python bench/models_grcn_lattice.py lattice_knn                                 # 63,001 items, 4,096-d and 384-d
    python bench/models_grcn_lattice.py lattice_knn --num_item 16000                # the same widths, fewer items

Peak memory is the process's resident peak (VmHWM, reset before each measurement) above what it held before.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'bench'))

import config  # noqa: E402
import prepare_data  # noqa: E402
import registry  # noqa: E402
from bench import PeakMemory, _release_free_memory, _status_mib  # noqa: E402
from DataLoad import load_dataset  # noqa: E402


def measure(label, fn, times=None):
    """Run ``fn`` once, print its time and peak; ``times`` (a list) collects the seconds."""
    _release_free_memory()
    before = _status_mib('VmRSS')
    with PeakMemory(torch.device('cpu')) as peak:
        started, cpu = time.time(), time.process_time()
        out = fn()
        seconds, cpu = time.time() - started, time.process_time() - cpu
    print(f'{label}: {seconds:.2f} s ({cpu:.2f} s CPU), peak resident {peak.peak - before:.0f} MiB above '
          f'{before:.0f} MiB', flush=True)
    if times is not None:
        times.append(seconds)
    return out


def grcn_fast_against_plain(model, step, rounds=3):
    """GRCN's step with the edge products through ``Bipartite`` (the default) and through the plain formulas
    (``aggregate``, gathered dot products), alternating; prints the ratio of the medians."""
    times = {True: [], False: []}
    for _ in range(rounds):
        for fast in (True, False):
            model.fast = fast
            measure(f'GRCN step, {"fast edge products" if fast else "plain formulas"}', step, times[fast])
    model.fast = True
    fast, plain = (float(np.median(times[k])) for k in (True, False))
    print(f'GRCN step: plain / fast = {plain / fast:.2f}x (medians of {rounds}: {plain:.2f} s / {fast:.2f} s)',
          flush=True)


def grcn_lattice_step(models=('GRCN', 'LATTICE'), scale=1.0, batch_size=None, plain=True):
    """Build, then time one training step (loss, backward, Adam) of each model on synthetic Tiktok at
    ``scale``; LATTICE's step is timed twice: the epoch's first batch (the learned graph built with its
    gradient, the plain entry-list product) and a later one (the cached CSR graph, the fast path); GRCN's
    fast edge products against the plain formulas (``plain``)."""
    folder = prepare_data.synthetic(f'tiktok_{scale:g}', like='tiktok', scale=scale, seed=0)
    data = load_dataset(folder)
    print(f'{data.num_user} users, {data.num_item} items, {len(data.train)} training pairs', flush=True)
    for name in models:
        args = config.parse_args(['--model_name', name, '--data_path', folder]
                                 + (['--batch_size', str(batch_size)] if batch_size else []))
        model = measure(f'{name} build', lambda: registry.build_model(args, data))
        optimizer = registry.optimizer(args, model)
        rng = np.random.default_rng(0)
        pick = rng.integers(0, len(data.train), args.batch_size)
        users = torch.as_tensor(data.train[pick, 0], dtype=torch.long)
        pos = torch.as_tensor(data.train[pick, 1], dtype=torch.long)
        neg = torch.as_tensor(rng.integers(0, data.num_item, args.batch_size), dtype=torch.long)

        def step():
            optimizer.zero_grad()
            loss, _ = model.loss(users, pos, neg)
            loss.backward()
            optimizer.step()
        model.on_epoch_start()
        measure(f'{name} step (batch {args.batch_size}{", epoch first: graph with gradient" if name == "LATTICE" else ""})',
                step)
        if name == 'LATTICE':
            measure(f'{name} step (later batch: cached CSR graph)', step)
        if name == 'GRCN' and plain:
            grcn_fast_against_plain(model, step)
        with torch.no_grad():
            model.eval()
            measure(f'{name} forward (evaluation)', lambda: model())
        del model, optimizer


def lattice_knn_electronics(num_item=63001, dims=(4096, 384), k=10, dim_latent=64):
    """LATTICE's graphs at Amazon-Electronics' size from random features: each raw modality's frozen kNN
    graph (blocked; never I x I) and the learned graph of the transformed features with its gradient."""
    from model_LATTICE import mixed_graph, normalized, raw_knn, weighted_knn
    rng = np.random.default_rng(0)
    original = []
    for dim in dims:
        feature = rng.standard_normal((num_item, dim), dtype=np.float32)
        original.append(measure(f'raw kNN graph, {num_item} items x {dim}-d, k {k}',
                                lambda: normalized(raw_knn(feature, num_item, k), num_item)))
        del feature
    learned = [torch.randn(num_item, dim_latent, requires_grad=True) for _ in dims]
    weights = torch.full((len(dims),), 1 / len(dims), requires_grad=True)

    def build_and_backward():
        graph = mixed_graph([weighted_knn(x, k) for x in learned], original, weights, 0.9, num_item)
        graph[2].sum().backward()
    measure(f'learned graph of {len(dims)} modalities ({dim_latent}-d), built with its gradient, and backward',
            build_and_backward)
    print(f'a dense {num_item} x {num_item} float32 matrix: {num_item ** 2 * 4 / 2 ** 30:.1f} GiB')


def main_(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('what', choices=('step', 'lattice_knn'))
    p.add_argument('--models', nargs='+', default=['GRCN', 'LATTICE'])
    p.add_argument('--scale', type=float, default=1.0)
    p.add_argument('--batch_size', type=int, default=None)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--no-plain', dest='plain', action='store_false', help="step: skip GRCN's plain-formula steps")
    p.add_argument('--num_item', type=int, default=63001, help='lattice_knn: items (Amazon-Electronics: 63,001)')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.what == 'step':
        grcn_lattice_step(args.models, args.scale, args.batch_size, args.plain)
    else:
        lattice_knn_electronics(args.num_item)


if __name__ == '__main__':
    main_()
