"""DRAGON (Zhou et al., ECAI 2023, "Enhancing Dyadic Relations with Homogeneous Graphs for Multimodal
Recommendation"): per-modality graph convolutions on the user-item graph, then an item-item graph (FREEDOM's)
on the items and a user-user co-occurrence graph on the users; BPR (docs/models.md).

The user-user graph is computed here from the training split (``cooccurrence_topk``): ``C = R Rᵀ`` counts the
training items two users share; each user keeps the ``K`` users sharing the most (``--user_graph_k`` 40;
itself excluded, ties to the smaller id), blocked over users (never a dense U × U matrix) and cached beside
the dataset through ``knn_graph.cached_graph`` (``dragon_users_train_k<K>.pt``, its digest over the training
pairs, so a new split rebuilds it).  A user with ``n < K`` co-occurring users fills its ``K`` slots every epoch
(``on_epoch_start``, torch's seeded RNG) as the authors' code does: slot ``j ≥ n`` copies a uniformly drawn
earlier slot ``r < j``.  ``w_u = softmax(counts of u's K slots)`` (a user without co-occurring users: 0).

Per modality m (``P_m`` [U, d] xavier-normal; ``F_m`` the frozen raw features, a word-id modality its
trainable word mean):

    x_m  = normalise([P_m ; Lin_2(leaky_relu(Lin_1(F_m)))])        (Lin_1: dim F_m → 4d, Lin_2: 4d → d)
    g_m  = Σ_{k=0..L} Â^k x_m                                      (L = --num_layer, 2: x + Âx + Â²x)
    y_u  = ‖_m a_{u,m} g_m[u],   y_i = ‖_m g_m[i]                   (M·d wide; a_u = softmax of a xavier-normal
                                                                     [U, M] draw at start, then trained; M = 1: y_u = g[u])
    z_i  = y_i + S y_i                                             (S: FREEDOM's item-item graph, one layer)
    z_u  = y_u + Σ_j w_{u,j} y_{n_{u,j}}                           (the user-user graph of the epoch)

Loss for a batch of (user, positive, sampled negative), λ = ``--weight_decay`` (1e-3):

    L = -mean log₂ σ(z_u·z_{i⁺} - z_u·z_{i⁻}) + λ (Σ_m mean(P_m[u]²) + mean(a²))      (mean(a²): M ≥ 2 only)

``loss`` computes the user-user and item-item sums for the batch's rows alone where a batch holds fewer than
half the users (items); ``loss_plain`` is the authors' order (every row, then the batch's), the reference it
is tested against.
"""
import math

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F

from BaseModel import _RowMeanProduct, normalized_adjacency, propagate_layers, row_submatrix, take_rows, transpose_csr
import knn_graph
from model_FREEDOM import cached_item_graph
from registry import Flag, ModelEntry, Recommender, needs_modality

BLOCK_ENTRIES = 2 ** 22    # co-occurrence pairs counted at a time (a block of users' share of R Rᵀ)
GATHER_ROWS = 4096         # users per chunk of the plain user-user sum (its gather is [rows, K, M·d])


# ---------------------------------------------------------------------- the user-user co-occurrence graph

def cooccurrence_topk(train, num_user, num_item, k, block_entries=BLOCK_ENTRIES):
    """``(ids [U, k] long, counts [U, k] float, found [U] long)``: for each user the ``k`` other users sharing
    the most training items (count descending, then id ascending), slots past ``found`` holding id 0, count 0.

    ``C = R Rᵀ`` by blocks of users whose product holds at most about ``block_entries`` pairs (a user's share
    is the sum of its items' degrees), so memory stays bounded whatever U; never a dense U × U matrix.
    """
    train = np.asarray(train)
    r = sp.csr_matrix((np.ones(len(train), dtype=np.int32), (train[:, 0], train[:, 1])), shape=(num_user, num_item))
    r_t = r.T.tocsr()
    work = r @ np.diff(r_t.indptr).astype(np.int64)                     # each user's pairs in C's rows
    ids = np.zeros((num_user, k), dtype=np.int64)
    counts = np.zeros((num_user, k), dtype=np.float32)
    found = np.zeros(num_user, dtype=np.int64)
    start = 0
    while start < num_user:
        stop = start + max(1, int(np.searchsorted(np.cumsum(work[start:]), block_entries, side='right')))
        block = (r[start:stop] @ r_t).tocsr()
        rows = np.repeat(np.arange(stop - start), np.diff(block.indptr))
        cols, shared = block.indices.astype(np.int64), block.data
        other = cols != rows + start
        rows, cols, shared = rows[other], cols[other], shared[other]
        order = np.lexsort((cols, -shared, rows))                      # by row, most shared first, smaller id first
        rows, cols, shared = rows[order], cols[order], shared[order]
        first = np.searchsorted(rows, np.arange(stop - start))
        rank = np.arange(len(rows)) - first[rows]
        top = rank < k
        ids[start + rows[top], rank[top]] = cols[top]
        counts[start + rows[top], rank[top]] = shared[top]
        found[start:stop] = np.minimum(np.bincount(rows, minlength=stop - start), k)
        start = stop
    return torch.from_numpy(ids), torch.from_numpy(counts), torch.from_numpy(found)


def cached_user_graph(train, num_user, num_item, k, cache_dir):
    """``cooccurrence_topk`` through ``knn_graph.cached_graph`` (``dragon_users_train_k<k>.pt``; the digest
    covers the training pairs; ids, counts and their order checked)."""
    def valid(saved):
        ids, counts, found = saved['ids'], saved['counts'], saved['found']
        if not (ids.dtype == torch.long and counts.dtype == torch.float32 and found.dtype == torch.long
                and tuple(ids.shape) == tuple(counts.shape) == (num_user, k) and tuple(found.shape) == (num_user,)):
            return False
        slot = torch.arange(k).unsqueeze(0) < found.unsqueeze(1)
        return (bool(((found >= 0) & (found <= k)).all()) and int(ids.min()) >= 0 and int(ids.max()) < num_user
                and bool((counts[slot] >= 1).all()) and bool((counts[~slot] == 0).all())
                and bool((counts[:, 1:] <= counts[:, :-1]).all()))

    def build():
        ids, counts, found = cooccurrence_topk(train, num_user, num_item, k)
        return {'ids': ids, 'counts': counts, 'found': found}
    graph = knn_graph.cached_graph('dragon_users', 'train', np.asarray(train), num_user, k, cache_dir, build, valid)
    return graph['ids'], graph['counts'], graph['found']


def fill_slots(ids, counts, found):
    """``(ids, counts)`` with each row's empty slots ``j ≥ found`` (a row with ``found ≥ 1``) copied from a
    uniformly drawn earlier slot ``r < j`` (torch's RNG), slot by slot: the authors' ``topk_sample``."""
    ids, counts = ids.clone(), counts.clone()
    rows = torch.arange(len(ids), device=ids.device)
    for j in range(1, ids.shape[1]):
        pick = (torch.rand(len(ids), device=ids.device) * j).long()
        empty = (found <= j) & (found > 0)
        ids[:, j] = torch.where(empty, ids[rows, pick], ids[:, j])
        counts[:, j] = torch.where(empty, counts[rows, pick], counts[:, j])
    return ids, counts


def slot_weights(counts, found):
    """``w_u = softmax(counts)`` over the slots, 0 for a user without co-occurring users."""
    return torch.softmax(counts, dim=1) * (found > 0).unsqueeze(1).to(counts.dtype)


# ---------------------------------------------------------------------- the model

class DRAGON(Recommender):
    """DRAGON over a fixed user-item graph, item-item graph and user-user graph.

    Args:
        num_user, num_item: sizes.
        features: modality -> float array [num_item, f] or ``DataLoad.WordFeature`` (at least one).
        adj: ``Â`` of the training graph, sparse CSR [(U+I), (U+I)].
        item_adj: ``S`` (``model_FREEDOM.item_graph``), sparse CSR [I, I].
        user_graph: ``(ids, counts, found)`` of ``cooccurrence_topk``.
        dim_latent: ``d`` (64), per modality.
        num_layer: ``L`` (2), graph convolutions per modality.
        reg_weight: ``λ`` (``--weight_decay``, 1e-3).
    """

    needs_negatives = True

    def __init__(self, num_user, num_item, features, adj, item_adj, user_graph, dim_latent=64, num_layer=2,
                 reg_weight=1e-3):
        super().__init__()
        if not features:
            raise ValueError('DRAGON needs at least one modality')
        self.num_user, self.num_item, self.num_layer, self.reg_weight = num_user, num_item, num_layer, reg_weight
        self.modalities = list(features)
        self.register_buffer('adj', adj, persistent=False)
        self.register_buffer('item_adj', item_adj, persistent=False)
        self.register_buffer('item_adj_t', transpose_csr(item_adj), persistent=False)
        ids, counts, found = user_graph
        self.register_buffer('neighbour_ids', ids, persistent=False)
        self.register_buffer('neighbour_counts', counts, persistent=False)
        self.register_buffer('neighbour_found', found, persistent=False)

        d = dim_latent
        self.preferences = nn.ParameterDict(
            {m: nn.Parameter(nn.init.xavier_normal_(torch.empty(num_user, d))) for m in self.modalities})
        widths = self.register_item_features(features)            # frozen raw features, as the authors' GCN reads
        self.item_mlps = nn.ModuleDict({m: nn.Sequential(nn.Linear(widths[m], 4 * d), nn.LeakyReLU(),
                                                         nn.Linear(4 * d, d)) for m in self.modalities})
        if len(self.modalities) > 1:
            self.modality_weights = nn.Parameter(
                torch.softmax(nn.init.xavier_normal_(torch.empty(num_user, len(self.modalities), 1)), dim=1)[..., 0])
        # The epoch's user-user graph, saved with the weights so that a saved model scores as it was evaluated.
        sampled, sampled_counts = fill_slots(ids, counts, found)
        self.register_buffer('epoch_ids', sampled)
        self.register_buffer('epoch_weights', slot_weights(sampled_counts, found))

    def on_epoch_start(self):
        """Fill the user-user graph's empty slots afresh (torch's seeded RNG), as the authors' every epoch."""
        sampled, sampled_counts = fill_slots(self.neighbour_ids, self.neighbour_counts, self.neighbour_found)
        self.epoch_ids.copy_(sampled)
        self.epoch_weights.copy_(slot_weights(sampled_counts.to(self.epoch_weights.dtype), self.neighbour_found))

    def representations(self):
        """``(y_u [U, M·d], y_i [I, M·d])``: every modality's graph convolution, side by side."""
        x0 = torch.cat([F.normalize(torch.cat([self.preferences[m], self.item_mlps[m](self.item_input(m))]), dim=1)
                        for m in self.modalities], dim=1)
        g = propagate_layers(self.adj, x0, self.num_layer) * (self.num_layer + 1)       # the sum of layers 0..L
        users, items = g[:self.num_user], g[self.num_user:]
        if len(self.modalities) > 1:
            users = users * self.modality_weights.repeat_interleave(users.shape[1] // len(self.modalities), dim=1)
        return users, items

    def user_user(self, users_rep, users=None):
        """``Σ_j w_{u,j} y_{n_{u,j}}`` for the users ``users`` (every user when None), the formula: a gather of
        [rows, K, M·d], in chunks of ``GATHER_ROWS`` users."""
        rows = torch.arange(self.num_user, device=users_rep.device) if users is None else users
        sums = []
        for chunk in rows.split(GATHER_ROWS):
            ids = self.epoch_ids.index_select(0, chunk)
            gathered = take_rows(users_rep, ids.reshape(-1)).view(*ids.shape, -1)
            sums.append((self.epoch_weights.index_select(0, chunk).unsqueeze(2) * gathered).sum(1))
        return torch.cat(sums)

    def forward(self):
        users, items = self.representations()
        return users + self.user_user(users), items + _RowMeanProduct.apply(items, self.item_adj, self.item_adj_t)

    def _loss(self, users, z_user, z_pos, z_neg):
        bpr = -F.logsigmoid((z_user * z_pos).sum(1) - (z_user * z_neg).sum(1)).mean() / math.log(2)
        reg = sum(take_rows(self.preferences[m], users).pow(2).mean() for m in self.modalities)
        if len(self.modalities) > 1:
            reg = reg + self.modality_weights.pow(2).mean()
        return bpr + self.reg_weight * reg, {'bpr': bpr.item(), 'reg': reg.item()}

    def loss(self, users, pos, neg, rows=None):
        """The loss with the user-user sum for the batch's users alone and the item-item product for its items
        alone (a row block of ``S``), each where the batch holds fewer than half of them (``rows`` None; True or
        False forces it): with more, every row is cheaper (ML-100K: 943 users, batches of 2048)."""
        def few(count, total):
            return rows if rows is not None else 2 * count < total
        users_rep, items_rep = self.representations()
        if few(len(users), self.num_user):
            z_user = take_rows(users_rep, users) + self.user_user(users_rep, users)
        else:
            z_user = take_rows(users_rep + self.user_user(users_rep), users)
        items = torch.cat([pos, neg])
        unique, inverse = torch.unique(items, return_inverse=True)
        if few(len(unique), self.num_item):
            block, block_t = row_submatrix(self.item_adj, unique)
            z_items = take_rows(items_rep, items) + take_rows(_RowMeanProduct.apply(items_rep, block, block_t), inverse)
        else:
            z_items = take_rows(items_rep + _RowMeanProduct.apply(items_rep, self.item_adj, self.item_adj_t), items)
        return self._loss(users, z_user, *z_items.split(len(pos)))

    def loss_plain(self, users, pos, neg):
        """The same loss in the authors' order: every user's and item's final vector, then the batch's rows."""
        z_users, z_items = self()
        return self._loss(users, z_users[users], z_items[pos], z_items[neg])


# ---------------------------------------------------------------------- the registry entry (SPEC 5)

def build(args, data):
    needs_modality('DRAGON', data)
    adj = normalized_adjacency(data.train, data.num_user, data.num_item)
    users = cached_user_graph(data.train, data.num_user, data.num_item, args.user_graph_k, data.path)
    return DRAGON(data.num_user, data.num_item, data.features, adj, cached_item_graph(args, data), users,
                  args.dim_latent, args.num_layer, reg_weight=args.weight_decay)


MODEL = ModelEntry(
    name='DRAGON', build=build, summary='per-modality GCNs, then an item kNN graph and a user co-occurrence graph '
                                        '(built from the training split), BPR (docs/models.md)',
    # hongyurain/DRAGON at 17b3cf8: README (Baby, Sports): learning rate 1e-4, reg_weight 1e-3 (the loss's λ;
    # Clothing 0.1); dragon.py: k 40 co-occurring users, two graph convolutions, 'cat' construction; MMRec's
    # DRAGON.yaml fixes what the authors' yaml leaves as grids: n_mm_layers 1, knn_k 10, mm_image_weight 0.1;
    # overall.yaml: batch 2048, Adam without decay, no learning-rate decay
    defaults=dict(l_r=0.0001, weight_decay=1e-3, batch_size=2048, num_layer=2, num_epoch=1000),
    flags=(
        Flag('user_graph_k', 40, 'co-occurring users each user aggregates (the authors\' k)', type=int,
             check=lambda a: 1 <= a.user_graph_k <= 10000, problem='must be in [1, 10000]'),
    ),
    reads=('knn_k', 'mm_image_weight'),
    lr_grid=(0.001, 0.0001),            # around its published 1e-4 (GRCN's grid, the other 1e-4 model)
    # MMRec's DRAGON.yaml: reg_weight over {0.1, ..., 1e-5}, learning_rate over {0.1, ..., 1e-5}
    search_grid=dict(l_r=[0.001, 0.0001], weight_decay=[0.1, 0.01, 1e-3, 1e-4]),
)
