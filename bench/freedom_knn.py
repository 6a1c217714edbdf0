"""FREEDOM's item-item kNN graph at a legacy dataset's published size: build time and peak memory.

    python bench/freedom_knn.py                  # synthetic Tiktok: 76,085 items, v/a 128-d, word-id t
    python bench/freedom_knn.py --like kwai      # 86,483 items, v 2048-d

The dataset is ``prepare_data.py synthetic --like <name>`` at full size (written under Data/ once).
For each modality, ``knn_graph.knn_indices`` is timed and the process's peak resident memory
(the kernel's VmHWM, reset before each build) is reported above the memory held before it; then the
weighted graph from those kNN ids (``combine_knn``), and the time to read them back from a cache
written the way ``cached_knn`` writes it (the digest of the features is recomputed and checked).
A dense items x items float32 matrix would need ``I² · 4`` bytes (21.6 GiB at Tiktok's size): the
blocked build holds one block of ``SIMILARITY_FLOATS`` similarities at a time.
"""
import argparse
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import prepare_data  # noqa: E402
from bench import PeakMemory, _release_free_memory, _status_mib  # noqa: E402
from DataLoad import WordFeature, load_dataset  # noqa: E402
from knn_graph import SIMILARITY_FLOATS, cached_knn, feature_digest, knn_indices  # noqa: E402
from model_FREEDOM import combine_knn  # noqa: E402


def main_(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--like', default='tiktok', choices=('tiktok', 'kwai', 'movielens'))
    p.add_argument('--knn_k', type=int, default=10)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--modalities', default=None, help="comma list, e.g. 'v' (default: all)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = prepare_data.synthetic(f'{args.like}_full', like=args.like, seed=0)
    data = load_dataset(folder)
    cpu = torch.device('cpu')
    print(f'{data.summary()}; k {args.knn_k}; {args.threads} thread(s); block {SIMILARITY_FLOATS} floats '
          f'({SIMILARITY_FLOATS * 4 / 2 ** 20:.0f} MiB, {max(1, SIMILARITY_FLOATS // data.num_item)} items); '
          f'a dense I x I float32 matrix: {data.num_item ** 2 * 4 / 2 ** 30:.1f} GiB')
    names = args.modalities.split(',') if args.modalities else list(data.features)
    built = []
    for m in names:
        feature = data.features[m]
        _release_free_memory()
        before = _status_mib('VmRSS')
        with PeakMemory(cpu) as peak:
            started = time.time()
            built.append(knn_indices(feature, data.num_item, args.knn_k))
            seconds = time.time() - started
        kind = 'words' if isinstance(feature, WordFeature) else f'dense {data.feature_dim(m)}-d'
        print(f'  {m} ({kind}): {seconds:.1f} s, peak {peak.peak - before:.0f} MiB above the {before:.0f} MiB held before',
              flush=True)
    started = time.time()
    graph = combine_knn(built, data.num_item)
    print(f'  weighted graph of {", ".join(names)} from their kNN ids: {time.time() - started:.2f} s, '
          f'CSR with {graph.values().numel()} non-zeros')
    with tempfile.TemporaryDirectory() as cache:
        for m, ids in zip(names, built):
            torch.save({'digest': feature_digest(data.features[m], args.knn_k), 'indices': ids},
                       os.path.join(cache, f'freedom_knn_{m}_k{args.knn_k}.pt'))
        started = time.time()
        for m in names:
            assert torch.equal(cached_knn(m, data.features[m], data.num_item, args.knn_k, cache), built[names.index(m)])
        print(f'  the same from the cache (digest checked): {time.time() - started:.2f} s')

if __name__ == '__main__':
    main_()
