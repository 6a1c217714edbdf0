"""DA-MRS (Xv et al., KDD 2024, "Improving Multi-modal Recommender Systems by Denoising and Aligning
Multi-modal Content and User Feedback") on its LightGCN backbone (the authors' DA-MRS+LightGCN; docs/models.md).

Item-item graphs, built once from the raw features and the training pairs (blocked, cached beside the dataset):

    content (per modality m): j is a candidate of i when cos_m(i, j) ≥ μ_m for every modality m, μ_m the mean
        of modality m's whole cosine matrix (= ‖Σ_i f̂_i‖² / I², never the matrix itself); S_m[i, j] = 1 for
        the min(k, #candidates) candidates with the largest cos_m (--knn_k 10; itself always one of them)
    behaviour: C = RᵀR (common users), S_b[i, j] = 1 for the k_b items j ≠ i with the largest C[i, j] ≥ 2
        (--behaviour_k 2; ties to the smaller id), plus S_b[i, i] = 1
    Ŝ_g = D^-1/2 S_g D^-1/2, D the row counts (binary, not symmetric)

Encoder (``E_u, E_i`` xavier-uniform; G = M + 1 graphs, the modalities then the behaviour graph):

    [u ; i] = mean_{k=0..L} Â^k [E_u ; E_i]          (L = --num_layer, 2)
    h_g = Ŝ_g^{L_mm} E_i                              (L_mm = 1)
    c = mean_g h_g,   z_u = u,   z_i = i + c,   s(u, i) = z_u · z_i

Loss for a batch of (user, positive, sampled negative), with U_B, I_B its distinct users and items:

    w⁺, w⁻ (no gradient): per pair, p_g = σ(u · ĥ_g[i⁺]), n_g = σ(u · ĥ_g[i⁻]) over the graphs g;
        w⁺ = clamp(mean_g p · exp(-var_g p)², 0, 1),  n̄ = mean of every n_g of the batch (one number),
        w⁻ = clamp((max_g p - n̄) · [mean_g p < n̄], 0, 1)
    BPR_w = -mean(w⁺ log σ(s⁺ - s⁻) + w⁻ log σ(s⁻ - s⁺))
    ND = mean_g mean_{i ∈ I_B} [-log(Σ_{j∈P_i} e_ij / T_i + 1e-9) - log(Σ_{j∈Q_i} e_ij / (T_i - Σ_{j∈P_i} e_ij) + 1e-9)]
        e_ij = exp(ĥ_g[i]·ĥ_g[j] / 0.2), T_i = Σ_{all j} e_ij; P_i, Q_i the pseudo-positives (no gradient):
        π_g'[i] = softmax_j(ĥ_g'[i]·ĥ_g'[j]), P_i = top-10 of Σ_g' π_g'[i] + π_g[i], Q_i = top-10 of π_g[i] off P_i
    KL = mean over U_B × I_B of KL(p ‖ q) + KL(q ‖ p),  p = σ(z_u · î), q = σ(z_u · ĉ)   (Bernoulli KL)
    L = BPR_w + β ND + γ KL                 (β = --cl_weight 1e-3, γ = --kl_weight 1)

``ĥ``: rows L2-normalised.  ``T_i`` is ``exp(BaseModel.similarity_logsumexp)``, blocked where the [|I_B|, I]
matrix exceeds one block, so it is not held for the gradient; the pseudo-labels are computed ``CONTRAST_BLOCK_FLOATS / (G I)`` rows at a
time, without gradient (``pseudo_labels``; one block is the plain formula).
"""
import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F

import knn_graph
from BaseModel import (
    CONTRAST_BLOCK_FLOATS, _RowMeanProduct, _quiet_csr, normalized_adjacency, pair_tensors, propagate_layers,
    similarity_logsumexp, take_rows, transpose_csr)
from errors import InputError
from knn_graph import SIMILARITY_FLOATS, _similarity_block, normalized_knn, unit_matrix
from registry import Flag, ModelEntry, Recommender, finite, needs_item_graph

TEMPERATURE = 0.2          # the authors' neighbor_discrimination(..., temperature=0.2)
PSEUDO_POSITIVES = 10      # the authors' topk(..., 10) (their Tiktok variant used knn_k)
MIN_COMMON_USERS = 2       # the authors' build_iib_graph.py: an edge needs at least 2 common users


# ---------------------------------------------------------------------- the item-item graphs

def column_sum(unit):
    """``Σ_i unit_i`` of dense rows or a sparse CSR matrix."""
    if unit.layout == torch.strided:
        return unit.sum(0)
    return torch.zeros(unit.shape[1], dtype=unit.dtype).index_add_(0, unit.col_indices(), unit.values())


def denoised_knn(features, num_item, k, block_floats=SIMILARITY_FLOATS):
    """``[M, I, k]`` ids (-1: an empty slot) of each modality's content graph (module docstring): among the
    items whose cosine reaches its modality's mean in every modality, the ``k`` most similar in each; itself
    first.  Blocked over rows (never an I × I matrix); a zero feature row has cosine 0 with every item."""
    units = [unit_matrix(f, num_item) for f in features.values()]
    means = [column_sum(u).pow(2).sum() / num_item ** 2 for u in units]         # mean of the cosine matrix
    ids = torch.full((len(units), num_item, k), -1, dtype=torch.long)
    step = max(1, block_floats // (num_item * len(units)))
    with torch.no_grad():
        for start in range(0, num_item, step):
            stop = min(start + step, num_item)
            rows = torch.arange(stop - start)
            sims = [_similarity_block(u, start, stop) for u in units]
            agree = torch.ones(stop - start, num_item, dtype=torch.bool)
            for sim, mean in zip(sims, means):
                agree &= sim >= mean
            agree[rows, rows + start] = True
            for n, sim in enumerate(sims):
                sim[rows, rows + start] = 2.0                                   # itself, above any cosine
                top, idx = sim.masked_fill_(~agree, -float('inf')).topk(k, dim=1)
                ids[n, start:stop] = idx.masked_fill_(top == -float('inf'), -1)
    return ids


def behaviour_neighbours(train, num_user, num_item, k, min_common=MIN_COMMON_USERS, block_entries=SIMILARITY_FLOATS):
    """``[I, k]`` ids (-1: an empty slot): each item's ``k`` other items with the most common training users, at
    least ``min_common``, ties to the smaller id.  From the sparse co-occurrence ``RᵀR``, item blocks whose
    product holds at most about ``block_entries`` entries (never a dense I × I matrix)."""
    users, items = (t.numpy() for t in pair_tensors(train))
    ones = np.ones(len(users), dtype=np.int64)
    item_user = sp.csr_matrix((ones, (items, users)), shape=(num_item, num_user))
    user_item = item_user.T.tocsr()
    work = item_user @ np.bincount(users, minlength=num_user)              # an item's row: at most this many entries
    ids = np.full((num_item, k), -1, dtype=np.int64)
    start = 0
    while start < num_item:
        stop = start + max(1, int(np.searchsorted(np.cumsum(work[start:]), block_entries, side='right')))
        common = (item_user[start:stop] @ user_item).tocoo()
        row, col, count = common.row, common.col, common.data
        keep = (count >= min_common) & (col != row + start)
        row, col, count = row[keep], col[keep], count[keep]
        order = np.lexsort((col, -count, row))                              # by row, most common first, smaller id
        row, col = row[order], col[order]
        rank = np.arange(len(row)) - np.searchsorted(row, row)
        pick = rank < k
        ids[row[pick] + start, rank[pick]] = col[pick]
        start = stop
    return torch.from_numpy(ids)


def _valid_ids(ids, shape, num_item):
    return (ids.dtype == torch.long and tuple(ids.shape) == shape
            and int(ids.min()) >= -1 and int(ids.max()) < num_item)


def cached_denoised_knn(features, num_item, k, cache_dir):
    """``denoised_knn`` through ``knn_graph.cached_graph`` (``damrs_knn_<modalities>_k<k>.pt``, digest of every
    modality's content; ids' shape, range and self-first checked)."""
    shape = (len(features), num_item, k)

    def valid(saved):
        ids = saved['indices']
        return _valid_ids(ids, shape, num_item) and bool((ids[:, :, 0] == torch.arange(num_item)).all())
    return knn_graph.cached_graph('damrs_knn', '+'.join(features), tuple(features.values()), num_item, k, cache_dir,
                                  lambda: {'indices': denoised_knn(features, num_item, k)}, valid)['indices']


def cached_behaviour(train, num_user, num_item, k, cache_dir):
    """``behaviour_neighbours`` through ``knn_graph.cached_graph`` (``damrs_behaviour_train_k<k>.pt``, digest of
    the training pairs: a new split rebuilds it)."""
    train = np.asarray(train)
    return knn_graph.cached_graph(
        'damrs_behaviour', 'train', train, num_item, k, cache_dir,
        lambda: {'indices': behaviour_neighbours(train, num_user, num_item, k)},
        lambda saved: _valid_ids(saved['indices'], (num_item, k), num_item))['indices']


def as_csr(coo):
    with _quiet_csr():
        return coo.to_sparse_csr()


def item_graphs(features, train, num_user, num_item, k, behaviour_k, cache_dir=None):
    """``[Ŝ_m for each modality] + [Ŝ_b]`` as CSR [I, I]."""
    content = cached_denoised_knn(features, num_item, k, cache_dir)
    behaviour = cached_behaviour(train, num_user, num_item, behaviour_k, cache_dir)
    self_loops = torch.arange(num_item).unsqueeze(1)
    return [as_csr(normalized_knn(ids, num_item)) for ids in content] + \
        [as_csr(normalized_knn(torch.cat([self_loops, behaviour], 1), num_item))]


# ---------------------------------------------------------------------- the loss terms

def pseudo_labels(views, rows, k, block_floats=CONTRAST_BLOCK_FLOATS):
    """``[(P [n, k], Q [n, k]) per graph]`` for the items ``rows`` (module docstring), no gradient; computed
    ``block_floats / (G I)`` rows at a time (``block_floats`` ≥ n G I: the plain formula in one block)."""
    units = [F.normalize(v.detach(), dim=1) for v in views]
    num_item = units[0].shape[0]
    step = max(1, block_floats // (num_item * len(units)))
    out = [(rows.new_empty(len(rows), k), rows.new_empty(len(rows), k)) for _ in units]
    with torch.no_grad():
        for start in range(0, len(rows), step):
            block = rows[start:start + step]
            probs = [torch.softmax(u[block] @ u.t(), dim=1) for u in units]
            total = sum(probs)
            for (mm, single), own in zip(out, probs):
                top = (total + own).topk(k, dim=1).indices
                mm[start:start + step] = top
                single[start:start + step] = own.scatter(1, top, 0.0).topk(k, dim=1).indices
    return out


def neighbour_discrimination(rows, every, mm, single, temperature=TEMPERATURE):
    """``ND`` of one graph: ``rows`` = ``h_g`` at the batch's items, ``every`` = ``h_g`` [I, d]."""
    rows, every = F.normalize(rows, dim=1), F.normalize(every, dim=1)

    def pseudo_sum(ids):
        return torch.exp((rows.unsqueeze(1) * every[ids]).sum(2) / temperature).sum(1)
    mm_sum, single_sum = pseudo_sum(mm), pseudo_sum(single)
    total = torch.exp(similarity_logsumexp(rows, every, temperature))
    return (-torch.log(mm_sum / total + 1e-9) - torch.log(single_sum / (total - mm_sum) + 1e-9)).mean()


def feedback_weights(user, views, pos, neg):
    """``(w⁺, w⁻)`` [B], no gradient, from the user rows and each graph's ``h_g`` at the positives and negatives."""
    with torch.no_grad():
        def probs(items):
            return torch.sigmoid(torch.stack([(user * F.normalize(v[items], dim=1)).sum(1) for v in views]))
        pos_probs, neg_mean = probs(pos), probs(neg).mean()
        mean = pos_probs.mean(0)
        w_pos = (mean * torch.exp(-pos_probs.var(0)) ** 2).clamp(0, 1)
        w_neg = ((pos_probs.max(0).values - neg_mean) * (mean < neg_mean)).clamp(0, 1)
    return w_pos, w_neg


def weighted_bpr(user, pos, neg, w_pos, w_neg):
    """``-mean(w⁺ log σ(s⁺ - s⁻) + w⁻ log σ(s⁻ - s⁺))`` (as ``logsigmoid``, finite for large gaps)."""
    gap = (user * pos).sum(1) - (user * neg).sum(1)
    return -(w_pos * F.logsigmoid(gap) + w_neg * F.logsigmoid(-gap)).mean()


def bernoulli_kl(x, y):
    """``KL(σ(x) ‖ σ(y))`` elementwise from the logits (``log σ`` as ``logsigmoid``: finite where σ saturates)."""
    p = torch.sigmoid(x)
    return p * (F.logsigmoid(x) - F.logsigmoid(y)) + (1 - p) * (F.logsigmoid(-x) - F.logsigmoid(-y))


# ---------------------------------------------------------------------- the model

class DAMRS(Recommender):
    """DA-MRS+LightGCN over a fixed user-item graph and the item-item graphs ``item_graphs``.

    Args:
        num_user, num_item: sizes.
        adj: ``Â`` of the training graph, sparse CSR [(U+I), (U+I)].
        graphs: ``[Ŝ_g]``, the modalities' content graphs then the behaviour graph, CSR [I, I] (at least two).
        dim_latent: ``d`` (64).
        num_layer: ``L`` (2), user-item layers.
        num_item_layer: ``L_mm`` (1), item-item layers.
        cl_weight: ``β`` of the neighbour discrimination (``--cl_weight``, 1e-3; the authors' neighbor_weight).
        kl_weight: ``γ`` of the KL alignment (``--kl_weight``, 1).
    """

    needs_negatives = True

    def __init__(self, num_user, num_item, adj, graphs, dim_latent=64, num_layer=2, num_item_layer=1, cl_weight=1e-3,
                 kl_weight=1.0):
        super().__init__()
        if len(graphs) < 2:
            raise ValueError('DAMRS needs at least one modality graph and the behaviour graph')
        self.num_user, self.num_item, self.num_layer, self.num_item_layer = num_user, num_item, num_layer, num_item_layer
        self.cl_weight, self.kl_weight = cl_weight, kl_weight
        self.num_graph = len(graphs)
        # at least k items off the k pseudo-positives P (Q's candidates), on a tiny item set too
        self.pseudo_k = min(PSEUDO_POSITIVES, num_item // 2)
        self.register_buffer('adj', adj, persistent=False)
        for n, graph in enumerate(graphs):
            self.register_buffer(f'graph_{n}', graph, persistent=False)
            self.register_buffer(f'graph_t_{n}', transpose_csr(graph), persistent=False)
        self.embedding_user = nn.Parameter(torch.empty(num_user, dim_latent))
        self.embedding_item = nn.Parameter(torch.empty(num_item, dim_latent))
        nn.init.xavier_uniform_(self.embedding_user)
        nn.init.xavier_uniform_(self.embedding_item)

    def item_views(self):
        """``[h_g]`` [I, d] each: the item ID embedding through each item-item graph."""
        views = []
        for n in range(self.num_graph):
            h = self.embedding_item
            for _ in range(self.num_item_layer):
                h = _RowMeanProduct.apply(h, getattr(self, f'graph_{n}'), getattr(self, f'graph_t_{n}'))
            views.append(h)
        return views

    def forward(self):
        z = propagate_layers(self.adj, torch.cat([self.embedding_user, self.embedding_item]), self.num_layer)
        return z[:self.num_user], z[self.num_user:] + sum(self.item_views()) / self.num_graph

    def loss(self, users, pos, neg):
        """``BPR_w + β ND + γ KL``; the loss and its parts."""
        user_ids, user_at = torch.unique(users, return_inverse=True)
        item_ids, item_at = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        x0 = torch.cat([self.embedding_user, self.embedding_item])
        z = propagate_layers(self.adj, x0, self.num_layer, rows=torch.cat([user_ids, item_ids + self.num_user]))
        z_users, z_items = z.split([len(user_ids), len(item_ids)])
        views = self.item_views()
        content = sum(views) / self.num_graph

        labels = pseudo_labels(views, item_ids, self.pseudo_k)
        nd = sum(neighbour_discrimination(take_rows(v, item_ids), v, mm, single)
                 for v, (mm, single) in zip(views, labels)) / self.num_graph

        p_logits = z_users @ F.normalize(z_items, dim=1).t()
        q_logits = z_users @ F.normalize(take_rows(content, item_ids), dim=1).t()
        kl = (bernoulli_kl(p_logits, q_logits) + bernoulli_kl(q_logits, p_logits)).mean()

        user = take_rows(z_users, user_at)
        pos_at, neg_at = item_at.split(len(pos))
        w_pos, w_neg = feedback_weights(user, views, pos, neg)
        z_pos = take_rows(z_items, pos_at) + take_rows(content, pos)
        z_neg = take_rows(z_items, neg_at) + take_rows(content, neg)
        bpr = weighted_bpr(user, z_pos, z_neg, w_pos, w_neg)
        loss = bpr + self.cl_weight * nd + self.kl_weight * kl
        return loss, {'bpr': bpr.item(), 'nd': nd.item(), 'kl': kl.item()}


# ---------------------------------------------------------------------- the registry entry (SPEC 5)

def build(args, data):
    needs_item_graph('DAMRS', args, data)
    if args.behaviour_k >= data.num_item:
        raise InputError(f'--behaviour_k {args.behaviour_k} must be below the number of items ({data.num_item})')
    adj = normalized_adjacency(data.train, data.num_user, data.num_item)
    graphs = item_graphs(data.features, data.train, data.num_user, data.num_item, args.knn_k, args.behaviour_k,
                         cache_dir=data.path)
    return DAMRS(data.num_user, data.num_item, adj, graphs, args.dim_latent, args.num_layer, cl_weight=args.cl_weight,
                 kl_weight=args.kl_weight)


MODEL = ModelEntry(
    name='DAMRS', aliases=('DA-MRS',), build=build,
    summary='denoised content and behaviour item graphs, feedback-weighted BPR, pseudo-label neighbour '
            'contrast and KL alignment, on LightGCN (docs/models.md)',
    # XMUDM/DA-MRS src/configs/model/LightGCN.yaml (Baby, Sports, Clothing): n_ui_layers 2, n_mm_layers 1,
    # knn_k 10, kl_weight 1, neighbor_weight 1e-3 (--cl_weight), learning_rate 1e-3; src/configs/overall.yaml:
    # train_batch_size 4096, epochs 500, weight_decay 0.0 (Adam's: MMRec's trainer passes it to Adam);
    # item_graph_dict2.npy: build_iib_graph.py --topk 2 (--behaviour_k)
    defaults=dict(l_r=0.001, weight_decay=0.0, batch_size=4096, num_layer=2, num_epoch=500, cl_weight=1e-3),
    adam_weight_decay=True,
    flags=(
        Flag('kl_weight', 1.0, 'weight γ of the KL alignment of the ID and content preferences', type=float,
             check=lambda a: finite(a.kl_weight) and a.kl_weight >= 0, problem='must be a finite number >= 0'),
        Flag('behaviour_k', 2, "neighbours per item in the item-item behaviour graph (the authors' "
             "build_iib_graph.py --topk)", type=int, check=lambda a: 1 <= a.behaviour_k <= 10000,
             problem='must be in [1, 10000]'),
    ),
    reads=('knn_k', 'cl_weight'),
    # the authors' LightGCN.yaml: neighbor_weight (--cl_weight) [1e-3], its commented grid [1, 0.1, 0.01, 1e-3,
    # 1e-4, 0] (the four around the default here); learning_rate [1e-3], commented 5e-4 and 1e-4
    search_grid=dict(l_r=[0.001, 0.0001], cl_weight=[1e-4, 1e-3, 1e-2, 0.1]),
    rows={'DA-MRS': ('DA-MRS', [])},
)
