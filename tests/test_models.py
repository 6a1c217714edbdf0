"""MMGCN (SPEC 2) and SLMRec (SPEC 3) equations on tiny graphs, against dense hand computations."""
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from BaseModel import bipartite_edges, csr_adjacency, normalized_adjacency
from DataLoad import WordFeature
from model_MMGCN import MMGCN
from model_SSL import SLMRec, fac_widths, from_official_state_dict, info_nce

TRAIN = np.array([[0, 0], [0, 1], [1, 1], [1, 2], [2, 0]])
U, I = 3, 3


def _features(dims, seed=0):
    rng = np.random.default_rng(seed)
    return {m: rng.standard_normal((I, d)).astype(np.float32) for m, d in dims.items()}


def _slmrec(dims, **kw):
    torch.manual_seed(0)
    return SLMRec(U, I, _features(dims), normalized_adjacency(TRAIN, U, I), dim_latent=kw.pop('dim', 8), **kw)


def _mmgcn(dims, **kw):
    torch.manual_seed(0)
    adj = csr_adjacency(bipartite_edges(TRAIN, U), U + I)
    return MMGCN(U, I, _features(dims), adj, dim_latent=4, **kw)


# ---------------------------------------------------------------- MMGCN

def test_mmgcn_one_layer_by_hand():
    model = _mmgcn({'t': 5}, num_layer=1, aggr='add', concat=False)
    gcn = model.gcns['t']
    A = csr_adjacency(bipartite_edges(TRAIN, U), U + I).to_dense()
    x = F.normalize(torch.cat([gcn.preference, torch.as_tensor(_features({'t': 5})['t'])]), dim=1)
    h = F.leaky_relu(A @ (x @ gcn.convs[0].weight))
    x_hat = F.leaky_relu(gcn.linears[0](x)) + model.id_embedding
    expected = F.leaky_relu(gcn.gates[0](h) + x_hat)
    z_user, z_item = model()
    assert torch.allclose(z_user, expected[:U], atol=1e-6) and torch.allclose(z_item, expected[U:], atol=1e-6)


def test_mmgcn_concat_layers_and_widths():
    model = _mmgcn({'v': 6, 't': 5}, num_layer=3, concat=True)
    gcn_v, gcn_t = model.gcns['v'], model.gcns['t']
    assert len(gcn_v.convs) == 3
    assert gcn_v.mlp is not None and gcn_v.preference.shape == (U, 256)        # visual: MLP to 256
    assert gcn_t.mlp is None and gcn_t.preference.shape == (U, 5)
    assert gcn_t.gates[0].in_features == 5 + 4 and gcn_t.gates[1].in_features == 4 + 4
    assert model()[0].shape == (U, 4)
    assert _mmgcn({'t': 300}).gcns['t'].mlp is not None                           # wider than 256
    assert _mmgcn({'t': 5}, concat=False).gcns['t'].gates[0].in_features == 5


def test_mmgcn_fusion_is_mean_of_modalities():
    model = _mmgcn({'v': 6, 't': 5})
    outs = model.modality_outputs()
    z = (outs[0] + outs[1]) / 2
    assert torch.allclose(model()[1], z[U:])


def test_mmgcn_bpr_and_regulariser_by_hand():
    model = _mmgcn({'a': 5, 't': 3}, reg_weight=0.1)
    with torch.no_grad():       # users, positives and negatives with clearly different norms
        model.id_embedding[:U] = 1.0
        model.id_embedding[U:] = torch.tensor([2.0, 3.0, 5.0]).unsqueeze(1)
    users, pos, neg = torch.tensor([0, 1]), torch.tensor([0, 2]), torch.tensor([2, 1])
    loss, parts = model.loss(users, pos, neg)
    z_user, z_item = model()
    bpr = -torch.log(torch.sigmoid((z_user[users] * (z_item[pos] - z_item[neg])).sum(1))).mean()
    # SPEC 2 (as official): mean(E[u]²) + ½ (mean(E[i⁺]²) + mean(E[i⁻]²)) + mean(P_m₀²); here
    # E[u]² = 1, E[i⁺]² = (4 + 25) / 2, E[i⁻]² = (25 + 9) / 2 on average.
    preference = (model.gcns['a'].preference ** 2).mean()
    reg = 1 + 0.5 * (14.5 + 17) + preference
    assert parts['reg'] == pytest.approx(reg.item(), rel=1e-6)
    assert torch.isclose(loss, bpr + 0.1 * reg, atol=1e-5)


def test_mmgcn_initialisation_as_official():
    """SPEC 2: xavier-normal convolutions, linear_l and the first gate; PyTorch's default for the
    later gates and the item MLP (a kaiming-uniform with variance 1 / (3 fan_in))."""
    torch.manual_seed(0)
    adj = csr_adjacency(bipartite_edges(TRAIN, U), U + I)
    gcn = MMGCN(U, I, _features({'v': 600}), adj, dim_latent=256, num_layer=3).gcns['v']

    def check(weight, normal):
        w = weight.detach().flatten()
        fan_a, fan_b = weight.shape
        if normal:
            assert w.var().item() == pytest.approx(2 / (fan_a + fan_b), rel=0.05)
            # a normal's tails reach past √3 σ (the bound of the uniform of that variance) 8% of the time
            assert (w.abs() > 3 ** 0.5 * w.std()).float().mean().item() == pytest.approx(0.083, abs=0.01)
        else:
            fan_in = weight.shape[1]
            assert w.var().item() == pytest.approx(1 / (3 * fan_in), rel=0.05)
            assert w.abs().max().item() <= fan_in ** -0.5
    for conv in gcn.convs:
        check(conv.weight, True)
    for linear in gcn.linears:
        check(linear.weight, True)
    check(gcn.gates[0].weight, True)
    for gate in gcn.gates[1:]:
        check(gate.weight, False)
    check(gcn.mlp.weight, False)


def test_mmgcn_id_and_preferences_are_trained():
    model = _mmgcn({'a': 5})
    loss, _ = model.loss(torch.tensor([0, 1]), torch.tensor([0, 2]), torch.tensor([2, 0]))
    loss.backward()
    assert model.id_embedding.grad.abs().sum() > 0
    assert model.gcns['a'].preference.grad.abs().sum() > 0
    assert _mmgcn({'a': 5}, has_id=False).id_embedding is None


# ---------------------------------------------------------------- SLMRec encoder

def test_slmrec_encoder_by_hand():
    model = _slmrec({'v': 5}, num_layer=2, fusion='concat', ssl_task='none')
    A = normalized_adjacency(TRAIN, U, I).to_dense()
    feat = F.normalize(torch.as_tensor(_features({'v': 5})['v']), dim=1)
    outs = []
    for side in (model.embedding_item.weight, model.dense['v'](feat)):
        x0 = torch.cat([model.embedding_user.weight, side])
        x1 = A @ x0
        outs.append((x0 + x1 + A @ x1) / 3)
    z_user = model.fuse_user(torch.cat([o[:U] for o in outs], 1))
    z_item = model.fuse_item(torch.cat([o[U:] for o in outs], 1))
    got_user, got_item = model()
    assert torch.allclose(got_user, z_user, atol=1e-6) and torch.allclose(got_item, z_item, atol=1e-6)


@pytest.mark.parametrize('fusion', ['concat', 'mean'])
@pytest.mark.parametrize('dims', [{}, {'v': 5}, {'v': 5, 'a': 4}, {'v': 5, 'a': 4, 't': 3}])
def test_fusion_shapes(fusion, dims):
    model = _slmrec(dims, fusion=fusion, ssl_task='none')
    branches = 1 + len(dims)
    assert model.fuse_user.in_features == (branches * 8 if fusion == 'concat' else 8)
    z_user, z_item = model()
    assert z_user.shape == (U, 8) and z_item.shape == (I, 8)


def test_info_nce_by_hand_on_three_pairs():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 0.5], [0.0, 2.0], [-1.0, 1.0]])
    temp = 0.5
    total = 0.0
    for r in range(3):
        logits = [float(a[r] @ b[c]) / temp for c in range(3)]
        total += -(logits[r] - np.log(sum(np.exp(x) for x in logits)))
    assert info_nce(a, b, temp).item() == pytest.approx(total / 3, rel=1e-6)


def test_main_loss_is_infonce_of_normalised_fused_pairs():
    model = _slmrec({'v': 5}, ssl_task='none', temp=0.3)
    users, items = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0])
    loss, _ = model.loss(users, items)
    z_user, z_item = model()
    expected = info_nce(F.normalize(z_user[users], dim=1), F.normalize(z_item[items], dim=1), 0.3)
    assert torch.isclose(loss, expected, atol=1e-6)


# ---------------------------------------------------------------- SSL tasks

def _spy(model, name, monkeypatch):
    seen = []
    original = getattr(model, name)

    def spy(*args):
        seen.append(args)
        return original(*args)
    monkeypatch.setattr(model, name, spy)
    return seen


@pytest.mark.parametrize('task', ['FM', 'FD+FM'])
def test_fm_masks_two_different_branches_including_id(task, monkeypatch):
    model = _slmrec({'v': 5}, ssl_task=task)          # two branches: FM must mask both, one per view
    asked = _spy(model, 'view_rows', monkeypatch)
    propagated = _spy(model, 'propagate', monkeypatch)
    for _ in range(30):
        model.loss(torch.tensor([0, 1]), torch.tensor([1, 2]))
    pairs = {(first, second) for _, first, second in asked}
    assert pairs == {(0, 1), (1, 0)}
    if task == 'FM':                                  # FM's views are sums of the plain view's parts (SPEC 3.6)
        assert propagated == []
    else:                                             # FD+FM's dropout views propagate every branch
        assert [views for views, _ in propagated] == [[(0.3, first), (0.3, second)] for _, first, second in asked]


def test_fm_masked_view_zeroes_item_side():
    model = _slmrec({'v': 5}, ssl_task='FM')
    plain, masked = model.branch_outputs([(0.0, None), (0.0, 1)])
    A = normalized_adjacency(TRAIN, U, I).to_dense()
    x0 = torch.cat([model.embedding_user.weight, torch.zeros(I, 8)])
    x1 = A @ x0
    x2 = A @ x1
    x3 = A @ x2
    assert torch.allclose(masked[1], (x0 + x1 + x2 + x3) / 4, atol=1e-6)
    assert torch.allclose(masked[0], plain[0])


def test_fd_with_dropout_zero_gives_identical_views():
    model = _slmrec({'v': 5, 'a': 4}, ssl_task='FD', dropout_rate=0.0)
    views = model.branch_outputs([(0.0, None), (0.0, None), (0.0, None)])
    for b in range(3):
        assert torch.equal(views[1][b], views[2][b])
    model_p = _slmrec({'v': 5, 'a': 4}, ssl_task='FD', dropout_rate=0.5)
    _, v1, v2 = model_p.branch_outputs([(0.0, None), (0.5, None), (0.5, None)])
    assert not torch.equal(v1[1], v2[1])


def test_fd_loss_by_hand():
    model = _slmrec({'v': 5}, ssl_task='FD', dropout_rate=0.0, ssl_alpha=0.5, ssl_temp=0.4)
    users, items = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0])
    loss, parts = model.loss(users, items)
    z_user, z_item = model()
    u, i = F.normalize(z_user[users], dim=1), F.normalize(z_item[items], dim=1)
    ssl = info_nce(u, u, 0.4) + info_nce(i, i, 0.4)
    assert parts['ssl'] == pytest.approx(ssl.item(), rel=1e-5)
    assert loss.item() == pytest.approx(info_nce(u, i, 0.2).item() + 0.5 * ssl.item(), rel=1e-5)


def test_fac_widths_and_loss_by_hand():
    assert fac_widths(3, 64) == [64, 64, 32] and fac_widths(1, 64) == [64] and fac_widths(4, 64)[-1] == 32
    model = _slmrec({'v': 5, 'a': 4, 't': 3}, ssl_task='FAC', dim=64)
    assert [h.out_features for h in model.fac_x] == [64, 64, 32]
    assert [h.in_features for h in model.fac_x] == [64, 64, 64]
    assert [h.out_features for h in model.fac_y] == [64, 64, 32]
    assert [h.out_features for h in _slmrec({'v': 5}, ssl_task='FAC', dim=64).fac_x] == [64]
    items = torch.tensor([0, 2, 1])
    outs = [b[U:][items] for b in model.branch_outputs([(0.0, None)])[0]]
    x = outs[0]
    expected = 0.0
    for s in range(3):
        x = model.fac_x[s](x)
        expected = expected + info_nce(x, model.fac_y[s](outs[s + 1]), 0.2)   # no normalisation (as official)
    assert torch.isclose(model.fac_loss(outs), expected)


@pytest.mark.parametrize('task', ['FAC', 'FD', 'FM', 'FD+FM', 'none'])
@pytest.mark.parametrize('backbone', ['lightgcn', 'mmgcn'])
def test_gradients_reach_every_parameter(task, backbone):
    torch.manual_seed(0)
    features = _features({'v': 5, 'a': 4})
    features['t'] = WordFeature(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 3, 1, 2]), 4, dim=6)
    adj = normalized_adjacency(TRAIN, U, I) if backbone == 'lightgcn' else csr_adjacency(bipartite_edges(TRAIN, U), U + I)
    model = SLMRec(U, I, features, adj, dim_latent=8, ssl_task=task, backbone=backbone)
    loss, _ = model.loss(torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 0, 0]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []
    word_weight = model.word_means['t'].weight if backbone == 'lightgcn' else model.encoder.word_means['t'].weight
    assert word_weight.grad[:3].abs().sum(1).min() > 0                         # words 0-2 are used


def test_word_features_recomputed_at_every_forward():
    features = {'t': WordFeature(torch.tensor([0, 1]), torch.tensor([0, 1]), 2, dim=8)}
    model = SLMRec(U, I, features, normalized_adjacency(TRAIN, U, I), dim_latent=8, ssl_task='none')
    before = model()[1].clone()
    with torch.no_grad():
        model.word_means['t'].weight.add_(1.0)
    assert not torch.allclose(before, model()[1])
    assert model.word_means['t']()[2].abs().sum() == 0                          # item 2 has no word: zeros


def test_invalid_configurations_are_rejected():
    with pytest.raises(ValueError, match='needs at least one modality'):
        _slmrec({}, ssl_task='FM')
    with pytest.raises(ValueError, match='needs at least one modality'):
        _slmrec({}, ssl_task='FAC')
    with pytest.raises(ValueError, match=r"--mm_fusion_mode must be one of \['concat', 'mean'\]"):
        _slmrec({'v': 5}, fusion='sum')


# ---------------------------------------------------------------- official checkpoints

def test_official_state_dict_round_trip():
    features = _features({'v': 5, 'a': 4})
    features['t'] = WordFeature(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), 3, dim=8)
    adj = normalized_adjacency(TRAIN, U, I)
    torch.manual_seed(1)
    source = SLMRec(U, I, features, adj, dim_latent=8, ssl_task='FAC')
    names = source.official_key_map()
    official = {names[k]: v.clone() for k, v in source.state_dict().items()}
    assert set(official) == {
        'embedding_user.weight', 'embedding_item.weight', 'word_embedding.weight',
        *(f'{p}.{w}' for p in ('v_dense', 'a_dense', 't_dense', 'embedding_user_after_GCN',
                               'embedding_item_after_GCN', 'g_i_iv', 'g_v_iv', 'g_iv_iva', 'g_a_iva',
                               'g_iva_ivat', 'g_t_ivat') for w in ('weight', 'bias'))}
    # The official Tiktok word table is larger than the vocabulary: accepted as is.
    official['word_embedding.weight'] = torch.cat([official['word_embedding.weight'], torch.randn(5, 8)])
    torch.manual_seed(2)
    target = SLMRec(U, I, features, adj, dim_latent=8, ssl_task='FAC')
    target.load_state_dict(from_official_state_dict(target, official))
    for a, b in zip(source(), target()):
        assert torch.equal(a, b)
    users, items = torch.tensor([0, 1]), torch.tensor([1, 2])
    assert torch.equal(source.loss(users, items)[0], target.loss(users, items)[0])
    with pytest.raises(ValueError, match="unexpected official key 'bogus.weight'"):
        from_official_state_dict(target, {**official, 'bogus.weight': torch.zeros(1)})


# ---------------------------------------------------------------- row blocks (fast path) against full graphs

def _sparse_graph(num_user=60, num_item=80, seed=4):
    rng = np.random.default_rng(seed)
    train = np.unique(np.stack([rng.integers(0, num_user, 300), rng.integers(0, num_item, 300)], 1), axis=0)
    features = {'v': rng.standard_normal((num_item, 6)).astype(np.float32),
                'a': rng.standard_normal((num_item, 5)).astype(np.float32)}
    return train, features, csr_adjacency(bipartite_edges(train, num_user), num_user + num_item)


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_loss_matches_full_graph(model, users, pos, neg):
    """``model.loss`` (row blocks) against BPR written on the full graph's outputs: loss and gradients."""
    loss, _ = model.loss(users, pos, neg)
    fast = _grads(model, loss)
    z_user, z_item = model()                                                         # the full graph, by hand
    bpr = -F.logsigmoid((z_user[users] * (z_item[pos] - z_item[neg])).sum(1)).mean()
    e = model.id_embedding
    reg = ((e[users] ** 2).mean() + ((e[pos + 60] ** 2).mean() + (e[neg + 60] ** 2).mean()) / 2
           + (model.gcns['v'].preference ** 2).mean())
    full_loss = bpr + model.reg_weight * reg
    assert torch.isclose(loss, full_loss, atol=1e-6)
    full = _grads(model, full_loss)
    assert fast.keys() == full.keys()
    for name in full:
        assert torch.allclose(fast[name], full[name], atol=1e-6), name


@pytest.mark.parametrize('aggr', ['mean', 'max', 'add'])
@pytest.mark.parametrize('concat', [False, True])
def test_mmgcn_batch_rows_match_full_graph(aggr, concat):
    train, features, adj = _sparse_graph()
    torch.manual_seed(0)
    model = MMGCN(60, 80, features, adj, dim_latent=4, num_layer=2, aggr=aggr, concat=concat)
    users, pos, neg = torch.tensor([0, 5, 5, 17]), torch.tensor([3, 9, 40, 3]), torch.tensor([1, 2, 70, 9])
    assert model.row_block(torch.cat([users, pos + 60, neg + 60])) is not None      # the fast path is taken
    _assert_loss_matches_full_graph(model, users, pos, neg)


@pytest.mark.parametrize('inner_share', [0.0, 0.3, 1.0])
@pytest.mark.parametrize('aggr', ['mean', 'max'])
def test_mmgcn_row_plans_over_three_layers_match_full_graph(inner_share, aggr, monkeypatch):
    """Only the last layer restricted (0.0), the last two (0.3), all three (1.0): same loss and gradients."""
    import model_MMGCN
    monkeypatch.setattr(model_MMGCN, 'INNER_ROWS_SHARE', inner_share)
    train, features, adj = _sparse_graph()
    torch.manual_seed(0)
    model = MMGCN(60, 80, features, adj, dim_latent=4, num_layer=3, aggr=aggr)
    users, pos, neg = torch.tensor([0, 17]), torch.tensor([3, 9]), torch.tensor([1, 70])
    _, _, plan = model.row_block(torch.cat([users, pos + 60, neg + 60]))
    restricted = [rows is not None for rows in plan]
    assert restricted == {0.0: [False, False, True], 0.3: [False, True, True], 1.0: [True, True, True]}[inner_share]
    _assert_loss_matches_full_graph(model, users, pos, neg)


def test_slmrec_mmgcn_backbone_batch_rows_match_full_graph():
    train, features, adj = _sparse_graph()
    torch.manual_seed(0)
    model = SLMRec(60, 80, features, adj, dim_latent=4, num_layer=2, ssl_task='none', backbone='mmgcn')
    rows = torch.tensor([0, 5, 17, 60 + 3, 60 + 40, 5])
    assert model.encoder.row_block(rows) is not None
    fast = model.propagate([(0.0, None), (0.0, 1)], rows)
    grad_fast = _grads(model, fast.pow(2).sum())
    full = model.propagate([(0.0, None), (0.0, 1)])[rows]
    assert torch.allclose(fast, full, atol=1e-6)
    grad_full = _grads(model, full.pow(2).sum())
    for name in grad_full:
        assert torch.allclose(grad_fast[name], grad_full[name], atol=1e-5), name


@pytest.mark.parametrize('model_name', ['MMGCN', 'SLMRec', 'SLMRec/mmgcn'])
def test_gradients_are_bitwise_repeatable(model_name):
    # A batch repeats users and items; the backward of x[index] sums repeated rows with atomic adds in
    # a varying order on the CPU, which made two runs of one seed differ (README: reproducibility).
    num_user, num_item, rng = 200, 300, np.random.default_rng(1)
    train = np.unique(np.stack([rng.integers(0, num_user, 3000), rng.integers(0, num_item, 3000)], 1), axis=0)
    pick = rng.integers(0, len(train), 20000 if model_name == 'MMGCN' else 2048)   # SLMRec: in-batch n x n
    users, pos = torch.as_tensor(train[pick, 0]), torch.as_tensor(train[pick, 1])
    neg = torch.as_tensor(rng.integers(0, num_item, len(pick)))
    features = {'v': rng.standard_normal((num_item, 6)).astype(np.float32)}
    adj = csr_adjacency(bipartite_edges(train, num_user), num_user + num_item)

    def grads():
        torch.manual_seed(0)
        if model_name == 'MMGCN':
            model = MMGCN(num_user, num_item, features, adj, dim_latent=16, aggr='max')
            loss, _ = model.loss(users, pos, neg)
        else:
            mmgcn = model_name.endswith('mmgcn')
            graph = adj if mmgcn else normalized_adjacency(train, num_user, num_item)
            model = SLMRec(num_user, num_item, features, graph, dim_latent=16, ssl_task='FD',
                           backbone='mmgcn' if mmgcn else 'lightgcn')
            loss, _ = model.loss(users, pos)
        return _grads(model, loss)

    first = grads()
    for _ in range(3):
        again = grads()
        assert all(torch.equal(first[name], again[name]) for name in first), model_name
