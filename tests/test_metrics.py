"""Full-ranking metrics (SPEC 4) on rankings computed by hand."""
import math

import numpy as np
import pytest
import torch

from Full_vt import SplitIndex, rank_metrics, rank_metrics_loop


def _index(split, train, num_user):
    """train: user -> items."""
    indptr = np.zeros(num_user + 1, dtype=np.int64)
    items = []
    for u in range(num_user):
        its = sorted(train.get(u, []))
        items.extend(its)
        indptr[u + 1] = indptr[u] + len(its)
    return SplitIndex({u: np.array(v) for u, v in split.items()}, indptr, np.array(items, dtype=np.int64))


def _scores(rankings, num_item):
    """Item scores that rank items in the given order for each user."""
    z_item = torch.eye(num_item)
    z_user = torch.zeros(len(rankings), num_item)
    for u, order in enumerate(rankings):
        for rank, item in enumerate(order):
            z_user[u, item] = float(num_item - rank)
    return z_user, z_item


def test_hand_ranking_precision_recall_ndcg():
    # user 0 ranks items 0..5 in order; positives {1, 4}; K = 3 -> one hit at rank 2.
    # user 1 ranks 5,4,3,2,1,0; positives {5, 4, 3, 2} (more than K = 3): hits at ranks 1, 2, 3.
    z_user, z_item = _scores([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]], 6)
    index = _index({0: [1, 4], 1: [5, 4, 3, 2]}, {}, 2)
    m = rank_metrics(z_user, z_item, index, [3, 5])
    p0, r0, n0 = 1 / 3, 1 / 2, (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    p1, r1, n1 = 1.0, 3 / 4, 1.0
    assert m[3]['precision'] == pytest.approx((p0 + p1) / 2)
    assert m[3]['recall'] == pytest.approx((r0 + r1) / 2)
    assert m[3]['ndcg'] == pytest.approx((n0 + n1) / 2)
    # K = 5: user 0 hits ranks 2 and 5; user 1 hits ranks 1-4 of 4 positives.
    dcg0 = 1 / math.log2(3) + 1 / math.log2(6)
    idcg0 = 1 + 1 / math.log2(3)
    assert m[5]['ndcg'] == pytest.approx((dcg0 / idcg0 + 1.0) / 2)
    assert m[5]['recall'] == pytest.approx((1.0 + 1.0) / 2)
    assert m[5]['precision'] == pytest.approx((2 / 5 + 4 / 5) / 2)


def test_training_items_are_excluded_with_minus_inf():
    # item 0 scores highest but is a training item of user 0: it must not take a top slot.
    z_user, z_item = _scores([[0, 1, 2, 3]], 4)
    index = _index({0: [2]}, {0: [0, 1]}, 1)
    m = rank_metrics(z_user, z_item, index, [1])
    assert m[1]['recall'] == 1.0 and m[1]['precision'] == 1.0
    # Even a training item with a tiny score (MMGCN's 1e-5) cannot come back when K exceeds the rest.
    z_user = torch.full((1, 4), -5.0)
    m = rank_metrics(z_user, z_item, _index({0: [2, 3]}, {0: [0, 1]}, 1), [3])
    assert m[3]['recall'] == 1.0


def test_users_without_positives_are_skipped():
    z_user, z_item = _scores([[0, 1, 2], [2, 1, 0]], 3)
    index = _index({1: [2]}, {}, 2)
    assert list(index.users) == [1]
    assert rank_metrics(z_user, z_item, index, [1])[1]['recall'] == 1.0


@pytest.mark.parametrize('eval_batch, item_block', [(1, 'auto'), (7, 'auto'), (1000, 'auto'), (7, 32), (7, None), (1000, 7)])
def test_vectorised_matches_per_user_loop(eval_batch, item_block):
    rng = np.random.default_rng(0)
    n_user, n_item = 40, 30
    train = {u: rng.choice(n_item, rng.integers(1, 8), replace=False).tolist() for u in range(n_user)}
    split = {}
    for u in range(0, n_user, 2):
        rest = [i for i in range(n_item) if i not in train[u]]
        split[u] = rng.choice(rest, rng.integers(1, 12), replace=False).tolist()
    index = _index(split, train, n_user)
    z_user, z_item = torch.randn(n_user, 8), torch.randn(n_item, 8)
    fast = rank_metrics(z_user, z_item, index, [5, 10, 20], eval_batch, item_block)
    plain = rank_metrics_loop(z_user, z_item, index, [5, 10, 20])
    for k in (5, 10, 20):
        for metric in ('precision', 'recall', 'ndcg'):
            assert fast[k][metric] == pytest.approx(plain[k][metric], abs=1e-12)


@pytest.mark.parametrize('n_item, item_block, k', [(23, 1, 5), (23, 32, 5), (100, 32, 20), (100, 64, 3),
                                                    (1000, 96, 20), (1000, 32, 20), (1000, 1024, 40), (70, 32, 70)])
def test_blocked_top_finds_the_plain_top(n_item, item_block, k):
    from Full_vt import GROUP, _blocked_top, _plain_top, _round_up
    gen = torch.Generator().manual_seed(n_item + k)
    u, z_item = torch.randn(6, 8, generator=gen), torch.randn(n_item, 8, generator=gen)
    rows = np.repeat(np.arange(6), 5)
    items = np.concatenate([np.random.default_rng(r).choice(n_item, 5, replace=False) for r in range(6)])
    item_block = _round_up(item_block, GROUP)
    width = _round_up(n_item, item_block)
    buffer = torch.full((6, width), -torch.inf)
    plain = _plain_top(u, z_item, rows, items, k, buffer.clone())
    top = _blocked_top(u, z_item, rows, items, k, buffer, torch.empty(6, width // GROUP), item_block)
    scores = u @ z_item.t()
    scores[rows, items] = -torch.inf
    finite = torch.isfinite(scores.gather(1, plain))
    assert torch.equal(top[finite], plain[finite])        # the same items in the same order
    assert (top[~finite] >= 0).all() and not torch.isfinite(
        torch.cat([scores, torch.full((6, width - n_item), -torch.inf)], 1).gather(1, top)[~finite]).any()


def test_k_larger_than_item_count():
    z_user, z_item = _scores([[0, 1, 2]], 3)
    m = rank_metrics(z_user, z_item, _index({0: [2]}, {}, 1), [10])
    assert m[10]['precision'] == pytest.approx(0.1) and m[10]['recall'] == 1.0
    assert m[10]['ndcg'] == pytest.approx(1 / math.log2(4))


def _random_case(n_user=300, n_item=500, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    train = {u: rng.choice(n_item, rng.integers(1, 30), replace=False).tolist() for u in range(n_user)}
    split = {}
    for u in range(0, n_user, 3):
        rest = np.setdiff1d(np.arange(n_item), train[u])
        split[u] = rng.choice(rest, rng.integers(1, 15), replace=False).tolist()
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n_user, dim, generator=gen), torch.randn(n_item, dim, generator=gen),
            _index(split, train, n_user))


def test_metrics_do_not_depend_on_chunk_size():
    z_user, z_item, index = _random_case()
    first = rank_metrics(z_user, z_item, index, [5, 20], 1024)
    for eval_batch in (1, 7, 64, 1000, 33):
        assert rank_metrics(z_user, z_item, index, [5, 20], eval_batch) == first   # bitwise
    plain = rank_metrics_loop(z_user, z_item, index, [5, 20])
    for k in (5, 20):
        for metric in ('precision', 'recall', 'ndcg'):
            assert first[k][metric] == pytest.approx(plain[k][metric], abs=1e-12)
    with pytest.raises(ValueError, match='eval_batch must be at least 1'):
        rank_metrics(z_user, z_item, index, [5], eval_batch=0)
