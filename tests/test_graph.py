"""Graph operations on graphs small enough to check by hand, and every fast path
against its plain formula (SPEC 2, 3.1)."""
import numpy as np
import pytest
import torch

from BaseModel import (AGGR_MODES, BaseModel, _symmetric_columns, bipartite_edges, csr_adjacency, normalized_adjacency,
                       propagate_layers, propagate_layers_plain, row_submatrix, rows_are_sparse, similarity_logsumexp,
                       similarity_logsumexp_plain)

# 2 users, 3 items: user 0 - items 0, 1; user 1 - item 1.  Item 2 has no edge.
TRAIN = np.array([[0, 0], [0, 1], [1, 1]])
U, I = 2, 3


def test_normalized_adjacency_by_hand():
    adj = normalized_adjacency(TRAIN, U, I).to_dense()
    # degrees: u0 2, u1 1, i0 1, i1 2, i2 0
    r = 1 / np.sqrt(2)
    expected = np.zeros((5, 5))
    expected[0, 2] = expected[2, 0] = r * 1          # u0 - i0
    expected[0, 3] = expected[3, 0] = r * r          # u0 - i1
    expected[1, 3] = expected[3, 1] = 1 * r          # u1 - i1
    assert np.allclose(adj.numpy(), expected)
    assert adj[4].abs().sum() == 0                   # degree 0 gives 0, not inf


def test_layer_mean_by_hand():
    adj = normalized_adjacency(TRAIN, U, I)
    x0 = torch.arange(5, dtype=torch.float32).unsqueeze(1)
    dense = adj.to_dense()
    x1 = dense @ x0
    x2 = dense @ x1
    out = propagate_layers(adj, x0, 2)
    assert torch.allclose(out, (x0 + x1 + x2) / 3)
    # node u1 = 1: x1 = r * x(i1) = 3 / sqrt(2)
    assert torch.isclose(x1[1, 0], torch.tensor(3 / np.sqrt(2), dtype=torch.float32))


def test_wide_propagation_equals_per_branch():
    adj = normalized_adjacency(TRAIN, U, I)
    branches = [torch.randn(5, 4) for _ in range(3)]
    wide = propagate_layers(adj, torch.cat(branches, 1), 3)
    for b, part in zip(branches, wide.split(4, 1)):
        assert torch.allclose(part, propagate_layers(adj, b, 3), atol=1e-6)


def test_dropout_only_after_drop_from_and_not_layer0():
    adj = normalized_adjacency(TRAIN, U, I)
    x0 = torch.randn(5, 6)
    torch.manual_seed(0)
    out = propagate_layers(adj, x0, 2, dropout=0.5, training=True, drop_from=2)
    assert torch.allclose(out[:, :2], propagate_layers(adj, x0[:, :2], 2))
    assert not torch.allclose(out[:, 2:], propagate_layers(adj, x0[:, 2:], 2))
    assert torch.allclose(propagate_layers(adj, x0, 2, dropout=0.5, training=False), propagate_layers(adj, x0, 2))


@pytest.mark.parametrize('rows', [None, [3, 0, 3, 41, 69], list(range(0, 70, 2)) + [4, 4]])
@pytest.mark.parametrize('p, drop_from', [(0.0, 0), (0.3, 0), (0.5, 4)])
@pytest.mark.parametrize('num_layer', [1, 3])
def test_fast_propagation_matches_formula_with_gradients(p, drop_from, rows, num_layer):
    rng = np.random.default_rng(0)
    train = np.unique(np.stack([rng.integers(0, 30, 200), rng.integers(0, 40, 200)], 1), axis=0)
    adj = normalized_adjacency(train, 30, 40)
    x = torch.randn(70, 12, requires_grad=True)
    w = torch.randn(70, 12)
    rows = None if rows is None else torch.tensor(rows)
    w = w if rows is None else torch.randn(len(rows), 12)
    if rows is not None and len(rows) < 10:
        assert rows_are_sparse(adj, torch.unique(rows))            # both paths are exercised
    elif rows is not None:
        assert not rows_are_sparse(adj, torch.unique(rows))
    torch.manual_seed(5)
    fast = propagate_layers(adj, x, num_layer, dropout=p, training=True, drop_from=drop_from, rows=rows)
    (fast * w).sum().backward()
    grad_fast = x.grad.clone()
    x.grad = None
    torch.manual_seed(5)
    plain = propagate_layers_plain(adj.to_dense(), x, num_layer, dropout=p, training=True, drop_from=drop_from,
                                   rows=rows)
    (plain * w).sum().backward()
    assert torch.allclose(fast, plain, atol=1e-5)
    assert torch.allclose(grad_fast, x.grad, atol=1e-5)


def test_layer_parity_sums_by_hand():
    """Two users, one item each, one shared item: the even and odd layer sums written out."""
    train = np.array([[0, 0], [1, 0], [1, 1]])
    adj = normalized_adjacency(train, 2, 2)
    A = adj.to_dense()
    x0 = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    x1, x2, x3 = A @ x0, A @ A @ x0, A @ A @ A @ x0
    out = propagate_layers(adj, x0, 3, parity=True)
    assert torch.allclose(out, torch.cat([x0 + x2, x1 + x3], 1) / 4)
    assert torch.allclose(out.sum(1, keepdim=True), propagate_layers(adj, x0, 3))


@pytest.mark.parametrize('rows', [None, [3, 0, 3, 41, 69], list(range(0, 70, 2)) + [4, 4]])
@pytest.mark.parametrize('num_layer', [1, 2, 3])
def test_parity_propagation_matches_formula_with_gradients(rows, num_layer):
    rng = np.random.default_rng(1)
    train = np.unique(np.stack([rng.integers(0, 30, 200), rng.integers(0, 40, 200)], 1), axis=0)
    adj = normalized_adjacency(train, 30, 40)
    dense = adj.to_dense()
    x = torch.randn(70, 6, requires_grad=True)
    rows = None if rows is None else torch.tensor(rows)
    w = torch.randn(70 if rows is None else len(rows), 12)
    fast = propagate_layers(adj, x, num_layer, rows=rows, parity=True)
    (fast * w).sum().backward()
    grad_fast, x.grad = x.grad.clone(), None
    plain = propagate_layers_plain(dense, x, num_layer, rows=rows, parity=True)
    (plain * w).sum().backward()
    assert torch.allclose(fast, plain, atol=1e-5)
    assert torch.allclose(grad_fast, x.grad, atol=1e-5)


def _conv(aggr):
    conv = BaseModel(2, 2, aggr)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(2))
    return conv


@pytest.mark.parametrize('aggr, expected_u0, expected_i1', [
    ('add', [5.0, 7.0], [1.0, 2.0]),      # u0 <- i0 (2, 3) + i1 (3, 4); i1 <- u0 (0, 1) + u1 (1, 1)
    ('mean', [2.5, 3.5], [0.5, 1.0]),
    ('max', [3.0, 4.0], [1.0, 1.0]),
])
def test_three_aggregations_by_hand(aggr, expected_u0, expected_i1):
    x = torch.tensor([[0., 1.], [1., 1.], [2., 3.], [3., 4.], [9., 9.]])
    adj = csr_adjacency(bipartite_edges(TRAIN, U), 5)
    out = _conv(aggr)(x, adj)
    assert out[0].tolist() == expected_u0
    assert out[3].tolist() == expected_i1
    assert out[4].tolist() == [0.0, 0.0]                 # isolated item: no neighbour, zeros
    assert out[1].tolist() == [3.0, 4.0]                 # u1 <- i1 only


@pytest.mark.parametrize('with_transpose', [False, True])
@pytest.mark.parametrize('directed', [False, True])
@pytest.mark.parametrize('aggr', ['add', 'mean', 'max'])
def test_csr_path_matches_pyg_edge_index_path(aggr, directed, with_transpose):
    rng = np.random.default_rng(1)
    train = np.unique(np.stack([rng.integers(0, 20, 120), rng.integers(0, 25, 120)], 1), axis=0)
    edges = bipartite_edges(train, 20)
    if directed:                                 # users -> items only: not symmetric
        edges = edges[:, :len(train)]
    adj = csr_adjacency(edges.flip(0), 45)       # row i: the nodes i aggregates from (PyG's adj_t)
    # With the transpose, 'add' and 'mean' take _SumAggregation; without, torch's own backward.
    transpose = csr_adjacency(edges, 45) if with_transpose else None
    conv = BaseModel(6, 6, aggr)
    x = torch.randn(45, 6, requires_grad=True)
    fast = conv(x, adj, transpose)
    fast.pow(2).sum().backward()
    g_fast, gw_fast = x.grad.clone(), conv.weight.grad.clone()
    x.grad, conv.weight.grad = None, None
    plain = conv(x, edges)                       # PyG's per-edge message passing
    plain.pow(2).sum().backward()
    assert torch.allclose(fast, plain, atol=1e-5)
    assert torch.allclose(g_fast, x.grad, atol=1e-4)
    assert torch.allclose(gw_fast, conv.weight.grad, atol=1e-4)


def test_row_block_of_the_layer_matches_full_rows():
    rng = np.random.default_rng(2)
    train = np.unique(np.stack([rng.integers(0, 20, 120), rng.integers(0, 25, 120)], 1), axis=0)
    adj = csr_adjacency(bipartite_edges(train, 20), 45)
    rows = torch.tensor([0, 3, 21, 44])
    block, block_t = row_submatrix(adj, rows)
    for aggr in AGGR_MODES:
        conv = BaseModel(6, 6, aggr)
        x = torch.randn(45, 6, requires_grad=True)
        fast = conv(x, block, block_t)
        (fast * torch.arange(24.).view(4, 6)).sum().backward()
        g_fast = x.grad.clone()
        x.grad = None
        full = conv(x, adj, adj)[rows]
        (full * torch.arange(24.).view(4, 6)).sum().backward()
        assert torch.allclose(fast, full, atol=1e-6) and torch.allclose(g_fast, x.grad, atol=1e-6), aggr


def test_symmetric_columns_by_hand():
    # symmetric 5 x 5 with rows 0 and 4 empty; columns {1, 3} of it are the transpose of rows {1, 3}
    dense = torch.tensor([[0., 0, 0, 0, 0],
                          [0, 0, 2, 3, 0],
                          [0, 2, 0, 5, 0],
                          [0, 3, 5, 7, 0],
                          [0, 0, 0, 0, 0]])
    columns = _symmetric_columns(dense.to_sparse_csr(), torch.tensor([1, 3]))
    assert columns.layout == torch.sparse_csr
    assert torch.equal(columns.to_dense(), torch.tensor([[0., 0], [0, 3], [2, 5], [3, 7], [0, 0]]))


@pytest.mark.parametrize('count', [3, 25])
def test_row_submatrix_transposes_agree(count):
    rng = np.random.default_rng(7)
    train = np.unique(np.stack([rng.integers(0, 30, 150), rng.integers(0, 40, 150)], 1), axis=0)
    adj = normalized_adjacency(train, 30, 40)
    rows = torch.unique(torch.as_tensor(rng.integers(0, 70, count)))
    block, general = row_submatrix(adj, rows)
    _, chosen = row_submatrix(adj, rows, symmetric=True)     # 3 rows: the sort; 25 rows: the shortcut
    for matrix in (chosen, _symmetric_columns(adj, rows)):
        for name in ('crow_indices', 'col_indices', 'values'):
            assert torch.equal(getattr(general, name)(), getattr(matrix, name)()), name
    assert torch.equal(general.to_dense(), block.to_dense().t())


def test_max_sends_no_gradient_from_an_empty_row():
    edges = bipartite_edges(TRAIN, U)                   # node 4 (item 2) has no neighbour
    adj = csr_adjacency(edges, U + I)
    conv = _conv('max')
    x = torch.randn(U + I, 2, requires_grad=True)
    conv(x, adj).sum().backward()                       # a non-zero gradient reaches the empty row's output
    fast = x.grad.clone()
    x.grad = None
    conv(x, edges).sum().backward()
    assert torch.allclose(fast, x.grad)


def test_max_with_weighted_entries_matches_torch():
    # MMGCN's adjacency holds ones; a weighted one must still give max_e A_e x[col_e] and its gradient.
    from BaseModel import _MaxAggregation
    torch.manual_seed(0)
    dense = (torch.rand(7, 7) < 0.4) * (0.5 + torch.rand(7, 7))
    dense[3] = 0                                        # an empty row too
    rows, cols = dense.nonzero().t()
    adj = csr_adjacency(torch.stack([rows, cols]), 7, dense[rows, cols])
    x = torch.randn(7, 3, requires_grad=True)
    weights = torch.randn(7, 3)
    (_MaxAggregation.apply(x, adj) * weights).sum().backward()
    ours, x.grad = x.grad, None
    expected = torch.stack([(dense[r, :, None] * x).masked_fill(dense[r, :, None] == 0, -torch.inf).amax(0)
                            if dense[r].any() else torch.zeros(3) for r in range(7)])
    (expected * weights).sum().backward()
    assert torch.allclose(_MaxAggregation.apply(x, adj), expected.detach()) and torch.allclose(ours, x.grad)


def test_amax_with_sources_by_hand():
    from BaseModel import _amax_with_sources
    dense = torch.tensor([[0., 1, 1, 0],
                          [0, 0, 0, 0],                 # empty: 0, and the spare row 4 as its source
                          [1, 0, 0, 1],
                          [1, 1, 1, 1]])
    adj = csr_adjacency(dense.nonzero().t(), 4)
    x = torch.tensor([[-1., 2], [-3, 2], [-1, -5], [0, 0]])
    empty = torch.tensor([False, True, False, False])
    out, source = _amax_with_sources(adj, x, empty)
    assert torch.equal(out, torch.tensor([[-1., 2], [0, 0], [0, 2], [0, 2]]))
    # row 3, column 1: rows 0 and 1 tie at 2.0; a positive tie goes to the larger id
    assert torch.equal(source, torch.tensor([[2, 1], [4, 4], [3, 0], [3, 1]]))


def test_amax_with_sources_declines_what_it_cannot_encode():
    from BaseModel import _amax_with_sources
    adj = csr_adjacency(torch.ones(3, 3).nonzero().t(), 3)
    empty = torch.zeros(3, dtype=torch.bool)
    x = torch.randn(3, 2)
    assert _amax_with_sources(adj, x.double(), empty) is None           # no spare mantissa bits
    x[1, 0] = torch.inf                                                 # would read back as a NaN
    assert _amax_with_sources(adj, x, empty) is None


@pytest.mark.parametrize('case', ['ones', 'ones, 2 columns at a time', 'infinity', 'float64'])
def test_max_aggregation_matches_the_plain_formula(case, monkeypatch):
    # The encoded-winner path (ones), and the winner-tracking kernel it falls back to.
    import BaseModel as base
    from BaseModel import _amax_with_sources, _MaxAggregation
    if case.endswith('at a time'):
        monkeypatch.setattr(base, 'ENCODE_COLUMNS', 2)            # 5 columns: chunks of 2, 2 and 1
    rng = np.random.default_rng(3)
    train = np.unique(np.stack([rng.integers(0, 30, 200), rng.integers(0, 40, 200)], 1), axis=0)
    edges = bipartite_edges(train, 30)
    adj = csr_adjacency(edges, 70)
    dense = adj.to_dense()
    x = torch.randn(70, 5, dtype=torch.float64 if case == 'float64' else torch.float32)
    if case == 'infinity':
        x[int(edges[1, 0]), 2] = torch.inf
    adj = adj.to(x.dtype)
    empty = adj.crow_indices()[1:] == adj.crow_indices()[:-1]
    assert (_amax_with_sources(adj, x, empty) is not None) == case.startswith('ones')
    x.requires_grad_()
    weights = torch.randn(70, 5, dtype=x.dtype)
    out = _MaxAggregation.apply(x, adj)
    (out * weights).sum().backward()
    ours, x.grad = x.grad, None
    expected = torch.stack([x.masked_fill(dense[r, :, None] == 0, -torch.inf).amax(0) if dense[r].any()
                            else x.new_zeros(5) for r in range(70)])
    (expected * weights).sum().backward()
    assert torch.equal(out, expected.detach())
    assert torch.allclose(ours, x.grad)
    with torch.no_grad():                                               # evaluation skips the winners
        assert torch.equal(BaseModel(5, 5, 'max').message_and_aggregate(adj, x, None), out)


def test_unknown_aggregation_rejected():
    with pytest.raises(ValueError, match="aggr_mode must be one of"):
        BaseModel(2, 2, 'median')


@pytest.mark.parametrize('weighted', [False, True])
def test_similarity_logsumexp_matches_the_formula_with_gradients(weighted):
    """The closed-form gradient of ``log Σ_c w_c exp(a_r·b_c/τ)`` against autograd's, and the value by hand."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 4, generator=gen, dtype=torch.float64), torch.randn(7, 4, generator=gen, dtype=torch.float64)
    weights = torch.tensor([1., 3., 2., 1., 1., 4., 2.], dtype=torch.float64) if weighted else None
    g = torch.randn(5, generator=gen, dtype=torch.float64)
    outs = []
    for fn in (similarity_logsumexp, similarity_logsumexp_plain):
        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        out = fn(x, y, 0.3, weights)
        (out * g).sum().backward()
        outs.append((out.detach(), x.grad, y.grad))
    w = weights if weighted else torch.ones(7, dtype=torch.float64)
    by_hand = torch.stack([torch.log(sum(w[c] * torch.exp(a[r] @ b[c] / 0.3) for c in range(7))) for r in range(5)])
    assert torch.allclose(outs[0][0], by_hand) and torch.allclose(outs[1][0], by_hand)
    for fast, plain in zip(outs[0], outs[1]):
        assert torch.allclose(fast, plain, atol=1e-12)


def test_word_mean_matches_plain_gather_with_gradients():
    from BaseModel import WordMean
    from DataLoad import WordFeature
    items = torch.tensor([0, 0, 0, 2, 3, 3])
    words = torch.tensor([1, 4, 1, 0, 2, 3])           # item 0 holds word 1 twice; item 1 has none
    module = WordMean(WordFeature(items, words, 5, dim=3), num_item=4)
    w = torch.randn(4, 3)
    (module() * w).sum().backward()
    fast_grad = module.weight.grad.clone()
    module.weight.grad = None
    table = module.weight
    plain = torch.stack([table[words[items == i]].mean(0) if (items == i).any() else torch.zeros(3)
                         for i in range(4)])
    (plain * w).sum().backward()
    assert torch.allclose(module(), plain, atol=1e-6)
    assert torch.allclose(fast_grad, module.weight.grad, atol=1e-6)
    assert module()[1].abs().sum() == 0


_EXTENSION_PROBE = '''
import sys, warnings
warnings.simplefilter("ignore")
if sys.argv[1] == "blocked":
    sys.modules["torch_scatter"] = None      # import fails: PyG falls back to torch's own scatter
    sys.modules["torch_sparse"] = None
import numpy as np, torch
sys.path.insert(0, sys.argv[2])
from BaseModel import BaseModel, bipartite_edges, csr_adjacency
import torch_geometric.typing as t
rng = np.random.default_rng(0)
train = np.unique(np.stack([rng.integers(0, 30, 200), rng.integers(0, 40, 200)], 1), axis=0)
edges = bipartite_edges(train, 30)
adj = csr_adjacency(edges, 70)
torch.manual_seed(0)
x = torch.randn(70, 5)
out = []
for aggr in ("add", "mean", "max"):
    conv = BaseModel(5, 5, aggr)
    out += [conv(x, adj), conv(x, edges)]
import json
print(t.WITH_TORCH_SCATTER, json.dumps(torch.cat([o.flatten() for o in out]).tolist()))
'''


def test_optional_extensions_do_not_change_results(tmp_path):
    """With torch-scatter/torch-sparse installed, PyG's per-edge path uses them; our CSR path never
    does. Both paths give the same numbers with the extensions and with them blocked."""
    import json
    import subprocess
    import sys
    pytest.importorskip('torch_scatter')
    script = tmp_path / 'probe.py'
    script.write_text(_EXTENSION_PROBE)
    root = str(__import__('pathlib').Path(__file__).resolve().parents[1])
    runs = {}
    for mode in ('installed', 'blocked'):
        proc = subprocess.run([sys.executable, str(script), mode, root], capture_output=True, text=True, check=True)
        flag, values = proc.stdout.strip().split(' ', 1)
        runs[mode] = (flag, torch.tensor(json.loads(values)))
    assert runs['installed'][0] == 'True' and runs['blocked'][0] == 'False'
    assert torch.allclose(runs['installed'][1], runs['blocked'][1], atol=1e-5)
