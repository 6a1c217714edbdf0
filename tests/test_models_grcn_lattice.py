"""GRCN and LATTICE (issue #24, docs/models.md): each equation on a 2-user, 3-item graph against the hand
computation or the dense formula written out here; LATTICE's blocked kNN graph against the authors' dense
construction (values and gradients); training, evaluation, kill-and-resume and --export_topk through the
command line."""
import csv
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import config
from DataLoad import WordFeature
from knn_graph import knn_neighbours, unit_rows
import model_GRCN
from model_GRCN import GRCN
from model_LATTICE import (LATTICE, dense_graph_plain, graph_product, mixed_graph, normalized,
                           raw_knn, row_normalized_adjacency, weighted_knn)
from test_train import _run, kill_then_resume

# 2 users, 3 items; user 0 has items 0, 1, user 1 has items 1, 2.
TRAIN = np.array([[0, 0], [0, 1], [1, 1], [1, 2]])
U, I = 2, 3


def dense_mask():
    r = torch.zeros(U, I)
    r[TRAIN[:, 0], TRAIN[:, 1]] = 1
    return r


# ---------------------------------------------------------------------- GRCN

def grcn(weight_mode='confid', pruning=True, num_layer=2, reg_weight=0.5, modalities=2):
    torch.manual_seed(0)
    feats = {m: np.random.default_rng(i).normal(size=(I, 4)).astype(np.float32) for i, m in
             enumerate('vt'[:modalities])}
    return GRCN(U, I, feats, TRAIN, dim_latent=3, num_layer=num_layer, reg_weight=reg_weight,
                weight_mode=weight_mode, pruning=pruning)


def grcn_dense(model):
    """The equations of model_GRCN's docstring with dense [U, I] matrices."""
    r = dense_mask().bool()
    to_item, to_user, contents = [], [], []
    for m in model.modalities:
        p = F.normalize(model.preference[m], dim=1)
        f = F.normalize(F.leaky_relu(model.transforms[m](model.item_input(m))), dim=1)
        a = (p @ f.t()).masked_fill(~r, -math.inf)
        col, row = torch.softmax(a, 0).nan_to_num(0), torch.softmax(a, 1).nan_to_num(0)   # α→i, α→u
        contents.append(torch.cat([p + row @ f, f + col.t() @ p]))
        to_item.append(col)
        to_user.append(row)
    conf = model.confidence
    if model.weight_mode == 'confid':
        w_i = torch.stack([a * conf[:U, k:k + 1] for k, a in enumerate(to_item)]).amax(0)
        w_u = torch.stack([a * conf[U:, k][None, :] for k, a in enumerate(to_user)]).amax(0)
    else:
        w_i, w_u = (torch.stack(to_item).amax(0), torch.stack(to_user).amax(0)) if model.weight_mode == 'max' \
            else (torch.stack(to_item).mean(0), torch.stack(to_user).mean(0))
    if model.pruning:
        w_i, w_u = w_i.relu(), w_u.relu()
    w_i, w_u = w_i * r, w_u * r            # no edge, no weight (a max over negatives would be 0 anyway)
    x = F.normalize(model.embedding, dim=1)
    total = x
    for _ in range(model.num_layer):
        x = torch.cat([w_u @ x[U:], w_i.t() @ x[:U]])
        total = total + x
    z = torch.cat([total] + contents, 1)
    return z[:U], z[U:]


@pytest.mark.parametrize('mode,pruning', [('confid', True), ('confid', False), ('max', True), ('mean', True)])
def test_grcn_forward_is_the_dense_formula(mode, pruning):
    model = grcn(mode, pruning)
    with torch.no_grad():
        model.confidence.copy_(torch.randn(U + I, 2))          # negative confidences: pruning matters
    z_user, z_item = model()
    d_user, d_item = grcn_dense(model)
    assert torch.allclose(z_user, d_user, atol=1e-6) and torch.allclose(z_item, d_item, atol=1e-6)


def test_grcn_equal_attention_by_hand():
    """Equal scores: α→i = 1/deg(i), α→u = 1/deg(u); with confidence 1 the ID graph is a mean aggregation."""
    model = grcn(modalities=1, num_layer=1)
    with torch.no_grad():
        model.preference['v'].zero_()                          # p̂ = 0: every score 0
        model.confidence.fill_(1.0)
    z_user, z_item = model()
    x = F.normalize(model.embedding, dim=1).detach()
    f = model.content('v').detach()
    # item 1 has users 0 and 1 (½ each); user 0 has items 0 and 1 (½ each); item 0 only user 0 (weight 1)
    assert torch.allclose(z_item[1, :3], x[U + 1] + 0.5 * (x[0] + x[1]))
    assert torch.allclose(z_item[0, :3], x[U + 0] + x[0])
    assert torch.allclose(z_user[0, :3], x[0] + 0.5 * (x[U + 0] + x[U + 1]))
    assert torch.allclose(z_user[0, 3:], 0.5 * (f[0] + f[1]))     # c[u] = p̂_u + Σ α f̂, p̂ = 0
    assert torch.allclose(z_item[2, 3:], f[2])                    # c[i] = f̂_i + Σ α p̂


def test_grcn_loss_by_hand():
    model = grcn(reg_weight=0.5)
    users, pos, neg = torch.tensor([0, 1, 0]), torch.tensor([1, 2, 0]), torch.tensor([2, 0, 2])
    loss, parts = model.loss(users, pos, neg)
    z_user, z_item = model()
    s = (z_user[users] * (z_item[pos] - z_item[neg])).sum(1)
    e = model.embedding.detach()
    reg_id = (2 * e[users].pow(2).sum() + e[U + pos].pow(2).sum() + e[U + neg].pow(2).sum()) / (2 * 3 * 3)
    reg_pref = sum(model.preference[m][users].pow(2).sum() for m in 'vt') / (3 * 3)
    assert parts['bpr'] == pytest.approx(-F.logsigmoid(s).mean().item(), rel=1e-5)
    assert parts['reg_id'] == pytest.approx(reg_id.item(), rel=1e-5)
    assert parts['reg_pref'] == pytest.approx(reg_pref.item(), rel=1e-5)
    assert loss.item() == pytest.approx(parts['bpr'] + 0.5 * (parts['reg_id'] + parts['reg_pref']), rel=1e-5)


@pytest.mark.parametrize('mode', ['confid', 'mean'])
def test_grcn_fast_edge_products_equal_the_plain_formulas(mode, monkeypatch):
    """The fast path (``Bipartite``: CSR products, closed-form gradients) against the plain ``aggregate`` and
    gathered dot products: the loss and every gradient, on a random graph whose edges come in no order
    (users without edges and items without edges included), its dot products in chunks of 7 edges."""
    monkeypatch.setattr(model_GRCN, 'DOT_CHUNK', 7)
    rng = np.random.default_rng(3)
    num_user, num_item = 9, 12
    pairs = np.unique(np.stack([rng.integers(0, 7, 40), rng.integers(0, 10, 40)], 1), axis=0)
    pairs = pairs[rng.permutation(len(pairs))]
    feats = {'v': rng.normal(size=(num_item, 5)).astype(np.float32), 't': rng.normal(size=(num_item, 4)).astype(np.float32)}
    results = []
    for fast in (True, False):
        torch.manual_seed(0)
        model = GRCN(num_user, num_item, feats, pairs, dim_latent=4, weight_mode=mode, fast=fast)
        with torch.no_grad():
            model.confidence.copy_(torch.randn(num_user + num_item, 2))
        loss, _ = model.loss(torch.tensor([0, 3, 6]), torch.tensor([1, 2, 9]), torch.tensor([4, 5, 6]))
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (fast_loss, fast_grads), (plain_loss, plain_grads) = results
    assert torch.allclose(fast_loss, plain_loss, atol=1e-6)
    assert fast_grads.keys() == plain_grads.keys() and 'embedding' in fast_grads
    for name in fast_grads:
        assert torch.allclose(fast_grads[name], plain_grads[name], atol=1e-6), name


def test_grcn_words_are_dC_wide_means():
    words = WordFeature(item_index=torch.tensor([0, 0, 1, 2]), word_id=torch.tensor([0, 1, 1, 2]), vocab_size=3)
    model = GRCN(U, I, {'t': words}, TRAIN, dim_latent=5)
    table = model.word_means['t'].weight
    assert table.shape == (3, 5) and 't' not in model.transforms
    assert torch.allclose(model.content('t')[0], F.normalize((table[0] + table[1]) / 2, dim=0))


# ---------------------------------------------------------------------- LATTICE: the item-item graph

def test_weighted_knn_by_hand():
    """Rows (1,0), (1,1), (0,1), (0,0), k = 2: each keeps itself (1) and its most similar item; the zero
    row only itself."""
    x = torch.tensor([[1., 0.], [1., 1.], [0., 1.], [0., 0.]])
    rows, cols, values = weighted_knn(x, 2)
    dense = torch.zeros(4, 4).index_put_((rows, cols), values, accumulate=True)
    c = 1 / math.sqrt(2)
    expected = torch.tensor([[1., c, 0, 0], [0, 1, 0, 0], [0, c, 1, 0], [0, 0, 0, 1]])
    expected[1, 0 if dense[1, 0] > 0 else 2] = c               # item 1 ties between items 0 and 2
    assert torch.allclose(dense, expected) and not torch.isnan(values).any()
    n_rows, n_cols, n_values = normalized((rows, cols, values), 4)
    # N(A)[0, 1] = c / √(D_0 D_1) with D_0 = 1 + c, D_1 = 1 + c
    assert n_values[(n_rows == 0) & (n_cols == 1)].item() == pytest.approx(c / (1 + c))


@pytest.mark.parametrize('words', [False, True])
def test_knn_blocks_equal_one_block(words):
    rng = np.random.default_rng(1)
    if words:
        feature = WordFeature(item_index=torch.tensor(rng.integers(0, 30, 90)),
                              word_id=torch.tensor(rng.integers(0, 12, 90)), vocab_size=12)
    else:
        feature = rng.normal(size=(30, 6)).astype(np.float32)
        feature[4] = 0
    whole = raw_knn(feature, 30, 5)
    unit = unit_rows(feature, 30)
    if unit.is_sparse:
        unit = unit.to_sparse_csr()
    ids, cos = knn_neighbours(unit, 5, block_floats=30 * 4)      # blocks of 4 rows
    assert torch.equal(ids.reshape(-1), whole[1])
    if not words:
        assert torch.equal(whole[2].view(30, 5)[4], torch.tensor([1., 0, 0, 0, 0]))    # the zero row


def lattice_parts(seed=0):
    g = torch.Generator().manual_seed(seed)
    raw = [torch.randn(6, 4, generator=g), torch.randn(6, 3, generator=g)]
    raw[0][2] = 0                                                  # a zero row in the raw features
    learned = [torch.randn(6, 5, generator=g, requires_grad=True), torch.randn(6, 5, generator=g,
                                                                                requires_grad=True)]
    omega = torch.tensor([0.3, -0.2], requires_grad=True)
    return raw, learned, omega


def test_blocked_graph_equals_the_authors_dense_graph_and_its_gradient():
    raw, learned, omega = lattice_parts()
    k, skip = 3, 0.9
    original = [normalized(raw_knn(x.numpy(), 6, k), 6) for x in raw]
    weights = torch.softmax(omega, 0)
    graph = mixed_graph([weighted_knn(x, k) for x in learned], original, weights, skip, 6)
    e = torch.randn(6, 2)
    fast = graph_product(graph, e, 6)
    dense = dense_graph_plain(learned, raw, weights, k, skip)
    plain = dense @ e
    assert torch.allclose(fast, plain, atol=1e-6)
    g_fast = torch.autograd.grad(fast.pow(2).sum(), [omega, *learned], retain_graph=True)
    g_plain = torch.autograd.grad(plain.pow(2).sum(), [omega, *learned])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_fast, g_plain))


def test_row_normalized_adjacency_by_hand():
    adj, adj_t = row_normalized_adjacency(TRAIN, U, I)
    a = adj.to_dense()
    # user 0: itself and items 0, 1 (1/3 each); item 0: itself and user 0 (1/2 each)
    assert torch.allclose(a[0], torch.tensor([1 / 3, 0, 1 / 3, 1 / 3, 0]))
    assert torch.allclose(a[U + 0], torch.tensor([1 / 2, 0, 1 / 2, 0, 0]))
    assert torch.equal(adj_t.to_dense(), a.t())


def lattice(reg_weight=0.5):
    torch.manual_seed(0)
    feats = {'v': np.random.default_rng(0).normal(size=(I, 4)).astype(np.float32),
             't': np.random.default_rng(1).normal(size=(I, 3)).astype(np.float32)}
    return LATTICE(U, I, feats, TRAIN, dim_latent=4, num_layer=2, reg_weight=reg_weight, knn_k=2)


def test_lattice_forward_is_the_dense_formula():
    model = lattice()
    z_user, z_item = model()
    adj = row_normalized_adjacency(TRAIN, U, I)[0].to_dense()
    x0 = torch.cat([model.embedding_user, model.embedding_item])
    z = (x0 + adj @ x0 + adj @ adj @ x0) / 3
    raw = [torch.as_tensor(model.feature_tables[m].detach()) for m in 'vt']      # still the raw features
    learned = [model.transforms[m](model.feature_tables[m]) for m in 'vt']
    g = dense_graph_plain(learned, raw, torch.softmax(model.modal_weight, 0), 2, 0.9)
    assert torch.allclose(z_user, z[:U], atol=1e-6)
    assert torch.allclose(z_item, z[U:] + F.normalize(g @ model.embedding_item, dim=1), atol=1e-6)


def test_lattice_epoch_graph_is_built_once_with_its_gradient_then_reused():
    model = lattice(reg_weight=0.5)
    users, pos, neg = torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([2, 0])
    model.on_epoch_start()
    first, parts = model.loss(users, pos, neg)
    first.backward()
    assert model.transforms['v'].weight.grad.abs().sum() > 0 and model.modal_weight.grad.abs().sum() > 0
    model.zero_grad()
    second, _ = model.loss(users, pos, neg)                 # the cached CSR graph: same value, no graph gradient
    second.backward()
    assert second.item() == pytest.approx(first.item(), rel=1e-6)
    assert model.transforms['v'].weight.grad is None or model.transforms['v'].weight.grad.abs().sum() == 0
    z_user, z_item = model()
    zu, zp, zn = z_user[users], z_item[pos], z_item[neg]
    reg = 0.5 * (zu.pow(2).sum() + zp.pow(2).sum() + zn.pow(2).sum()) / 2
    bpr = -F.logsigmoid((zu * (zp - zn)).sum(1)).mean()
    assert parts['reg'] == pytest.approx(reg.item(), rel=1e-5) and parts['bpr'] == pytest.approx(bpr.item(), rel=1e-5)
    assert first.item() == pytest.approx(bpr.item() + 0.5 * reg.item(), rel=1e-5)


# ---------------------------------------------------------------------- the command line

def test_help_and_defaults():
    text = config.build_parser().format_help()
    for flag in ('--grcn_weight_mode', '--grcn_pruning', '--lattice_lambda', '--lattice_item_layers'):
        assert flag in text
    g = config.parse_args(['--model_name', 'GRCN'])
    assert (g.l_r, g.weight_decay, g.batch_size, g.num_layer, g.grcn_weight_mode, g.grcn_pruning) == \
        (1e-4, 1e-5, 1024, 2, 'confid', True)
    assert config.parse_args(['--model_name', 'GRCN', '--grcn_pruning', 'False']).grcn_pruning is False
    lt = config.parse_args(['--model_name', 'LATTICE'])
    assert (lt.l_r, lt.weight_decay, lt.batch_size, lt.num_layer, lt.knn_k, lt.lattice_lambda) == \
        (5e-4, 1e-5, 1024, 2, 10, 0.9)
    with pytest.raises(Exception, match='--lattice_lambda: must be in'):
        config.parse_args(['--model_name', 'LATTICE', '--lattice_lambda', '2'])


@pytest.mark.parametrize('name', ['GRCN', 'LATTICE'])
def test_train_evaluate_export_and_resume_after_a_kill(name, tiny_plain, tmp_path):
    flags = ['--data_path', tiny_plain, '--model_name', name, '--batch_size', '512', '--dim_latent', '8',
             '--l_r', '0.01', '--topK', '5']
    code, record = _run(tmp_path, tiny_plain, *flags[2:], '--num_epoch', '2',
                        '--export_topk', str(tmp_path / 'top.csv'), tag='cli')
    assert code == 0 and record['run'].startswith(f'tiny_plain-{name}-') and record['test']['5']['recall'] > 0
    with open(tmp_path / 'top.csv') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 * 120 and rows[0]['rank'] == '1'
    full, resumed = kill_then_resume(tmp_path, flags, num_epoch=3, kill_after=1)
    assert (resumed['best_epoch'], resumed['val'], resumed['test']) == (full['best_epoch'], full['val'], full['test'])
    assert [h['loss'] for h in resumed['history']] == [h['loss'] for h in full['history']]
