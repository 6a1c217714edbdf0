"""Item-item kNN graphs from the raw item features, built blocked (SPEC 6): never a dense items x items matrix.

Per modality: each item's ``k`` most cosine-similar items, itself included
(``knn_indices``), computed ``SIMILARITY_FLOATS / I`` items at a time; the
symmetric normalisation ``D^-1/2 S D^-1/2`` of the binary graph
(``normalized_knn``); and a cache beside the dataset for builds slower than
``CACHE_AFTER_S`` (``cached_knn``).  Used by FREEDOM and every model with an
item-item graph.

    from knn_graph import cached_knn, normalized_knn
    graph = normalized_knn(cached_knn('v', data.features['v'], data.num_item, 10, data.path), data.num_item)
"""
import hashlib
import os
import sys
import time

import numpy as np
import torch

from BaseModel import _quiet_csr, as_tensor
from errors import InputError
from safe_write import atomic_save


SIMILARITY_FLOATS = 2 ** 24     # one block of the similarity matrix: 64 MB of float32, whatever the item count


CACHE_AFTER_S = 2.0             # a kNN graph that took longer than this to build is cached beside the dataset


CACHE_FORMAT = 1


def unit_rows(feature, num_item):
    """The rows of a modality as unit vectors: a dense tensor, or for a ``WordFeature`` the sparse
    (COO, coalesced) bag of words [I, vocab]; an all-zero row stays zero."""
    from DataLoad import WordFeature
    if not isinstance(feature, WordFeature):
        return torch.nn.functional.normalize(as_tensor(feature), dim=1)
    pairs = torch.stack([feature.item_index, feature.word_id])
    bag = torch.sparse_coo_tensor(pairs, torch.ones(pairs.shape[1]), (num_item, feature.vocab_size),
                                  check_invariants=True).coalesce()
    rows, values = bag.indices()[0], bag.values()
    norm = torch.zeros(num_item).index_add_(0, rows, values * values).sqrt()
    return torch.sparse_coo_tensor(bag.indices(), values / norm[rows], bag.shape, check_invariants=True).coalesce()


def _similarity_block(unit, start, stop):
    """Cosine similarities of items ``start..stop`` with every item, [stop - start, I]; a sparse
    ``unit`` is CSR here (its block of rows dense, then one sparse product)."""
    if unit.layout == torch.strided:
        return unit[start:stop] @ unit.t()
    crow, col, val = unit.crow_indices(), unit.col_indices(), unit.values()
    lo, hi = int(crow[start]), int(crow[stop])
    row_of = torch.repeat_interleave(torch.arange(stop - start), crow[start + 1:stop + 1] - crow[start:stop])
    block = torch.zeros(stop - start, unit.shape[1])
    block[row_of, col[lo:hi]] = val[lo:hi]
    return torch.sparse.mm(unit, block.t().contiguous()).t().contiguous()


def unit_matrix(feature, num_item):
    """``unit_rows`` in the layout ``knn_neighbours`` reads: dense, or sparse CSR for a bag of words."""
    unit = unit_rows(feature, num_item)
    if unit.is_sparse:
        with _quiet_csr():
            unit = unit.to_sparse_csr()
    return unit


def knn_neighbours(unit, k, block_floats=SIMILARITY_FLOATS):
    """``(ids [I, k], cosine [I, k])`` of each row's ``k`` most similar rows of ``unit`` (unit rows, dense or
    sparse CSR), itself first with cosine 1 (a zero row too, whose other cosines are 0).

    Computed in blocks of ``block_floats / I`` rows, so the similarity matrix is never held whole (peak: one
    block plus the unit rows; measured in bench/RESULTS.md).  No gradient.
    """
    num_item = unit.shape[0]
    ids = torch.empty(num_item, k, dtype=torch.long, device=unit.device)
    cos = torch.empty(num_item, k, dtype=unit.dtype, device=unit.device)
    step = max(1, block_floats // num_item)
    with torch.no_grad():
        for start in range(0, num_item, step):
            stop = min(start + step, num_item)
            sim = _similarity_block(unit, start, stop)
            rows = torch.arange(stop - start, device=unit.device)
            sim[rows, rows + start] = 2.0                                      # itself, above any cosine
            cos[start:stop], ids[start:stop] = sim.topk(k, dim=1)
    cos[:, 0] = 1.0
    return ids, cos


def knn_indices(feature, num_item, k, block_floats=SIMILARITY_FLOATS):
    """[I, k] ids of each item's ``k`` most cosine-similar items, itself first (``knn_neighbours``)."""
    return knn_neighbours(unit_matrix(feature, num_item), k, block_floats)[0]


def normalized_knn(indices, num_item):
    """``Ŝ = D^-1/2 S D^-1/2`` of the binary kNN graph ``S[i, indices[i]] = 1`` as COO, ``D`` its
    row sums (the authors' normalisation; every row has ``k`` entries)."""
    rows = torch.arange(num_item).repeat_interleave(indices.shape[1])
    cols = indices.reshape(-1)
    inv_sqrt = torch.bincount(rows, minlength=num_item).float().pow(-0.5)
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), inv_sqrt[rows] * inv_sqrt[cols],
                                   (num_item, num_item), check_invariants=True).coalesce()


def feature_digest(feature, k):
    """sha256 of a modality's raw content and ``k``: what a cached kNN graph must have been built from.  An
    integer array (DRAGON's training pairs, for its user-user graph) is hashed exactly, as int64."""
    from DataLoad import WordFeature
    h = hashlib.sha256(f'format {CACHE_FORMAT} k {k} '.encode())
    if isinstance(feature, WordFeature):
        h.update(f'words {feature.vocab_size} '.encode())
        for t in (feature.item_index, feature.word_id):
            h.update(np.ascontiguousarray(t.numpy(), dtype=np.int64).tobytes())
    elif np.issubdtype(np.asarray(feature).dtype, np.integer):
        arr = np.ascontiguousarray(feature, dtype=np.int64)
        h.update(f'int {arr.shape} '.encode())
        h.update(arr.tobytes())
    else:
        arr = np.ascontiguousarray(feature, dtype=np.float32)
        h.update(f'dense {arr.shape} '.encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def cached_graph(prefix, name, feature, num_item, k, cache_dir, build, valid):
    """``build()`` (a dict of tensors) of one modality's kNN graph (or another graph built from ``feature``:
    DRAGON's user-user graph from the training pairs), from ``<cache_dir>/<prefix>_<name>_k<k>.pt``
    when that file was built from the same content (the digest) and ``valid(saved)`` holds, else built; a
    build slower than ``CACHE_AFTER_S`` is written there atomically (skipped, with a note, where it cannot be)."""
    path = None if cache_dir is None else os.path.join(cache_dir, f'{prefix}_{name}_k{k}.pt')
    digest = feature_digest(feature, k) if path else None
    if path and os.path.isfile(path):
        try:
            saved = torch.load(path, map_location='cpu', weights_only=True)
            if saved['digest'] == digest and valid(saved):
                return {key: value for key, value in saved.items() if key != 'digest'}
        except Exception:   # unreadable or of another layout: rebuilt below, like a stale one
            pass
        print(f'note: {path} does not match this dataset; rebuilding it', file=sys.stderr)
    started = time.time()
    graph = build()
    if path and time.time() - started > CACHE_AFTER_S:
        try:
            atomic_save({'digest': digest, **graph}, path)
        except InputError as e:      # a read-only dataset folder, a full disk: the run goes on uncached
            print(f'note: kNN graph not cached ({e})', file=sys.stderr)
    return graph


def cached_knn(name, feature, num_item, k, cache_dir):
    """``knn_indices`` of one modality, through ``cached_graph`` (``freedom_knn_<name>_k<k>.pt``; the ids'
    type, shape and range checked)."""
    def valid(saved):
        indices = saved['indices']
        return (indices.dtype == torch.long and tuple(indices.shape) == (num_item, k)
                and int(indices.min()) >= 0 and int(indices.max()) < num_item)
    return cached_graph('freedom_knn', name, feature, num_item, k, cache_dir,
                        lambda: {'indices': knn_indices(feature, num_item, k)}, valid)['indices']
