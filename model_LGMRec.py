"""LGMRec (Guo et al., AAAI 2024, "Local and Global Graph Learning for Multimodal Recommendation"): local
embeddings from the user-item graph (collaborative and per modality) plus global embeddings from learned
hypergraphs, BPR and a cross-modal hypergraph contrast (docs/models.md).

With ``R`` the binary training matrix [U, I], ``Â`` of SPEC 3.1, ``E_u, E_i`` xavier-uniform and the frozen
raw features ``F_m``:

    c     = mean_{k=0..L} Â^k [E_u ; E_i]                          collaborative (L = --num_layer, 2)
    g_m   = Â^{L_m} [D_u^-1 R F_m W_m ; F_m W_m]                   modality (L_m = --lgmrec_mm_layers, 2; last layer)
    l     = c + Σ_m normalise(g_m)                                 local (rows L2-normalised)

Hypergraphs, K hyperedges (``--hyper_num`` 4), ``V_m`` [dim F_m, K] xavier-uniform:

    H_i^m = gumbel_softmax(F_m V_m, τ),   H_u^m = gumbel_softmax(R F_m V_m, τ)     (τ = 0.2, over the K edges)
    per hyper layer (--n_hyper_layer, 1):   Λ = drop(H_i^m)ᵀ e,  e ← drop(H_i^m) Λ,  u = drop(H_u^m) Λ
                                            (e starts as c's item rows; drop: dropout ρ = --dropout_rate 0.5)
    h_m   = [u ; e],   z = l + α normalise(Σ_m h_m)                (α = --lgmrec_alpha 0.3)

Gumbel noise and dropout in training only (torch's seeded RNG); evaluation uses ``softmax(x / τ)``.

Loss for a batch of B (user, positive, sampled negative):

    L = BPR(z) + β Σ_{m < m'} [N(h_m[u], h_m'[u], h_m'[all users]) + N(h_m[i⁺], h_m'[i⁺], h_m'[all items])]
        + λ (‖z_u‖_F + ‖z_{i⁺}‖_F + ‖z_{i⁻}‖_F) / B
    N(a, b, all) = -Σ_r log(exp(â_r·b̂_r / τ) / Σ_j exp(â_r·all_j^ / τ))        (a sum over the batch's rows)

with ``β = --cl_weight`` 1e-4, ``λ = --weight_decay`` 1e-6 (Frobenius norms, not squared).
"""
import itertools

import torch
from torch import nn
from torch.nn import functional as F

from BaseModel import (
    _RowMeanProduct, _quiet_csr, normalized_adjacency, pair_tensors, propagate_layers, similarity_logsumexp,
    similarity_logsumexp_plain, take_rows, transpose_csr)
from model_LightGCN import bpr_loss
from registry import Flag, ModelEntry, Recommender, finite, needs_modality

TEMPERATURE = 0.2          # the authors' self.tau: the Gumbel softmax and the contrast


def interaction_matrices(train, num_user, num_item):
    """``(R, D_u^-1 R)`` as CSR [U, I] from the training pairs (a user without items: a zero row)."""
    users, items = pair_tensors(train)
    inv_deg = 1.0 / torch.bincount(users, minlength=num_user).clamp(min=1).float()
    with _quiet_csr():
        def csr(values):
            return torch.sparse_coo_tensor(torch.stack([users, items]), values, (num_user, num_item),
                                           check_invariants=True).coalesce().to_sparse_csr()
        return csr(torch.ones(len(users))), csr(inv_deg[users])


def hyper_propagate(item_edges, user_edges, item_emb, num_hyper_layer):
    """``(u, e)``: ``num_hyper_layer`` rounds of ``Λ = H_iᵀ e, e ← H_i Λ, u = H_u Λ`` from ``e = item_emb``."""
    e = item_emb
    for _ in range(num_hyper_layer):
        latent = item_edges.t() @ e
        e = item_edges @ latent
        u = user_edges @ latent
    return u, e


def hyper_contrast(a, b, every, temperature=TEMPERATURE, weights=None, plain=False):
    """``N(a, b, every)``: ``-Σ_r w_r log softmax_j(â_r · every_j^ / τ)`` with ``b̂_r`` in the numerator (a sum,
    as the authors' code; ``b`` holds rows of ``every``, which need not appear among the denominators'), each
    row standing for ``w_r`` equal rows (``weights``; None: 1).  The denominators by ``similarity_logsumexp``
    (one [B, N] matrix held: 73 MB for 2,048 rows against Tiktok's users), or with ``plain`` by the formula."""
    a, b, every = F.normalize(a, dim=1), F.normalize(b, dim=1), F.normalize(every, dim=1)
    lse = (similarity_logsumexp_plain if plain else similarity_logsumexp)(a, every, temperature)
    per_row = (a * b).sum(1) / temperature - lse
    return -(per_row if weights is None else weights * per_row).sum()


class LGMRec(Recommender):
    """LGMRec over a fixed user-item graph.

    Args:
        num_user, num_item: sizes.
        features: modality -> float array [num_item, f] or ``DataLoad.WordFeature`` (at least one).
        train: [E, 2] training (user, item) pairs (``R``).
        adj: ``Â``, sparse CSR [(U+I), (U+I)].
        dim_latent: ``d`` (64).
        num_layer: ``L`` (2), collaborative layers.
        mm_layers: ``L_m`` (2), modality layers.
        hyper_num: ``K`` (4) hyperedges.
        hyper_layers: hypergraph layers (1).
        dropout: ``ρ`` on the hyperedge memberships (0.5; the authors' keep_rate is 1 - ρ).
        alpha: ``α`` (0.3), weight of the global embeddings.
        reg_weight: ``λ`` (``--weight_decay``, 1e-6).
        cl_weight: ``β`` (``--cl_weight``, 1e-4).
    """

    needs_negatives = True

    def __init__(self, num_user, num_item, features, train, adj, dim_latent=64, num_layer=2, mm_layers=2,
                 hyper_num=4, hyper_layers=1, dropout=0.5, alpha=0.3, reg_weight=1e-6, cl_weight=1e-4):
        super().__init__()
        if not features:
            raise ValueError('LGMRec needs at least one modality')
        self.num_user, self.num_item, self.num_layer, self.mm_layers = num_user, num_item, num_layer, mm_layers
        self.hyper_layers, self.dropout, self.alpha = hyper_layers, dropout, alpha
        self.reg_weight, self.cl_weight = reg_weight, cl_weight
        self.modalities = list(features)
        self.register_buffer('adj', adj, persistent=False)
        inter, inter_mean = interaction_matrices(train, num_user, num_item)
        for name, matrix in (('inter', inter), ('inter_mean', inter_mean)):
            self.register_buffer(name, matrix, persistent=False)
            self.register_buffer(f'{name}_t', transpose_csr(matrix), persistent=False)
        self.embedding_user = nn.Parameter(torch.empty(num_user, dim_latent))
        self.embedding_item = nn.Parameter(torch.empty(num_item, dim_latent))
        nn.init.xavier_uniform_(self.embedding_user)
        nn.init.xavier_uniform_(self.embedding_item)
        widths = self.register_item_features(features)           # frozen raw features, as the authors' code
        self.transforms = nn.ParameterDict({m: nn.Parameter(nn.init.xavier_uniform_(torch.empty(widths[m], dim_latent)))
                                            for m in self.modalities})
        self.hyper = nn.ParameterDict({m: nn.Parameter(nn.init.xavier_uniform_(torch.empty(widths[m], hyper_num)))
                                       for m in self.modalities})

    def _users_of(self, item_rows, mean):
        """``R x`` (or ``D_u^-1 R x`` when ``mean``) for item rows ``x``."""
        if mean:
            return _RowMeanProduct.apply(item_rows, self.inter_mean, self.inter_mean_t)
        return _RowMeanProduct.apply(item_rows, self.inter, self.inter_t)

    def modality_view(self, m):
        """``g_m`` [(U+I), d]: the last of ``L_m`` propagations of ``[D_u^-1 R F_m W_m ; F_m W_m]``."""
        item = self.item_input(m) @ self.transforms[m]
        x = torch.cat([self._users_of(item, mean=True), item])
        for _ in range(self.mm_layers):
            x = _RowMeanProduct.apply(x, self.adj, self.adj)         # Âᵀ = Â
        return x

    def hyperedges(self, m):
        """``(H_i^m [I, K], H_u^m [U, K])``: Gumbel softmax memberships in training (then dropout), the
        noiseless ``softmax(x / τ)`` in evaluation."""
        logits_item = self.item_input(m) @ self.hyper[m]
        logits_user = self._users_of(logits_item, mean=False)
        if not self.training:
            return torch.softmax(logits_item / TEMPERATURE, 1), torch.softmax(logits_user / TEMPERATURE, 1)
        item = F.gumbel_softmax(logits_item, TEMPERATURE, hard=False, dim=1)
        user = F.gumbel_softmax(logits_user, TEMPERATURE, hard=False, dim=1)
        return F.dropout(item, self.dropout), F.dropout(user, self.dropout)

    def embeddings(self):
        """``(z [(U+I), d], {m: h_m [(U+I), d]})``."""
        content = propagate_layers(self.adj, torch.cat([self.embedding_user, self.embedding_item]), self.num_layer)
        local = content + sum(F.normalize(self.modality_view(m), dim=1) for m in self.modalities)
        hyper = {}
        for m in self.modalities:
            item_edges, user_edges = self.hyperedges(m)
            user, item = hyper_propagate(item_edges, user_edges, content[self.num_user:], self.hyper_layers)
            hyper[m] = torch.cat([user, item])
        return local + self.alpha * F.normalize(sum(hyper.values()), dim=1), hyper

    def forward(self):
        z, _ = self.embeddings()
        return z[:self.num_user], z[self.num_user:]

    def loss(self, users, pos, neg, plain=False):
        """BPR, the hypergraph contrast of every modality pair, and the (unsquared) norm term (``plain``: the
        contrasts over every batch row, their denominators by the formula: ``loss_plain``)."""
        z, hyper = self.embeddings()
        nodes = torch.cat([users, pos + self.num_user, neg + self.num_user])
        z_user, z_pos, z_neg = take_rows(z, nodes).split(len(users))
        bpr = bpr_loss(z_user, z_pos, z_neg)
        reg = (z_user.norm() + z_pos.norm() + z_neg.norm()) / len(users)
        cl = z.new_zeros(())
        # the batch's users, then its positive items, against every user (item); a node the batch repeats is one
        # row weighted by its count (Tiktok: 2,048 pairs hold about 700 users), the plain formula repeats it
        sides = [(users, slice(None, self.num_user)), (pos + self.num_user, slice(self.num_user, None))]
        if not plain:
            sides = [(*torch.unique(nodes, return_counts=True), every) for nodes, every in sides]
        for m, other in itertools.combinations(self.modalities, 2):
            for nodes, *counts, every in sides:
                cl = cl + hyper_contrast(take_rows(hyper[m], nodes), take_rows(hyper[other], nodes), hyper[other][every],
                                         weights=counts[0].to(z.dtype) if counts else None, plain=plain)
        loss = bpr + self.cl_weight * cl + self.reg_weight * reg
        return loss, {'bpr': bpr.item(), 'hcl': cl.item(), 'reg': reg.item()}

    def loss_plain(self, users, pos, neg):
        """``loss`` with the contrasts over every batch row and autograd's ``logsumexp`` of the whole similarity
        matrices (what it is tested against)."""
        return self.loss(users, pos, neg, plain=True)


# ---------------------------------------------------------------------- the registry entry (SPEC 5)

def build(args, data):
    needs_modality('LGMRec', data)
    adj = normalized_adjacency(data.train, data.num_user, data.num_item)
    return LGMRec(data.num_user, data.num_item, data.features, data.train, adj, args.dim_latent, args.num_layer,
                  mm_layers=args.lgmrec_mm_layers, hyper_num=args.hyper_num, hyper_layers=args.n_hyper_layer,
                  dropout=args.dropout_rate, alpha=args.lgmrec_alpha, reg_weight=args.weight_decay,
                  cl_weight=args.cl_weight)


MODEL = ModelEntry(
    name='LGMRec', build=build, summary='local graph embeddings plus global hypergraph embeddings, BPR and a '
                                        'cross-modal hypergraph contrast (docs/models.md)',
    # georgeguo-cn/LGMRec's configs/dataset/baby.yaml and overall.yaml: lr 1e-3, batch 2048, Adam without decay,
    # n_ui_layers 2, n_mm_layers 2, n_hyper_layer 1, hyper_num 4, keep_rate 0.5, alpha 0.3, cl_weight 1e-4,
    # reg_weight 1e-6 (the loss's λ)
    defaults=dict(l_r=0.001, weight_decay=1e-6, batch_size=2048, num_layer=2, num_epoch=1000, dropout_rate=0.5,
                  cl_weight=1e-4),
    flags=(
        Flag('lgmrec_mm_layers', 2, "modality-graph layers L_m (the authors' n_mm_layers)", type=int,
             check=lambda a: 0 <= a.lgmrec_mm_layers <= 32, problem='must be in [0, 32]'),
        Flag('hyper_num', 4, 'hyperedges per modality (K)', type=int,
             check=lambda a: 1 <= a.hyper_num <= 4096, problem='must be in [1, 4096]'),
        Flag('n_hyper_layer', 1, 'hypergraph layers', type=int,
             check=lambda a: 1 <= a.n_hyper_layer <= 32, problem='must be in [1, 32]'),
        Flag('lgmrec_alpha', 0.3, 'weight α of the global (hypergraph) embeddings', type=float,
             check=lambda a: finite(a.lgmrec_alpha) and a.lgmrec_alpha >= 0, problem='must be a finite number >= 0'),
    ),
    reads=('dropout_rate', 'cl_weight'),
    # the authors' LGMRec.yaml grid: cl_weight over {0, 1e-6, ..., 0.1}
    search_grid=dict(l_r=[0.01, 0.001], cl_weight=[1e-5, 1e-4, 1e-3, 1e-2]),
)
