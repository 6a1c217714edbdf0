"""MMSSL and DiffMM (issue #32, docs/models.md) and ``--select_on test``: each equation against a dense hand
computation on a 2-3 user, 3 item graph, each fast path against its plain formula, the extra optimisers and
draws through the command line (SIGKILL then --resume equal to the uninterrupted run, --export_topk, a torchrun
run resumed by one process), and the test-selected protocol's labels."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import config
import registry
from conftest import ROOT, one_line_error
from model_DiffMM import DiffMM, diffusion_schedule
from model_MMSSL import MMSSL, masked_scores, masked_scores_layer
from test_models_bm3_mgcn_lgmrec import MGCN_FEAT, TRAIN, U, I, bpr_by_hand, cli_roundtrip
from test_train import _run


def assert_loss_and_gradients(params, loss, hand, grad_atol=1e-5):
    """The loss equals the hand computation, and so does its gradient by each of ``params`` (those it trains)."""
    assert loss.item() == pytest.approx(hand.item(), rel=1e-5, abs=1e-5)
    for g, q in zip(torch.autograd.grad(loss, params), torch.autograd.grad(hand, params)):
        assert torch.allclose(g, q, atol=grad_atol, rtol=1e-4)


def main_params(model, other):
    return [p for n, p in model.named_parameters() if not n.startswith(other)]


def dense_r(train, num_user, num_item):
    r = torch.zeros(num_user, num_item)
    r[train[:, 0], train[:, 1]] = 1
    return r


def sym_norm_with_loops(a):
    """``D^-1/2 (A + I) D^-1/2``, ``D`` the row sums of ``A + I``."""
    a = a + torch.eye(len(a))
    d = a.sum(1).rsqrt()
    return d[:, None] * a * d[None, :]


def bipartite(r):
    n_u, n_i = r.shape
    a = torch.zeros(n_u + n_i, n_u + n_i)
    a[:n_u, n_u:], a[n_u:, :n_u] = r, r.t()
    return a


def contrast_mean(a, b, nodes, tau):
    """-mean_r log(exp(â_r·b̂_r/τ) / Σ_j exp(â_r·b̂_j/τ)), j over every row of b."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    return -sum(torch.log(torch.exp(a[n] @ b[n] / tau) / torch.exp(a[n] @ b.t() / tau).sum()) for n in nodes) / len(nodes)


# ---------------------------------------------------------------------- DiffMM

def diffmm_hand_model(**kw):
    torch.manual_seed(0)
    model = DiffMM(U, I, MGCN_FEAT, TRAIN, dim_latent=4, num_layer=1, batch_size=3, reg_weight=0.1, cl_weight=0.5,
                   temperature=0.5, hidden=5, steps=2, **kw)
    with torch.no_grad():
        model.modal_weight.copy_(torch.tensor([0.3, -0.2]))
    return model


HAND_GRAPHS = {'v': [(0, 2 + 2), (1, 2 + 0)], 't': [(0, 2 + 1)]}     # user -> item node, per modality


def set_hand_graphs(model):
    """G_m: the given user-item edges, self-loops, normalised, then two entries dropped and the rest scaled."""
    graphs = {}
    for m, edges in HAND_GRAPHS.items():
        a = torch.zeros(U + I, U + I)
        for u, i in edges:
            a[u, i] = a[i, u] = 1
        g = sym_norm_with_loops(a)
        g[0, 0] = 0                                    # a dropped entry: G_m need not be symmetric
        graphs[m] = g
        sparse = g.to_sparse()
        setattr(model, f'graph_{m}_index', sparse.indices())
        setattr(model, f'graph_{m}_value', sparse.values())
    return graphs


def diffmm_by_hand(model, graphs):
    """``(z, {m: v_m})`` of the module docstring, dense."""
    adj = sym_norm_with_loops(bipartite(dense_r(TRAIN, U, I)))
    ids = torch.cat([model.embedding_user, model.embedding_item])
    w = torch.softmax(model.modal_weight, 0)
    mixed, views = 0, {}
    for n, m in enumerate(('v', 't')):
        f = F.normalize(model.transforms[m](torch.tensor(MGCN_FEAT[m])), dim=1)
        side = torch.cat([model.embedding_user, f])
        first = adj @ side
        h = first + adj @ torch.cat([first[:U], model.embedding_item]) + 0.2 * graphs[m] @ ids
        mixed = mixed + w[n] * h
        views[m] = graphs[m] @ side + adj @ (graphs[m] @ side)              # Σ_{l=0..1}, a sum
    return mixed + adj @ mixed + 0.5 * F.normalize(mixed, dim=1), views


def test_diffmm_encoder_and_loss_by_hand():
    model = diffmm_hand_model()
    graphs = set_hand_graphs(model)
    z, views = diffmm_by_hand(model, graphs)
    z_user, z_item = model()
    assert torch.allclose(z_user, z[:U], atol=1e-5) and torch.allclose(z_item, z[U:], atol=1e-5)
    users, pos, neg = torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([2, 0])
    loss, parts = model.loss(users, pos, neg)
    zu, zp, zn = z[users], z[U + pos], z[U + neg]
    bpr = -F.logsigmoid((zu * zp).sum(1) - (zu * zn).sum(1)).sum() / 3                # / the nominal batch size
    reg = model.embedding_user.pow(2).sum() + model.embedding_item.pow(2).sum()      # the whole tables
    cl = sum(contrast_mean(z[:U], views[m][:U], users, 0.5) + contrast_mean(z[U:], views[m][U:], pos, 0.5)
             for m in ('v', 't'))
    assert parts == pytest.approx({'bpr': bpr.item(), 'reg': reg.item(), 'cl': cl.item()}, abs=1e-5)
    assert_loss_and_gradients(main_params(model, 'denoisers.'), loss, bpr + 0.1 * reg + 0.5 * cl)
    # --diffmm_cl modalities: each pair of views instead of each view against the main embeddings
    model.cl = 'modalities'
    pair = contrast_mean(views['v'][:U], views['t'][:U], users, 0.5) + contrast_mean(views['v'][U:], views['t'][U:], pos, 0.5)
    assert model.loss(users, pos, neg)[1]['cl'] == pytest.approx(pair.item(), abs=1e-5)


def test_diffmm_schedule_denoiser_and_diffusion_loss_by_hand():
    s = diffusion_schedule(2, 0.1, 1e-4, 0.02)
    var = np.array([0.1 * 1e-4, 0.1 * 0.02])
    betas = np.array([1e-4, 1 - (1 - var[1]) / (1 - var[0])])       # β_0 fixed at 1e-4
    ab = np.cumprod(1 - betas)
    snr = ab / (1 - ab)
    assert np.allclose(s['sqrt_ab'], np.sqrt(ab)) and np.allclose(s['weight'], [1.0, snr[0] - snr[1]])
    assert np.allclose(s['coef_out'], betas * np.sqrt([1.0, ab[0]]) / (1 - ab))
    assert np.allclose(s['coef_x'], (1 - np.array([1.0, ab[0]])) * np.sqrt(1 - betas) / (1 - ab))
    model = diffmm_hand_model().eval()                                    # no dropout: the draws are t and ε
    d = model.denoisers['v']
    x0, t = dense_r(TRAIN, U, I), torch.tensor([1, 0])
    freqs = torch.exp(-math.log(10000) * torch.arange(5) / 5)
    emb = d.time_layer(torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], 1))
    out = d.out_layer(torch.tanh(d.in_layer(torch.cat([x0, emb], 1))))
    assert torch.allclose(d(x0, t), out, atol=1e-6)
    items, ids = model.modality_items('v').detach(), model.embedding_item.detach()
    x0 = x0.repeat(3, 1)                                                  # 6 rows: both steps drawn
    torch.manual_seed(3)
    t, noise = torch.randint(0, 2, (6,)), torch.randn(6, I)
    assert set(t.tolist()) == {0, 1}
    sab = torch.tensor(np.sqrt(ab), dtype=torch.float32)[t, None]
    x_t = sab * x0 + torch.sqrt(1 - sab ** 2) * noise
    out = d(x_t, t)
    w = torch.tensor(s['weight'], dtype=torch.float32)[t]
    hand = (w * (x0 - out).pow(2).mean(1)).mean() + 0.1 * (out @ items - x0 @ ids).pow(2).mean()
    torch.manual_seed(3)
    assert model.diffusion_loss('v', x0, ids).item() == pytest.approx(hand.item(), rel=1e-5)
    # the rebuild's denoising: x ← coef_out f(x, t) + coef_x x for t = 1, 0, from x0 itself
    x0 = x = dense_r(TRAIN, U, I)
    for step in (1, 0):
        tt = torch.full((U,), step)
        x = float(s['coef_out'][step]) * d(x, tt, drop=False) + float(s['coef_x'][step]) * x
    assert torch.allclose(model.denoise('v', x0), x, atol=1e-5)


def test_diffmm_rebuilt_graphs_and_their_dropped_entries():
    model = diffmm_hand_model(keep=1.0)
    model.rebuild_graphs()
    for m in ('v', 't'):
        best = model.denoise(m, dense_r(TRAIN, U, I)).argmax(1)
        a = torch.zeros(U + I, U + I)
        a[torch.arange(U), U + best] = a[U + best, torch.arange(U)] = 1
        assert torch.allclose(model.graph(m).to_dense(), sym_norm_with_loops(a), atol=1e-6)
    model = diffmm_hand_model(keep=0.5)
    full = {}
    torch.manual_seed(1)
    model.keep = 1.0
    model.rebuild_graphs()
    full = {m: model.graph(m).to_dense() for m in ('v', 't')}
    model.keep = 0.5
    torch.manual_seed(1)
    model.rebuild_graphs()
    for m in ('v', 't'):
        kept = model.graph(m).to_dense()
        on = kept != 0
        assert 0 < int(on.sum()) < int((full[m] != 0).sum())                  # some entries dropped, some kept
        assert torch.allclose(kept[on], 2 * full[m][on])                      # kept ones scaled by 1 / keep


def test_diffmm_rows_are_a_batch_of_the_interaction_matrix():
    model = diffmm_hand_model()
    users = torch.tensor([0, 1])
    assert torch.equal(model.interaction_rows(users), dense_r(TRAIN, U, I)[users])


def test_diffmm_epoch_steps_train_the_denoisers_alone():
    model = diffmm_hand_model().train()
    optimizer, extra = registry.optimizers(config.parse_args(['--model_name', 'DiffMM']), model)
    assert {id(p) for p in extra['denoisers'].param_groups[0]['params']} == {id(p) for p in model.denoisers.parameters()}
    assert not {id(p) for g in optimizer.param_groups for p in g['params']} & {id(p) for p in model.denoisers.parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    steps = 0
    for name, loss, parts in model.epoch_steps():
        extra[name].zero_grad()
        loss.backward()
        extra[name].step()
        steps += 1
        assert set(parts) == {'diff_v', 'diff_t'}
    assert steps == 1 and model.graph_v_value.numel() > 0                   # U = 2 users: one batch of 3
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith('denoisers.') for n in changed)


# ---------------------------------------------------------------------- MMSSL

LEARNED = torch.tensor([[0, 0, 1, 2], [1, 1, 2, 0]])           # user 0 - item 1 twice: duplicates add up
MM_TRAIN = np.array([[0, 0], [0, 1], [1, 1], [1, 2], [2, 2]])  # 3 users, 3 items
MM_U = 3


def mmssl_hand_model(**kw):
    torch.manual_seed(0)
    kw = {'dropout': 0.0, 'd_drop1': 0.0, 'd_drop2': 0.0, 'reg_weight': 0.1, 'cl_weight': 0.5, 'feat_reg': 0.2,
          'g_rate': 0.3, 'graph_every': 10 ** 6, 'topk_rate': 0.0, **kw}
    return MMSSL(MM_U, 8, {m: np.vstack([f, f + 1, f[:2]]) for m, f in MGCN_FEAT.items()}, MM_TRAIN, dim_latent=4,
                 num_layer=2, batch_size=3, **kw)


def row_norm(mat, power):
    deg = mat.sum(1, keepdim=True)
    return torch.where(deg > 0, deg.clamp(min=1).pow(power), torch.zeros_like(deg)) * mat


def mmssl_by_hand(model):
    """``(z_u, z_i, {m: (p, q)}, {m: a})`` of the module docstring, dense (no dropout)."""
    n_u, n_i = model.num_user, model.num_item
    r = dense_r(MM_TRAIN, n_u, n_i)
    rt, rti = row_norm(r, -0.5), row_norm(r.t(), -0.5)
    s = torch.zeros(n_u, n_i)
    for u, i in model.learned_v.t().tolist():
        s[u, i] += 1
    st, sti = row_norm(s, -0.5), row_norm(s.t(), -0.5)
    w = sum(model.attention_cat[h * 4:(h + 1) * 4] for h in range(4))
    modal, ids = {}, {}
    for m in model.modalities:
        f = model.transforms[m](model.item_input(m))
        modal[m] = (rt @ f, rti @ (rt @ f))
        ids[m] = st @ model.embedding_item
    u0 = model.embedding_user + 0.36 * F.normalize(torch.stack([ids[m] for m in ids]).mean(0) @ w, dim=1)
    i0 = model.embedding_item + 0.36 * F.normalize(torch.stack([sti @ model.embedding_user] * 2).mean(0) @ w, dim=1)
    u1 = rt @ i0
    i1 = rti @ u1
    u2 = torch.softmax(rt @ i1, 1)
    i2 = torch.softmax(rti @ u2, 1)
    z_u = (u0 + u1 + u2) / 3 + 0.55 * sum(F.normalize(p, dim=1) for p, _ in modal.values())
    z_i = (i0 + i1 + i2) / 3 + 0.55 * sum(F.normalize(q, dim=1) for _, q in modal.values())
    return z_u, z_i, modal, ids


def d_by_hand(d, x):
    """The discriminator written out: batch statistics (biased variance), no dropout (rates 0 here)."""
    def bn(h, norm):
        return (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + norm.eps) * norm.weight + norm.bias
    h = bn(x @ d.first.weight.t() + d.first.bias, d.norm1)
    h = bn(h @ d.second.weight.t() + d.second.bias, d.norm2)
    return 100 * torch.sigmoid(h @ d.last.weight.t() + d.last.bias).view(-1)


def masked_by_hand(x, y, mask):
    return F.normalize((x @ y.t()) * (1 - mask), dim=1)


def grace_by_hand(z1, z2, tau):
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    e = lambda u, v: torch.exp(u @ v / tau)                       # noqa: E731
    return -sum(torch.log(e(a[r], b[r]) / (sum(e(a[r], a[j]) + e(a[r], b[j]) for j in range(len(a))) - e(a[r], a[r]))
                          + 1e-8) for r in range(len(a))) / len(a)


def test_mmssl_encoder_by_hand_with_a_learned_graph():
    model = mmssl_hand_model().eval()
    for m in model.modalities:
        setattr(model, f'learned_{m}', LEARNED.clone())
    z_u, z_i, _, _ = mmssl_by_hand(model)
    ours_u, ours_i = model()
    assert torch.allclose(ours_u, z_u, atol=1e-5) and torch.allclose(ours_i, z_i, atol=1e-5)


def test_mmssl_discriminator_loss_by_hand():
    model = mmssl_hand_model().train()
    users = torch.tensor([0, 2, 2])                               # a repeated user, as our sampler may draw
    torch.manual_seed(4)
    loss, parts = model.discriminator_loss(users)
    torch.manual_seed(4)
    with torch.no_grad():
        z_u, z_i, modal, _ = mmssl_by_hand(model)
    mask = dense_r(MM_TRAIN, MM_U, 8)[users]
    d = model.discriminator
    fake = torch.cat([masked_by_hand(p[users], q, mask) for p, q in modal.values()])
    gumbel = torch.log(-torch.log(torch.rand(3, 8) + 1e-8) + 1e-8)
    real = F.normalize(torch.softmax(mask - 1e-5 * gumbel / 0.005, 1) + 100 * masked_by_hand(z_u[users], z_i, mask), dim=1)
    real = real.repeat(2, 1)
    alpha = torch.rand(6, 1)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_()
    grad, = torch.autograd.grad(d_by_hand(d, mixed).sum(), mixed, create_graph=True)
    penalty = 0.3 * ((grad.norm(dim=1) - 1) ** 2).mean()
    hand = -d_by_hand(d, real).mean() + d_by_hand(d, fake).mean() + penalty
    assert parts['gp'] == pytest.approx(penalty.item(), rel=1e-5)
    assert_loss_and_gradients(list(model.discriminator.parameters()), loss, hand, grad_atol=1e-3)


def test_mmssl_main_loss_by_hand():
    model = mmssl_hand_model().train()
    users, pos, neg = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 2]), torch.tensor([5, 0, 7])
    loss, parts = model.loss(users, pos, neg)
    z_u, z_i, modal, ids = mmssl_by_hand(model)
    mask = dense_r(MM_TRAIN, MM_U, 8)[users]
    u, p, n = z_u[users], z_i[pos], z_i[neg]
    bpr = bpr_by_hand(u, p, n)
    reg = 0.5 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / 3
    feat = 0.5 * sum(a.pow(2).sum() + b.pow(2).sum() for a, b in modal.values()) / 8
    cl = sum(grace_by_hand(ids[m][users], u, 0.5) for m in ids)
    adv = d_by_hand(model.discriminator, torch.cat([masked_by_hand(a[users], b, mask) for a, b in modal.values()])).mean()
    assert parts == pytest.approx({'bpr': bpr.item(), 'reg': reg.item(), 'feat': feat.item(), 'cl': cl.item(),
                                   'g': adv.item()}, rel=1e-5)
    assert_loss_and_gradients(main_params(model, 'discriminator.'), loss, bpr + 0.1 * reg + 0.2 * feat + 0.5 * cl - 0.3 * adv,
                              grad_atol=1e-4)


def test_mmssl_first_layer_fast_path_equals_the_plain_formula():
    torch.manual_seed(1)
    x, y = torch.randn(5, 3, requires_grad=True), torch.randn(7, 3, requires_grad=True)
    weight, bias = torch.randn(4, 7, requires_grad=True), torch.randn(4, requires_grad=True)
    mask = (torch.rand(5, 7) < 0.3).float()
    mask[2] = 1                                                     # every item masked: a zero row
    mask[3] = 0                                                     # nothing masked
    with torch.no_grad():
        x[4] = 0                                                    # a zero user row
    pairs = tuple(mask.to_sparse().indices())
    fast = masked_scores_layer(x, y, pairs, weight, bias)
    plain = F.linear(masked_scores(x, y, mask), weight, bias)
    assert torch.allclose(fast, plain, atol=1e-5)
    # gradients: F.normalize's at a zero row is 1/eps-sized, not compared (the fast path's stays finite)
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(fast.sum(), [x, y, weight, bias]))
    rows = slice(0, 4)
    fast = masked_scores_layer(x[rows], y, tuple(mask[rows].to_sparse().indices()), weight, bias)
    plain = F.linear(masked_scores(x[rows], y, mask[rows]), weight, bias)
    probe = torch.randn_like(plain)
    for g, q in zip(torch.autograd.grad((fast * probe).sum(), [x, y, weight, bias]),
                    torch.autograd.grad((plain * probe).sum(), [x, y, weight, bias])):
        assert torch.allclose(g, q, atol=1e-4)


def test_mmssl_fast_and_plain_steps_agree():
    """The discriminator's loss and gradients, and the main loss's model gradients, fast path against plain."""
    batch = torch.tensor([0, 1, 2, 2]), torch.tensor([1, 2, 2, 2]), torch.tensor([5, 0, 7, 3])
    results = []
    for fast in (True, False):
        model = mmssl_hand_model(dropout=0.2, d_drop1=0.31, d_drop2=0.5, fast=fast).train()
        torch.manual_seed(6)
        d_loss, _ = model.discriminator_loss(batch[0])
        d_grads = torch.autograd.grad(d_loss, list(model.discriminator.parameters()))
        loss, _ = model.loss(*batch)
        params = [p for n, p in model.named_parameters() if not n.startswith('discriminator.')]
        results.append((d_loss.item(), d_grads, loss.item(), torch.autograd.grad(loss, params)))
    (d1, g1, l1, m1), (d2, g2, l2, m2) = results
    assert d1 == pytest.approx(d2, rel=1e-5) and l1 == pytest.approx(l2, rel=1e-6)
    scale = max(b.abs().max() for b in g2)          # the D loss is ~1e4: rounding noise on gradients near zero
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * scale), (a - b).abs().max()
    for a, b in zip(m1, m2):
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()


def test_mmssl_graph_schedule_and_its_state():
    """T = 2, one item per user: steps 0, 1 collect, step 2 rebuilds S_m from them, step 3 collects again; a new
    epoch's first step collects.  T = 1 with no item per user (TikTok's defaults): S_m is empty from step 1 on."""
    model = mmssl_hand_model(graph_every=2, topk_rate=0.13).train()            # ⌊8 × 0.13⌋ = 1
    batches = [(torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([3, 4])),
               (torch.tensor([2, 0]), torch.tensor([2, 0]), torch.tensor([5, 6]))]
    collected = []
    for step in range(4):
        users = batches[step % 2][0]
        with torch.no_grad():
            _, _, modal, _ = model.encode()
        mask = dense_r(MM_TRAIN, MM_U, 8)[users]
        top = masked_by_hand(modal['v'][0][users], modal['v'][1], mask).argmax(1)
        model.loss(*batches[step % 2])
        if step == 2:
            assert torch.equal(model.learned_v, torch.cat(collected, dim=1)) and model.pending_v.shape[1] == 0
        else:
            collected.append(torch.stack([users, top]))
            assert torch.equal(model.pending_v[:, -2:], collected[-1])
    state = model.state_dict()
    fresh = mmssl_hand_model(graph_every=2, topk_rate=0.13)
    fresh.load_state_dict(state)                                             # the edge lists take the saved size
    assert torch.equal(fresh.pending_v, model.pending_v) and torch.equal(fresh.learned_t, model.learned_t)
    assert all(torch.equal(a, b) for a, b in zip(fresh.eval()(), model.eval()()))
    tiktok = mmssl_hand_model(graph_every=1, topk_rate=1e-4).train()
    for step in range(2):
        tiktok.loss(*batches[0])
    assert tiktok.learned_v.shape[1] == 0 and tiktok.encode()[3]['v'].abs().sum() == 0


# ---------------------------------------------------------------------- both: defaults, flags, command line

def test_defaults_flags_and_exact_mode():
    d = config.parse_args(['--model_name', 'DiffMM'])
    assert (d.l_r, d.weight_decay, d.batch_size, d.num_layer, d.num_epoch, d.dropout_rate, d.cl_weight, d.cl_temp,
            d.diffmm_steps, d.diffmm_dims, d.diffmm_e_loss, d.diffmm_trans, d.diffmm_cl) == \
        (1e-3, 1e-4, 1024, 1, 50, 0.5, 1e-2, 0.5, 5, 1000, 0.1, 'linear', 'main')
    m = config.parse_args(['--model_name', 'MMSSL'])
    assert (m.l_r, m.weight_decay, m.batch_size, m.num_layer, m.dropout_rate, m.cl_weight, m.cl_temp, m.mmssl_d_lr,
            m.mmssl_g_rate, m.mmssl_real_tau, m.mmssl_graph_every, m.mmssl_topk_rate) == \
        (0.00055, 1e-5, 1024, 2, 0.2, 0.03, 0.5, 3e-4, 1e-4, 0.005, 1, 1e-4)
    for name in ('DiffMM', 'MMSSL'):
        with pytest.raises(Exception, match='--dist_mode'):
            config.parse_args(['--model_name', name, '--dist_mode', 'exact'])
    with pytest.raises(Exception, match='--diffmm_sampling_steps'):
        config.parse_args(['--model_name', 'DiffMM', '--diffmm_sampling_steps', '9'])


def test_mmssl_trains_resumes_and_exports(tiny_plain, tmp_path):
    cli_roundtrip(tmp_path, tiny_plain, 'MMSSL', '--batch_size', '128', '--l_r', '0.01', '--mmssl_topk_rate', '0.02',
                  '--mmssl_graph_every', '5', num_epoch=3, kill_after=1)
    ckpt = torch.load(tmp_path / 'full.last.pt', weights_only=True)
    assert set(ckpt['extra_optimizers']) == {'discriminator'} and ckpt['model']['pending_v'].shape[1] > 0


def test_diffmm_trains_resumes_and_exports(tiny_plain, tmp_path, capsys):
    cli_roundtrip(tmp_path, tiny_plain, 'DiffMM', '--batch_size', '128', '--l_r', '0.01', '--diffmm_dims', '32',
                  num_epoch=3, kill_after=1)
    ckpt = torch.load(tmp_path / 'full.last.pt', weights_only=True)
    assert set(ckpt['extra_optimizers']) == {'denoisers'}
    del ckpt['extra_optimizers']
    torch.save(ckpt, tmp_path / 'broken.last.pt')
    code, _ = _run(tmp_path, tiny_plain, '--model_name', 'DiffMM', '--batch_size', '128', '--dim_latent', '16',
                   '--topK', '10', '--l_r', '0.01', '--diffmm_dims', '32', '--num_epoch', '4', '--patience', '50',
                   '--resume', tag='broken')
    assert code == 2 and 'its other optimisers: none' in capsys.readouterr().err


RANK_EPOCH = """
import sys, torch
sys.path.insert(0, {root!r})
import config, distributed, registry
from checkpoint import seed_everything
from DataLoad import TrainSampler, load_dataset
from Train import train_epoch
distributed.setup(False, 120, 'data')
for name, flags in (('MMSSL', ['--mmssl_topk_rate', '0.02', '--mmssl_graph_every', '5']), ('DiffMM', ['--diffmm_dims', '32'])):
    args = config.parse_args(['--data_path', {data!r}, '--model_name', name, '--batch_size', '128',
                              '--dim_latent', '16', *flags])
    rng = seed_everything(1)
    data = load_dataset(args.data_path)
    model = registry.build_model(args, data)
    optimizer, extra = registry.optimizers(args, model)
    ranks, rank = distributed.sampler_share()
    sampler = TrainSampler(data.train, data.num_item, args.batch_size, rng, ranks=ranks, rank=rank)
    train_epoch(distributed.wrap(model, torch.device('cpu'), extra), sampler, optimizer, 'cpu', 1, False, extra)
    torch.save(model.state_dict(), {out!r} + f'.{{name}}.rank{{distributed.rank()}}')
distributed.cleanup()
"""


@pytest.mark.slow
def test_ranks_agree_after_an_epoch_of_extra_steps(tiny_plain, tmp_path):
    """torchrun data mode, 2 ranks, one epoch: each rank's MMSSL (its discriminator's gradients averaged over the
    ranks' batches, the learned edges gathered from both) and DiffMM (its diffusion steps and rebuild taken alike
    on every rank) end with the same parameters and graphs, and the extra optimisers did train."""
    script = tmp_path / 'rank_epoch.py'
    script.write_text(RANK_EPOCH.format(root=ROOT, data=tiny_plain, out=str(tmp_path / 'state')))
    job = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                          str(script)], env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True, text=True,
                         timeout=300)
    assert job.returncode == 0, job.stderr[-3000:]
    for name, other in (('MMSSL', 'discriminator.'), ('DiffMM', 'denoisers.')):
        first, second = (torch.load(tmp_path / f'state.{name}.rank{r}', weights_only=True) for r in (0, 1))
        assert first.keys() == second.keys() and [k for k in first if not torch.equal(first[k], second[k])] == [], name
        assert any(k.startswith(other) for k in first)
    assert torch.load(tmp_path / 'state.MMSSL.rank0', weights_only=True)['pending_v'].shape[1] > 0


# ---------------------------------------------------------------------- --select_on test

def test_select_on_test_is_labelled_and_trains_as_the_validation_run(tiny_plain, tmp_path, capsys):
    """Nothing stops early (patience > epochs): the two protocols train the same epochs, so the validation run's
    result is the test-selected run's best validation epoch; the test run says everywhere that it is optimistic."""
    flags = ['--model_name', 'LightGCN', '--batch_size', '256', '--dim_latent', '16', '--num_epoch', '4',
             '--patience', '50', '--l_r', '0.01', '--topK', '10']
    code, val = _run(tmp_path, tiny_plain, *flags, tag='val')
    capsys.readouterr()
    code_t, test = _run(tmp_path, tiny_plain, *flags, '--select_on', 'test', tag='test')
    out = capsys.readouterr().out
    assert code == code_t == 0
    assert out.count('optimistic') == 2 and 'best epoch' in out and '(TEST Recall@10' in out
    assert 'optimistic' in test['optimistic'] and 'optimistic' not in val
    assert test['run'] == val['run'] + '-testsel'
    history = test['history']
    assert [h['loss'] for h in history] == [h['loss'] for h in val['history']]
    assert [h['val'] for h in history] == [h['val'] for h in val['history']]
    best_test = max(history, key=lambda h: h['test']['10']['recall'])
    assert test['best_epoch'] == best_test['epoch'] and test['test'] == best_test['test']
    best_val = max(history, key=lambda h: h['val']['10']['recall'])
    assert (val['best_epoch'], val['val'], val['test']) == (best_val['epoch'], best_val['val'], best_val['test'])
    # a checkpoint of one protocol does not resume under the other
    code, _ = _run(tmp_path, tiny_plain, *flags, '--select_on', 'val', '--resume', tag='test')
    assert code == 2 and "--select_on 'test' -> 'val'" in capsys.readouterr().err


@pytest.mark.parametrize('select_on, best, stop', [('val', 2, 4), ('test', 3, 5)])
def test_fit_selects_and_stops_on_the_chosen_split(monkeypatch, select_on, best, stop):
    """Scripted metrics: validation peaks at epoch 2, test at epoch 3; patience 2."""
    import types
    import Train
    from checkpoint import new_state
    monkeypatch.setattr(Train, 'train_epoch', lambda *a, **k: (0.5, {}))
    val, test = [0.1, 0.3, 0.2, 0.2, 0.2, 0.2], [0.2, 0.1, 0.4, 0.3, 0.3, 0.3]

    def metrics(r):
        return {10: {'precision': r / 10, 'recall': r, 'ndcg': r}}
    saved = []
    saver = types.SimpleNamespace(best=lambda model: saved.append(len(saved)), last=lambda *a: None, best_path='-')
    args = types.SimpleNamespace(topK=[10], num_epoch=6, patience=2, select_on=select_on, progress=False)
    state = new_state()
    status = Train.fit(None, None, None, None, 'cpu', state,
                       lambda e: {'val': metrics(val[e - 1]), 'test': metrics(test[e - 1])}, saver, args)
    assert status == 'done' and state['best_epoch'] == best and state['epoch'] == stop
    assert state['best_test'][10]['recall'] == test[best - 1] and state['best_val'][10]['recall'] == val[best - 1]
    assert all(('test' in h) == (select_on == 'test') for h in state['history'])


def test_results_table_keeps_the_protocols_apart(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, 'bench'))
    import results
    assert results.run_tag('x', ['--model_name', 'DiffMM'], 1, 'test') == results.run_tag('x', ['--model_name', 'DiffMM'], 1) + '-testsel'
    record = {'args': {'num_epoch': 5, 'patience': 3, 'select_on': 'val'}, 'status': 'done'}
    (tmp_path / 'r.json').write_text(json.dumps(record))
    assert results.earlier_record(str(tmp_path / 'r.json'), (5, 3), 'test') is None   # never reused across protocols
    assert results.earlier_record(str(tmp_path / 'r.json'), (5, 3), 'val') == record
    with pytest.raises(SystemExit):
        config.parse_args(['--model_name', 'DiffMM', '--select_on', 'best'])


def test_the_validation_protocol_read_off_a_test_selected_history():
    sys.path.insert(0, os.path.join(ROOT, 'bench'))
    import both_protocols
    history = [{'epoch': e, 'val': {'20': {'recall': r}}} for e, r in enumerate([0.1, 0.3, 0.2, 0.25, 0.4], 1)]
    assert both_protocols.validation_protocol(history, '20', 2) == (history[1], True)      # stops after epoch 4
    assert both_protocols.validation_protocol(history, '20', 3) == (history[4], False)     # would go on


def test_both_protocols_table_and_its_one_line_errors(tmp_path, capsys):
    sys.path.insert(0, os.path.join(ROOT, 'bench'))
    import both_protocols
    history = [{'epoch': e, 'loss': 1.0, 'val': {'20': {'recall': v}}, 'test': {'20': {'recall': t, 'ndcg': t / 2}}}
               for e, (v, t) in enumerate([(0.1, 0.2), (0.3, 0.1), (0.2, 0.4)], 1)]
    record = {'run': 'x-M-seed7', 'args': {'select_on': 'test', 'patience': 1, 'num_epoch': 3, 'model_name': 'M',
                                           'seed': 7, 'topK': [20]},
              'best_epoch': 3, 'test': {'20': {'recall': 0.4, 'ndcg': 0.2}}, 'history': history}
    (tmp_path / 'r.jsonl').write_text(json.dumps(record) + '\n')
    both_protocols.main_([str(tmp_path / 'r.jsonl'), '--published', 'M=0.5,0.25'])
    out = capsys.readouterr().out.splitlines()
    assert out[2:] == ['| M | 7 | 3, 0.4000, 0.2000 | 2, 0.1000, 0.0500 |',      # validation stops after epoch 3
                       '| M | mean of 1 | R 0.4000, N 0.2000 | R 0.1000, N 0.0500 (1 run) |',
                       '| M | published | R 0.5000, N 0.2500 (the paper: best test epoch) | — |']
    (tmp_path / 'bad.jsonl').write_text(json.dumps(record) + '\nnot json\n')
    for argv, needles in (([str(tmp_path / 'bad.jsonl')], ('bad.jsonl', 'line 2')),
                          ([str(tmp_path / 'r.jsonl'), '--published', 'M=0.5'], ('--published', 'M=0.5')),
                          ([str(tmp_path / 'missing.jsonl')], ('missing.jsonl', 'cannot read'))):
        with pytest.raises(SystemExit) as e:
            both_protocols.main_(argv)
        assert e.value.code == 2
        one_line_error(capsys, *needles)
