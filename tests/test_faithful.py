"""Faithful to the official code in the details a wrong version would still pass elsewhere:
FM's crossed views (SPEC 3.3), official checkpoints scored by an independent dense formula
(SPEC 3.1, 3.5), which rows FAC and FD see, selection on validation (SPEC 4), and a resume that
keeps training a replaced word table.

The dense references here are written from SPEC, on 3-user, 3-item graphs, and never go
through the model's own propagation or key map.
"""
import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import main
from BaseModel import normalized_adjacency
from DataLoad import WordFeature
from model_SSL import SLMRec, from_official_state_dict, info_nce

TRAIN = np.array([[0, 0], [0, 1], [1, 1], [1, 2], [2, 0]])
U, I, D = 3, 3, 8


def _dense_adjacency():
    """``Â`` of SPEC 3.1 written out: A = [[0, R], [Rᵀ, 0]], D^-1/2 A D^-1/2."""
    A = torch.zeros(U + I, U + I)
    for u, i in TRAIN:
        A[u, U + i] = A[U + i, u] = 1
    d = A.sum(1).pow(-0.5)
    return d[:, None] * A * d[None, :]


def _layers(A, x0, num_layer):
    out = [x0]
    for _ in range(num_layer):
        out.append(A @ out[-1])
    return out


def _features(dims, seed=0):
    rng = np.random.default_rng(seed)
    return {m: rng.standard_normal((I, d)).astype(np.float32) for m, d in dims.items()}


# ---------------------------------------------------------------- FM views (SPEC 3.3)

def _dense_fm_loss(model, A, users, items, pair, views):
    """Main InfoNCE + ssl_alpha · SSL of FM, from the model's parameters and a dense ``Â``."""
    L = model.num_layer
    e_u = model.embedding_user.weight
    sides = [model.embedding_item.weight] + [model.dense[m](F.normalize(torch.as_tensor(f), dim=1))
                                             for m, f in _features({'v': 5, 'a': 4}).items()]

    def x0(masked):
        return [torch.cat([e_u, torch.zeros_like(s) if b == masked else s]) for b, s in enumerate(sides)]

    def fused(per_branch):
        wide = torch.cat(per_branch, 1)
        return model.fuse_user(wide[:U])[users], model.fuse_item(wide[U:])[items]

    def mean_of(first_layer, chain):      # per branch: mean(first_layer, chain layers 1..L)
        return [(f + sum(_layers(A, c, L)[1:])) / (L + 1) for f, c in zip(first_layer, chain)]

    plain = mean_of(x0(None), x0(None))
    one, two = x0(pair[0]), x0(pair[1])
    if views == 'official':
        v1, v2 = mean_of(one, two), mean_of(two, one)
    else:
        v1, v2 = mean_of(one, one), mean_of(two, two)
    z_u, z_i = fused(plain)
    main_loss = info_nce(F.normalize(z_u, dim=1), F.normalize(z_i, dim=1), model.temp)
    (u1, i1), (u2, i2) = fused(v1), fused(v2)
    ssl = (info_nce(F.normalize(u1, dim=1), F.normalize(u2, dim=1), model.ssl_temp)
           + info_nce(F.normalize(i1, dim=1), F.normalize(i2, dim=1), model.ssl_temp))
    return main_loss + model.ssl_alpha * ssl, ssl


@pytest.mark.parametrize('views', ['official', 'clean'])
@pytest.mark.parametrize('pair', [(0, 1), (2, 0), (1, 2)])
@pytest.mark.parametrize('task', ['FM', 'FD+FM'])
def test_fm_views_match_the_dense_formula(views, pair, task, monkeypatch):
    torch.manual_seed(0)
    model = SLMRec(U, I, _features({'v': 5, 'a': 4}), normalized_adjacency(TRAIN, U, I), dim_latent=D,
                   num_layer=2, ssl_task=task, dropout_rate=0.0, ssl_alpha=0.7, fm_views=views)
    monkeypatch.setattr(model, 'masked_pair', lambda: pair)
    users, items = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 0, 0])
    loss, parts = model.loss(users, items)
    expected, ssl = _dense_fm_loss(model, _dense_adjacency(), users, items, pair, views)
    assert parts['ssl'] == pytest.approx(ssl.item(), rel=1e-5)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    for (name, _), g, e in zip(model.named_parameters(), grads, expected_grads):
        assert torch.allclose(g, e, atol=1e-6), name
    # the two forms really differ, so this test tells them apart
    other = 'clean' if views == 'official' else 'official'
    assert abs(_dense_fm_loss(model, _dense_adjacency(), users, items, pair, other)[1].item() - ssl.item()) > 1e-3


def test_fm_official_views_with_dropout_keep_layer_zero_of_their_own_mask(monkeypatch):
    """FD+FM with dropout: the crossed view minus its own layer 0 is the other chain's dropped layers,
    so the official and the clean views differ by exactly the layer-0 swap at the masked branches."""
    torch.manual_seed(0)
    model = SLMRec(U, I, _features({'v': 5}), normalized_adjacency(TRAIN, U, I), dim_latent=D, num_layer=2,
                   ssl_task='FD+FM', dropout_rate=0.5)
    items = torch.tensor([0, 1, 2])
    clean = list(torch.randn(2, I, 2 * D))
    crossed = model.cross_fm_views(clean, items, 1, 0)
    scale = 1 / 3
    side_id, side_v = model.item_side_rows(0, items), model.item_side_rows(1, items)
    assert torch.allclose(crossed[0], clean[1] + torch.cat([side_id, -side_v], 1) * scale)
    assert torch.allclose(crossed[1], clean[0] - torch.cat([side_id, -side_v], 1) * scale)


# ---------------------------------------------------------------- which rows FAC and FD see

def _branch_outputs_dense(model, A, features):
    e_u = model.embedding_user.weight
    sides = [model.embedding_item.weight] + [model.dense[m](F.normalize(torch.as_tensor(f), dim=1))
                                             for m, f in features.items()]
    return [sum(_layers(A, torch.cat([e_u, s]), model.num_layer)) / (model.num_layer + 1) for s in sides]


def test_fac_is_fed_the_item_side_of_the_pre_fusion_outputs():
    features = _features({'v': 5, 'a': 4})
    torch.manual_seed(0)
    model = SLMRec(U, I, features, normalized_adjacency(TRAIN, U, I), dim_latent=D, ssl_task='FAC')
    users, items = torch.tensor([0, 1, 2]), torch.tensor([2, 0, 1])
    _, parts = model.loss(users, items)
    outs = [b[U:][items] for b in _branch_outputs_dense(model, _dense_adjacency(), features)]
    x, expected = outs[0], 0.0
    for s in range(2):
        x = model.fac_x[s](x)
        expected += info_nce(x, model.fac_y[s](outs[s + 1]), model.ssl_temp).item()
    assert parts['ssl'] == pytest.approx(expected, rel=1e-5)


def test_fd_drops_the_ssl_views_only_never_the_main_view():
    features = _features({'v': 5})
    torch.manual_seed(0)
    model = SLMRec(U, I, features, normalized_adjacency(TRAIN, U, I), dim_latent=D, ssl_task='FD',
                   dropout_rate=0.5)
    users, items = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0])
    outs = _branch_outputs_dense(model, _dense_adjacency(), features)
    wide = torch.cat(outs, 1)
    z_u, z_i = model.fuse_user(wide[:U])[users], model.fuse_item(wide[U:])[items]
    main_loss = info_nce(F.normalize(z_u, dim=1), F.normalize(z_i, dim=1), model.temp).item()
    ssl_values = set()
    for _ in range(5):
        _, parts = model.loss(users, items)
        assert parts['main'] == pytest.approx(main_loss, rel=1e-5)
        ssl_values.add(round(parts['ssl'], 6))
    assert len(ssl_values) > 1                       # the SSL views are dropped, differently each time


# ---------------------------------------------------------------- official checkpoints (SPEC 3.1, 3.5)

OFFICIAL_HEADS = [('g_i_iv', D, D), ('g_v_iv', D, D), ('g_iv_iva', D, D), ('g_a_iva', D, D),
                  ('g_iva_ivat', D, D // 2), ('g_t_ivat', D, D // 2)]


def _official_state(modalities, dims, vocab_rows=0, seed=0):
    """A random state dict with the official SLMRec keys (all six FAC heads, as its code makes them)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.3
    state = {'embedding_user.weight': rand(U, D), 'embedding_item.weight': rand(I, D)}
    for m in modalities:
        state[f'{m}_dense.weight'], state[f'{m}_dense.bias'] = rand(D, dims[m]), rand(D)
    width = (1 + len(modalities)) * D
    for side in ('user', 'item'):
        state[f'embedding_{side}_after_GCN.weight'], state[f'embedding_{side}_after_GCN.bias'] = rand(D, width), rand(D)
    for name, n_in, n_out in OFFICIAL_HEADS:
        state[f'{name}.weight'], state[f'{name}.bias'] = rand(n_out, n_in), rand(n_out)
    if vocab_rows:
        state['word_embedding.weight'] = rand(vocab_rows, dims['t'])
    return state


def _dense_official(state, item_inputs, users, items, ssl_temp=0.2):
    """Scores ``z_u z_iᵀ`` and the FAC loss written from SPEC 3.1 and 3.3 on the official keys."""
    A, L = _dense_adjacency(), 3
    e_u = state['embedding_user.weight']
    sides = [state['embedding_item.weight']] + [x @ state[f'{m}_dense.weight'].t() + state[f'{m}_dense.bias']
                                                for m, x in item_inputs.items()]
    outs = [sum(_layers(A, torch.cat([e_u, s]), L)) / (L + 1) for s in sides]
    wide = torch.cat(outs, 1)

    def linear(name, x):
        return x @ state[f'{name}.weight'].t() + state[f'{name}.bias']
    z_u, z_i = linear('embedding_user_after_GCN', wide[:U]), linear('embedding_item_after_GCN', wide[U:])
    fac, x, prefix = 0.0, outs[0][U:][items], 'i'
    for s, m in enumerate(item_inputs):
        x = linear(f'g_{prefix}_{prefix + m}', x)
        y = linear(f'g_{m}_{prefix + m}', outs[s + 1][U:][items])
        fac += F.cross_entropy(x @ y.t() / ssl_temp, torch.arange(len(items))).item()
        prefix += m
    return z_u @ z_i.t(), fac


@pytest.mark.parametrize('shape', ['movielens', 'kwai', 'tiktok'])
def test_official_checkpoint_scores_as_the_dense_formula(shape):
    if shape == 'kwai':                              # one modality; the four unused heads must be ignored
        modalities, dims, vocab = ['v'], {'v': 7}, 0
    else:
        modalities, dims = ['v', 'a', 't'], {'v': 7, 'a': 5, 't': 6 if shape == 'tiktok' else 4}
        vocab = 9 if shape == 'tiktok' else 0        # a word table larger than the vocabulary (5 words)
    state = _official_state(modalities, dims, vocab)
    features = _features({m: dims[m] for m in modalities if not (m == 't' and vocab)})
    item_inputs = {m: F.normalize(torch.as_tensor(features[m]), dim=1) for m in features}
    if vocab:
        item_index, word_id = torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 4, 1, 2, 3, 3])
        features['t'] = WordFeature(item_index, word_id, 5, dim=dims['t'])
        words = state['word_embedding.weight']
        item_inputs['t'] = torch.stack([words[word_id[item_index == i]].mean(0) for i in range(I)])
    model = SLMRec(U, I, features, normalized_adjacency(TRAIN, U, I), dim_latent=D, ssl_task='FAC')
    model.load_state_dict(from_official_state_dict(model, state))
    users, items = torch.tensor([0, 1, 2]), torch.tensor([2, 0, 1])
    scores, fac = _dense_official(state, item_inputs, users, items)
    z_user, z_item = model()
    assert torch.allclose(z_user @ z_item.t(), scores, atol=1e-5)
    assert model.loss(users, items)[1]['ssl'] == pytest.approx(fac, rel=1e-5)


def test_official_checkpoint_unknown_keys_stay_errors():
    state = _official_state(['v'], {'v': 7})
    model = SLMRec(U, I, _features({'v': 7}), normalized_adjacency(TRAIN, U, I), dim_latent=D, ssl_task='FAC')
    with pytest.raises(ValueError, match="unexpected official key 'g_x_ivx.weight'"):
        from_official_state_dict(model, {**state, 'g_x_ivx.weight': torch.zeros(1)})
    two = SLMRec(U, I, _features({'v': 7, 'a': 5}), normalized_adjacency(TRAIN, U, I), dim_latent=D, ssl_task='FAC')
    state_va = _official_state(['v', 'a'], {'v': 7, 'a': 5})
    converted = from_official_state_dict(two, state_va)       # g_iv_iva / g_a_iva are used, the t heads not
    assert 'fac_x.1.weight' in converted and 'fac_y.1.weight' in converted


# ---------------------------------------------------------------- main.py

def test_selection_is_on_validation_not_test(tiny_plain, tmp_path, monkeypatch):
    """Validation peaks at epoch 2, test at epoch 3: the run reports epoch 2 and its test metrics."""
    import Full_vt
    val_recalls, test_recalls = [0.1, 0.5, 0.2], [0.3, 0.1, 0.9]
    calls = []

    def fake_full_ranking(model, indexes, topk, eval_batch=1024):
        n = len(calls)
        calls.append(n)

        def split(recall):
            return {k: {'precision': recall / 2, 'recall': recall, 'ndcg': recall / 3} for k in topk}
        return {'val': split(val_recalls[n]), 'test': split(test_recalls[n])}
    monkeypatch.setattr(Full_vt, 'full_ranking', fake_full_ranking)
    results = tmp_path / 'r.jsonl'
    code = main.main(['--data_path', tiny_plain, '--num_epoch', '3', '--batch_size', '512', '--dim_latent', '8',
                      '--save_file', str(results), '--checkpoint', str(tmp_path / 'c.pt'),
                      '--PATH_weight_save', str(tmp_path / 'b.pt'), '--no-progress'])
    record = json.loads(results.read_text())
    assert code == 0 and len(calls) == 3
    assert record['best_epoch'] == 2
    assert record['val']['10']['recall'] == 0.5 and record['test']['10']['recall'] == 0.1


def test_resume_keeps_training_a_word_table_replaced_on_loading(tiny_tiktok, tmp_path):
    """A word table larger than the vocabulary (an official Tiktok one) replaces WordMean's parameter
    on loading; the optimiser must be built after that, at a resume too, or the table stops training."""
    def run(tag, *flags):
        argv = ['--data_path', tiny_tiktok, '--ssl_task', 'none', '--batch_size', '256', '--dim_latent', '8',
                '--save_file', str(tmp_path / 'r.jsonl'), '--checkpoint', str(tmp_path / f'{tag}.last.pt'),
                '--PATH_weight_save', str(tmp_path / f'{tag}.best.pt'), '--no-progress', *flags]
        assert main.main(argv) == 0
    run('first', '--num_epoch', '1')
    state = torch.load(tmp_path / 'first.best.pt', weights_only=True)
    table = state['word_means.t.weight']
    state['word_means.t.weight'] = torch.cat([table, torch.randn(7, table.shape[1])])    # rows never looked up
    torch.save(state, tmp_path / 'larger.pt')
    run('resumed', '--num_epoch', '1', '--PATH_weight_load', str(tmp_path / 'larger.pt'))
    after_one = torch.load(tmp_path / 'resumed.last.pt', weights_only=True)['model']['word_means.t.weight']
    assert after_one.shape[0] == table.shape[0] + 7
    run('resumed', '--num_epoch', '2', '--resume')
    after_two = torch.load(tmp_path / 'resumed.last.pt', weights_only=True)['model']['word_means.t.weight']
    used = torch.unique(torch.load(f'{tiny_tiktok}/feat_t.pt', weights_only=True)[1])
    assert not torch.equal(after_one[used], after_two[used])      # epoch 2 still trained the table


def test_an_asymmetric_adjacency_is_refused_when_the_model_is_built():
    """The closed-form backward and MMGCN's aggregations use the adjacency as its own transpose."""
    from BaseModel import check_symmetric, csr_adjacency
    from model_MMGCN import MMGCN
    one_way = csr_adjacency(torch.tensor([[0, 1], [U, U + 1]]), U + I)           # users -> items only
    with pytest.raises(ValueError, match='must be symmetric'):
        SLMRec(U, I, _features({'v': 5}), one_way, dim_latent=D)
    with pytest.raises(ValueError, match='must be symmetric'):
        MMGCN(U, I, _features({'v': 5}), one_way, dim_latent=D)
    weighted = csr_adjacency(torch.tensor([[0, U], [U, 0]]), U + I, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match='must be symmetric'):
        check_symmetric(weighted)
    check_symmetric(normalized_adjacency(TRAIN, U, I))
