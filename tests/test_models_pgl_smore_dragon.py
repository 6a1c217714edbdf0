"""PGL, SMORE and DRAGON (issue #31, docs/models.md): each equation against a dense hand computation on a graph
of 2-3 users and 3 items, each fast path against its plain formula, DRAGON's user-user graph and its cache, and
each model through the command line (training, evaluation, SIGKILL then --resume equal to the uninterrupted
run, --export_topk)."""
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import config
import knn_graph
import model_DRAGON
import registry
from BaseModel import normalized_adjacency
from model_DRAGON import DRAGON, cooccurrence_topk, fill_slots, slot_weights
from model_FREEDOM import item_graph
from model_MGCN import item_graphs as mgcn_graphs
from model_PGL import PGL
from model_SMORE import SMORE, item_graphs, max_fusion, modality_ks
from test_models_bm3_mgcn_lgmrec import (
    LG_TRAIN, LG_U, MGCN_FEAT, assert_fast_loss_is_plain, assert_loss_and_gradients, bpr_by_hand, cli_roundtrip,
    dense_adjacency, layer_mean, nce_by_hand)

I = 3
A = dense_adjacency(LG_TRAIN, LG_U, I)            # 3 users, 3 items: u0 {0, 1}, u1 {1, 2}, u2 {2}
R_HAT = A[:LG_U, LG_U:]
BATCH = torch.tensor([0, 1, 2, 1]), torch.tensor([1, 2, 2, 1]), torch.tensor([2, 0, 1, 0])


def dense_drop(x, p):
    """``F.dropout`` in training: the draws a model makes, in the same order, from the same seeded RNG."""
    return F.dropout(x, p, training=True)


# ---------------------------------------------------------------------- PGL

def pgl_model(dropout=0.0, feats=MGCN_FEAT, train=LG_TRAIN, num_user=LG_U):
    torch.manual_seed(0)
    return PGL(num_user, I, feats, train, normalized_adjacency(train, num_user, I), item_graph(feats, I, 2),
               dim_latent=4, num_layer=2, dropout=dropout, cl_weight=0.5)


def pgl_by_hand(model, adj, feats=MGCN_FEAT):
    """``(z_u, z_i)``: the users' per-modality embeddings and the normalised projected features side by side,
    the layer mean over ``adj``, and ``S x_i`` added on the items."""
    x_u = torch.cat([model.user_embeddings[m] for m in feats], 1)
    x_i = torch.cat([F.normalize(model.transforms[m](model.feature_tables[m]), dim=1) for m in feats], 1)
    z = layer_mean(adj, torch.cat([x_u, x_i]), 2)
    s = item_graph(feats, I, 2).to_dense()
    return z[:len(x_u)], z[len(x_u):] + s @ x_i


def test_pgl_evaluation_forward_by_hand():
    for feats in (MGCN_FEAT, {'t': MGCN_FEAT['t']}):                              # two modalities, then one
        model = pgl_model(feats=feats).eval()
        z_u, z_i = pgl_by_hand(model, A, feats)
        out_u, out_i = model()
        assert out_u.shape == (LG_U, 4 * len(feats))
        assert torch.allclose(out_u, z_u, atol=1e-6) and torch.allclose(out_i, z_i, atol=1e-6)


def test_pgl_local_subgraph_by_hand():
    """⌊0.3 E⌋ edges drawn without replacement ∝ 1/√(deg_u deg_i) from the seeded RNG, renormalised."""
    train = np.array([[u, i] for u in range(4) for i in range(3) if (u + i) % 4 != 3])      # 9 edges
    model = pgl_model(train=train, num_user=4)
    deg_u, deg_i = np.bincount(train[:, 0]), np.bincount(train[:, 1])
    weights = torch.tensor([1 / math.sqrt(deg_u[u] * deg_i[i]) for u, i in train], dtype=torch.float32)
    assert torch.allclose(model.edge_weights, weights)
    torch.manual_seed(7)
    model.on_epoch_start()
    torch.manual_seed(7)
    kept = train[torch.multinomial(weights, 2).numpy()]                              # int(0.3 * 9) = 2 edges
    assert len(set(map(tuple, kept))) == 2
    assert torch.allclose(model.train_adj.to_dense(), dense_adjacency(kept, 4, I).nan_to_num(0.0), atol=1e-6)


def test_pgl_loss_by_hand():
    model = pgl_model(dropout=0.3).train()
    torch.manual_seed(1)
    model.on_epoch_start()
    sub = model.train_adj.to_dense()
    users, pos, neg = BATCH
    torch.manual_seed(2)
    loss, parts = model.loss(users, pos, neg)
    z_u, z_i = pgl_by_hand(model, sub)
    zu, zp, zn = z_u[users], z_i[pos], z_i[neg]
    bpr = bpr_by_hand(zu, zp, zn)
    torch.manual_seed(2)                                    # four independent masks, in the authors' order
    d1, d2, d3, d4 = dense_drop(zu, 0.3), dense_drop(zu, 0.3), dense_drop(zp, 0.3), dense_drop(zp, 0.3)
    cl = (nce_by_hand(d1, d2) + nce_by_hand(d3, d4)) / 2
    assert parts == pytest.approx({'bpr': bpr.item(), 'cl': cl.item()}, abs=1e-5)
    torch.manual_seed(2)
    loss = model.loss(users, pos, neg)[0]
    assert_loss_and_gradients(model, loss, bpr + 0.5 * cl)


def test_pgl_defaults_and_flags():
    args = config.parse_args(['--model_name', 'PGL'])
    assert (args.l_r, args.weight_decay, args.batch_size, args.num_layer, args.num_epoch, args.dropout_rate,
            args.cl_weight, args.knn_k, args.mm_image_weight) == (1e-3, 0.0, 2048, 2, 1000, 0.2, 0.05, 10, 0.1)
    assert registry.entry('PGL').adam_weight_decay          # --weight_decay is Adam's (0): no λ in PGL's loss
    assert 'PGL' in config.build_parser().format_help().split('--mm_image_weight')[1].split('\n  --')[0]


def test_pgl_trains_resumes_and_exports(tiny_plain, tmp_path):
    cli_roundtrip(tmp_path, tiny_plain, 'PGL', '--l_r', '0.01', '--knn_k', '5', '--batch_size', '256')


# ---------------------------------------------------------------------- SMORE

def test_smore_fusion_graph_and_ks():
    a = torch.tensor([[0.5, 0.2, 0.0], [0.0, 0.7, 0.0], [0.1, 0.0, 0.4]])
    b = torch.tensor([[0.3, 0.0, 0.6], [0.0, 0.9, 0.0], [0.2, 0.0, 0.0]])
    fused = max_fusion([a.to_sparse_csr(), b.to_sparse_csr()], 3)
    assert torch.equal(fused.to_dense(), torch.maximum(a, b))
    assert fused.values().numel() == 6                              # the union of the entries, nothing more
    assert modality_ks(['v', 'a', 't'], 40, 15) == {'v': 40, 'a': 15, 't': 15}
    graphs = item_graphs(MGCN_FEAT, I, {'v': 1, 't': 2})
    assert torch.equal(graphs['v'].to_dense(), torch.eye(3))       # k = 1: itself alone
    assert torch.allclose(graphs['t'].to_dense(), mgcn_graphs(MGCN_FEAT, I, 2)['t'].to_dense())


def smore_model(feats=MGCN_FEAT, dropout=0.0):
    torch.manual_seed(0)
    return SMORE(LG_U, I, feats, normalized_adjacency(LG_TRAIN, LG_U, I), mgcn_graphs(feats, I, 2), dim_latent=4,
                 num_layer=2, dropout=dropout, reg_weight=0.1, cl_weight=0.5)


def spectral_by_hand(xs, filters):
    """``𝓕⁻¹(filters ⊙ Π_x 𝓕(x))`` over the tensors ``xs`` (one, or every modality's for the fusion), d = 4, with
    explicit DFT sums: bins 0..2 (orthonormal), the inverse over the Hermitian spectrum [Y0, Y1, Y2, conj Y1]
    with Y0 and Y2 taken real (as irfft)."""
    d = xs[0].shape[1]
    n = torch.arange(d, dtype=torch.float64)
    basis = torch.exp(-2j * math.pi * torch.outer(torch.arange(3, dtype=torch.float64), n) / d) / math.sqrt(d)
    spectra = [x.double().to(torch.complex128) @ basis.t() for x in xs]
    y = spectra[0]
    for s in spectra[1:]:
        y = y * s
    y = y * filters
    full = torch.stack([y[:, 0].real + 0j, y[:, 1], y[:, 2].real + 0j, y[:, 1].conj()], 1)
    inverse = torch.exp(2j * math.pi * torch.outer(n, n) / d) / math.sqrt(d)
    return (full @ inverse.t()).real.float()


def smore_by_hand(model, feats, masks=None):
    """``(c, s)`` of the module docstring with dense matrices; ``masks(v, gate)`` perturbs a preference gate."""
    c = layer_mean(A, torch.cat([model.embedding_user, model.embedding_item]), 2)
    graphs = mgcn_graphs(feats, I, 2)
    graphs = {**{m: g.to_dense() for m, g in graphs.items()},
              'fusion': torch.stack([g.to_dense() for g in graphs.values()]).amax(0)}
    t = {m: model.transforms[m](model.feature_tables[m]) for m in feats}
    complex_filter = {v: torch.view_as_complex(model.filters[v].double()) for v in graphs}
    views = {}
    for v in graphs:
        conv = spectral_by_hand([t[m] for m in feats] if v == 'fusion' else [t[v]], complex_filter[v])
        item = graphs[v] @ (model.embedding_item * model.item_gates[v](conv))
        views[v] = torch.cat([R_HAT @ item, item])
    masks = masks or (lambda v, g: g)
    side = [masks(m, model.preference_gates[m](c)) * torch.softmax(model.queries[m](views['fusion']), 1) * views[m]
            for m in feats]
    side.append(masks('fusion', model.preference_gates['fusion'](c)) * views['fusion'])
    return c, sum(side) / len(side)


def test_smore_spectral_filters_by_hand():
    model = smore_model()
    items = model.spectral_items()
    t = {m: model.transforms[m](model.feature_tables[m]) for m in MGCN_FEAT}
    for v, x in (('v', [t['v']]), ('t', [t['t']]), ('fusion', [t['v'], t['t']])):
        conv = spectral_by_hand(x, torch.view_as_complex(model.filters[v].double()))
        assert torch.allclose(items[v], model.embedding_item * model.item_gates[v](conv), atol=1e-5)


def test_smore_evaluation_forward_by_hand():
    for feats in (MGCN_FEAT, {'v': MGCN_FEAT['v']}):                           # two modalities, then one
        model = smore_model(feats, dropout=0.5).eval()                          # no dropout in evaluation
        c, s = smore_by_hand(model, feats)
        z_u, z_i = model()
        assert torch.allclose(torch.cat([z_u, z_i]), c + s, atol=1e-5)


def test_smore_loss_by_hand():
    model = smore_model(dropout=0.4).train()
    users, pos, neg = BATCH
    torch.manual_seed(3)
    loss, parts = model.loss(users, pos, neg)
    torch.manual_seed(3)                                   # the gates' masks: each modality in order, then the fusion
    c, s = smore_by_hand(model, MGCN_FEAT, masks=lambda v, g: dense_drop(g, 0.4))
    z = c + s
    zu, zp, zn = z[users], z[LG_U + pos], z[LG_U + neg]
    bpr = bpr_by_hand(zu, zp, zn)
    reg = 0.5 * (zu.pow(2).sum() + zp.pow(2).sum() + zn.pow(2).sum()) / len(users)
    cl = nce_by_hand(s[LG_U + pos], c[LG_U + pos]) + nce_by_hand(s[users], c[users])
    assert parts == pytest.approx({'bpr': bpr.item(), 'reg': reg.item(), 'cl': cl.item()}, abs=1e-5)
    grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    assert all(g.abs().sum() > 0 for g in grads)                         # every parameter learns
    assert_loss_and_gradients(model, loss, bpr + 0.1 * reg + 0.5 * cl)


def test_smore_fast_contrast_matches_the_plain_formula():
    """MGCN's view contrasts over the distinct nodes, weighted by their counts, with the gates' dropout drawn."""
    assert_fast_loss_is_plain(smore_model(dropout=0.3), (torch.tensor([0, 0, 2, 1]), torch.tensor([1, 1, 2, 0]),
                                                        torch.tensor([2, 2, 0, 1])))


def test_smore_defaults_and_flags():
    args = config.parse_args(['--model_name', 'SMORE'])
    assert (args.l_r, args.weight_decay, args.batch_size, args.num_layer, args.num_epoch, args.dropout_rate,
            args.cl_weight, args.image_knn_k, args.text_knn_k) == (1e-3, 1e-4, 2048, 4, 1000, 0.1, 0.01, 40, 15)
    assert not registry.entry('SMORE').adam_weight_decay
    with pytest.raises(Exception, match='--image_knn_k: must be in'):
        config.parse_args(['--model_name', 'SMORE', '--image_knn_k', '0'])


def test_smore_trains_resumes_and_exports(tiny_plain, tmp_path):
    cli_roundtrip(tmp_path, tiny_plain, 'SMORE', '--l_r', '0.01', '--image_knn_k', '5', '--text_knn_k', '3',
                  '--num_layer', '2', '--batch_size', '256')


# ---------------------------------------------------------------------- DRAGON: the user-user graph

# 6 users, 4 items; items shared: u0-u1 2, u0-u3 2, u2-u3 2, u0-u2 1, u1-u3 1, u2-u4 1, u3-u4 1; u5 has none.
CO_TRAIN = np.array([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [2, 2], [2, 3], [3, 0], [3, 2], [3, 3], [4, 3]])


def test_cooccurrence_topk_by_hand():
    r = torch.zeros(6, 4)
    r[CO_TRAIN[:, 0], CO_TRAIN[:, 1]] = 1
    shared = r @ r.t()                                              # the dense formula, on 6 users only
    shared.fill_diagonal_(0)
    for block in (1, 4, 2 ** 22):                                   # a user per block, a few, all at once
        ids, counts, found = cooccurrence_topk(CO_TRAIN, 6, 4, 3, block_entries=block)
        assert found.tolist() == [3, 2, 3, 3, 2, 0]
        for u in range(6):
            expect = sorted((j for j in range(6) if shared[u, j] > 0), key=lambda j: (-shared[u, j], j))[:3]
            assert ids[u, :found[u]].tolist() == expect
            assert counts[u, :found[u]].tolist() == [shared[u, j].item() for j in expect]
            assert ids[u, found[u]:].tolist() == [0] * (3 - found[u]) and not counts[u, found[u]:].any()
    assert ids[0].tolist() == [1, 3, 2] and ids[3].tolist() == [0, 2, 1]            # ties: the smaller id first
    assert counts[3].tolist() == [2, 2, 1]


def test_user_graph_cache_is_validated_and_follows_the_training_pairs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(knn_graph, 'CACHE_AFTER_S', 0.0)
    calls = []
    original = model_DRAGON.cooccurrence_topk
    monkeypatch.setattr(model_DRAGON, 'cooccurrence_topk', lambda *a, **k: calls.append(1) or original(*a, **k))
    first = model_DRAGON.cached_user_graph(CO_TRAIN, 6, 4, 3, str(tmp_path))
    path = tmp_path / 'dragon_users_train_k3.pt'
    assert path.exists() and len(calls) == 1
    again = model_DRAGON.cached_user_graph(CO_TRAIN, 6, 4, 3, str(tmp_path))
    assert len(calls) == 1 and all(torch.equal(a, b) for a, b in zip(first, again))
    saved = torch.load(path, weights_only=True)
    torch.save({**saved, 'counts': saved['counts'].flip(1)}, path)                 # out of order: rebuilt
    assert torch.equal(model_DRAGON.cached_user_graph(CO_TRAIN, 6, 4, 3, str(tmp_path))[1], first[1])
    assert len(calls) == 2
    path.write_bytes(b'garbage')
    model_DRAGON.cached_user_graph(CO_TRAIN, 6, 4, 3, str(tmp_path))
    assert len(calls) == 3 and 'does not match' in capsys.readouterr().err
    moved = CO_TRAIN.copy()
    moved[-1] = [4, 2]                                               # another split, the same size: rebuilt
    changed = model_DRAGON.cached_user_graph(moved, 6, 4, 3, str(tmp_path))
    assert len(calls) == 4 and not torch.equal(changed[0], first[0])


def test_empty_slots_copy_earlier_slots_from_the_seeded_rng():
    ids, counts, found = cooccurrence_topk(CO_TRAIN, 6, 4, 12)
    torch.manual_seed(5)
    filled, filled_counts = fill_slots(ids, counts, found)
    for u, f in enumerate(found.tolist()):
        kept = f if f else 12                                    # a user without neighbours keeps its zeros
        assert torch.equal(filled[u, :kept], ids[u, :kept])
        for j in range(kept, 12):              # each empty slot a copy of an earlier one, its count with it
            assert any(filled[u, j] == filled[u, r] and filled_counts[u, j] == filled_counts[u, r] for r in range(j))
    torch.manual_seed(5)                       # the draws by hand: per slot j one uniform r < j per user, in order
    expect = ids.clone()
    for j in range(1, 12):
        r = (torch.rand(6) * j).long()
        for u, f in enumerate(found.tolist()):
            if 0 < f <= j:
                expect[u, j] = expect[u, r[u]]
    assert torch.equal(filled, expect)
    one = fill_slots(torch.tensor([[7, 0, 0]]), torch.tensor([[2., 0., 0.]]), torch.tensor([1]))
    assert one[0].tolist() == [[7, 7, 7]] and one[1].tolist() == [[2., 2., 2.]]         # one neighbour: every slot
    torch.manual_seed(5)
    assert torch.equal(fill_slots(ids, counts, found)[0], filled)
    draws = {tuple(fill_slots(ids, counts, found)[0][1].tolist()) for _ in range(20)}
    assert len(draws) > 1                                                                # redrawn each time


# ---------------------------------------------------------------------- DRAGON: the model

def dragon_model(feats=MGCN_FEAT, k=2):
    torch.manual_seed(0)
    users = cooccurrence_topk(LG_TRAIN, LG_U, I, k)
    return DRAGON(LG_U, I, feats, normalized_adjacency(LG_TRAIN, LG_U, I), item_graph(feats, I, 2), users,
                  dim_latent=4, num_layer=2, reg_weight=0.1)


def dragon_by_hand(model, feats=MGCN_FEAT):
    """``(z [U+I, M·d])`` with dense matrices: each modality's x + Âx + Â²x, the users' modality weights, the
    item graph on the items, the epoch's weighted neighbours on the users."""
    g = []
    for m in feats:
        x = F.normalize(torch.cat([model.preferences[m], model.item_mlps[m](torch.tensor(feats[m]))]), dim=1)
        g.append(x + A @ x + A @ (A @ x))
    y_u = torch.cat([gm[:LG_U] * (model.modality_weights[:, n:n + 1] if len(feats) > 1 else 1)
                     for n, gm in enumerate(g)], 1)
    y_i = torch.cat([gm[LG_U:] for gm in g], 1)
    w = torch.zeros(LG_U, LG_U)
    for u in range(LG_U):
        for j, weight in zip(model.epoch_ids[u].tolist(), model.epoch_weights[u]):
            w[u, j] = w[u, j] + weight
    return torch.cat([y_u + w @ y_u, y_i + item_graph(feats, I, 2).to_dense() @ y_i])


def test_dragon_user_graph_weights_by_hand():
    model = dragon_model()
    # u0: u1 (1 shared) alone, both slots; u1: u0, u2 (1 each); u2: u1 alone
    assert model.epoch_ids.tolist() == [[1, 1], [0, 2], [1, 1]]
    assert torch.allclose(model.epoch_weights, torch.full((3, 2), 0.5))
    e = math.exp(2.0)
    assert torch.allclose(slot_weights(torch.tensor([[3., 1.], [0., 0.]]), torch.tensor([2, 0])),
                          torch.tensor([[e / (e + 1), 1 / (e + 1)], [0., 0.]]))          # softmax of the counts
    weights = model.modality_weights
    assert weights.shape == (LG_U, 2) and torch.allclose(weights.sum(1), torch.ones(LG_U))   # softmax at start


def test_dragon_forward_by_hand():
    for feats in (MGCN_FEAT, {'t': MGCN_FEAT['t']}):
        model = dragon_model(feats).eval()
        z = dragon_by_hand(model, feats)
        z_u, z_i = model()
        assert torch.allclose(torch.cat([z_u, z_i]), z, atol=1e-5)
        assert hasattr(model, 'modality_weights') == (len(feats) > 1)


def test_dragon_loss_by_hand_and_rows_equal_the_plain_order():
    model = dragon_model()
    model.neighbour_counts[1, 0] = 3.0                  # unequal weights on user 1's slots (not the real counts)
    model.on_epoch_start()
    users, pos, neg = BATCH
    loss, parts = model.loss(users, pos, neg)
    z = dragon_by_hand(model)
    zu, zp, zn = z[users], z[LG_U + pos], z[LG_U + neg]
    bpr = bpr_by_hand(zu, zp, zn) / math.log(2)                                  # -log₂ σ
    reg = sum(model.preferences[m][users].pow(2).mean() for m in MGCN_FEAT) + model.modality_weights.pow(2).mean()
    assert parts == pytest.approx({'bpr': bpr.item(), 'reg': reg.item()}, abs=1e-5)
    assert_loss_and_gradients(model, loss, bpr + 0.1 * reg)
    for rows in (True, False):                           # the batch's rows alone, and every row
        plain, plain_parts = model.loss_plain(users, pos, neg)
        assert model.loss(users, pos, neg, rows=rows)[1] == pytest.approx(plain_parts, abs=1e-6)
        assert_loss_and_gradients(model, model.loss(users, pos, neg, rows=rows)[0], plain)


def test_dragon_saved_weights_score_as_evaluated(tmp_path):
    model = dragon_model(k=6)                           # user 1: two neighbours, four slots drawn afresh each epoch
    fresh = dragon_model(k=6)
    torch.manual_seed(1)
    model.on_epoch_start()
    assert not torch.equal(model.epoch_ids, fresh.epoch_ids)           # [0, 2, 0, 0, 0, 2] against [0, 2, 2, 2, 2, 2]
    expected = model.eval().scores(torch.arange(LG_U))
    torch.save(model.state_dict(), tmp_path / 'w.pt')
    fresh.load_state_dict(torch.load(tmp_path / 'w.pt', weights_only=True))
    assert torch.equal(fresh.eval().scores(torch.arange(LG_U)), expected)


def test_dragon_defaults_and_flags():
    args = config.parse_args(['--model_name', 'DRAGON'])
    assert (args.l_r, args.weight_decay, args.batch_size, args.num_layer, args.num_epoch, args.knn_k,
            args.mm_image_weight, args.user_graph_k) == (1e-4, 1e-3, 2048, 2, 1000, 10, 0.1, 40)
    assert not registry.entry('DRAGON').adam_weight_decay
    with pytest.raises(Exception, match='--user_graph_k: must be in'):
        config.parse_args(['--model_name', 'DRAGON', '--user_graph_k', '0'])


def test_dragon_trains_resumes_and_exports(tiny_plain, tmp_path):
    cli_roundtrip(tmp_path, tiny_plain, 'DRAGON', '--l_r', '0.01', '--knn_k', '5', '--user_graph_k', '5',
                  '--batch_size', '256')


def test_one_line_error_without_a_modality(tiny_plain, capsys):
    import main
    from conftest import one_line_error
    for name in ('PGL', 'SMORE', 'DRAGON'):
        assert main.main(['--model_name', name, '--data_path', tiny_plain, '--modalities', 'none']) != 0
        one_line_error(capsys, f'{name} needs at least one modality')
