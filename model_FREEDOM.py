"""FREEDOM (Zhou & Shen, ACM MM 2023, "A Tale of Two Graphs"): a frozen item-item graph from the
content, and a user-item graph pruned afresh every epoch (SPEC 6).

Item-item graph, built once per dataset.  Per modality m, ``S_m[i, j] = 1`` for the ``k`` items j
most cosine-similar to i (``--knn_k``, itself included), normalised as the authors' code does,
``Ŝ_m = D^-1/2 S_m D^-1/2`` with ``D`` the row sums (each ``k``); then

    S = Ŝ_1                                   (one modality)
    S = w Ŝ_1 + (1 - w)/(M - 1) Σ_{m≥2} Ŝ_m    (M ≥ 2; w = --mm_image_weight, 0.1)

A word-id modality (Tiktok) enters the graph as the mean of its words' one-hot vectors (the bag of
words; cosine does not see the scale), which is fixed; its trainable feature (SPEC 1.2) serves the
modality loss below.

Degree-sensitive pruning, redrawn by ``on_epoch_start`` from torch's seeded RNG: keep
``⌊(1 - ρ) E⌋`` of the E training edges (``--dropout_rate`` ρ, 0.8), drawn without replacement
with probability ∝ ``1/√(deg_u deg_i)`` (full-graph degrees), and renormalise the kept graph
``Â_p = D^-1/2 A_p D^-1/2`` (SPEC 3.1).  Evaluation uses the full ``Â``.

Encoder and loss, for a batch of (user, positive, sampled negative) triples:

    h = S^{L_mm} E_i                       (L_mm = 1)
    [z_u ; z'_i] = mean_{k=0..L} Â_p^k [E_u ; E_i]          (L = --num_layer, 2)
    z_i = z'_i + h,   s(u, i) = z_u · z_i
    L = BPR(z_u, z_i) + λ Σ_m BPR(z_u, T_m F_m)

with ``BPR(a, b) = -mean log σ(a_u·b_{i⁺} - a_u·b_{i⁻})``, ``T_m = Linear(dim F_m → d)`` and the
feature tables ``F_m`` themselves trainable (from the raw features, as the authors' code).
"""
import torch
from torch import nn

from BaseModel import (
    _RowMeanProduct, _quiet_csr, normalized_adjacency, pair_tensors, propagate_layers, take_rows, transpose_csr)
from errors import InputError
from knn_graph import cached_knn, normalized_knn
from model_LightGCN import bpr_loss
from registry import Flag, ModelEntry, Recommender, finite, needs_modality


# ---------------------------------------------------------------------- the item-item graph


def modality_weights(num_modalities, image_weight):
    """``w`` on the first modality, ``(1 - w)/(M - 1)`` on each other one; 1 for a single modality."""
    if num_modalities == 1:
        return [1.0]
    return [image_weight] + [(1.0 - image_weight) / (num_modalities - 1)] * (num_modalities - 1)


def item_graph(features, num_item, k, image_weight=0.1, cache_dir=None):
    """``S`` (see the module docstring) as sparse CSR [I, I], from each modality's kNN graph
    (read from / written to ``cache_dir`` when building it is slow, see ``cached_knn``)."""
    return combine_knn([cached_knn(m, f, num_item, k, cache_dir) for m, f in features.items()], num_item,
                       image_weight)


def combine_knn(indices, num_item, image_weight=0.1):
    """``S = Σ_m w_m Ŝ_m`` as CSR from each modality's ``knn_indices`` (in modality order)."""
    parts = [w * normalized_knn(ids, num_item) for w, ids in zip(modality_weights(len(indices), image_weight), indices)]
    graph = torch.sparse_coo_tensor(torch.cat([p.indices() for p in parts], dim=1),
                                    torch.cat([p.values() for p in parts]), (num_item, num_item), check_invariants=True)
    with _quiet_csr():
        return graph.coalesce().to_sparse_csr()


# ---------------------------------------------------------------------- degree-sensitive pruning

def prune_weights(users, items, num_user, num_item):
    """``1/√(deg_u deg_i)`` of every training edge (full-graph degrees)."""
    deg_u = torch.bincount(users, minlength=num_user).float()
    deg_i = torch.bincount(items, minlength=num_item).float()
    return (deg_u[users] * deg_i[items]).rsqrt()


def pruned_adjacency(users, items, weights, dropout, num_user, num_item):
    """``Â_p``: ``⌊(1 - ρ) E⌋`` edges drawn without replacement ∝ ``weights`` (torch's RNG),
    renormalised by their own degrees."""
    keep = torch.multinomial(weights, max(1, int(len(weights) * (1.0 - dropout))), replacement=False)
    return normalized_adjacency(torch.stack([users[keep], items[keep]], dim=1), num_user, num_item, weights.dtype)


def register_edges(model, train, num_user, num_item):
    """The buffers a pruned graph is drawn from (every training edge and its ``prune_weights``), and
    ``train_adj``, the epoch's graph (None until ``on_epoch_start``): FREEDOM's and PGL's."""
    users, items = pair_tensors(train)
    model.register_buffer('edge_users', users, persistent=False)
    model.register_buffer('edge_items', items, persistent=False)
    model.register_buffer('edge_weights', prune_weights(users, items, num_user, num_item), persistent=False)
    model.register_buffer('train_adj', None, persistent=False)


def cached_item_graph(args, data):
    """``S`` for ``--knn_k`` and ``--mm_image_weight`` (FREEDOM's, PGL's and DRAGON's), each modality's kNN ids
    cached beside the dataset; a one-line error when ``--knn_k`` exceeds the items."""
    if args.knn_k > data.num_item:
        raise InputError(f'--knn_k {args.knn_k} exceeds the number of items ({data.num_item})')
    return item_graph(data.features, data.num_item, args.knn_k, args.mm_image_weight, cache_dir=data.path)


# ---------------------------------------------------------------------- the model

class FREEDOM(Recommender):
    """FREEDOM over a fixed user-item graph and item-item graph.

    Args:
        num_user, num_item: sizes.
        features: modality -> float array [num_item, f] or ``DataLoad.WordFeature`` (at least one).
        train: [E, 2] training (user, item) pairs, the edges that are pruned.
        adj: ``Â`` of the full training graph, sparse CSR (evaluation).
        item_adj: ``S``, the item-item graph (``item_graph``), sparse CSR [I, I].
        dim_latent: ``d`` (64).
        num_layer: ``L`` (2), user-item layers.
        dropout: ``ρ``, the share of edges pruned each epoch (0.8); 0 keeps the full graph.
        reg_weight: ``λ`` of the modality BPR terms (``--weight_decay``, 1e-4).
        num_item_layer: ``L_mm`` (1), item-item layers.
    """

    needs_negatives = True

    def __init__(self, num_user, num_item, features, train, adj, item_adj, dim_latent=64, num_layer=2,
                 dropout=0.8, reg_weight=1e-4, num_item_layer=1):
        super().__init__()
        if not features:
            raise ValueError('FREEDOM needs at least one modality')
        self.num_user, self.num_item, self.num_layer, self.num_item_layer = num_user, num_item, num_layer, num_item_layer
        self.dropout, self.reg_weight = dropout, reg_weight
        self.modalities = list(features)
        self.register_buffer('adj', adj, persistent=False)
        self.register_buffer('item_adj', item_adj, persistent=False)
        self.register_buffer('item_adj_t', transpose_csr(item_adj), persistent=False)
        register_edges(self, train, num_user, num_item)

        self.embedding_user = nn.Parameter(torch.empty(num_user, dim_latent))
        self.embedding_item = nn.Parameter(torch.empty(num_item, dim_latent))
        nn.init.xavier_uniform_(self.embedding_user)
        nn.init.xavier_uniform_(self.embedding_item)
        widths = self.register_item_features(features, trainable=True)      # F_m trainable, as the authors' code
        self.transforms = nn.ModuleDict()
        for m in self.modalities:
            self.transforms[m] = nn.Linear(widths[m], dim_latent)

    def on_epoch_start(self):
        """Draw this epoch's pruned graph ``Â_p`` (called by ``Train.train_epoch``)."""
        if self.dropout > 0:
            self.train_adj = pruned_adjacency(self.edge_users, self.edge_items, self.edge_weights, self.dropout,
                                              self.num_user, self.num_item)
        else:
            self.train_adj = self.adj

    def item_item(self):
        """``h = S^{L_mm} E_i`` [I, d]."""
        h = self.embedding_item
        for _ in range(self.num_item_layer):
            h = _RowMeanProduct.apply(h, self.item_adj, self.item_adj_t)
        return h

    def forward(self):
        """``(z_user [U, d], z_item [I, d])`` over the full user-item graph (evaluation)."""
        z = propagate_layers(self.adj, torch.cat([self.embedding_user, self.embedding_item]), self.num_layer)
        return z[:self.num_user], z[self.num_user:] + self.item_item()

    def modality_items(self, m, items):
        """``T_m F_m`` at the rows ``items``."""
        return self.transforms[m](take_rows(self.item_input(m), items))

    def loss(self, users, pos, neg):
        """``BPR(z_u, z_i) + λ Σ_m BPR(z_u, T_m F_m)`` on this epoch's pruned graph; the loss and its parts."""
        if self.train_adj is None:
            raise RuntimeError('FREEDOM.loss before on_epoch_start: no pruned graph drawn yet')
        items = torch.cat([pos, neg])
        nodes = torch.cat([users, items + self.num_user])
        x0 = torch.cat([self.embedding_user, self.embedding_item])
        z = propagate_layers(self.train_adj, x0, self.num_layer, rows=nodes)
        z_user, z_items = z[:len(users)], z[len(users):] + take_rows(self.item_item(), items)
        z_pos, z_neg = z_items.split(len(pos))
        bpr = bpr_loss(z_user, z_pos, z_neg)
        parts = {'bpr': bpr.item()}
        modality = 0.0
        for m in self.modalities:
            t_pos, t_neg = self.modality_items(m, items).split(len(pos))
            term = bpr_loss(z_user, t_pos, t_neg)
            parts[f'bpr_{m}'] = term.item()
            modality = modality + term
        return bpr + self.reg_weight * modality, parts


# ---------------------------------------------------------------------- the registry entry (SPEC 5)

def build(args, data):
    needs_modality('FREEDOM', data)
    adj = normalized_adjacency(data.train, data.num_user, data.num_item)
    graph = cached_item_graph(args, data)
    return FREEDOM(data.num_user, data.num_item, data.features, data.train, adj, graph, args.dim_latent,
                   args.num_layer, args.dropout_rate, reg_weight=args.weight_decay)


MODEL = ModelEntry(
    name='FREEDOM', build=build, summary='frozen item-item kNN graph plus a pruned user-item graph, BPR (SPEC 6)',
    defaults=dict(l_r=0.001, weight_decay=1e-4, batch_size=2048, num_layer=2, num_epoch=1000, dropout_rate=0.8),
    flags=(
        Flag('knn_k', 10, "neighbours per item in each modality's item-item kNN graph", type=int,
             check=lambda a: 1 <= a.knn_k <= 10000, problem='must be in [1, 10000]'),
        Flag('mm_image_weight', 0.1, 'weight of the first modality in the item-item graph (the others share the '
             'rest equally)', type=float, check=lambda a: finite(a.mm_image_weight) and 0 <= a.mm_image_weight <= 1,
             problem='must be in [0, 1]'),
    ),
    reads=('dropout_rate',),
    # MMRec's FREEDOM.yaml: reg_weight over {0, 1e-5, 1e-4, 1e-3} (its dropout grid left at 0.8)
    search_grid=dict(l_r=[0.01, 0.001], weight_decay=[0.0, 1e-5, 1e-4, 1e-3]),
)
