"""SPEC 3.6: SLMRec's one-propagation fast path (``plain_parts``, ``view_rows``) against the
per-branch formula kept beside it (``propagate``, ``view_rows_per_branch``): values and the
gradients of every parameter, for every SSL task, both fusions, Movielens-, Kwai- and
Tiktok-shaped data, the full graph and the batch-rows path."""
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from BaseModel import normalized_adjacency, rows_are_sparse
from DataLoad import WordFeature
from model_SSL import SLMRec

SHAPES = {'movielens': {'v': 20, 'a': 6, 't': 5}, 'kwai': {'v': 20}, 'tiktok': {'v': 7, 'a': 6, 't': 'words'}}


def _data(shape, num_user=40, num_item=50, seed=0):
    rng = np.random.default_rng(seed)
    train = np.unique(np.stack([rng.integers(0, num_user, 300), rng.integers(0, num_item, 300)], 1), axis=0)
    features = {}
    for m, dim in SHAPES[shape].items():
        if dim == 'words':
            item_index = torch.as_tensor(rng.integers(0, num_item - 5, 120))      # the last items have no word
            features[m] = WordFeature(item_index, torch.as_tensor(rng.integers(0, 30, 120)), 30, dim=9)
        else:
            features[m] = rng.standard_normal((num_item, dim)).astype(np.float32)
    return train, features, normalized_adjacency(train, num_user, num_item)


def _loss_and_grads(model, users, items, seed):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    loss, parts = model.loss(users, items)
    loss.backward()
    return loss.detach(), parts, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_close(fast, reference):
    (loss_a, parts_a, grads_a), (loss_b, parts_b, grads_b) = fast, reference
    assert torch.allclose(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    assert parts_a.keys() == parts_b.keys()
    assert grads_a.keys() == grads_b.keys()
    for name in grads_b:
        scale = grads_b[name].abs().max().item()
        assert (grads_a[name] - grads_b[name]).abs().max().item() <= 1e-5 * scale + 1e-7, name


@pytest.mark.parametrize('shape', list(SHAPES))
@pytest.mark.parametrize('fusion', ['concat', 'mean'])
@pytest.mark.parametrize('task', ['FAC', 'FD', 'FM', 'FD+FM', 'none'])
@pytest.mark.parametrize('batch', [6, 200])
def test_fast_loss_matches_the_per_branch_formula(shape, fusion, task, batch, monkeypatch):
    train, features, adj = _data(shape)
    torch.manual_seed(1)
    model = SLMRec(40, 50, features, adj, dim_latent=8, num_layer=3, fusion=fusion, ssl_task=task)
    pick = np.random.default_rng(2).integers(0, len(train), batch)
    users, items = torch.as_tensor(train[pick, 0]), torch.as_tensor(train[pick, 1])
    rows = torch.unique(torch.cat([users, items + 40]))
    assert rows_are_sparse(adj, rows) == (batch == 6)          # the row-block and the full-graph paths
    if 'FM' in task:            # the same masked pair for both paths: the last branch and id
        monkeypatch.setattr(model, 'masked_pair', lambda: (model.num_branch - 1, 0))
    fast = _loss_and_grads(model, users, items, seed=3)
    monkeypatch.setattr(model, 'view_rows', model.view_rows_per_branch)
    _assert_close(fast, _loss_and_grads(model, users, items, seed=3))


@pytest.mark.parametrize('shape', list(SHAPES))
@pytest.mark.parametrize('fusion', ['concat', 'mean'])
def test_fast_forward_matches_the_per_branch_formula(shape, fusion):
    train, features, adj = _data(shape, seed=4)
    torch.manual_seed(1)
    model = SLMRec(40, 50, features, adj, dim_latent=8, num_layer=2, fusion=fusion, ssl_task='none')
    weights = [torch.randn(40, 8), torch.randn(50, 8)]
    fast = model()
    grads = torch.autograd.grad(sum((z * w).sum() for z, w in zip(fast, weights)), list(model.parameters()))
    wide = model.propagate([(0.0, None)])
    reference = model.fuse(wide[:40], wide[40:])
    expected = torch.autograd.grad(sum((z * w).sum() for z, w in zip(reference, weights)), list(model.parameters()))
    for a, b in zip(fast, reference):
        assert torch.allclose(a, b, atol=1e-6)
    for (name, _), g, e in zip(model.named_parameters(), grads, expected):
        assert torch.allclose(g, e, atol=1e-5), name


def test_id_only_model_is_lightgcn():
    """No modality: one branch whose output is LightGCN's layer mean of [E_u ; E_i]."""
    train, _, adj = _data('kwai')
    model = SLMRec(40, 50, {}, adj, dim_latent=8, num_layer=3, ssl_task='none')
    x = torch.cat([model.embedding_user.weight, model.embedding_item.weight])
    A = adj.to_dense()
    layers = [x, A @ x, A @ A @ x, A @ A @ A @ x]
    mean = sum(layers) / 4
    user_part, item_parts = model.plain_parts()
    assert torch.allclose(user_part + item_parts[0], mean, atol=1e-6)
    z_user, z_item = model()
    assert torch.allclose(z_user, model.fuse_user(mean[:40]), atol=1e-6)
    assert torch.allclose(z_item, model.fuse_item(mean[40:]), atol=1e-6)


def test_plain_parts_by_hand_on_two_users_and_two_items():
    """SPEC 3.6's three identities written out on a path u0 - i0 - u1 - i1, L = 2."""
    train = np.array([[0, 0], [1, 0], [1, 1]])
    adj = normalized_adjacency(train, 2, 2)
    A = adj.to_dense()
    feat = np.array([[3.0, 4.0], [1.0, 0.0]], dtype=np.float32)
    torch.manual_seed(0)
    model = SLMRec(2, 2, {'v': feat}, adj, dim_latent=3, num_layer=2, ssl_task='none')
    e_u, e_i = model.embedding_user.weight, model.embedding_item.weight
    zeros = torch.zeros(2, 3)

    def P(x):
        return (x + A @ x + A @ A @ x) / 3
    side_v = model.dense['v'](F.normalize(torch.as_tensor(feat), dim=1))
    user_part, (id_part, v_part) = model.plain_parts()
    assert torch.allclose(user_part, P(torch.cat([e_u, zeros])), atol=1e-6)
    assert torch.allclose(id_part, P(torch.cat([zeros, e_i])), atol=1e-6)
    assert torch.allclose(v_part, P(torch.cat([zeros, side_v])), atol=1e-6)
    # P[0 ; 1] and P[0 ; F̂] are fixed tables: user 0 reaches item 0 at layer 1, item 0 and 1 at layer 2
    assert torch.allclose(model.prop_ones, P(torch.cat([torch.zeros(2, 1), torch.ones(2, 1)])), atol=1e-6)
    assert 'prop_ones' not in model.state_dict() and 'prop_v' not in model.state_dict()


@pytest.mark.parametrize('shape', ['movielens', 'tiktok'])
@pytest.mark.parametrize('pair', [(0, 2), (3, 1)])
def test_crossed_fm_views_match_the_per_branch_reference(shape, pair):
    """SPEC 3.3: the official FM views from the fast path (two clean views, the identity of
    ``cross_fm_views``, the users' rows swapped) equal ``fm_views_per_branch``, values and gradients."""
    train, features, adj = _data(shape)
    torch.manual_seed(1)
    model = SLMRec(40, 50, features, adj, dim_latent=8, num_layer=3, ssl_task='FM')
    users, items = torch.tensor([0, 5, 5, 39]), torch.tensor([1, 49, 7, 7])
    rows = torch.cat([users, items + 40])
    views = model.view_rows(rows, *pair)
    fast = [torch.cat([views[3 - v][:4], crossed]) for v, crossed in
            zip((1, 2), model.cross_fm_views([view[4:] for view in views[1:]], items, *pair))]
    reference = model.fm_views_per_branch(rows, *pair)
    weights = [torch.randn_like(view) for view in reference]
    grads = [torch.autograd.grad(sum((v * w).sum() for v, w in zip(views_, weights)), list(model.parameters()),
                                 allow_unused=True) for views_ in (fast, reference)]
    for a, b in zip(fast, reference):
        assert torch.allclose(a, b, atol=1e-5)
    for a, b in zip(*grads):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-5)
