"""MENTOR and DA-MRS (issue #31, docs/models.md): each equation against a dense hand computation on a 3-user,
3-item graph (the item-item graphs on 4 items), each fast path against its plain formula, and each model through
the command line (training, evaluation, SIGKILL then --resume equal to the uninterrupted run, --export_topk)."""
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import config
import knn_graph
import model_DAMRS
import model_MENTOR
import registry
from BaseModel import normalized_adjacency, similarity_logsumexp, similarity_logsumexp_plain
from DataLoad import load_dataset
from model_DAMRS import DAMRS, behaviour_neighbours, denoised_knn, item_graphs, pseudo_labels
from model_FREEDOM import item_graph
from model_MENTOR import MENTOR, info_nce_all
from model_MGCN import info_nce
from test_models_bm3_mgcn_lgmrec import assert_loss_and_gradients, cli_roundtrip, dense_adjacency, layer_mean

# The hand graph: 3 users, 3 items; user 0 has items 0, 1; user 1 has 0, 1, 2; user 2 has 2.
TRAIN = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [1, 2], [2, 2]])
U, I = 3, 3
FEAT = {'v': np.array([[1., 0.], [1., 0.2], [0., 1.]], dtype=np.float32),
        't': np.array([[1., 0.], [1., 1.], [0., 1.]], dtype=np.float32)}
USERS, POS, NEG = torch.tensor([0, 1, 2, 1]), torch.tensor([1, 2, 2, 0]), torch.tensor([2, 0, 1, 2])


def normalised(s):
    """``D^-1/2 S D^-1/2`` of a dense binary matrix, ``D`` its row counts."""
    d = s.sum(1)
    return s / torch.sqrt(d[:, None] * d[None, :])


# ---------------------------------------------------------------------- shared: the blocked InfoNCE denominators

@pytest.mark.parametrize('weighted', [False, True])
@pytest.mark.parametrize('block_floats', [1, 28, 76, 2 ** 24])
def test_similarity_logsumexp_equals_the_formula_with_its_gradients(block_floats, weighted):
    """11 rows against 7: one row a block, blocks of 4 (the last ragged), of 10 and 1 (each block recomputed in
    the backward), and where the whole matrix fits one block the closed form keeping it; unweighted and with
    column weights: the values and both gradients of the formula, and the formula by hand."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(11, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(11, generator=gen, dtype=torch.float64)
    w = torch.tensor([1., 3., 2., 1., 1., 4., 2.], dtype=torch.float64) if weighted else None
    fast = similarity_logsumexp(a, b, 0.3, w, block_floats=block_floats)
    plain = similarity_logsumexp_plain(a, b, 0.3, w)
    assert torch.allclose(fast, plain, atol=1e-12)
    counts = w if weighted else torch.ones(7, dtype=torch.float64)
    assert torch.allclose(plain, torch.log((counts * torch.exp(a @ b.t() / 0.3)).sum(1)), atol=1e-12)
    for p, q in zip(torch.autograd.grad((fast * g).sum(), [a, b]), torch.autograd.grad((plain * g).sum(), [a, b])):
        assert torch.allclose(p, q, atol=1e-12)


def test_info_nce_over_all_rows_equals_mgcn_info_nce():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(9, 4, generator=gen, requires_grad=True)
    b = torch.randn(9, 4, generator=gen, requires_grad=True)
    fast, plain = info_nce_all(a, b, 0.2), info_nce(a, b, 0.2)
    assert fast.item() == pytest.approx(plain.item(), abs=1e-5)
    for g, q in zip(torch.autograd.grad(fast, [a, b]), torch.autograd.grad(plain, [a, b])):
        assert torch.allclose(g, q, atol=1e-5)


# ---------------------------------------------------------------------- DA-MRS: the item-item graphs

# 4 items: 0, 1, 2 alike in both modalities, 3 like 2 in v only.  Cosine means: v 0.9733, t 0.6652; the pairs
# at or above both: (0, 1) and (1, 2) (v drops (0, 2): 0.958; t drops (2, 3): 0.0995 although v has 0.991).
KNN_FEAT = {'v': np.array([[1., 0.], [1., 0.1], [1., 0.3], [1., 0.45]], dtype=np.float32),
            't': np.array([[1., 0.], [1., 0.3], [1., 0.1], [0., 1.]], dtype=np.float32)}


def test_damrs_denoised_knn_graph_by_hand():
    """k = 2: item 1 has three candidates {1, 0, 2} and keeps its two most similar per modality (v: 0 at 0.995,
    t: 2 at 0.982); item 3 has itself alone; rows without a second candidate get an empty slot."""
    ids = denoised_knn(KNN_FEAT, 4, 2)
    assert ids[0].tolist() == [[0, 1], [1, 0], [2, 1], [3, -1]]
    assert ids[1].tolist() == [[0, 1], [1, 2], [2, 1], [3, -1]]
    half = 0.5
    expected_v = torch.tensor([[half, half, 0, 0], [half, half, 0, 0], [0, half, half, 0], [0, 0, 0, 1.]])
    assert torch.allclose(knn_graph.normalized_knn(ids[0], 4).to_dense(), expected_v)
    for block in (1, 2 ** 24):                                   # one row a block, one block
        assert torch.equal(denoised_knn(KNN_FEAT, 4, 2, block_floats=block), ids)


def test_damrs_denoised_knn_blocked_equals_the_dense_formula():
    """Random dense and word-id modalities (a zero row among them): the blocked graph equals the authors'
    dense steps (the I × I cosine matrices, their means, the mask of both, top min(k, candidates))."""
    rng = np.random.default_rng(0)
    from DataLoad import WordFeature
    dense = rng.standard_normal((30, 6)).astype(np.float32) + 0.5
    dense[4] = 0
    words = WordFeature(torch.as_tensor(rng.integers(0, 30, 90)), torch.as_tensor(rng.integers(0, 12, 90)), 12)
    features = {'v': dense, 't': words}
    units = [knn_graph.unit_rows(f, 30) for f in features.values()]
    sims = [(u.to_dense() if u.is_sparse else u) @ (u.to_dense() if u.is_sparse else u).t() for u in units]
    agree = (sims[0] >= sims[0].mean()) & (sims[1] >= sims[1].mean())
    agree.fill_diagonal_(True)
    for n, sim in enumerate(sims):
        for i in range(30):
            candidates = agree[i].nonzero().flatten().tolist()
            score = {j: (2.0 if j == i else sim[i, j].item()) for j in candidates}
            expected = sorted(candidates, key=lambda j: -score[j])[:5]
            for block in (31, 2 ** 24):
                got = [j for j in denoised_knn(features, 30, 5, block_floats=block)[n, i].tolist() if j >= 0]
                # the same similarities (bag-of-words cosines tie, and topk orders ties as it likes)
                assert got[0] == i and set(got) <= set(candidates), (n, i, got)
                assert sorted(score[j] for j in got) == pytest.approx(sorted(score[j] for j in expected))
    assert denoised_knn(features, 30, 5)[:, 4, 1:].eq(-1).all()          # the zero row: itself alone


# u0, u1: items 0, 1, 2; u2, u3: items 0, 3; u4: items 1, 3.  Common users: (0,1) (0,2) (1,2) (0,3) 2 each, (1,3) 1.
BEHAVIOUR_TRAIN = np.array([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2], [2, 0], [2, 3], [3, 0], [3, 3],
                            [4, 1], [4, 3]])


def test_damrs_behaviour_graph_by_hand():
    """k = 2: item 0 ties 1, 2 and 3 at 2 common users and keeps the smaller ids; item 3's 1 common user with
    item 1 is below the threshold 2; the graph gains self-loops and is normalised by its row counts."""
    ids = behaviour_neighbours(BEHAVIOUR_TRAIN, 5, 4, 2)
    assert ids.tolist() == [[1, 2], [0, 2], [0, 1], [0, -1]]
    assert behaviour_neighbours(BEHAVIOUR_TRAIN, 5, 4, 1).tolist() == [[1], [0], [0], [0]]
    assert torch.equal(behaviour_neighbours(BEHAVIOUR_TRAIN, 5, 4, 2, block_entries=1), ids)   # one item a block
    graph = model_DAMRS.item_graphs(KNN_FEAT, BEHAVIOUR_TRAIN, 5, 4, 2, 2)[-1].to_dense()
    third, r = 1 / 3, 1 / math.sqrt(6)
    assert torch.allclose(graph, torch.tensor([[third] * 3 + [0], [third] * 3 + [0], [third] * 3 + [0],
                                               [r, 0, 0, 0.5]]))


def test_damrs_behaviour_graph_blocked_equals_the_dense_formula():
    rng = np.random.default_rng(1)
    pairs = np.unique(np.stack([rng.integers(0, 40, 400), rng.integers(0, 25, 400)], 1), axis=0)
    r = torch.zeros(40, 25, dtype=torch.long)
    r[pairs[:, 0], pairs[:, 1]] = 1
    common = r.t() @ r
    common.fill_diagonal_(0)
    common[common < 2] = 0
    key = common * 25 + (24 - torch.arange(25))                    # more common users first, then the smaller id
    top, ids = key.topk(3, dim=1)
    expected = ids.masked_fill(top < 2 * 25, -1)
    for block in (1, 50, 2 ** 24):
        assert torch.equal(behaviour_neighbours(pairs, 40, 25, 3, block_entries=block), expected)


def test_damrs_graph_caches_are_validated_and_follow_the_split(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(knn_graph, 'CACHE_AFTER_S', 0.0)       # cache even a fast build
    calls = []
    for name in ('denoised_knn', 'behaviour_neighbours'):
        original = getattr(model_DAMRS, name)
        monkeypatch.setattr(model_DAMRS, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    first = item_graphs(KNN_FEAT, BEHAVIOUR_TRAIN, 5, 4, 2, 2, str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['damrs_behaviour_train_k2.pt', 'damrs_knn_v+t_k2.pt']
    again = item_graphs(KNN_FEAT, BEHAVIOUR_TRAIN, 5, 4, 2, 2, str(tmp_path))
    assert len(calls) == 2 and all(torch.equal(a.to_dense(), b.to_dense()) for a, b in zip(first, again))
    (tmp_path / 'damrs_knn_v+t_k2.pt').write_bytes(b'garbage')
    item_graphs(KNN_FEAT, BEHAVIOUR_TRAIN, 5, 4, 2, 2, str(tmp_path))
    assert calls[2:] == ['denoised_knn'] and 'does not match' in capsys.readouterr().err
    other_split = np.delete(BEHAVIOUR_TRAIN, 9, axis=0)       # without (3, 3): items 0 and 3 share one user
    graphs = item_graphs(KNN_FEAT, other_split, 5, 4, 2, 2, str(tmp_path))
    assert calls[3:] == ['behaviour_neighbours'] and graphs[-1].to_dense()[3].tolist() == [0, 0, 0, 1]


# ---------------------------------------------------------------------- DA-MRS: the model

# Three item-item graphs of the hand model (content v, content t, behaviour), binary, directed, self-loops.
HAND_GRAPHS = [normalised(torch.tensor(s, dtype=torch.float32)) for s in (
    [[1, 1, 0], [0, 1, 1], [0, 0, 1]], [[1, 0, 1], [0, 1, 0], [1, 0, 1]], [[1, 1, 0], [1, 1, 0], [0, 0, 1]])]


def damrs_hand_model(**kwargs):
    torch.manual_seed(3)
    model = DAMRS(U, I, normalized_adjacency(TRAIN, U, I), [g.to_sparse_csr() for g in HAND_GRAPHS], dim_latent=4,
                  num_layer=2, **kwargs)
    with torch.no_grad():                   # larger scores than xavier's: feedback weights well inside (0, 1)
        model.embedding_user.mul_(3)
        model.embedding_item.mul_(3)
    # float64: ND's T - Σ_P e (the authors' formula) cancels most of T on 3 items, which float32 rounds apart
    return model.double()


def pseudo_labels_by_hand(views, rows, k):
    """The authors' generate_pesudo_labels for each graph: top k of (the others' + twice its own) softmax, then
    the top k of its own softmax off those."""
    probs = [torch.softmax(F.normalize(v, dim=1)[rows] @ F.normalize(v, dim=1).t(), 1) for v in views]
    out = []
    for g, own in enumerate(probs):
        mm = (sum(p for n, p in enumerate(probs) if n != g) + own + own).topk(k, 1).indices
        out.append((mm, own.scatter(1, mm, 0).topk(k, 1).indices))
    return out


def test_damrs_pseudo_labels_blocked_equal_the_authors_formula():
    gen = torch.Generator().manual_seed(3)
    views = [torch.randn(40, 6, generator=gen) for _ in range(3)]
    rows = torch.tensor([0, 3, 5, 17, 39, 22, 8])
    expected = pseudo_labels_by_hand(views, rows, 10)
    for block in (1, 2 ** 24):                                   # one row a block, one block (the plain formula)
        for (mm, single), (mm_hand, single_hand) in zip(pseudo_labels(views, rows, 10, block), expected):
            assert torch.equal(mm, mm_hand) and torch.equal(single, single_hand)


def nd_by_hand(rows, every, mm, single, tau=0.2):
    """The authors' neighbor_discrimination: exp sums over the pseudo-positives and over every item."""
    rows, every = F.normalize(rows, dim=1), F.normalize(every, dim=1)
    e = torch.exp(rows @ every.t() / tau)
    mm_sum, single_sum, total = e.gather(1, mm).sum(1), e.gather(1, single).sum(1), e.sum(1)
    return (-torch.log(mm_sum / total + 1e-9) - torch.log(single_sum / (total - mm_sum) + 1e-9)).mean()


def kl_by_hand(p, q):
    return p * torch.log(p) - p * torch.log(q) + (1 - p) * torch.log(1 - p) - (1 - p) * torch.log(1 - q)


def damrs_by_hand(model, users, pos, neg, beta, gamma):
    """``(loss, parts, (w⁺, w⁻))`` of the module docstring with dense matrices and the authors' formulas."""
    z = layer_mean(dense_adjacency(TRAIN, U, I).double(), torch.cat([model.embedding_user, model.embedding_item]), 2)
    z_u, z_i = z[:U], z[U:]
    views = [g.double() @ model.embedding_item for g in HAND_GRAPHS]
    content = sum(views) / 3
    items = torch.unique(torch.cat([pos, neg]))
    labels = pseudo_labels_by_hand(views, items, 1)                             # 3 items: 1 pseudo-positive each
    nd = sum(nd_by_hand(v[items], v, mm, single) for v, (mm, single) in zip(views, labels)) / 3
    uu = z_u[torch.unique(users)]
    p, q = torch.sigmoid(uu @ F.normalize(z_i[items], dim=1).t()), torch.sigmoid(uu @ F.normalize(content[items], dim=1).t())
    kl = (kl_by_hand(p, q) + kl_by_hand(q, p)).mean()
    u = z_u[users]
    with torch.no_grad():
        pp = torch.stack([torch.sigmoid((u * F.normalize(v[pos], dim=1)).sum(1)) for v in views])
        nn_ = torch.stack([torch.sigmoid((u * F.normalize(v[neg], dim=1)).sum(1)) for v in views])
        w_pos = torch.clamp(pp.mean(0) * torch.exp(-pp.var(0)) ** 2, 0, 1)
        w_neg = torch.clamp((pp.max(0).values - nn_.mean()) * (pp.mean(0) < nn_.mean()).float(), 0, 1)
    s_pos, s_neg = (u * (z_i[pos] + content[pos])).sum(1), (u * (z_i[neg] + content[neg])).sum(1)
    bpr = -torch.mean(torch.log(torch.sigmoid(s_pos - s_neg)) * w_pos + torch.log(torch.sigmoid(s_neg - s_pos)) * w_neg)
    return bpr + beta * nd + gamma * kl, {'bpr': bpr.item(), 'nd': nd.item(), 'kl': kl.item()}, (w_pos, w_neg)


def test_damrs_forward_and_loss_by_hand():
    model = damrs_hand_model(cl_weight=0.3, kl_weight=0.7)
    z = layer_mean(dense_adjacency(TRAIN, U, I).double(), torch.cat([model.embedding_user, model.embedding_item]), 2)
    content = sum(g.double() @ model.embedding_item for g in HAND_GRAPHS) / 3
    z_user, z_item = model()
    assert torch.allclose(z_user, z[:U], atol=1e-9) and torch.allclose(z_item, z[U:] + content, atol=1e-9)
    loss, parts = model.loss(USERS, POS, NEG)
    hand, hand_parts, (w_pos, w_neg) = damrs_by_hand(model, USERS, POS, NEG, 0.3, 0.7)
    assert (w_neg > 0.04).sum() == 2 and (w_neg == 0).sum() == 2 and (w_pos < 0.7).all()   # both weights at work
    assert parts == pytest.approx(hand_parts, abs=1e-5)
    assert_loss_and_gradients(model, loss, hand)


def test_damrs_kl_stays_finite_where_sigmoid_saturates():
    """Scores of ±60: σ is 1 or 0 in float32, where the authors' log σ gives NaN; the logsigmoid form is finite."""
    x = torch.tensor([60.0, -60.0, 3.0])
    y = torch.tensor([-60.0, 60.0, 3.0])
    kl = model_DAMRS.bernoulli_kl(x, y)
    assert torch.isfinite(kl).all() and kl[2] == 0 and kl[0].item() == pytest.approx(60.0, rel=1e-4)
    assert not torch.isfinite(kl_by_hand(torch.sigmoid(x), torch.sigmoid(y))).all()


def test_damrs_defaults_flags_and_alias():
    args = config.parse_args(['--model_name', 'DA-MRS'])
    assert args.model_name == 'DAMRS' and config.run_name(args).startswith('ml100k-DAMRS-seed1')
    assert (args.l_r, args.weight_decay, args.batch_size, args.num_layer, args.num_epoch, args.knn_k, args.cl_weight,
            args.kl_weight, args.behaviour_k) == (1e-3, 0.0, 4096, 2, 500, 10, 1e-3, 1.0, 2)
    assert registry.adam_weight_decay(args) == 0.0 and registry.entry('DA-MRS') is registry.entry('DAMRS')
    assert 'DA-MRS' in config.build_parser().format_help()
    with pytest.raises(Exception, match='--behaviour_k: must be in'):
        config.parse_args(['--model_name', 'DAMRS', '--behaviour_k', '0'])


def test_damrs_trains_resumes_and_exports(tiny_plain, tmp_path):
    cli_roundtrip(tmp_path, tiny_plain, 'DA-MRS', '--l_r', '0.01', '--knn_k', '5')


# ---------------------------------------------------------------------- MENTOR

def mentor_hand_model(**kwargs):
    torch.manual_seed(0)
    settings = dict(dim_latent=4, num_layer=2, reg_weight=0.1, align_weight=0.3, cl_weight=0.5, temperature=0.2,
                    dropout=0.0)
    settings.update(kwargs)
    return MENTOR(U, I, FEAT, normalized_adjacency(TRAIN, U, I), item_graph(FEAT, I, 2), **settings)


def mentor_by_hand(model, users, pos, neg):
    """The loss and its parts in the authors' order (concatenate the branches, then the item graph), dense."""
    a, s = dense_adjacency(TRAIN, U, I), item_graph(FEAT, I, 2).to_dense()

    def branch(encoder, feat, noisy=False):
        x = F.normalize(torch.cat([encoder.preference, encoder.out(F.leaky_relu(encoder.hidden(feat)))]), dim=1)
        layers = [x]
        for _ in range(2):
            h = a @ layers[-1]
            layers.append(h + torch.sign(h) * (1 / math.sqrt(4)) * 0.1 if noisy else h)     # a row of ε: 1/√d
        return sum(layers)

    def table(reps, weighted):
        x = torch.cat(reps, 1)
        users_part = x[:U] * model.user_weight.repeat_interleave(4, 1) if weighted else x[:U]
        return torch.cat([users_part, x[U:] + s @ x[U:]])
    feats = {m: torch.tensor(f) for m, f in FEAT.items()}
    r = {m: branch(model.encoders[m], feats[m]) for m in FEAT}
    r_id = branch(model.id_encoder, model.id_table)
    z = table([r['v'], r['t']], True)
    guide, tv, tt = table([r_id, r_id], False), table([r['v'], r['v']], False), table([r['t'], r['t']], False)
    noisy = [table([branch(enc[m], feats[m], True) for m in FEAT], True) for enc in model.noisy_encoders]
    s_pos, s_neg = (z[users] * z[U + pos]).sum(1), (z[users] * z[U + neg]).sum(1)
    bpr = -torch.mean(torch.log2(torch.sigmoid(s_pos - s_neg)))
    reg = (model.encoders['v'].preference[users] ** 2).mean() + (model.encoders['t'].preference[users] ** 2).mean() + \
        (model.user_weight ** 2).mean()
    with torch.no_grad():
        mask_f = (1 - F.cosine_similarity(z[:U], model.projector(z[:U])).mean()) + \
            (1 - F.cosine_similarity(z[U:], model.projector(z[U:])).mean())
    tables = [z, guide, tv, tt]
    align = sum((x.var() - y.var()).abs() + (x.mean() - y.mean()).abs() for n, x in enumerate(tables)
                for y in tables[n + 1:])

    def nce(x, y, tau=0.2):
        x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
        return -torch.log(torch.exp((x * y).sum(1) / tau) / torch.exp(x @ y.t() / tau).sum(1)).mean()
    mask_g = nce(noisy[0][:U], noisy[1][:U]) + nce(noisy[0][U:], noisy[1][U:])
    loss = bpr + 0.1 * reg + 1.5 * mask_f + 0.3 * align + 0.5 * mask_g
    return loss, z, {'bpr': bpr.item(), 'reg': reg.item(), 'mask_f': mask_f.item(), 'align': align.item(),
                     'mask_g': mask_g.item()}


def test_mentor_forward_and_loss_by_hand(monkeypatch):
    """The noise ε replaced by 0.5 everywhere: each d-wide branch's rows normalise to 1/√d."""
    monkeypatch.setattr(torch, 'rand_like', lambda x: torch.full_like(x, 0.5))
    model = mentor_hand_model().train()
    loss, parts = model.loss(USERS, POS, NEG)
    hand, z, hand_parts = mentor_by_hand(model, USERS, POS, NEG)
    assert parts == pytest.approx(hand_parts, abs=1e-5)
    # Q (projector) only serves the feature-masking term, which has no gradient (as official)
    assert_loss_and_gradients(model, loss, hand, params=[p for n, p in model.named_parameters()
                                                         if not n.startswith('projector.')])
    z_user, z_item = model.eval()()
    assert torch.allclose(z_user, z[:U], atol=1e-6) and torch.allclose(z_item, z[U:], atol=1e-6)


def test_mentor_noise_and_dropout_in_training_only_from_the_seeded_rng():
    model = mentor_hand_model(dropout=0.5)
    torch.manual_seed(4)
    first = model.loss(USERS, POS, NEG)[1]
    torch.manual_seed(4)
    assert model.loss(USERS, POS, NEG)[1] == first
    assert model.loss(USERS, POS, NEG)[1]['mask_g'] != first['mask_g']               # fresh noise
    model.eval()
    assert model.loss(USERS, POS, NEG)[1] == model.loss(USERS, POS, NEG)[1]


def test_mentor_frozen_inputs_train_nothing_but_the_rest():
    model = mentor_hand_model(frozen_inputs=True)
    model.loss(USERS, POS, NEG)[0].backward()
    frozen = [name for name, p in model.named_parameters() if p.grad is None]
    assert sorted(frozen) == sorted(['id_table', 'encoders.v.preference', 'encoders.t.preference',
                                     'id_encoder.preference', 'projector.weight', 'projector.bias'] +
                                    [f'noisy_encoders.{n}.{m}.preference' for n in (0, 1) for m in 'vt'])


def test_mentor_defaults_and_flags():
    args = config.parse_args(['--model_name', 'MENTOR'])
    assert (args.l_r, args.weight_decay, args.batch_size, args.num_layer, args.num_epoch, args.dropout_rate,
            args.cl_weight, args.align_weight, args.knn_k, args.mm_image_weight, args.ssl_temp,
            args.mentor_frozen_inputs) == (1e-4, 1e-3, 2048, 2, 1000, 0.5, 1e-4, 0.1, 10, 0.1, 0.2, False)
    assert registry.adam_weight_decay(args) == 0.0
    assert 'MENTOR' in config.build_parser().format_help().split('--ssl_temp')[1].split('\n  --')[0]


def test_mentor_trains_resumes_and_exports(tiny_plain, tmp_path):
    cli_roundtrip(tmp_path, tiny_plain, 'MENTOR', '--l_r', '0.01', '--knn_k', '5')


# ---------------------------------------------------------------------- any number of modalities

@pytest.mark.parametrize('modalities', [['t'], ['v'], ['v', 'a'], ['v', 'a', 't']])
@pytest.mark.parametrize('name', ['MENTOR', 'DAMRS'])
def test_one_two_and_three_modalities_dense_and_word_ids(name, modalities, tiny_tiktok):
    args = config.parse_args(['--model_name', name, '--data_path', tiny_tiktok, '--dim_latent', '8', '--knn_k', '4',
                              '--modalities', ','.join(modalities)])
    data = load_dataset(tiny_tiktok, modalities=modalities)
    torch.manual_seed(0)
    model = registry.build_model(args, data)
    users, items = torch.as_tensor(data.train[:32, 0]), torch.as_tensor(data.train[:32, 1])
    loss, _ = model.loss(users, items, torch.randint(0, data.num_item, (32,)))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    z_user, z_item = model.eval()()
    assert z_user.shape[0] == data.num_user and z_item.shape[0] == data.num_item


@pytest.mark.parametrize('name', ['MENTOR', 'DAMRS', 'MGCN', 'FREEDOM'])
def test_knn_k_above_the_item_count_is_one_clear_error(name, tiny_tiktok, capsys):
    import main
    from conftest import one_line_error
    from errors import InputError
    args = config.parse_args(['--model_name', name, '--data_path', tiny_tiktok, '--knn_k', '81'])
    with pytest.raises(InputError, match=r'--knn_k 81 exceeds the number of items \(80\)'):
        registry.build_model(args, load_dataset(tiny_tiktok))
    assert main.main(['--model_name', name, '--data_path', tiny_tiktok, '--modalities', 'none']) == 2
    one_line_error(capsys, f'{name} needs at least one modality (see --modalities)')
