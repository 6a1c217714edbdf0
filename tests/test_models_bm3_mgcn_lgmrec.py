"""BM3, MGCN and LGMRec (issue #24, docs/models.md): each equation against a dense hand computation on a
2-user, 3-item graph, each fast path against its plain formula, and each model through the command line
(training, evaluation, SIGKILL then --resume equal to the uninterrupted run, --export_topk, --help)."""
import csv
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import config
import knn_graph
import model_MGCN
import registry
from BaseModel import normalized_adjacency
from model_BM3 import BM3
import model_LGMRec
from model_LGMRec import LGMRec
from model_MGCN import MGCN, item_graphs, normalized_weighted_knn, weighted_knn
from conftest import ROOT
from test_train import _checkpoint_epoch, _run, kill_during_next_epoch

# The hand graph: 2 users, 3 items; user 0 has items 0, 1; user 1 has items 1, 2.
TRAIN = np.array([[0, 0], [0, 1], [1, 1], [1, 2]])
U, I = 2, 3
FEAT = {'v': np.array([[1., 0.], [1., 1.], [0., 2.]], dtype=np.float32)}


def hand_adjacency():
    """``Â`` written out: every degree is 2 but items 0 and 2 (1): ``1/√(deg_u deg_i)`` on each edge."""
    a = torch.zeros(U + I, U + I)
    for (u, i), value in {(0, 0): 1 / math.sqrt(2), (0, 1): 1 / 2, (1, 1): 1 / 2, (1, 2): 1 / math.sqrt(2)}.items():
        a[u, U + i] = a[U + i, u] = value
    return a


def layer_mean(a, x0, num_layer):
    layers = [x0]
    for _ in range(num_layer):
        layers.append(a @ layers[-1])
    return sum(layers) / (num_layer + 1)


def cos_loss(a, b):
    return 1 - (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1).mean()


def bpr_by_hand(zu, zp, zn):
    return -F.logsigmoid((zu * zp).sum(1) - (zu * zn).sum(1)).mean()


def assert_loss_and_gradients(model, loss, hand, grad_atol=1e-5, params=None):
    """The model's loss equals the hand computation ``hand``, and so does its gradient by every parameter (by
    ``params`` when given)."""
    assert loss.item() == pytest.approx(hand.item(), abs=1e-5)
    params = list(model.parameters()) if params is None else params
    for g, q in zip(torch.autograd.grad(loss, params), torch.autograd.grad(hand, params)):
        assert torch.allclose(g, q, atol=grad_atol)


def kill_then_resume_once(tmp_path, folder, flags, num_epoch=4, kill_after=2):
    """``test_train.kill_then_resume`` with one subprocess instead of three (each pays ~6 s of imports on one
    core): the uninterrupted run and the resume run in this process, the run killed (SIGKILL) during epoch
    ``kill_after + 1`` as a subprocess.  Returns both result records."""
    flags = [*flags, '--num_epoch', str(num_epoch), '--patience', '50']
    code, full = _run(tmp_path, folder, *flags, tag='full')
    assert code == 0
    cmd = [sys.executable, '-u', os.path.join(ROOT, 'main.py'), '--data_path', folder, *flags, '--no-progress',
           '--save_file', str(tmp_path / 'killed.jsonl'), '--checkpoint', str(tmp_path / 'killed.last.pt'),
           '--PATH_weight_save', str(tmp_path / 'killed.best.pt')]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=tmp_path)
    kill_during_next_epoch(proc, tmp_path / 'killed.last.pt', kill_after)
    assert proc.returncode == -signal.SIGKILL and not (tmp_path / 'killed.jsonl').exists()
    assert kill_after <= _checkpoint_epoch(tmp_path / 'killed.last.pt') < num_epoch
    code, resumed = _run(tmp_path, folder, *flags, '--resume', tag='killed')
    assert code == 0
    return full, resumed


def cli_roundtrip(tmp_path, folder, name, *flags, num_epoch=4, kill_after=2):
    """Train (killed and resumed, compared with the uninterrupted run), then export the best model's top 5."""
    flags = ['--model_name', name, '--batch_size', '64', '--dim_latent', '16', '--topK', '10', *flags]
    full, resumed = kill_then_resume_once(tmp_path, folder, flags, num_epoch, kill_after)
    assert (resumed['best_epoch'], resumed['val'], resumed['test']) == (full['best_epoch'], full['val'], full['test'])
    assert [h['loss'] for h in resumed['history']] == [h['loss'] for h in full['history']]
    assert full['test']['10']['recall'] > 0
    export = tmp_path / 'top.csv'
    code, _ = _run(tmp_path, folder, *flags, '--num_epoch', '0', '--topK', '5', '--PATH_weight_load',
                   str(tmp_path / 'full.best.pt'), '--export_topk', str(export), tag='exp')
    assert code == 0
    with open(export) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 * 120 and rows[0]['rank'] == '1'


# ---------------------------------------------------------------------- BM3

def bm3_hand_model(dropout=0.0):
    torch.manual_seed(0)
    return BM3(U, I, FEAT, normalized_adjacency(TRAIN, U, I), dim_latent=2, num_layer=1, dropout=dropout,
               reg_weight=0.1, cl_weight=2.0)


def test_bm3_encoder_scores_and_loss_by_hand():
    model = bm3_hand_model()
    e_u, e_i = model.embedding_user, model.embedding_item
    h = layer_mean(hand_adjacency(), torch.cat([e_u, e_i]), 1)
    h_u, h_i = h[:U], h[U:] + e_i                               # the ID embedding added again on the item side
    p = model.predictor
    z_user, z_item = model()
    assert torch.allclose(z_user, p(h_u), atol=1e-6) and torch.allclose(z_item, p(h_i), atol=1e-6)
    assert torch.allclose(model.scores(torch.tensor([1])), p(h_u)[1:] @ p(h_i).t(), atol=1e-6)

    users, items = torch.tensor([0, 1, 1]), torch.tensor([1, 1, 2])
    loss, parts = model.loss(users, items)
    sg_u, sg_i = h_u.detach()[users], h_i.detach()[items]                   # ρ = 0: targets unperturbed, no gradient
    rec = cos_loss(p(h_u[users]), sg_i) + cos_loss(p(h_i[items]), sg_u)
    reg = (h_u.norm() + h_i.norm()) / I                                     # Frobenius, not squared
    t = model.transforms['v'](model.feature_tables['v'])[items]
    cl = cos_loss(p(t), sg_i) + cos_loss(p(t), t.detach())
    assert parts['rec'] == pytest.approx(rec.item(), abs=1e-6) and parts['reg'] == pytest.approx(reg.item(), abs=1e-6)
    assert parts['cl_v'] == pytest.approx(cl.item(), abs=1e-6)
    hand = rec + 0.1 * reg + 2.0 * cl
    assert_loss_and_gradients(model, loss, hand, grad_atol=1e-6)


def test_bm3_rows_loss_equals_the_authors_order_and_targets_carry_no_gradient():
    model = bm3_hand_model()
    users, items = torch.tensor([0, 1, 1, 0]), torch.tensor([1, 1, 2, 0])
    fast, fast_parts = model.loss(users, items)
    plain, plain_parts = model.loss_plain(users, items)
    assert fast.item() == pytest.approx(plain.item(), abs=1e-6) and fast_parts == pytest.approx(plain_parts)
    grads = torch.autograd.grad(fast, list(model.parameters()), allow_unused=True)
    plain_grads = torch.autograd.grad(model.loss_plain(users, items)[0], list(model.parameters()), allow_unused=True)
    for g, q in zip(grads, plain_grads):
        assert (g is None) == (q is None) and (g is None or torch.allclose(g, q, atol=1e-6))


def test_bm3_dropout_perturbs_the_targets_from_the_seeded_rng():
    model = bm3_hand_model(dropout=0.5)
    users, items = torch.tensor([0, 1, 1]), torch.tensor([1, 1, 2])
    torch.manual_seed(3)
    first = model.loss(users, items)[0].item()
    torch.manual_seed(3)
    assert model.loss(users, items)[0].item() == first
    clean = bm3_hand_model(dropout=0.0).loss(users, items)[0].item()
    assert first != pytest.approx(clean)


def test_bm3_defaults_and_flags():
    args = config.parse_args(['--model_name', 'BM3'])
    assert (args.l_r, args.weight_decay, args.batch_size, args.num_layer, args.num_epoch, args.dropout_rate,
            args.cl_weight) == (1e-3, 0.1, 2048, 1, 1000, 0.5, 2.0)
    assert registry.adam_weight_decay(args) == 0.0
    assert '--cl_weight' in config.build_parser().format_help()
    with pytest.raises(Exception, match='--cl_weight: must be a finite number >= 0'):
        config.parse_args(['--model_name', 'BM3', '--cl_weight', '-1'])


def test_bm3_trains_resumes_and_exports(tiny_plain, tmp_path):
    cli_roundtrip(tmp_path, tiny_plain, 'BM3', '--l_r', '0.01')


# ---------------------------------------------------------------------- MGCN

def test_mgcn_weighted_knn_graph_by_hand():
    """cos(0, 1) = 2/√5, cos(1, 2) = 1/√5, cos(0, 2) = 0; item 3 is all zeros: itself alone, no NaN."""
    feat = np.array([[1., 0.], [2., 1.], [0., 1.], [0., 0.]], dtype=np.float32)
    a, b = 2 / math.sqrt(5), 1 / math.sqrt(5)
    w = torch.tensor([[1, a, 0, 0], [a, 1, 0, 0], [0, b, 1, 0], [0, 0, 0, 1]])        # rows: itself + 1 neighbour
    d = w.sum(1)
    expected = w / torch.sqrt(d[:, None] * d[None, :])
    for block in (2 ** 24, 4):                                                        # one block, then 1 row a block
        graph = normalized_weighted_knn(*weighted_knn(feat, 4, 2, block_floats=block), 4).to_dense()
        assert torch.allclose(graph, expected, atol=1e-6) and not graph.isnan().any()
    # a negative similarity in the top k weighs 0 (the row keeps its self-loop, its degree stays > 0)
    graph = normalized_weighted_knn(*weighted_knn(np.array([[1., 0.], [-1., 0.]], dtype=np.float32), 2, 2), 2)
    assert torch.equal(graph.to_dense(), torch.eye(2))


def test_mgcn_graph_cache_is_validated(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(knn_graph, 'CACHE_AFTER_S', 0.0)     # cache even a fast build
    feat = np.array([[1., 0.], [2., 1.], [0., 1.], [0., 0.]], dtype=np.float32)
    calls = []
    original = model_MGCN.weighted_knn
    monkeypatch.setattr(model_MGCN, 'weighted_knn', lambda *a, **k: calls.append(1) or original(*a, **k))
    first = model_MGCN.cached_weighted_knn('v', feat, 4, 2, str(tmp_path))
    path = tmp_path / 'mgcn_knn_v_k2.pt'
    assert path.exists() and len(calls) == 1
    again = model_MGCN.cached_weighted_knn('v', feat, 4, 2, str(tmp_path))
    assert len(calls) == 1 and all(torch.equal(a, b) for a, b in zip(first, again))
    saved = torch.load(path, weights_only=True)
    torch.save({**saved, 'values': saved['values'] * 3}, path)                 # weights out of range: rebuilt
    assert torch.equal(model_MGCN.cached_weighted_knn('v', feat, 4, 2, str(tmp_path))[1], first[1]) and len(calls) == 2
    path.write_bytes(b'garbage')
    model_MGCN.cached_weighted_knn('v', feat, 4, 2, str(tmp_path))
    assert len(calls) == 3 and 'does not match' in capsys.readouterr().err
    model_MGCN.cached_weighted_knn('v', feat[::-1].copy(), 4, 2, str(tmp_path))    # other content
    assert len(calls) == 4


MGCN_FEAT = {'v': np.array([[1., 0.], [1., 1.], [0., 2.]], dtype=np.float32),
             't': np.array([[0., 1., 1.], [1., 0., 0.], [1., 1., 0.]], dtype=np.float32)}


def mgcn_by_hand(model, softmax_dim=1):
    """``(c, s)`` of the module docstring with dense matrices and the model's own layers."""
    a = hand_adjacency()
    r = a[:U, U:]
    c = layer_mean(a, torch.cat([model.embedding_user, model.embedding_item]), 2)
    graphs = item_graphs(MGCN_FEAT, I, 2)
    views = []
    for m in ('v', 't'):
        e = model.embedding_item * torch.sigmoid(model.purifiers[m](model.transforms[m](model.feature_tables[m])))
        item = graphs[m].to_dense() @ e
        views.append(torch.cat([r @ item, item]))
    w = torch.softmax(torch.cat([model.query(x) for x in views], 1), softmax_dim)   # 1: over the modalities
    common = w[:, :1] * views[0] + w[:, 1:] * views[1]
    s = (common + sum(torch.sigmoid(model.preferences[m](c)) * (x - common) for m, x in zip('vt', views))) / 3
    return c, s


def nce_by_hand(a, b, tau=0.2):
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    return -torch.stack([(a[r] @ b[r] / tau) - torch.logsumexp(a[r] @ b.t() / tau, 0) for r in range(len(a))]).mean()


def test_mgcn_encoder_and_loss_by_hand():
    torch.manual_seed(0)
    model = MGCN(U, I, MGCN_FEAT, normalized_adjacency(TRAIN, U, I), item_graphs(MGCN_FEAT, I, 2), dim_latent=4,
                 num_layer=2, reg_weight=0.1, cl_weight=0.5)
    c, s = mgcn_by_hand(model)
    z = c + s
    z_user, z_item = model()
    assert torch.allclose(z_user, z[:U], atol=1e-6) and torch.allclose(z_item, z[U:], atol=1e-6)
    users, pos, neg = torch.tensor([0, 1, 1]), torch.tensor([1, 2, 1]), torch.tensor([2, 0, 0])
    loss, parts = model.loss(users, pos, neg)
    zu, zp, zn = z[users], z[U + pos], z[U + neg]
    bpr = bpr_by_hand(zu, zp, zn)
    reg = 0.5 * (zu.pow(2).sum() + zp.pow(2).sum() + zn.pow(2).sum()) / 3          # on the final embeddings
    cl = nce_by_hand(s[U + pos], c[U + pos]) + nce_by_hand(s[users], c[users])
    assert parts == pytest.approx({'bpr': bpr.item(), 'reg': reg.item(), 'cl': cl.item()}, abs=1e-5)
    hand = bpr + 0.1 * reg + 0.5 * cl
    assert_loss_and_gradients(model, loss, hand)


def test_mgcn_fuser_softmax_over_the_nodes():
    """``--mgcn_softmax nodes``: the authors' first commit (09095cb), each modality's column over the nodes."""
    torch.manual_seed(0)
    model = MGCN(U, I, MGCN_FEAT, normalized_adjacency(TRAIN, U, I), item_graphs(MGCN_FEAT, I, 2), dim_latent=4,
                 num_layer=2, fuser_softmax='nodes')
    c, s = mgcn_by_hand(model, softmax_dim=0)
    assert torch.allclose(torch.cat(model()), c + s, atol=1e-6)


def random_pairs(num_user, num_item, count, seed):
    rng = np.random.default_rng(seed)
    return np.unique(np.stack([rng.integers(0, num_user, count), rng.integers(0, num_item, count)], 1), axis=0)


def assert_fast_loss_is_plain(model, batch):
    """``model.loss`` equals ``model.loss_plain`` in float64, its parts and the gradient of every parameter."""
    model.double().train()
    results = []
    for loss_fn in (model.loss, model.loss_plain):
        torch.manual_seed(3)                                  # the same dropout / Gumbel draws for both
        loss, parts = loss_fn(*batch)
        results.append((loss, parts, torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)))
    (fast, fast_parts, fast_grads), (plain, plain_parts, plain_grads) = results
    assert fast.item() == pytest.approx(plain.item(), rel=1e-12)
    assert fast_parts == pytest.approx(plain_parts, rel=1e-12)
    for (name, _), g, h in zip(model.named_parameters(), fast_grads, plain_grads):
        assert (g is None) == (h is None), name
        assert g is None or torch.allclose(g, h, atol=1e-12), name


@pytest.mark.parametrize('softmax', ['modalities', 'nodes'])
def test_mgcn_fast_loss_matches_the_plain_formula(softmax):
    """The batch-rows views (few rows: 30 users, 40 items, 8 pairs) and the contrasts over distinct nodes
    weighted by their counts (repeated users and items in the batch), against every node's views and
    autograd's InfoNCE; 'nodes' normalises over every node, so it takes the full views."""
    train = random_pairs(30, 40, 200, seed=1)
    feats = {'v': np.random.default_rng(2).random((40, 6), dtype=np.float32),
             't': np.random.default_rng(3).random((40, 5), dtype=np.float32)}
    torch.manual_seed(0)
    model = MGCN(30, 40, feats, normalized_adjacency(train, 30, 40), item_graphs(feats, 40, 4), dim_latent=8,
                 num_layer=2, reg_weight=0.1, cl_weight=0.5, fuser_softmax=softmax)
    users, pos = torch.tensor([3, 3, 7, 12, 12, 12, 20, 29]), torch.tensor([1, 1, 5, 9, 30, 1, 9, 39])
    assert_fast_loss_is_plain(model, (users, pos, torch.tensor([2, 8, 8, 0, 11, 25, 33, 4])))


def test_mgcn_defaults_and_flags():
    args = config.parse_args(['--model_name', 'MGCN'])
    assert (args.l_r, args.weight_decay, args.batch_size, args.num_layer, args.num_epoch, args.knn_k,
            args.cl_weight, args.mgcn_softmax) == (1e-3, 1e-4, 2048, 2, 1000, 10, 0.01, 'modalities')
    assert registry.adam_weight_decay(args) == 0.0
    assert 'MGCN' in config.build_parser().format_help().split('--knn_k')[1].split('\n  --')[0]


def test_mgcn_trains_resumes_and_exports(tiny_plain, tmp_path):
    cli_roundtrip(tmp_path, tiny_plain, 'MGCN', '--l_r', '0.01', '--knn_k', '5')


# ---------------------------------------------------------------------- LGMRec

# A third user with one item: user degrees differ, so a user's mean and sum of items differ in direction.
LG_TRAIN = np.array([[0, 0], [0, 1], [1, 1], [1, 2], [2, 2]])
LG_U = 3


def dense_adjacency(train, num_user, num_item):
    """``D^-1/2 A D^-1/2`` of the bipartite graph, dense (every node here has an edge)."""
    a = torch.zeros(num_user + num_item, num_user + num_item)
    a[train[:, 0], num_user + train[:, 1]] = a[num_user + train[:, 1], train[:, 0]] = 1
    d = a.sum(1).rsqrt()
    return d[:, None] * a * d[None, :]


def lgmrec_hand_model(dropout=0.0):
    torch.manual_seed(0)
    return LGMRec(LG_U, I, MGCN_FEAT, LG_TRAIN, normalized_adjacency(LG_TRAIN, LG_U, I), dim_latent=4, num_layer=2, mm_layers=2,
                  hyper_num=3, hyper_layers=1, dropout=dropout, alpha=0.3, reg_weight=0.1, cl_weight=0.5)


def lgmrec_by_hand(model):
    """``(z, {m: h_m})`` of the module docstring with dense matrices, memberships ``softmax(x / 0.2)``."""
    U = LG_U
    a = dense_adjacency(LG_TRAIN, U, I)
    r = torch.zeros(U, I)
    r[LG_TRAIN[:, 0], LG_TRAIN[:, 1]] = 1
    r_mean = r / r.sum(1, keepdim=True)                                          # each user: the mean of its items
    c = layer_mean(a, torch.cat([model.embedding_user, model.embedding_item]), 2)
    local, hyper = c, {}
    for m in ('v', 't'):
        f = torch.tensor(MGCN_FEAT[m])
        item = f @ model.transforms[m]
        g = a @ (a @ torch.cat([r_mean @ item, item]))                          # the last of 2 layers, no mean
        local = local + F.normalize(g, dim=1)
        h_i, h_u = torch.softmax(f @ model.hyper[m] / 0.2, 1), torch.softmax(r @ f @ model.hyper[m] / 0.2, 1)
        latent = h_i.t() @ c[U:]
        hyper[m] = torch.cat([h_u @ latent, h_i @ latent])
    return local + 0.3 * F.normalize(hyper['v'] + hyper['t'], dim=1), hyper


def contrast_by_hand(a, b, every, tau=0.2):
    a, b, every = F.normalize(a, dim=1), F.normalize(b, dim=1), F.normalize(every, dim=1)
    return -sum(torch.log(torch.exp(a[r] @ b[r] / tau) / torch.exp(a[r] @ every.t() / tau).sum())
                for r in range(len(a)))


def test_lgmrec_evaluation_forward_by_hand():
    model = lgmrec_hand_model().eval()
    assert torch.allclose(dense_adjacency(TRAIN, U, I), hand_adjacency())
    z, _ = lgmrec_by_hand(model)
    z_user, z_item = model()
    assert torch.allclose(z_user, z[:LG_U], atol=1e-5) and torch.allclose(z_item, z[LG_U:], atol=1e-5)


def test_lgmrec_loss_by_hand(monkeypatch):
    """Training with the Gumbel noise replaced by none (and ρ = 0): the loss of the docstring, term by term."""
    monkeypatch.setattr(model_LGMRec.F, 'gumbel_softmax', lambda x, tau, hard, dim: torch.softmax(x / tau, dim))
    model = lgmrec_hand_model().train()
    z, hyper = lgmrec_by_hand(model)
    users, pos, neg = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 2]), torch.tensor([2, 0, 0])
    loss, parts = model.loss(users, pos, neg)
    n = LG_U
    zu, zp, zn = z[users], z[n + pos], z[n + neg]
    bpr = bpr_by_hand(zu, zp, zn)
    reg = (zu.norm() + zp.norm() + zn.norm()) / 3                                 # Frobenius norms, not squared
    hv, ht = hyper['v'], hyper['t']
    cl = contrast_by_hand(hv[users], ht[users], ht[:n]) + contrast_by_hand(hv[n + pos], ht[n + pos], ht[n:])
    assert parts == pytest.approx({'bpr': bpr.item(), 'hcl': cl.item(), 'reg': reg.item()}, abs=1e-5)
    hand = bpr + 0.5 * cl + 0.1 * reg
    assert_loss_and_gradients(model, loss, hand)


def test_lgmrec_noise_in_training_only_and_from_the_seeded_rng():
    model = lgmrec_hand_model(dropout=0.5)
    batch = torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([2, 0])
    torch.manual_seed(4)
    first = model.loss(*batch)[0].item()
    torch.manual_seed(4)
    assert model.loss(*batch)[0].item() == first
    assert model.loss(*batch)[0].item() != first                                 # fresh noise, fresh loss
    model.eval()
    assert torch.equal(model()[0], model()[0])


def test_lgmrec_fast_contrast_matches_the_plain_formula():
    """The contrasts' denominators by ``similarity_logsumexp`` (one [B, N] matrix, closed-form gradient)
    against autograd's ``logsumexp``, with two modalities and the training draws."""
    train = random_pairs(20, 25, 120, seed=4)
    feats = {m: np.random.default_rng(n).random((25, 6), dtype=np.float32) for n, m in enumerate('vat')}
    torch.manual_seed(0)
    model = LGMRec(20, 25, feats, train, normalized_adjacency(train, 20, 25), dim_latent=8, hyper_num=3,
                   cl_weight=0.5)
    assert_fast_loss_is_plain(model, (torch.tensor([0, 0, 5, 19]), torch.tensor([3, 3, 7, 24]),
                                      torch.tensor([1, 2, 2, 0])))


def test_lgmrec_defaults_and_flags():
    args = config.parse_args(['--model_name', 'LGMRec'])
    assert (args.l_r, args.weight_decay, args.batch_size, args.num_layer, args.num_epoch, args.dropout_rate,
            args.cl_weight, args.lgmrec_mm_layers, args.hyper_num, args.n_hyper_layer, args.lgmrec_alpha) == \
        (1e-3, 1e-6, 2048, 2, 1000, 0.5, 1e-4, 2, 4, 1, 0.3)
    assert registry.adam_weight_decay(args) == 0.0
    text = config.build_parser().format_help()
    assert all(f'--{flag}' in text for flag in ('lgmrec_mm_layers', 'hyper_num', 'n_hyper_layer', 'lgmrec_alpha'))
    with pytest.raises(Exception, match='--hyper_num: must be in'):
        config.parse_args(['--model_name', 'LGMRec', '--hyper_num', '0'])


def test_lgmrec_trains_resumes_and_exports(tiny_plain, tmp_path):
    cli_roundtrip(tmp_path, tiny_plain, 'LGMRec', '--l_r', '0.01')
