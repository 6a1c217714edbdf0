"""The baselines of SPEC 6 (LightGCN, VBPR, FREEDOM): each equation against a hand computation on a
3-user, 3-item graph, the kNN cache, same-seed runs, resume after a kill, and each model against
most-popular on synthetic data."""
import math
import re
import os

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import config
import errors
import knn_graph
from BaseModel import normalized_adjacency
from DataLoad import WordFeature, load_dataset
from knn_graph import knn_indices, normalized_knn
from model_FREEDOM import FREEDOM, item_graph, modality_weights, prune_weights, pruned_adjacency
from model_LightGCN import LightGCN
from model_VBPR import VBPR
from test_train import _run, kill_then_resume

# The hand graph: 3 users, 3 items; degrees users (2, 2, 1), items (1, 2, 2).
TRAIN = np.array([[0, 0], [0, 1], [1, 1], [1, 2], [2, 2]])
U = I = 3


def hand_adjacency():
    """``Â`` written out: ``Â[u, i] = 1/√(deg_u deg_i)`` on each training edge, users then items."""
    a = torch.zeros(6, 6)
    for (u, i), value in {(0, 0): 1 / math.sqrt(2 * 1), (0, 1): 1 / 2, (1, 1): 1 / 2, (1, 2): 1 / 2,
                          (2, 2): 1 / math.sqrt(1 * 2)}.items():
        a[u, U + i] = a[U + i, u] = value
    return a


def layer_mean(a, x0, num_layer):
    layers, x = [x0], x0
    for _ in range(num_layer):
        x = a @ x
        layers.append(x)
    return torch.stack(layers).mean(0)


def hand_bpr(u, p, n):
    return -np.mean([math.log(1 / (1 + math.exp(-(float(u[r] @ p[r]) - float(u[r] @ n[r]))))) for r in range(len(u))])


USERS, POS, NEG = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 2, 0]), torch.tensor([2, 0, 1, 2])


def test_normalized_adjacency_is_the_hand_one():
    assert torch.allclose(normalized_adjacency(TRAIN, U, I).to_dense(), hand_adjacency())


# ---------------------------------------------------------------------- LightGCN

def lightgcn(num_layer=2, reg_weight=0.5):
    torch.manual_seed(0)
    model = LightGCN(U, I, normalized_adjacency(TRAIN, U, I), dim_latent=2, num_layer=num_layer, reg_weight=reg_weight)
    with torch.no_grad():
        model.embedding.copy_(torch.tensor([[1., 0.], [0., 2.], [1., 1.], [2., -1.], [0., 1.], [-1., 3.]]))
    return model


def test_lightgcn_layer_mean():
    model = lightgcn()
    z = layer_mean(hand_adjacency(), model.embedding.detach(), 2)
    z_user, z_item = (t.detach() for t in model())
    assert torch.allclose(z_user, z[:U]) and torch.allclose(z_item, z[U:])
    # user 2 by hand: E⁰ = (1, 1); layer 1 = Â[2, i2] E⁰_{i2} = (-1, 3)/√2; layer 2 = Â[2, i2] (layer 1 of
    # i2), and layer 1 of i2 = ½ E⁰_{u1} + (1/√2) E⁰_{u2}
    e_i2 = 0.5 * torch.tensor([0., 2.]) + torch.tensor([1., 1.]) / math.sqrt(2)
    by_hand = (torch.tensor([1., 1.]) + torch.tensor([-1., 3.]) / math.sqrt(2) + e_i2 / math.sqrt(2)) / 3
    assert torch.allclose(z_user[2], by_hand)


def test_lightgcn_bpr_and_layer0_regulariser():
    model = lightgcn(reg_weight=0.5)
    loss, parts = model.loss(USERS, POS, NEG)
    z = layer_mean(hand_adjacency(), model.embedding.detach(), 2)
    e = model.embedding.detach()
    bpr = hand_bpr(z[USERS], z[U + POS], z[U + NEG])
    reg = 0.5 * sum(float(e[u] @ e[u] + e[U + p] @ e[U + p] + e[U + n] @ e[U + n])
                    for u, p, n in zip(USERS, POS, NEG)) / 4
    assert parts['bpr'] == pytest.approx(bpr, rel=1e-6)
    assert parts['reg'] == pytest.approx(reg, rel=1e-6)        # layer 0, not the propagated rows
    assert loss.item() == pytest.approx(bpr + 0.5 * reg, rel=1e-6)
    loss.backward()
    assert model.embedding.grad.abs().sum() > 0


# ---------------------------------------------------------------------- VBPR

def vbpr(reg_weight=0.25):
    features = {'v': np.array([[3., 4.], [1., 0.], [0., 2.]], dtype=np.float32),
                'g': np.array([[1.], [2.], [-1.]], dtype=np.float32)}
    model = VBPR(U, I, features, dim_latent=1, reg_weight=reg_weight)
    with torch.no_grad():
        model.user.copy_(torch.tensor([[1., 2.], [-1., 0.5], [0., 1.]]))      # [γ_u ‖ θ_u]
        model.item.copy_(torch.tensor([[0.5], [1.], [-2.]]))                  # γ_i
        model.project.weight.copy_(torch.tensor([[1., -1., 2.]]))             # E on [v₁, v₂, g]
        model.project.bias.fill_(0.1)
    return model


def test_vbpr_score():
    model = vbpr()
    z_user, z_item = (t.detach() for t in model())
    # normalised rows: v = (.6, .8), (1, 0), (0, 1); g = 1, 1, -1 -> E f_i = .6-.8+2+.1, 1+2+.1, -1-2+.1
    content = torch.tensor([1.9, 3.1, -2.9])
    gamma = torch.tensor([0.5, 1., -2.])
    assert torch.allclose(z_item, torch.stack([gamma, content], dim=1))
    assert float(z_user[0] @ z_item[1]) == pytest.approx(1 * 1. + 2 * 3.1)
    assert float(z_user[1] @ z_item[2]) == pytest.approx(-1 * -2. + 0.5 * -2.9)


def test_vbpr_bpr_and_regulariser():
    model = vbpr(reg_weight=0.25)
    loss, parts = model.loss(USERS, POS, NEG)
    z_user, z_item = (t.detach() for t in model())
    bpr = hand_bpr(z_user[USERS], z_item[POS], z_item[NEG])
    reg = sum(float(z_user[u] @ z_user[u] + z_item[p] @ z_item[p] + z_item[n] @ z_item[n])
              for u, p, n in zip(USERS, POS, NEG)) / 4
    assert parts['bpr'] == pytest.approx(bpr, rel=1e-6) and parts['reg'] == pytest.approx(reg, rel=1e-6)
    assert loss.item() == pytest.approx(bpr + 0.25 * reg, rel=1e-6)


def test_vbpr_words_are_their_trainable_mean(tiny_tiktok):
    data = load_dataset(tiny_tiktok)
    model = VBPR(data.num_user, data.num_item, {'t': data.features['t']}, dim_latent=4)
    words = data.features['t']
    item = int(words.item_index[0])
    mean = model.word_means['t'].weight[words.word_id[words.item_index == item]].mean(0)
    assert torch.allclose(model.content()[item], mean, atol=1e-6)
    model.loss(torch.tensor([0]), torch.tensor([item]), torch.tensor([(item + 1) % data.num_item]))[0].backward()
    assert model.word_means['t'].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------- FREEDOM: the item-item graph

V = np.array([[1., 0.], [0.8, 0.6], [0., 1.]], dtype=np.float32)   # cosines: 01 .8, 02 0, 12 .6
T = np.array([[0., 1.], [1., 0.], [1., 2.]], dtype=np.float32)     # cosines: 01 0, 02 .894, 12 .447
S_V = torch.tensor([[.5, .5, 0.], [.5, .5, 0.], [0., .5, .5]])     # k = 2: itself and the nearest, each 1/√(2·2)
S_T = torch.tensor([[.5, 0., .5], [0., .5, .5], [.5, 0., .5]])


def test_knn_graph_and_its_normalisation():
    assert knn_indices(V, I, 2).tolist() == [[0, 1], [1, 0], [2, 1]]
    assert knn_indices(T, I, 2).tolist() == [[0, 2], [1, 2], [2, 0]]
    assert torch.allclose(normalized_knn(knn_indices(V, I, 2), I).to_dense(), S_V)
    assert torch.allclose(item_graph({'v': V}, I, 2).to_dense(), S_V)


def test_item_graph_weights_the_first_modality():
    assert modality_weights(1, 0.1) == [1.0]
    assert modality_weights(3, 0.1) == pytest.approx([0.1, 0.45, 0.45])
    assert torch.allclose(item_graph({'v': V, 't': T}, I, 2, 0.1).to_dense(), 0.1 * S_V + 0.9 * S_T)
    assert torch.allclose(item_graph({'t': T, 'v': V}, I, 2, 0.3).to_dense(), 0.3 * S_T + 0.7 * S_V)


def test_knn_of_words_is_the_bag_of_words_cosine():
    # item 0: words {0, 1}; item 1: {0}; item 2: {1, 2} -> cosines 01 .707, 02 .5, 12 0
    words = WordFeature(torch.tensor([0, 0, 1, 2, 2]), torch.tensor([0, 1, 0, 1, 2]), 3)
    assert knn_indices(words, I, 2).tolist() == [[0, 1], [1, 0], [2, 0]]


@pytest.mark.parametrize('words', [False, True])
def test_knn_blocks_equal_one_block(words):
    rng = np.random.default_rng(0)
    if words:
        feature = WordFeature(torch.from_numpy(rng.integers(0, 40, 300)), torch.from_numpy(rng.integers(0, 25, 300)), 25)
    else:
        feature = rng.standard_normal((40, 6)).astype(np.float32)
    whole = knn_indices(feature, 40, 5, block_floats=10 ** 6)
    assert torch.equal(knn_indices(feature, 40, 5, block_floats=7 * 40), whole)    # blocks of 7 items
    assert torch.equal(whole[:, 0], torch.arange(40))                               # itself first
    unit = knn_graph.unit_rows(feature, 40)
    sim = (unit.to_dense() if words else unit) @ (unit.to_dense() if words else unit).t()
    sim.fill_diagonal_(2.0)
    assert torch.allclose(sim.gather(1, whole), sim.topk(5, dim=1).values)          # the k best, ties aside


def test_knn_cache_is_validated_and_atomic(tmp_path, monkeypatch):
    monkeypatch.setattr(knn_graph, 'CACHE_AFTER_S', 0.0)     # cache even a fast build
    calls = []
    original = knn_graph.knn_indices
    monkeypatch.setattr(knn_graph, 'knn_indices', lambda *a, **k: calls.append(1) or original(*a, **k))
    first = knn_graph.cached_knn('v', V, I, 2, str(tmp_path))
    path = tmp_path / 'freedom_knn_v_k2.pt'
    assert path.exists() and len(calls) == 1 and [p.name for p in tmp_path.iterdir()] == [path.name]
    assert torch.equal(knn_graph.cached_knn('v', V, I, 2, str(tmp_path)), first) and len(calls) == 1
    # other content, a corrupt file, indices out of range: rebuilt, never trusted
    assert knn_graph.cached_knn('v', T, I, 2, str(tmp_path)).tolist() == [[0, 2], [1, 2], [2, 0]]
    assert len(calls) == 2
    path.write_bytes(b'garbage')
    assert torch.equal(knn_graph.cached_knn('v', V, I, 2, str(tmp_path)), first) and len(calls) == 3
    torch.save({'digest': knn_graph.feature_digest(V, 2), 'indices': torch.full((3, 2), 7)}, path)
    assert torch.equal(knn_graph.cached_knn('v', V, I, 2, str(tmp_path)), first) and len(calls) == 4
    # a fast build is not cached at the default threshold
    monkeypatch.setattr(knn_graph, 'CACHE_AFTER_S', 60.0)
    knn_graph.cached_knn('g', V, I, 2, str(tmp_path))
    assert not (tmp_path / 'freedom_knn_g_k2.pt').exists()


# ---------------------------------------------------------------------- FREEDOM: pruning

def test_pruning_weights_are_degree_sensitive():
    users, items = torch.from_numpy(TRAIN[:, 0]), torch.from_numpy(TRAIN[:, 1])
    w = prune_weights(users, items, U, I)
    # degrees users (2, 2, 1), items (1, 2, 2)
    assert torch.allclose(w, torch.tensor([1 / math.sqrt(2), 1 / 2, 1 / 2, 1 / 2, 1 / math.sqrt(2)]))
    torch.manual_seed(0)
    counts = torch.zeros(5)
    for _ in range(3000):           # keep ⌊0.2 · 5⌋ = 1 edge: drawn with probability w / Σw
        adj = pruned_adjacency(users, items, w, 0.8, U, I).to_dense()
        kept = [e for e, (u, i) in enumerate(TRAIN) if adj[u, U + i] != 0]
        assert len(kept) == 1
        counts[kept[0]] += 1
    assert torch.allclose(counts / 3000, w / w.sum(), atol=0.03)


def test_pruned_graph_is_renormalised_by_its_own_degrees():
    users, items = torch.from_numpy(TRAIN[:, 0]), torch.from_numpy(TRAIN[:, 1])
    torch.manual_seed(1)
    adj = pruned_adjacency(users, items, prune_weights(users, items, U, I), 0.4, U, I).to_dense()
    kept = [(u, i) for u, i in TRAIN if adj[u, U + i] != 0]
    assert len(kept) == 3 and torch.allclose(adj, adj.t())
    deg_u = {u: sum(1 for x, _ in kept if x == u) for u, _ in kept}
    deg_i = {i: sum(1 for _, y in kept if y == i) for _, i in kept}
    for u, i in kept:
        assert float(adj[u, U + i]) == pytest.approx(1 / math.sqrt(deg_u[u] * deg_i[i]))
    assert int((adj != 0).sum()) == 6


# ---------------------------------------------------------------------- FREEDOM: encoder and losses

def freedom(dropout=0.0, reg_weight=0.5):
    features = {'v': V, 't': T}
    torch.manual_seed(0)
    model = FREEDOM(U, I, features, TRAIN, normalized_adjacency(TRAIN, U, I), item_graph(features, I, 2, 0.1),
                    dim_latent=2, num_layer=2, dropout=dropout, reg_weight=reg_weight)
    with torch.no_grad():
        model.embedding_user.copy_(torch.tensor([[1., 0.], [0., 2.], [1., 1.]]))
        model.embedding_item.copy_(torch.tensor([[2., -1.], [0., 1.], [-1., 3.]]))
    return model


def test_freedom_item_item_propagation_and_encoder():
    model = freedom()
    e_i = model.embedding_item.detach()
    s = 0.1 * S_V + 0.9 * S_T
    assert torch.allclose(model.item_item(), s @ e_i)
    # item 0 by hand: row 0 of S is (.05 + .45, .05, .45)
    assert torch.allclose(model.item_item()[0], 0.5 * e_i[0] + 0.05 * e_i[1] + 0.45 * e_i[2])
    z = layer_mean(hand_adjacency(), torch.cat([model.embedding_user, model.embedding_item]).detach(), 2)
    z_user, z_item = (t.detach() for t in model())
    assert torch.allclose(z_user, z[:U]) and torch.allclose(z_item, z[U:] + s @ e_i)


def test_freedom_both_bpr_terms():
    model = freedom(dropout=0.0, reg_weight=0.5)
    model.on_epoch_start()                        # ρ = 0: the full graph
    loss, parts = model.loss(USERS, POS, NEG)
    z_user, z_item = (t.detach() for t in model())
    bpr = hand_bpr(z_user[USERS], z_item[POS], z_item[NEG])
    assert parts['bpr'] == pytest.approx(bpr, rel=1e-6)
    total = bpr
    for m, raw in (('v', V), ('t', T)):
        lin = model.transforms[m]
        t_m = (torch.from_numpy(raw) @ lin.weight.t() + lin.bias).detach()     # T_m on the raw table
        term = hand_bpr(z_user[USERS], t_m[POS], t_m[NEG])
        assert parts[f'bpr_{m}'] == pytest.approx(term, rel=1e-6)
        total += 0.5 * term
    assert loss.item() == pytest.approx(total, rel=1e-6)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.feature_tables.values())


def test_freedom_trains_on_the_pruned_graph_and_evaluates_on_the_full_one():
    model = freedom(dropout=0.4)
    before = [t.detach().clone() for t in model()]
    torch.manual_seed(3)
    model.on_epoch_start()
    pruned = model.train_adj.to_dense()
    assert int((pruned != 0).sum()) == 6 and not torch.allclose(pruned, hand_adjacency())
    assert all(torch.equal(a, b) for a, b in zip(before, model()))      # evaluation: the full graph
    _, parts = model.loss(USERS, POS, NEG)
    z = layer_mean(pruned, torch.cat([model.embedding_user, model.embedding_item]).detach(), 2)
    h = model.item_item().detach()
    assert parts['bpr'] == pytest.approx(hand_bpr(z[USERS], z[U + POS] + h[POS], z[U + NEG] + h[NEG]), rel=1e-6)
    torch.manual_seed(3)
    model.on_epoch_start()
    assert torch.equal(model.train_adj.to_dense(), pruned)             # same seed, same draw
    model.on_epoch_start()
    assert not torch.equal(model.train_adj.to_dense(), pruned)         # a fresh draw every epoch


# ---------------------------------------------------------------------- the command line

def test_per_model_defaults_and_flags():
    for name, l_r, layers in (('LightGCN', 1e-3, 3), ('VBPR', 1e-3, None), ('FREEDOM', 1e-3, 2)):  # VBPR: no graph
        args = config.parse_args(['--model_name', name])
        assert (args.l_r, args.weight_decay, args.batch_size, args.num_layer) == (l_r, 1e-4, 2048, layers)
    assert config.parse_args(['--model_name', 'FREEDOM']).dropout_rate == 0.8
    assert config.parse_args([]).dropout_rate == 0.3
    args = config.parse_args(['--model_name', 'FREEDOM', '--knn_k', '5', '--mm_image_weight', '0.3', '--dropout_rate', '0.5'])
    assert (args.knn_k, args.mm_image_weight, args.dropout_rate) == (5, 0.3, 0.5)
    for bad, message in ((['--knn_k', '0'], '--knn_k: must be in [1, 10000], got 0'),
                         (['--mm_image_weight', '1.5'], '--mm_image_weight: must be in [0, 1], got 1.5')):
        with pytest.raises(errors.InputError, match=re.escape(message)):
            config.parse_args(['--model_name', 'FREEDOM', *bad])


@pytest.mark.parametrize('name', ['VBPR', 'FREEDOM'])
def test_content_models_refuse_an_id_only_dataset(name, tiny_plain, tmp_path, capsys):
    code, record = _run(tmp_path, tiny_plain, '--model_name', name, '--modalities', 'none', '--num_epoch', '1')
    err = capsys.readouterr().err
    assert code == 2 and record is None
    assert err.strip() == f'error: {name} needs at least one modality (see --modalities)'


def test_no_adam_decay_for_the_baselines(tiny_plain, tmp_path, monkeypatch):
    seen = []
    original = torch.optim.Adam.__init__

    def spy(self, params, **kwargs):
        seen.append(kwargs.get('weight_decay'))
        original(self, params, **kwargs)
    monkeypatch.setattr(torch.optim.Adam, '__init__', spy)
    for name in ('LightGCN', 'VBPR', 'FREEDOM'):
        assert _run(tmp_path, tiny_plain, '--model_name', name, '--num_epoch', '0', '--weight_decay', '0.1')[0] == 0
    assert seen == [0.0, 0.0, 0.0]


def _most_popular_recall_at_10(folder):
    """Test Recall@10 of ranking the non-training items by training popularity."""
    data = load_dataset(folder)
    popularity = np.bincount(data.train[:, 1], minlength=data.num_item).astype(float)
    seen = {u: set() for u in range(data.num_user)}
    for u, i in data.train:
        seen[u].add(i)
    recalls = []
    for u, items in data.test.items():
        ranked = [i for i in np.argsort(-popularity, kind='stable') if i not in seen[u]][:10]
        recalls.append(len(set(ranked) & set(items.tolist())) / len(items))
    return float(np.mean(recalls))


@pytest.mark.parametrize('name', ['LightGCN', 'VBPR', 'FREEDOM'])
def test_each_baseline_beats_most_popular(name, tiny_plain, tmp_path):
    code, record = _run(tmp_path, tiny_plain, '--model_name', name, '--l_r', '0.01', '--batch_size', '256',
                        '--num_epoch', '15', '--dim_latent', '32')
    assert code == 0
    assert record['test']['10']['recall'] > 1.2 * _most_popular_recall_at_10(tiny_plain)


@pytest.mark.parametrize('name', ['LightGCN', 'VBPR', 'FREEDOM'])
def test_same_seed_same_metrics(name, tiny_tiktok, tmp_path):
    flags = ('--model_name', name, '--l_r', '0.01', '--batch_size', '128', '--num_epoch', '3', '--dim_latent', '16')
    _, first = _run(tmp_path, tiny_tiktok, *flags, '--seed', '7', tag='a')
    _, second = _run(tmp_path, tiny_tiktok, *flags, '--seed', '7', tag='b')
    _, other = _run(tmp_path, tiny_tiktok, *flags, '--seed', '8', tag='c')
    assert first['val'] == second['val'] and first['test'] == second['test']
    assert other['val'] != first['val']


@pytest.mark.slow
def test_freedom_sigkill_then_resume_matches_uninterrupted(tiny_plain, tmp_path):
    full, resumed = kill_then_resume(tmp_path, ['--data_path', tiny_plain, '--model_name', 'FREEDOM', '--l_r', '0.01',
                                                '--batch_size', '32', '--dim_latent', '16'])
    assert (resumed['best_epoch'], resumed['val'], resumed['test']) == (full['best_epoch'], full['val'], full['test'])
    assert os.path.exists(tmp_path / 'killed.last.pt')
