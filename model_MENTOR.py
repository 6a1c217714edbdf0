"""MENTOR (Xu et al., AAAI 2025, "MENTOR: Multi-level Self-supervised Learning for Multimodal Recommendation"):
per-modality and ID graph encoders, a frozen item-item kNN graph, BPR plus ID-guided distribution alignment and
two feature-enhancement tasks (docs/models.md).

Encoders, one per modality m and one for the ID (``x`` for the ID: a trainable table ``E`` [I, d]):

    x_m = normalise_rows([P_m ; W2_m lrelu(W1_m F_m)])     (P_m [U, d] xavier-normal; W1: dim → 4d, W2: 4d → d)
    r_m = Σ_{k=0..L} Â^k x_m                                 (a sum, not a mean; L = --num_layer, 2)

with ``F_m`` the frozen raw features.  ``S`` is FREEDOM's item-item graph (``--knn_k`` 10 binary neighbours per
modality, ``D^-1/2 S D^-1/2``, the first modality weighted ``--mm_image_weight`` 0.1).  Each branch's item rows
gain ``S`` of themselves, ``ř_m = [r_m,u ; r_m,i + S^{L_mm} r_m,i]`` (L_mm = 1), and M modalities give the tables

    fused   z = [w_{u,1} ř_1,u ‖ … ‖ w_{u,M} ř_M,u ; ř_1,i ‖ … ‖ ř_M,i]     (w_u [U, M] trainable)
    guide   g = [ř_id ‖ … ‖ ř_id]  (M copies),   modality m:  t_m = [ř_m ‖ … ‖ ř_m]  (M copies)

``s(u, i) = z_u · z_i``.  Two more encoder sets (own parameters) give the noisy tables ``n¹, n²`` (built like
``z``), where after each propagation ``h ← h + 0.1 sign(h) ⊙ normalise_rows(ε)``, ε ~ U[0, 1) per branch.

Loss for a batch of (user, positive, sampled negative):

    L = -mean log₂ σ(s⁺ - s⁻)
        + λ (Σ_m mean(P_m[u]²) + mean(w²))                                     (λ = --weight_decay 1e-3)
        + 1.5 [2 - cos̄(drop(z_U), Q z_U) - cos̄(drop(z_I), Q z_I)]            (no gradient, as official)
        + α Σ_{a<b ∈ {z, g, t_1..t_M}} |var a - var b| + |mean a - mean b|      (α = --align_weight 0.1)
        + β [InfoNCE(n¹_U, n²_U) + InfoNCE(n¹_I, n²_I)]                         (β = --cl_weight 1e-4)

``drop``: dropout ρ = --dropout_rate 0.5; ``Q = Linear(M d → M d)``; var (unbiased) and mean over every entry of
a whole table; the InfoNCE (temperature --ssl_temp 0.2) runs over **all** users and all items, its
denominators through ``BaseModel.similarity_logsumexp`` (blocked where the matrix exceeds one block;
``model_MGCN.info_nce`` is the formula).
"""
import itertools
import math

import torch
from torch import nn
from torch.nn import functional as F

from BaseModel import (
    _RowMeanProduct, normalized_adjacency, propagate_layers, similarity_logsumexp, take_rows, transpose_csr,
    xavier_normal_param)
from config import str2bool
from model_FREEDOM import cached_item_graph
from registry import Flag, ModelEntry, Recommender, finite, needs_item_graph

NOISE_EPS = 0.1            # the authors' GCN(..., perturbed=True): 0.1 * sign(h) * normalise(rand)
MASK_F_WEIGHT = 1.5        # the authors' mask_weight_f; its term carries no gradient, so no flag changes training


def info_nce_all(a, b, temperature):
    """``-mean_r log softmax_j(â_r · b̂_j / τ)[r]`` over every row: ``model_MGCN.info_nce`` with its denominators
    by ``similarity_logsumexp``, blocked where the [len(a), len(b)] matrix exceeds one block."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    return (similarity_logsumexp(a, b, temperature) - (a * b).sum(1) / temperature).mean()


def moment_gap(tables):
    """``Σ_{a<b} |var a - var b| + |mean a - mean b|`` over whole tables (unbiased variance of all entries)."""
    moments = [(t.var(), t.mean()) for t in tables]
    return sum((va - vb).abs() + (ma - mb).abs() for (va, ma), (vb, mb) in itertools.combinations(moments, 2))


class BranchInput(nn.Module):
    """One encoder's input ``x = normalise_rows([P ; W2 lrelu(W1 F)])`` [(U+I), d]: the user preference
    ``P`` [U, d] (xavier-normal) above the item features mapped by a two-layer MLP (PyTorch's default init)."""

    def __init__(self, num_user, width, dim_latent):
        super().__init__()
        self.preference = xavier_normal_param(num_user, dim_latent)
        self.hidden = nn.Linear(width, 4 * dim_latent)
        self.out = nn.Linear(4 * dim_latent, dim_latent)

    def forward(self, features):
        return F.normalize(torch.cat([self.preference, self.out(F.leaky_relu(self.hidden(features)))]), dim=1)


class MENTOR(Recommender):
    """MENTOR over a fixed user-item graph and item-item graph.

    Args:
        num_user, num_item: sizes.
        features: modality -> float array [num_item, f] or ``DataLoad.WordFeature`` (at least one).
        adj: ``Â`` of the training graph, sparse CSR [(U+I), (U+I)].
        item_adj: ``S`` (``model_FREEDOM.item_graph``), sparse CSR [I, I].
        dim_latent: ``d`` (64).
        num_layer: ``L`` (2), user-item propagations of every encoder.
        num_item_layer: ``L_mm`` (1), item-item layers.
        reg_weight: ``λ`` (``--weight_decay``, 1e-3).
        align_weight: ``α`` (``--align_weight``, 0.1).
        cl_weight: ``β`` of the noisy-view InfoNCE (``--cl_weight``, 1e-4).
        temperature: ``τ`` of that InfoNCE (``--ssl_temp``, 0.2).
        dropout: ``ρ`` of the feature-masking term (``--dropout_rate``, 0.5).
        frozen_inputs: keep every ``P`` and the ID table ``E`` at their initial values, as the authors' code
            does on a GPU (``--mentor_frozen_inputs``; docs/models.md).
    """

    needs_negatives = True

    def __init__(self, num_user, num_item, features, adj, item_adj, dim_latent=64, num_layer=2, num_item_layer=1,
                 reg_weight=1e-3, align_weight=0.1, cl_weight=1e-4, temperature=0.2, dropout=0.5, frozen_inputs=False):
        super().__init__()
        if not features:
            raise ValueError('MENTOR needs at least one modality')
        self.num_user, self.num_item, self.num_layer, self.num_item_layer = num_user, num_item, num_layer, num_item_layer
        self.reg_weight, self.align_weight, self.cl_weight = reg_weight, align_weight, cl_weight
        self.temperature, self.dropout, self.dim = temperature, dropout, dim_latent
        self.modalities = list(features)
        self.register_buffer('adj', adj, persistent=False)
        self.register_buffer('item_adj', item_adj, persistent=False)
        self.register_buffer('item_adj_t', transpose_csr(item_adj), persistent=False)
        widths = self.register_item_features(features)           # frozen raw features, as the authors' code

        def encoders():
            return nn.ModuleDict({m: BranchInput(num_user, widths[m], dim_latent) for m in self.modalities})
        self.encoders = encoders()
        self.noisy_encoders = nn.ModuleList([encoders(), encoders()])
        self.id_table = xavier_normal_param(num_item, dim_latent)
        self.id_encoder = BranchInput(num_user, dim_latent, dim_latent)
        weight = nn.init.xavier_normal_(torch.empty(num_user, len(self.modalities), 1))
        self.user_weight = nn.Parameter(torch.softmax(weight, dim=1).squeeze(2))         # w_u, as the authors' init
        width = len(self.modalities) * dim_latent
        self.projector = nn.Linear(width, width)                                           # Q
        if frozen_inputs:
            for name, param in self.named_parameters():
                if name == 'id_table' or name.endswith('.preference'):
                    param.requires_grad_(False)

    # ------------------------------------------------------------------ the encoders

    def enhance(self, reps):
        """``(users [U, b d], items [I, b d])`` of branches side by side, each item row plus ``S^{L_mm}`` of it."""
        x = torch.cat(reps, 1)
        items = h = x[self.num_user:]
        for _ in range(self.num_item_layer):
            h = _RowMeanProduct.apply(h, self.item_adj, self.item_adj_t)
        return x[:self.num_user], items + h

    def noisy_layers(self, x0):
        """``Σ_k h_k`` with ``h_{k+1} = Â h_k`` plus the scaled sign noise of each d-wide branch (training only)."""
        total = h = x0
        for _ in range(self.num_layer):
            h = _RowMeanProduct.apply(h, self.adj, self.adj)                                 # Âᵀ = Â
            if self.training:
                noise = F.normalize(torch.rand_like(h).view(h.shape[0], -1, self.dim), dim=2).view_as(h)
                h = h + torch.sign(h) * noise * NOISE_EPS
            total = total + h
        return total

    def fused(self, users, items):
        """The fused table's user and item rows from the modality branches' ``ř`` (d columns each)."""
        weighted = torch.cat([self.user_weight[:, n:n + 1] * block
                              for n, block in enumerate(users.split(self.dim, 1))], 1)
        return weighted, items

    def encode(self, inputs):
        """``(users, items)`` of the modality branches and the ID branch, ``[U or I, (M + 1) d]``."""
        x0 = torch.cat([self.encoders[m](inputs[m]) for m in self.modalities] + [self.id_encoder(self.id_table)], 1)
        return self.enhance([propagate_layers(self.adj, x0, self.num_layer) * (self.num_layer + 1)])

    def forward(self):
        inputs = {m: self.item_input(m) for m in self.modalities}
        users, items = self.encode(inputs)
        width = len(self.modalities) * self.dim
        return self.fused(users[:, :width], items[:, :width])

    # ------------------------------------------------------------------ the loss

    def loss(self, users, pos, neg):
        """The loss of the module docstring and its named parts."""
        inputs = {m: self.item_input(m) for m in self.modalities}
        all_users, all_items = self.encode(inputs)
        width, count = len(self.modalities) * self.dim, len(self.modalities)
        z_users, z_items = self.fused(all_users[:, :width], all_items[:, :width])
        z_user = take_rows(z_users, users)
        z_pos, z_neg = take_rows(z_items, torch.cat([pos, neg])).split(len(pos))
        bpr = -F.logsigmoid((z_user * z_pos).sum(1) - (z_user * z_neg).sum(1)).mean() / math.log(2)
        reg = sum(take_rows(self.encoders[m].preference, users).pow(2).mean() for m in self.modalities) + \
            self.user_weight.pow(2).mean()

        with torch.no_grad():                                    # as the authors' code: no gradient flows here
            mask_f = sum(1 - F.cosine_similarity(F.dropout(t, self.dropout, self.training), self.projector(t)).mean()
                         for t in (z_users, z_items))

        def table(users_part, items_part, copies=1):
            return torch.cat([users_part, items_part]).repeat(1, copies)
        blocks = list(zip(all_users.split(self.dim, 1), all_items.split(self.dim, 1)))
        tables = [torch.cat([z_users, z_items]), table(*blocks[-1], count)] + [table(*b, count) for b in blocks[:-1]]
        align = moment_gap(tables)

        noisy = []
        for encoders in self.noisy_encoders:
            x0 = torch.cat([encoders[m](inputs[m]) for m in self.modalities], 1)
            noisy.append(self.fused(*self.enhance([self.noisy_layers(x0)])))
        (users1, items1), (users2, items2) = noisy
        mask_g = info_nce_all(users1, users2, self.temperature) + info_nce_all(items1, items2, self.temperature)

        loss = bpr + self.reg_weight * reg + MASK_F_WEIGHT * mask_f + self.align_weight * align + \
            self.cl_weight * mask_g
        return loss, {'bpr': bpr.item(), 'reg': reg.item(), 'mask_f': mask_f.item(), 'align': align.item(),
                      'mask_g': mask_g.item()}


# ---------------------------------------------------------------------- the registry entry (SPEC 5)

def build(args, data):
    needs_item_graph('MENTOR', args, data)
    adj = normalized_adjacency(data.train, data.num_user, data.num_item)
    graph = cached_item_graph(args, data)
    return MENTOR(data.num_user, data.num_item, data.features, adj, graph, args.dim_latent, args.num_layer,
                  reg_weight=args.weight_decay, align_weight=args.align_weight, cl_weight=args.cl_weight,
                  temperature=args.ssl_temp, dropout=args.dropout_rate, frozen_inputs=args.mentor_frozen_inputs)


MODEL = ModelEntry(
    name='MENTOR', build=build, summary='modality and ID graph encoders on a frozen item kNN graph, BPR plus '
                                        'ID-guided alignment and noisy-view contrast (docs/models.md)',
    # Jinfeng-Xu/MENTOR src/configs/model/MENTOR.yaml: learning_rate 1e-4, reg_weight 1e-3 (the loss's λ; Adam
    # without decay, overall.yaml weight_decay 0.0), dropout 0.5, mask_weight_f 1.5, align_weight 0.1, knn_k 10,
    # mm_image_weight 0.1, n_mm_layers 1; the first value of its grids mask_weight_g [1e-4, 1e-3] (--cl_weight) and
    # temp [0.2, 0.4, 0.6] (--ssl_temp); overall.yaml: batch 2048, 1000 epochs; the GCN's two propagations (L 2)
    defaults=dict(l_r=1e-4, weight_decay=1e-3, batch_size=2048, num_layer=2, num_epoch=1000, dropout_rate=0.5,
                  cl_weight=1e-4),
    flags=(
        Flag('align_weight', 0.1, 'weight α of the ID-guided alignment of the tables\' means and variances',
             type=float, check=lambda a: finite(a.align_weight) and a.align_weight >= 0,
             problem='must be a finite number >= 0'),
        Flag('mentor_frozen_inputs', False, "keep the encoders' user preferences P and the ID table at their initial "
             "values, as the authors' code does on a GPU (there they are plain tensors, not parameters)",
             type=str2bool),
    ),
    reads=('knn_k', 'mm_image_weight', 'dropout_rate', 'cl_weight', 'ssl_temp'),
    lr_grid=(0.001, 0.0001),
    # the authors' MENTOR.yaml: mask_weight_g (--cl_weight) over [1e-4, 1e-3], in earlier commented grids also
    # 0.01 and 0.1 (and 0, the term left out); learning_rate [1e-4], with the table's 1e-3 beside it
    search_grid=dict(l_r=[0.001, 0.0001], cl_weight=[1e-4, 1e-3, 1e-2, 0.1]),
    rows={'MENTOR': ('MENTOR', []),
          'MENTOR-frozen': ("MENTOR, P and E frozen (the authors' GPU runs)", ['--mentor_frozen_inputs', 'True'])},
)
