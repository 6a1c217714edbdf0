"""Graph building blocks shared by the models: the bipartite graph, its
normalised adjacency, one propagation function, and MMGCN's graph convolution.

Fast paths live here, each in one small function with a test against the
plain formula (tests/test_graph.py):

* ``propagate_layers``: LightGCN's layer mean for many branches and views at
  once (one wide sparse product per layer), with a closed-form backward that
  reuses ``Â`` (``Âᵀ = Â``) and keeps only the dropout masks; the last layer
  for the batch's rows alone when they touch few edges; with ``parity`` the
  sums of the even and of the odd layers (SLMRec's one propagation, SPEC 3.6);
* ``BaseModel`` gives ``MessagePassing`` a CSR adjacency, so PyG calls
  ``message_and_aggregate`` (one sparse product with ``reduce=`` sum, mean
  or amax on the CPU) instead of materialising one message per edge, with
  backwards that reuse a stored transpose (``_SumAggregation``) or the
  kernel's winners (``_MaxAggregation``) instead of torch's sort-based ones;
  a row block of the graph computes the batch's rows alone;
* ``WordMean``: the mean of an item's word embeddings as a fixed sparse product.
"""
import contextlib
import warnings

import numpy as np
import torch
from torch import nn
from torch_geometric.nn import MessagePassing

AGGR_MODES = ('mean', 'max', 'add')


def pair_tensors(train):
    """``(users [E], items [E])`` of the training pairs as long tensors (item ids from 0); a tensor's stay
    on its device."""
    if not isinstance(train, torch.Tensor):
        train = torch.as_tensor(np.asarray(train))
    return train[:, 0].long().contiguous(), train[:, 1].long().contiguous()


def bipartite_edges(train, num_user):
    """Undirected user-item edges [2, 2E] in node ids (items after users), no self-loops."""
    users, items = pair_tensors(train)
    items = items + num_user
    return torch.stack([torch.cat([users, items]), torch.cat([items, users])])


@contextlib.contextmanager
def _quiet_csr():
    """Silence "Sparse CSR tensor support is in beta state", which means nothing to our users."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='Sparse CSR tensor support is in beta')
        yield


def csr_adjacency(edge_index, num_nodes, values=None):
    """Sparse CSR matrix with A[row, col] = value (1 by default) for each edge."""
    if values is None:
        values = torch.ones(edge_index.shape[1], device=edge_index.device)
    with _quiet_csr():
        coo = torch.sparse_coo_tensor(edge_index, values, (num_nodes, num_nodes), check_invariants=True)
        return coo.coalesce().to_sparse_csr()


def symmetric_norm(edges, num_nodes, dtype=torch.float32):
    """The values of ``D^-1/2 A D^-1/2`` on the edges [2, E] of a symmetric ``A`` of ones (``D`` its row sums;
    a node without edges gets 0)."""
    deg = torch.bincount(edges[0], minlength=num_nodes).to(dtype)
    inv_sqrt = torch.where(deg > 0, deg.clamp(min=1).pow(-0.5), torch.zeros_like(deg))
    return inv_sqrt[edges[0]] * inv_sqrt[edges[1]]


def with_self_loops(edges, num_nodes):
    """``edges`` [2, E] and one self-loop per node (``A + I``)."""
    loops = torch.arange(num_nodes, device=edges.device)
    return torch.cat([edges, torch.stack([loops, loops])], dim=1)


def normalized_adjacency(train, num_user, num_item, dtype=torch.float32, self_loops=False):
    """``Â = D^-1/2 A D^-1/2`` with ``A = [[0, R], [Rᵀ, 0]]`` as CSR (SPEC 3.1); degree 0 gives 0.  On the
    device of ``train`` when it is a tensor.  ``self_loops``: ``A + I`` instead, its degrees counting the loop
    (DiffMM's graph)."""
    edges = bipartite_edges(train, num_user)
    n = num_user + num_item
    if self_loops:
        edges = with_self_loops(edges, n)
    return csr_adjacency(edges, n, symmetric_norm(edges, n, dtype))


def transpose_csr(adj):
    """``adjᵀ`` as CSR: what the backward of a fixed sparse product multiplies by."""
    with _quiet_csr():
        return adj.to_sparse_coo().t().coalesce().to_sparse_csr()


def check_symmetric(adj):
    """Raise ValueError unless the sparse matrix ``adj`` equals its transpose: the propagation's
    closed-form backward and MMGCN's aggregations use ``adj`` as its own transpose.  An
    ``edge_index`` (a dense [2, E] tensor, PyG's per-edge path) needs no transpose and is not checked."""
    if adj.layout == torch.strided:
        return
    coo = (adj.to_sparse_coo() if adj.layout != torch.sparse_coo else adj).coalesce()
    flipped = torch.sparse_coo_tensor(coo.indices().flip(0), coo.values(), coo.shape, check_invariants=True).coalesce()
    if not (torch.equal(coo.indices(), flipped.indices()) and torch.equal(coo.values(), flipped.values())):
        raise ValueError('the adjacency must be symmetric (an undirected graph)')


def row_submatrix(adj, rows, symmetric=False):
    """Rows ``rows`` (sorted, unique) of a CSR matrix as CSR, and the transpose of that block.

    The transpose sorts the block's non-zeros; with ``symmetric=True`` (``adj``
    equals its transpose, as all our graphs do) and a block holding over an
    eighth of the non-zeros, ``_symmetric_columns`` reads it off ``adj`` in one
    pass instead (the MMGCN first layer's block: 120 ms to 47 ms at Tiktok size).
    """
    crow, col, val = adj.crow_indices(), adj.col_indices(), adj.values()
    starts, counts = crow[rows], crow[rows + 1] - crow[rows]
    row_of = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), counts)
    block_crow = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    take = torch.arange(int(block_crow[-1]), device=rows.device) - block_crow[:-1][row_of] + starts[row_of]
    with _quiet_csr():
        block = torch.sparse_csr_tensor(block_crow, col[take], val[take], (len(rows), adj.shape[1]),
                                        check_invariants=True)
        if symmetric and 8 * len(take) > len(col):
            return block, _symmetric_columns(adj, rows)
        block_t = torch.sparse_coo_tensor(torch.stack([col[take], row_of]), val[take],
                                          (adj.shape[1], len(rows)), check_invariants=True)
        return block, block_t.coalesce().to_sparse_csr()


def _symmetric_columns(adj, rows):
    """``adj[:, rows]`` as CSR, i.e. the transpose of ``adj[rows]`` when ``adj`` is symmetric: each
    row keeps its non-zeros in the columns ``rows`` (sorted), which are already in order."""
    crow, col, val = adj.crow_indices(), adj.col_indices(), adj.values()
    position = torch.full((adj.shape[1],), -1, dtype=col.dtype, device=col.device)
    position[rows] = torch.arange(len(rows), dtype=col.dtype, device=col.device)
    position = position[col]                             # each non-zero's column among ``rows``, or -1
    keep = position >= 0
    kept_before = torch.cat([crow.new_zeros(1), torch.cumsum(keep, 0, dtype=crow.dtype)])
    with _quiet_csr():
        return torch.sparse_csr_tensor(kept_before[crow], position[keep], val[keep], (adj.shape[0], len(rows)),
                                       check_invariants=True)


class _LayerMeanPropagation(torch.autograd.Function):
    """``mean(X⁰..X^L)`` at the rows ``P`` with ``X^{k+1} = D_k(Â X^k)``, ``D_k`` a dropout mask on
    the columns from ``drop_from`` on; with ``parity`` the sums of the even and of the odd layers
    side by side, ``[Σ_even X^k ‖ Σ_odd X^k] / (L+1)``.  The last layer is computed for the rows
    ``P`` only (``P Â``: a few thousand rows of the graph).  Backward in closed form (``Â``
    symmetric), with ``g_k`` the gradient of layer k's sum (``g_even`` or ``g_odd`` with parity):

        G_{L-1} = Pᵀg_{L-1} + (PÂ)ᵀ D_{L-1}(g_L),   G_k = Pᵀg_k + Â D_k(G_{k+1}),   dX⁰ = G_0

    Only the boolean masks are kept for the backward, no intermediate layer.
    """

    @staticmethod
    def forward(ctx, x0, adj, num_layer, dropout, drop_from, rows, parity):
        def drop(x):
            if dropout > 0:
                dropped = torch.rand(x.shape[0], x.shape[1] - drop_from, device=x.device) < dropout
                x[:, drop_from:].masked_fill_(dropped, 0).div_(1 - dropout)
                masks.append(dropped)
            return x
        masks = []
        full = rows is None
        first = (x0 if full else x0[rows]).clone()
        totals, x = [first, torch.zeros_like(first)] if parity else [first], x0
        for k in range(1, num_layer + 1 if full else num_layer):
            x = drop(torch.sparse.mm(adj, x))
            totals[k % len(totals)] += x if full else x[rows]
        block_t = None
        if not full and num_layer > 0:
            block, block_t = row_submatrix(adj, rows, symmetric=True)
            totals[num_layer % len(totals)] += drop(torch.sparse.mm(block, x))
        ctx.rows, ctx.adj, ctx.block_t, ctx.masks, ctx.num_layer = rows, adj, block_t, masks, num_layer
        ctx.dropout, ctx.drop_from, ctx.full, ctx.n, ctx.parity = dropout, drop_from, full, x0.shape[0], parity
        return torch.cat(totals, dim=1).div_(num_layer + 1) if parity else first.div_(num_layer + 1)

    @staticmethod
    def backward(ctx, grad):
        rows, none = ctx.rows, (None,) * 6

        def undrop(acc, k):
            if ctx.masks:
                acc[:, ctx.drop_from:].masked_fill_(ctx.masks[k], 0).div_(1 - ctx.dropout)
            return acc
        g = grad / (ctx.num_layer + 1)
        parts = g.chunk(2, dim=1) if ctx.parity else [g]         # the gradient of layer k is parts[k % 2]
        if ctx.full:
            acc = parts[ctx.num_layer % len(parts)].clone()
            for k in reversed(range(ctx.num_layer)):
                acc = torch.sparse.mm(ctx.adj, undrop(acc, k)).add_(parts[k % len(parts)])
            return (acc,) + none
        scattered = [g.new_zeros(ctx.n, part.shape[1]).index_add_(0, rows, part) for part in parts]
        if ctx.num_layer == 0:
            return (scattered[0],) + none
        last = ctx.num_layer
        acc = torch.sparse.mm(ctx.block_t, undrop(parts[last % len(parts)].clone(), last - 1)).add_(
            scattered[(last - 1) % len(parts)])
        for k in reversed(range(last - 1)):
            acc = torch.sparse.mm(ctx.adj, undrop(acc, k)).add_(scattered[k % len(parts)])
        return (acc,) + none


def propagate_layers(adj, x0, num_layer, dropout=0.0, training=False, drop_from=0, rows=None, parity=False):
    """LightGCN propagation (SPEC 3.1): ``X^{k+1} = dropout(Â X^k)``, returns ``mean(X^0..X^L)``
    (at the rows ``rows`` only when given: training needs just the batch's users and items).

    ``x0`` may hold several branches and views side by side as columns: they
    share ``Â``, so one wide product per layer serves them all.  Dropout
    (layer 0 excepted) applies to the columns from ``drop_from`` on.  With
    ``parity`` the result is ``[Σ_even X^k ‖ Σ_odd X^k] / (L+1)`` (twice as wide),
    what SPEC 3.6 needs to split one propagation of ``[E_u ; E_i]`` into its user
    and item parts.  ``Â`` must be symmetric and CSR.
    """
    if not training:
        dropout = 0.0
    if rows is None:
        return _LayerMeanPropagation.apply(x0, adj, num_layer, dropout, drop_from, None, parity)
    sparse = sparse_rows(adj, rows)
    if sparse is None:
        # The rows touch a large part of the graph (a small, dense dataset): the full last layer is cheaper.
        return take_rows(_LayerMeanPropagation.apply(x0, adj, num_layer, dropout, drop_from, None, parity), rows)
    unique, inverse = sparse
    return take_rows(_LayerMeanPropagation.apply(x0, adj, num_layer, dropout, drop_from, unique, parity), inverse)


def propagate_layers_plain(adj, x0, num_layer, dropout=0.0, training=False, drop_from=0, rows=None, parity=False):
    """``propagate_layers`` written as the formula, with autograd: the reference its tests and the bench
    compare with.  ``X^{k+1} = dropout(Â X^k)`` (columns from ``drop_from`` on), the mean of ``X^0..X^L``
    (with ``parity``, ``[Σ_even X^k ‖ Σ_odd X^k] / (L+1)``), at ``rows`` when given.  The dropout masks are
    drawn in the fast path's order: it computes the last layer for the distinct rows alone when they are few
    (``sparse_rows``), so the last mask then covers those rows only."""
    if not training:
        dropout = 0.0
    unique = None
    if rows is not None:
        sparse = sparse_rows(adj if adj.layout == torch.sparse_csr else adj.to_sparse_csr(), rows)
        if sparse is not None:
            unique, inverse = sparse

    def drop(x):
        if dropout > 0:
            keep = torch.rand(x.shape[0], x.shape[1] - drop_from, device=x.device) >= dropout
            x = torch.cat([x[:, :drop_from], x[:, drop_from:] * keep / (1 - dropout)], dim=1)
        return x
    layers, x = [x0], x0
    for k in range(num_layer):
        if unique is not None and k == num_layer - 1:          # the last layer at the distinct rows alone
            layers = [layer[unique] for layer in layers] + [drop((adj @ x)[unique])]
            break
        x = drop(adj @ x)
        layers.append(x)
    if unique is not None and num_layer == 0:
        layers = [layers[0][unique]]
    out = torch.cat([sum(layers[0::2]), sum(layers[1::2])], 1) if parity else sum(layers)
    out = out / (num_layer + 1)
    if rows is None:
        return out
    return out[inverse] if unique is not None else out[rows]


CONTRAST_BLOCK_FLOATS = 2 ** 24    # the most of a similarity matrix similarity_logsumexp holds: 64 MB of float32
BACKWARD_BLOCK_FLOATS = 2 ** 22    # rows of a kept P weighted at a time in _SimilarityLogSumExp's backward (16 MB)


def _softmax_rows(scaled, b, weights):
    """``(P, lse)`` of the rows ``scaled`` (``a / τ``): ``P_rc = w_c exp(scaled_r·b_c) / Σ_c' w_c' exp(scaled_r·b_c')``
    [n, m], built in place from the products (one exponential per entry), and ``lse_r = log Σ_c w_c
    exp(scaled_r·b_c)`` [n]."""
    probs = scaled @ b.t()
    top = probs.amax(1, keepdim=True)
    probs.sub_(top).exp_()
    if weights is not None:
        probs.mul_(weights)
    total = probs.sum(1, keepdim=True)
    return probs.div_(total), (top + total.log()).squeeze(1)


class _SimilarityLogSumExp(torch.autograd.Function):
    """``similarity_logsumexp`` with its gradient in closed form: with ``P`` of ``_softmax_rows`` and ``g`` the
    gradient of the output, ``∂a_r = g_r Σ_c P_rc b_c / τ`` and ``∂b_c = Σ_r g_r P_rc a_r / τ``.

    ``rows`` None: the whole [n, m] ``P`` is kept for the backward, which weights it ``BACKWARD_BLOCK_FLOATS`` at a
    time (autograd's ``logsumexp`` of ``a bᵀ / τ`` would hold the products, their quotient by τ and its
    exponential, and its backward two more such matrices).  ``rows`` r: the forward and the backward go r rows
    at a time, the backward recomputing each block of ``P``, so only a, b and one block are ever held."""

    @staticmethod
    def forward(ctx, a, b, weights, tau, rows):
        scaled = a / tau                                   # 1/τ on the [n, d] rows, not on the [n, m] products
        if rows is None:
            probs, lse = _softmax_rows(scaled, b, weights)
            ctx.save_for_backward(scaled, b, weights, probs)
        else:
            lse = torch.cat([_softmax_rows(scaled[start:start + rows], b, weights)[1]
                             for start in range(0, len(a), rows)])
            ctx.save_for_backward(scaled, b, weights)
        ctx.tau, ctx.rows = tau, rows
        return lse

    @staticmethod
    def backward(ctx, grad):
        scaled, b, weights, *kept = ctx.saved_tensors
        grad_a, grad_b = torch.empty_like(scaled), torch.zeros_like(b)
        step = ctx.rows or max(1, BACKWARD_BLOCK_FLOATS // max(b.shape[0], 1))
        for start in range(0, len(scaled), step):
            block = slice(start, start + step)
            if kept:                                   # a kept P stays as it is: a retained graph may run backward again
                weighted = kept[0][block] * grad[block].unsqueeze(1)
            else:
                weighted = _softmax_rows(scaled[block], b, weights)[0].mul_(grad[block].unsqueeze(1))
            torch.mm(weighted, b, out=grad_a[block])
            grad_b.addmm_(weighted.t(), scaled[block])
        return grad_a.div_(ctx.tau), grad_b, None, None, None


def similarity_logsumexp(a, b, tau, weights=None, block_floats=CONTRAST_BLOCK_FLOATS):
    """``log Σ_c w_c exp(a_r · b_c / τ)`` [len(a)]: the denominators of an InfoNCE of every row of ``a`` against
    every row of ``b``, each column ``c`` standing for ``w_c`` equal columns (``weights``; None: 1).
    ``_SimilarityLogSumExp``'s closed-form gradient: where the [len(a), len(b)] matrix fits ``block_floats`` it is
    built once and kept for the backward (MGCN, SMORE and LGMRec over a batch's distinct nodes; ML-100K's
    MENTOR and DA-MRS); else ``block_floats / len(b)`` rows at a time, each block recomputed in the backward, so
    the whole matrix is never held (MENTOR over all users and all items, DA-MRS over all items, at Tiktok's
    size: 21.6 GiB for MENTOR's I × I alone).  ``similarity_logsumexp_plain`` is the formula."""
    if len(a) * len(b) <= block_floats:
        return _SimilarityLogSumExp.apply(a, b, weights, tau, None)
    return _SimilarityLogSumExp.apply(a, b, weights, tau, max(1, block_floats // max(len(b), 1)))


def similarity_logsumexp_plain(a, b, tau, weights=None):
    """``similarity_logsumexp`` as the formula, with autograd (the whole similarity matrix)."""
    logits = a @ b.t() / tau
    if weights is not None:
        logits = logits + weights.log()
    return torch.logsumexp(logits, dim=1)


def take_rows(x, index):
    """``x[index]`` for a 1-D ``index``, with a backward that gives the same bits at every run.

    The backward of ``x[index]`` adds the gradients of repeated rows (a batch
    repeats users and items) with atomic adds in a thread-dependent order on
    the CPU, so two runs of one seed drifted apart; ``index_select``'s
    backward adds them in index order.
    """
    return x.index_select(0, index)


def sparse_rows(adj, rows):
    """``(sorted unique rows, inverse)`` when ``rows`` touch few edges of ``adj`` (a row block pays
    off), else None; ``unique[inverse]`` gives ``rows`` back."""
    unique, inverse = torch.unique(rows, return_inverse=True)
    return (unique, inverse) if rows_are_sparse(adj, unique) else None


def rows_are_sparse(adj, unique_rows):
    """Whether the rows hold under a quarter of the graph's edges (then a row block pays off)."""
    return edge_share(adj, unique_rows) <= 0.25


def edge_share(adj, unique_rows):
    """The share of a CSR matrix's non-zeros held by the rows ``unique_rows``."""
    crow = adj.crow_indices()
    return int((crow[unique_rows + 1] - crow[unique_rows]).sum()) / max(adj.values().numel(), 1)


def _scatter_aggregate(adj, x, aggr):
    """Aggregation where ``torch.sparse.mm(reduce=)`` is not available (CUDA): sums by a sparse
    product, maxima by a scatter over the CSR's edges."""
    crow, col = adj.crow_indices(), adj.col_indices()
    degree = crow[1:] - crow[:-1]
    if aggr != 'max':
        total = torch.sparse.mm(adj, x)
        return total if aggr == 'add' else total / degree.clamp(min=1).unsqueeze(1).to(x.dtype)
    row = torch.repeat_interleave(torch.arange(adj.shape[0], device=x.device), degree)
    index = row.unsqueeze(1).expand(-1, x.shape[1])
    out = x.new_zeros(adj.shape[0], x.shape[1])
    return out.scatter_reduce(0, index, x[col], reduce='amax', include_self=False)


class _SumAggregation(torch.autograd.Function):
    """``A x`` ('add') or ``C⁻¹ A x`` ('mean', ``C`` the non-zeros per row), with ``Aᵀ`` given.

    The backward ``Aᵀ (C⁻¹ g)`` is one product with the stored transpose
    (``A`` itself for our symmetric graph, the transposed block for a row
    block); torch's own backward of ``sparse.mm(reduce=)`` sorts a transposed
    copy at every call, which was two thirds of an MMGCN step on ML-1M.
    """

    @staticmethod
    def forward(ctx, x, adj, adj_t, inv_count):
        ctx.adj_t, ctx.inv_count = adj_t, inv_count
        out = torch.sparse.mm(adj, x)
        return out if inv_count is None else out.mul_(inv_count)

    @staticmethod
    def backward(ctx, grad):
        if ctx.inv_count is not None:
            grad = grad * ctx.inv_count
        return torch.sparse.mm(ctx.adj_t, grad.contiguous()), None, None, None


SOURCE_BITS = 29     # float64 mantissa bits below a float32's: room for a source node id
ENCODE_COLUMNS = 64  # columns encoded at a time (a smaller float64 copy of x)


def _amax_with_sources(adj, x, empty):
    """For a CSR matrix of ones and float32 ``x``: ``(max over row r's columns c of x[c, d],
    the column c that won)`` per (r, d), or None where this trick does not apply.

    Each float32 converts exactly to a float64 whose low 29 mantissa bits are
    zero; writing the node id there keeps the order of distinct values (the
    value bits sit above the id), so one vectorised ``amax`` over the float64
    copy returns the maximum with its winner in the low bits: faster on the CPU
    than the kernel that tracks winners, which is scalar.  Ties go to the
    larger id for positive values, the smaller for negative ones.  Declined:
    infinities and NaNs (an id turns an infinity into a NaN), and a zero whose
    id did not survive (a zero carrying an id is a subnormal float64, which a
    flush-to-zero mode would erase).
    """
    if x.dtype != torch.float32 or x.shape[0] >= 2 ** SOURCE_BITS or not bool(torch.isfinite(x.sum())):
        return None
    ids = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
    adj64 = adj.to(torch.float64)
    out = x.new_empty(adj.shape[0], x.shape[1])
    source = torch.empty(out.shape, dtype=torch.int64, device=x.device)
    for s in range(0, x.shape[1], ENCODE_COLUMNS):
        e = min(s + ENCODE_COLUMNS, x.shape[1])
        encoded = x[:, s:e].double().view(torch.int64).bitwise_or_(ids).view(torch.float64)
        best = torch.sparse.mm(adj64, encoded, reduce='amax').view(torch.int64)
        torch.bitwise_and(best, 2 ** SOURCE_BITS - 1, out=source[:, s:e])
        out[:, s:e] = best.sub_(source[:, s:e]).view(torch.float64)
    empty = empty.unsqueeze(1)
    zero = (out == 0) & ~empty
    if bool(zero.any()):
        r, d = zero.nonzero(as_tuple=True)
        if not bool((x[source[r, d], d] == 0).all()):
            return None
    return out, source.masked_fill_(empty, x.shape[0])


class _MaxAggregation(torch.autograd.Function):
    """``out[r, d] = max over row r's non-zeros e of A_e x[col_e, d]`` (0 for an empty row), CPU.

    The forward also finds, for each output, the source row that won
    (``_amax_with_sources`` for MMGCN's matrix of ones; for other values the
    kernel that reports the winning non-zero); the backward sends each
    gradient to that one row (a scatter over the output, not over the edges).
    Ties go to one winner, where torch's own backward shares them: parameters
    get the same gradient either way, as tied sources are equal rows.  An
    empty row's winner is a spare row of the gradient, dropped at the end.
    """

    @staticmethod
    def forward(ctx, x, adj):
        crow, col, val = adj.crow_indices(), adj.col_indices(), adj.values()
        empty = crow[1:] == crow[:-1]
        ones = bool((val == 1).all())
        found = _amax_with_sources(adj, x, empty) if ones else None
        ctx.num_rows, weight = x.shape[0], None
        if found is not None:
            out, source = found
        else:
            with torch.enable_grad():       # the kernel reports the winners only when a gradient is wanted
                out, winner = torch.ops.aten._sparse_mm_reduce_impl(adj, x.detach().requires_grad_(), 'amax')
            out = out.detach()
            # An empty row reports the non-zero count as its winner: one more entry names the spare row.
            source = torch.cat([col, col.new_full((1,), x.shape[0])])[winner]
            if not ones:
                weight = torch.cat([val, val.new_zeros(1)])[winner]
        ctx.save_for_backward(source, weight)
        return out

    @staticmethod
    def backward(ctx, grad):
        source, weight = ctx.saved_tensors
        grad_x = grad.new_zeros(ctx.num_rows + 1, grad.shape[1])
        grad_x.scatter_add_(0, source, grad if weight is None else grad * weight)
        return grad_x[:ctx.num_rows], None


class BaseModel(MessagePassing):
    """MMGCN's graph convolution (SPEC 2): ``x ← x W``, then each node aggregates its
    neighbours' rows with ``mean``, ``max`` or ``add``.

    Args:
        in_channels, out_channels: widths of ``x`` and of ``x W``.
        aggr: 'mean', 'max' or 'add'.

    ``forward(x, adj)`` takes the *unnormalised* adjacency as a sparse CSR
    matrix (``csr_adjacency``; row i lists the nodes that i aggregates from,
    PyG's ``adj_t``, which for our undirected graph is the adjacency itself),
    or a row block of it (``row_submatrix``): then only the block's rows are
    computed.  ``adj_transpose``, the matrix's transpose as CSR when the caller
    has it (the adjacency itself for our symmetric graph), lets 'add' and
    'mean' run through ``_SumAggregation``; on the CPU 'max' runs through
    ``_MaxAggregation``.  An ``edge_index`` [2, E] also works and runs PyG's
    per-edge path (the plain reference of the same math).
    """

    def __init__(self, in_channels, out_channels, aggr='add'):
        if aggr not in AGGR_MODES:
            raise ValueError(f'aggr_mode must be one of {AGGR_MODES}, got {aggr!r}')
        super().__init__(aggr=aggr)
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels))
        nn.init.xavier_normal_(self.weight)          # SPEC 2, as official

    def forward(self, x, adj, adj_transpose=None):
        return self.propagate(adj, x=x @ self.weight, adj_transpose=adj_transpose)

    def message(self, x_j):
        return x_j

    def message_and_aggregate(self, adj_t, x, adj_transpose):
        if adj_t.layout == torch.sparse_csr:
            if self.aggr == 'max' and x.device.type == 'cpu':
                if not (torch.is_grad_enabled() and x.requires_grad):    # evaluation: no winners needed
                    return torch.sparse.mm(adj_t, x, reduce='amax')
                return _MaxAggregation.apply(x, adj_t)
            if self.aggr != 'max' and adj_transpose is not None:
                return _SumAggregation.apply(x, adj_t, adj_transpose, self._inv_count(adj_t))
        if adj_t.layout == torch.sparse_csr and x.device.type == 'cpu':
            reduce = {'add': 'sum', 'mean': 'mean'}[self.aggr]
            return torch.sparse.mm(adj_t, x, reduce=reduce)
        if self.aggr == 'add':
            return torch.sparse.mm(adj_t, x)
        return _scatter_aggregate(adj_t, x, self.aggr)

    def _inv_count(self, adj):
        if self.aggr != 'mean':
            return None
        crow = adj.crow_indices()
        return (crow[1:] - crow[:-1]).clamp(min=1).to(adj.values().dtype).reciprocal().unsqueeze(1)


def xavier_normal_param(*shape):
    weight = nn.Parameter(torch.empty(*shape))
    nn.init.xavier_normal_(weight)
    return weight


def as_tensor(features):
    """float32 tensor of a numpy feature matrix."""
    return torch.as_tensor(np.ascontiguousarray(features), dtype=torch.float32)


class _RowMeanProduct(torch.autograd.Function):
    """``M W`` for a fixed sparse ``M``; the backward uses the stored ``Mᵀ`` (no per-word copies)."""

    @staticmethod
    def forward(ctx, weight, mean, mean_t):
        ctx.mean_t = mean_t
        return torch.sparse.mm(mean, weight)

    @staticmethod
    def backward(ctx, grad):
        return torch.sparse.mm(ctx.mean_t, grad.contiguous()), None, None


class WordMean(nn.Module):
    """Tiktok's textual feature (SPEC 1.2): the mean of an item's trainable word
    embeddings, recomputed at every forward; items without words get zeros.

    Computed as ``M W`` with ``M[i, w] = (times w occurs in i) / (words of i)``,
    a fixed sparse matrix: the same mean as gathering every (item, word) row,
    without materialising them.
    """

    def __init__(self, words, num_item):
        super().__init__()
        self.weight = xavier_normal_param(words.vocab_size, words.dim)
        self.num_item = num_item
        # Data, not weights: rebuilt from the dataset, kept out of the state dict (and moved with the model).
        self.register_buffer('item_index', words.item_index, persistent=False)
        self.register_buffer('word_id', words.word_id, persistent=False)
        self._build(words.vocab_size)

    def _build(self, vocab_size):
        count = torch.bincount(self.item_index, minlength=self.num_item).to(self.weight.dtype)
        values = 1 / count[self.item_index]
        pairs = torch.stack([self.item_index, self.word_id])
        mean = torch.sparse_coo_tensor(pairs, values, (self.num_item, vocab_size), check_invariants=True).coalesce()
        with _quiet_csr():
            self.register_buffer('mean', mean.to_sparse_csr(), persistent=False)
            self.register_buffer('mean_t', mean.t().coalesce().to_sparse_csr(), persistent=False)

    def forward(self):
        return _RowMeanProduct.apply(self.weight, self.mean, self.mean_t)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Official tables may be larger than this dataset's vocabulary (SPEC 3.5):
        # the extra rows are kept as they are and never looked up.
        saved = state_dict.get(prefix + 'weight')
        if saved is not None and saved.dim() == 2 and saved.shape[1] == self.weight.shape[1] \
                and saved.shape[0] > self.weight.shape[0]:
            self.weight = nn.Parameter(self.weight.new_empty(saved.shape))
            self._build(saved.shape[0])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def item_feature_modules(features, num_item):
    """Split item features into trainable ``WordMean`` modules (word-id modalities)
    and fixed float tensors (dense modalities)."""
    from DataLoad import WordFeature
    words = nn.ModuleDict({m: WordMean(f, num_item) for m, f in features.items() if isinstance(f, WordFeature)})
    dense = {m: as_tensor(f) for m, f in features.items() if not isinstance(f, WordFeature)}
    return words, dense
