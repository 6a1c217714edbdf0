"""Full-ranking validation and test (SPEC 4).

Every user with at least one positive item in the split is ranked against
all items from a fresh forward pass in eval mode; the user's training items
score −∞.  For each K:

    Precision@K = hits / K
    Recall@K    = hits / |pos|
    NDCG@K      = DCG / IDCG,  DCG = Σ_{rank r ≤ K, hit} 1 / log2(r + 1),
                  IDCG over min(|pos|, K) positions

averaged over the evaluated users.  ``rank_metrics`` is vectorised over
users and works on chunks of ``eval_batch`` users, so memory stays bounded;
``rank_metrics_loop`` is the plain per-user reference it is tested against.
"""
import numpy as np
import torch

import distributed

METRICS = ('precision', 'recall', 'ndcg')


class SplitIndex:
    """Users of a split with their positives, and everyone's training items, as CSR index arrays."""

    def __init__(self, split, train_indptr, train_items):
        self.users = np.array(sorted(split), dtype=np.int64)
        self.pos_count = np.array([len(split[u]) for u in self.users], dtype=np.int64)
        self.pos_indptr = np.concatenate([[0], np.cumsum(self.pos_count)])
        self.pos_items = np.concatenate([split[u] for u in self.users]) if len(self.users) else np.zeros(0, np.int64)
        self.train_indptr, self.train_items = train_indptr, train_items


def _rows_and_items(users_idx, indptr, items):
    """(row within the chunk, item) for the CSR rows ``users_idx``."""
    starts, ends = indptr[users_idx], indptr[users_idx + 1]
    counts = ends - starts
    rows = np.repeat(np.arange(len(users_idx)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return rows, items[np.repeat(starts, counts) + offsets]


def _discounts(k):
    return 1.0 / np.log2(np.arange(2, k + 2))


GROUP = 32          # columns per group in the blocked top-k


def _round_up(n, multiple):
    return -(-n // multiple) * multiple


def _plain_top(u, z_item, rows, items, k, buffer):
    """The k best items per row of ``u @ z_item.T`` with (rows, items) excluded: one product, one topk."""
    scores = torch.mm(u, z_item.t(), out=buffer[:len(u), :z_item.shape[0]])
    scores[torch.as_tensor(rows, device=u.device), torch.as_tensor(items, device=u.device)] = -torch.inf
    return torch.topk(scores, k, dim=1).indices


def _blocked_top(u, z_item, rows, items, k, buffer, group_max, item_block):
    """The same as ``_plain_top``, for the CPU cache: ``item_block`` items at a time.

    Each block is scored, masked, and, while it is still in the cache, leaves the
    maximum of each of its groups: GROUP columns spaced ``item_block / GROUP``
    apart (a reduction across rows of the block, which vectorises; ``item_block``
    is a multiple of GROUP).  A row's k best scores lie in its k groups with the
    largest maxima (any other group has k groups whose best is at least its own
    best), so the final topk reads k·GROUP scores, not all.  ``buffer`` is
    [users, width], width = num_item rounded up to ``item_block``, its padding
    −∞; a returned index ≥ num_item is padding, which only a row with fewer than
    k finite scores can reach.
    """
    n, num_item = len(u), z_item.shape[0]
    scores, gmax = buffer[:n], group_max[:n]
    per = item_block // GROUP                                   # groups per block, and their spacing
    order = np.argsort(items, kind='stable')
    rows, items = torch.as_tensor(rows[order]), torch.as_tensor(items[order])
    starts = list(range(0, num_item, item_block))
    cuts = np.searchsorted(items.numpy(), starts + [num_item]).tolist()
    for b, s in enumerate(starts):
        e = min(s + item_block, num_item)
        torch.mm(u, z_item[s:e].t(), out=scores[:, s:e])
        lo, hi = cuts[b], cuts[b + 1]
        scores[rows[lo:hi], items[lo:hi]] = -torch.inf
        torch.amax(scores[:, s:s + item_block].view(n, GROUP, per), 1, out=gmax[:, b * per:(b + 1) * per])
    groups = torch.topk(gmax, min(k, gmax.shape[1]), dim=1, sorted=False).indices
    first = groups // per * item_block + groups % per           # the group's first column
    candidates = (first[:, :, None] + torch.arange(GROUP) * per).flatten(1)
    return candidates.gather(1, torch.topk(scores.gather(1, candidates), k, dim=1).indices)


@torch.no_grad()
def rank_metrics(z_user, z_item, index, topk, eval_batch=1024, item_block='auto'):
    """Metrics {K: {metric: mean}} for the users of ``index``, ``eval_batch`` users at a time.

    On the CPU the top items come from ``_blocked_top`` (``item_block`` 1024 by
    default; with an inner dimension of 64, products over 1,024 items run
    several times faster than one over all items, and the final topk reads a few
    hundred scores per user instead of all of them); elsewhere, or with
    ``item_block=None``, from one product and one topk.  Both give the same items.
    Per-user values are added in user order at the end, so the metrics do not
    depend on ``eval_batch``.
    """
    max_k = max(topk)
    num_item = z_item.shape[0]
    device = z_user.device
    if item_block == 'auto':
        item_block = 1024 if device.type == 'cpu' else None
    if eval_batch < 1:
        raise ValueError(f'rank_metrics: eval_batch must be at least 1, got {eval_batch}')
    disc = torch.as_tensor(_discounts(max_k), device=device, dtype=torch.float64)
    idcg_table = torch.cumsum(disc, 0)
    n_users = len(index.users)
    values = np.zeros((len(topk), len(METRICS), n_users))     # per user, filled chunk by chunk
    if item_block is None:
        width = num_item
    else:
        item_block = _round_up(item_block, GROUP)
        width = _round_up(num_item, item_block)
    n_top = min(max_k, num_item)
    buffer = torch.empty((min(eval_batch, n_users), width), device=device, dtype=z_user.dtype)
    buffer[:, num_item:] = -torch.inf           # the products fill the rest, at every chunk
    group_max = None if item_block is None else buffer.new_empty(len(buffer), width // GROUP)
    for start in distributed.my_chunks(list(range(0, n_users, eval_batch))):    # all of them in one process
        chunk = np.arange(start, min(start + eval_batch, n_users))
        users = index.users[chunk]
        u = z_user[torch.as_tensor(users, device=device)]
        rows, items = _rows_and_items(users, index.train_indptr, index.train_items)
        top = (_plain_top(u, z_item, rows, items, n_top, buffer) if item_block is None
               else _blocked_top(u, z_item, rows, items, n_top, buffer, group_max, item_block))
        # hits: is (row, item) of the top list a positive?  Compare row * width + item keys.
        rows, items = _rows_and_items(chunk, index.pos_indptr, index.pos_items)
        positive = torch.as_tensor(rows * width + items, device=device)
        keys = torch.arange(len(chunk), device=device)[:, None] * width + top
        hits = torch.isin(keys, positive).double()
        if hits.shape[1] < max_k:
            hits = torch.cat([hits, hits.new_zeros(len(chunk), max_k - hits.shape[1])], dim=1)
        n_pos = torch.as_tensor(index.pos_count[chunk], device=device, dtype=torch.float64)
        per_k = []
        for k in topk:
            hit_k = hits[:, :k].sum(1)
            idcg = idcg_table[torch.clamp(n_pos, max=k).long() - 1]
            per_k.append(torch.stack([hit_k / k, hit_k / n_pos, (hits[:, :k] * disc[:k]).sum(1) / idcg]))
        values[:, :, chunk] = torch.stack(per_k).cpu().numpy()
    sums = distributed.sum_over_ranks(values).sum(2) / max(n_users, 1)
    return {k: {m: float(sums[i, j]) for j, m in enumerate(METRICS)} for i, k in enumerate(topk)}


@torch.no_grad()
def top_items(z_user, z_item, users, train_indptr, train_items, k, eval_batch=1024, item_block='auto'):
    """Yield (users, items [n, k], scores [n, k]) for chunks of ``eval_batch`` of ``users``.

    Each row is the user's k best items, best first, with the training items
    excluded, ranked by the same ``_blocked_top`` (CPU) or ``_plain_top`` as
    ``rank_metrics``.  A user with fewer than k candidate items has rows of
    score −∞ at the end (training items or padding): drop them.
    """
    num_item, device = z_item.shape[0], z_user.device
    if item_block == 'auto':
        item_block = 1024 if device.type == 'cpu' else None
    width = num_item if item_block is None else _round_up(num_item, _round_up(item_block, GROUP))
    rows_per_chunk = max(1, min(eval_batch, len(users)))
    buffer = torch.empty((rows_per_chunk, width), device=device, dtype=z_user.dtype)
    buffer[:, num_item:] = -torch.inf
    group_max = None if item_block is None else buffer.new_empty(len(buffer), width // GROUP)
    n_top = min(k, num_item)
    for start in range(0, len(users), rows_per_chunk):
        chunk = np.asarray(users[start:start + rows_per_chunk], dtype=np.int64)
        u = z_user[torch.as_tensor(chunk, device=device)]
        rows, items = _rows_and_items(chunk, train_indptr, train_items)
        top = (_plain_top(u, z_item, rows, items, n_top, buffer) if item_block is None
               else _blocked_top(u, z_item, rows, items, n_top, buffer, group_max, _round_up(item_block, GROUP)))
        scores = buffer[:len(chunk)].gather(1, top)
        yield chunk, top.cpu().numpy(), scores.cpu().numpy()


@torch.no_grad()
def rank_metrics_loop(z_user, z_item, index, topk):
    """The plain reference: one user at a time, written straight from the definitions."""
    max_k = max(topk)
    sums = {k: {m: 0.0 for m in METRICS} for k in topk}
    for n, user in enumerate(index.users):
        scores = z_user[int(user)] @ z_item.t()
        train = index.train_items[index.train_indptr[user]:index.train_indptr[user + 1]]
        scores[torch.as_tensor(train, dtype=torch.long)] = -torch.inf
        ranked = torch.topk(scores, min(max_k, len(scores))).indices.tolist()
        pos = set(index.pos_items[index.pos_indptr[n]:index.pos_indptr[n + 1]].tolist())
        for k in topk:
            hit_ranks = [r for r, item in enumerate(ranked[:k], start=1) if item in pos]
            dcg = sum(1 / np.log2(r + 1) for r in hit_ranks)
            idcg = sum(1 / np.log2(r + 1) for r in range(1, min(len(pos), k) + 1))
            sums[k]['precision'] += len(hit_ranks) / k
            sums[k]['recall'] += len(hit_ranks) / len(pos)
            sums[k]['ndcg'] += dcg / idcg
    n_users = len(index.users)
    return {k: {m: (v / n_users if n_users else 0.0) for m, v in d.items()} for k, d in sums.items()}


@torch.no_grad()
def check_finite_scores(z_user, z_item, chunk=1024):
    """Raise ``Train.Divergence`` when a score u·i is NaN or Inf.

    Representations are checked directly; a product of finite ones can still
    overflow, which is impossible when max‖u‖·max‖i‖ fits the float range
    (Cauchy-Schwarz), so the scores themselves are computed only when that bound fails.
    """
    from Train import Divergence
    for name, z in (('user', z_user), ('item', z_item)):
        if not bool(torch.isfinite(z).all()):
            raise Divergence(f'non-finite {name} representation in evaluation')
    if len(z_user) == 0 or len(z_item) == 0:
        return
    bound = float(z_user.double().norm(dim=1).max()) * float(z_item.double().norm(dim=1).max())
    if bound <= torch.finfo(z_user.dtype).max:
        return
    for start in range(0, len(z_user), chunk):
        if not bool(torch.isfinite(z_user[start:start + chunk] @ z_item.t()).all()):
            raise Divergence('non-finite score in evaluation (the product of representations overflows)')


@torch.no_grad()
def full_ranking(model, indexes, topk, eval_batch=1024):
    """One fresh eval-mode forward, then metrics for each ``SplitIndex`` in ``indexes`` (a dict)."""
    was_training = model.training
    model.eval()
    try:
        z_user, z_item = model()
        check_finite_scores(z_user, z_item)
        return {name: rank_metrics(z_user, z_item, idx, topk, eval_batch) for name, idx in indexes.items()}
    finally:
        model.train(was_training)


def format_metrics(metrics):
    """'P@10 0.1234 R@10 0.2345 N@10 0.3456 ...' for one split."""
    return '  '.join(f'P@{k} {v["precision"]:.4f} R@{k} {v["recall"]:.4f} N@{k} {v["ndcg"]:.4f}'
                     for k, v in metrics.items())
