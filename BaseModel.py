"""Graph building blocks shared by the models: the bipartite graph, its
normalised adjacency, one propagation function, and MMGCN's graph convolution.

Fast paths live here, each in one small function with a test against the
plain formula (tests/test_graph.py):

* ``sym_spmm``: ``Â X`` for the symmetric normalised adjacency on a CSR
  matrix, with a backward that reuses ``Â`` (``Âᵀ = Â``) instead of
  transposing a COO matrix on every call;
* ``BaseModel`` gives ``MessagePassing`` a CSR adjacency, so PyG calls
  ``message_and_aggregate`` (one sparse product with ``reduce=`` sum, mean
  or amax) instead of materialising one message per edge.
"""
import warnings

import numpy as np
import torch
from torch import nn
from torch_geometric.nn import MessagePassing

AGGR_MODES = ('mean', 'max', 'add')


def bipartite_edges(train, num_user):
    """Undirected user-item edges [2, 2E] in node ids (items after users), no self-loops."""
    users = torch.as_tensor(train[:, 0], dtype=torch.long)
    items = torch.as_tensor(train[:, 1], dtype=torch.long) + num_user
    return torch.stack([torch.cat([users, items]), torch.cat([items, users])])


def csr_adjacency(edge_index, num_nodes, values=None):
    """Sparse CSR matrix with A[row, col] = value (1 by default) for each edge."""
    if values is None:
        values = torch.ones(edge_index.shape[1])
    with warnings.catch_warnings():   # "Sparse CSR tensor support is in beta state": noise for our users
        warnings.filterwarnings('ignore', message='Sparse CSR tensor support is in beta')
        coo = torch.sparse_coo_tensor(edge_index, values, (num_nodes, num_nodes), check_invariants=True)
        return coo.coalesce().to_sparse_csr()


def normalized_adjacency(train, num_user, num_item):
    """``Â = D^-1/2 A D^-1/2`` with ``A = [[0, R], [Rᵀ, 0]]`` as CSR (SPEC 3.1); degree 0 gives 0."""
    edges = bipartite_edges(train, num_user)
    n = num_user + num_item
    deg = torch.bincount(edges[0], minlength=n).float()
    inv_sqrt = torch.where(deg > 0, deg.clamp(min=1).pow(-0.5), torch.zeros_like(deg))
    values = inv_sqrt[edges[0]] * inv_sqrt[edges[1]]
    return csr_adjacency(edges, n, values)


class _SymmetricSpMM(torch.autograd.Function):
    """``Â X`` for a symmetric sparse ``Â``: the backward is ``Â grad``, no transpose."""

    @staticmethod
    def forward(ctx, adj, x):
        ctx.adj = adj
        return torch.sparse.mm(adj, x)

    @staticmethod
    def backward(ctx, grad):
        return None, torch.sparse.mm(ctx.adj, grad)


def sym_spmm(adj, x):
    """``adj @ x`` where ``adj`` is a symmetric sparse matrix (CSR on CPU, any sparse layout on CUDA)."""
    return _SymmetricSpMM.apply(adj, x)


def propagate_layers(adj, x0, num_layer, dropout=0.0, training=False, drop_from=0):
    """LightGCN propagation (SPEC 3.1): ``X^{k+1} = dropout(Â X^k)``, returns ``mean(X^0..X^L)``.

    ``x0`` may hold several branches and views side by side as columns: they
    share ``Â``, so one wide product per layer serves them all.  Dropout
    (layer 0 excepted) applies to the columns from ``drop_from`` on.
    """
    total, x = x0, x0
    for _ in range(num_layer):
        x = sym_spmm(adj, x)
        if dropout > 0 and training:
            kept, dropped = x[:, :drop_from], x[:, drop_from:]
            x = torch.cat([kept, nn.functional.dropout(dropped, dropout, True)], dim=1)
        total = total + x
    return total / (num_layer + 1)


def _scatter_aggregate(adj, x, aggr):
    """Aggregation for sparse layouts ``torch.sparse.mm(reduce=)`` does not take (CUDA)."""
    adj = adj.to_sparse_coo().coalesce()
    row, col = adj.indices()
    out = x.new_zeros(adj.shape[0], x.shape[1])
    reduce = {'add': 'sum', 'mean': 'mean', 'max': 'amax'}[aggr]
    index = row.unsqueeze(1).expand(-1, x.shape[1])
    return out.scatter_reduce(0, index, x[col], reduce=reduce, include_self=False)


class BaseModel(MessagePassing):
    """MMGCN's graph convolution (SPEC 2): ``x ← x W``, then each node aggregates its
    neighbours' rows with ``mean``, ``max`` or ``add``.

    Args:
        in_channels, out_channels: widths of ``x`` and of ``x W``.
        aggr: 'mean', 'max' or 'add'.

    ``forward(x, adj)`` takes the *unnormalised* adjacency as a sparse CSR
    matrix (``csr_adjacency``); an ``edge_index`` [2, E] also works and runs
    PyG's per-edge path (the plain reference of the same math).
    """

    def __init__(self, in_channels, out_channels, aggr='add'):
        if aggr not in AGGR_MODES:
            raise ValueError(f'aggr_mode must be one of {AGGR_MODES}, got {aggr!r}')
        super().__init__(aggr=aggr)
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x, adj):
        return self.propagate(adj, x=x @ self.weight)

    def message(self, x_j):
        return x_j

    def message_and_aggregate(self, adj_t, x):
        if adj_t.layout == torch.sparse_csr and x.device.type == 'cpu':
            reduce = {'add': 'sum', 'mean': 'mean', 'max': 'amax'}[self.aggr]
            return torch.sparse.mm(adj_t, x, reduce=reduce)
        if self.aggr == 'add':
            return torch.sparse.mm(adj_t, x)
        return _scatter_aggregate(adj_t, x, self.aggr)


def xavier_normal_param(*shape):
    weight = nn.Parameter(torch.empty(*shape))
    nn.init.xavier_normal_(weight)
    return weight


def as_tensor(features):
    """float32 tensor of a numpy feature matrix."""
    return torch.as_tensor(np.ascontiguousarray(features), dtype=torch.float32)


class WordMean(nn.Module):
    """Tiktok's textual feature (SPEC 1.2): the mean of an item's trainable word
    embeddings, recomputed at every forward; items without words get zeros."""

    def __init__(self, words, num_item):
        super().__init__()
        self.weight = xavier_normal_param(words.vocab_size, words.dim)
        # Data, not weights: rebuilt from the dataset, kept out of the state dict.
        self.register_buffer('item_index', words.item_index.clone(), persistent=False)
        self.register_buffer('word_id', words.word_id.clone(), persistent=False)
        count = torch.bincount(words.item_index, minlength=num_item).float()
        inv_count = torch.where(count > 0, 1 / count.clamp(min=1), torch.zeros_like(count))
        self.register_buffer('inv_count', inv_count, persistent=False)

    def forward(self):
        total = self.weight.new_zeros(len(self.inv_count), self.weight.shape[1])
        total = total.index_add(0, self.item_index, self.weight[self.word_id])
        return total * self.inv_count.unsqueeze(1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Official tables may be larger than this dataset's vocabulary (SPEC 3.5):
        # the extra rows are kept as they are and never looked up.
        saved = state_dict.get(prefix + 'weight')
        if saved is not None and saved.dim() == 2 and saved.shape[1] == self.weight.shape[1] \
                and saved.shape[0] > self.weight.shape[0]:
            self.weight = nn.Parameter(self.weight.new_empty(saved.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def item_feature_modules(features, num_item):
    """Split item features into trainable ``WordMean`` modules (word-id modalities)
    and fixed float tensors (dense modalities)."""
    from DataLoad import WordFeature
    words = nn.ModuleDict({m: WordMean(f, num_item) for m, f in features.items() if isinstance(f, WordFeature)})
    dense = {m: as_tensor(f) for m, f in features.items() if not isinstance(f, WordFeature)}
    return words, dense
