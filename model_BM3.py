"""BM3 (Zhou et al., WWW 2023, "Bootstrap Latent Representations for Multi-modal Recommendation"):
no negatives; each positive pair is contrasted with a dropout-perturbed copy of itself (docs/models.md).

Encoder, with ``E⁰ = [E_u ; E_i]`` (xavier-uniform) and ``Â`` of SPEC 3.1:

    [h_u ; h'_i] = mean_{k=0..L} Â^k E⁰,   h_i = h'_i + E_i          (L = --num_layer, 1)
    t_m = T_m F_m                                                      (T_m: Linear(dim F_m → d))

with the feature tables ``F_m`` themselves trainable (from the raw features, as the authors' code).
A shared predictor ``p = Linear(d → d)`` gives the online views; the targets are the encoder's
outputs under dropout (``--dropout_rate`` ρ, 0.5; torch's seeded RNG), without gradient:

    ũ = drop(h_u), ĩ = drop(h_i), t̃_m = drop(t_m)       (sg: no gradient)
    c(a, b) = 1 - mean_batch cos(a, b)

For a batch of B (user u, positive item i) pairs:

    L_rec = c(p(h_u), ĩ) + c(p(h_i), ũ)
    L_mm  = Σ_m c(p(t_m), ĩ) + c(p(t_m), t̃_m)                  (items of the batch)
    L_reg = (‖h_U‖_F + ‖h_I‖_F) / I                             (every user and item; not squared)
    L     = L_rec + λ L_reg + β L_mm          (λ = --weight_decay 0.1, β = --cl_weight 2.0)

Score ``s(u, i) = p(h_u) · p(h_i)``.  ``loss`` transforms and perturbs the batch's rows only;
``loss_plain`` is the authors' order (whole tables, whole-table dropout, then the batch's rows): with
ρ = 0 they agree exactly (tests/test_models_bm3_mgcn_lgmrec.py).
"""
import torch
from torch import nn
from torch.nn import functional as F

from BaseModel import normalized_adjacency, propagate_layers, take_rows
from registry import Flag, ModelEntry, Recommender, finite, needs_modality


def bootstrap_loss(online, target):
    """``1 - mean cos(online, sg(target))`` over the rows."""
    return 1.0 - F.cosine_similarity(online, target.detach(), dim=-1).mean()


class BM3(Recommender):
    """BM3 over a fixed user-item graph.

    Args:
        num_user, num_item: sizes.
        features: modality -> float array [num_item, f] or ``DataLoad.WordFeature`` (at least one).
        adj: ``Â`` of the training graph, sparse CSR [(U+I), (U+I)].
        dim_latent: ``d`` (64).
        num_layer: ``L`` (1).
        dropout: ``ρ`` of the target perturbation (0.5).
        reg_weight: ``λ`` (``--weight_decay``, 0.1).
        cl_weight: ``β`` of the modality terms (``--cl_weight``, 2.0).
    """

    needs_negatives = False

    def __init__(self, num_user, num_item, features, adj, dim_latent=64, num_layer=1, dropout=0.5, reg_weight=0.1,
                 cl_weight=2.0):
        super().__init__()
        if not features:
            raise ValueError('BM3 needs at least one modality')
        self.num_user, self.num_item, self.num_layer = num_user, num_item, num_layer
        self.dropout, self.reg_weight, self.cl_weight = dropout, reg_weight, cl_weight
        self.modalities = list(features)
        self.register_buffer('adj', adj, persistent=False)
        self.embedding_user = nn.Parameter(torch.empty(num_user, dim_latent))
        self.embedding_item = nn.Parameter(torch.empty(num_item, dim_latent))
        nn.init.xavier_uniform_(self.embedding_user)
        nn.init.xavier_uniform_(self.embedding_item)
        self.predictor = nn.Linear(dim_latent, dim_latent)
        nn.init.xavier_normal_(self.predictor.weight)
        widths = self.register_item_features(features, trainable=True)      # F_m trainable, as the authors' code
        self.transforms = nn.ModuleDict()
        for m in self.modalities:
            self.transforms[m] = nn.Linear(widths[m], dim_latent)
            nn.init.xavier_normal_(self.transforms[m].weight)

    def encode(self):
        """``(h_u [U, d], h_i [I, d])``: the layer mean, and the ID embedding added again on the item side."""
        z = propagate_layers(self.adj, torch.cat([self.embedding_user, self.embedding_item]), self.num_layer)
        return z[:self.num_user], z[self.num_user:] + self.embedding_item

    def forward(self):
        """``(p(h_u), p(h_i))``: the online views, whose dot products are the scores."""
        h_user, h_item = self.encode()
        return self.predictor(h_user), self.predictor(h_item)

    def _terms(self, h_user, h_item, u, i, t_rows, drop):
        """The named terms from the encoder's outputs, the batch's rows ``u``/``i`` and each modality's
        ``t_m`` rows; ``drop`` perturbs a target (the two loss versions differ in where it applies)."""
        with torch.no_grad():
            u_target, i_target = drop(h_user, u), drop(h_item, i)
        rec = bootstrap_loss(self.predictor(take_rows(h_user, u)), i_target) + \
            bootstrap_loss(self.predictor(take_rows(h_item, i)), u_target)
        reg = (h_user.norm() + h_item.norm()) / self.num_item
        parts = {'rec': rec.item(), 'reg': reg.item()}
        modality = 0.0
        for m, (t_online, t_target) in t_rows.items():
            term = bootstrap_loss(self.predictor(t_online), i_target) + bootstrap_loss(self.predictor(t_online),
                                                                                       t_target)
            parts[f'cl_{m}'] = term.item()
            modality = modality + term
        return rec + self.reg_weight * reg + self.cl_weight * modality, parts

    def loss(self, users, items):
        """``L`` of the module docstring for B (user, positive) pairs; the loss and its parts.  The targets'
        dropout masks are drawn per batch row (a user twice in the batch gets two independent targets)."""
        h_user, h_item = self.encode()
        t_rows = {}
        for m in self.modalities:
            t_online = self.transforms[m](take_rows(self.item_input(m), items))
            with torch.no_grad():
                t_rows[m] = (t_online, F.dropout(t_online, self.dropout, training=True))
        return self._terms(h_user, h_item, users, items, t_rows,
                           lambda h, rows: F.dropout(take_rows(h, rows), self.dropout, training=True))

    def loss_plain(self, users, items):
        """The same loss in the authors' order: whole tables transformed and perturbed, then the batch's rows
        (one mask per user or item, shared by its repeats).  The reference ``loss`` is tested against."""
        h_user, h_item = self.encode()
        t_rows = {}
        for m in self.modalities:
            t_all = self.transforms[m](self.item_input(m))
            with torch.no_grad():
                t_target = F.dropout(t_all, self.dropout, training=True)
            t_rows[m] = (t_all[items], t_target[items])
        return self._terms(h_user, h_item, users, items, t_rows,
                           lambda h, rows: F.dropout(h, self.dropout, training=True)[rows])


# ---------------------------------------------------------------------- the registry entry (SPEC 5)

def build(args, data):
    needs_modality('BM3', data)
    adj = normalized_adjacency(data.train, data.num_user, data.num_item)
    return BM3(data.num_user, data.num_item, data.features, adj, args.dim_latent, args.num_layer, args.dropout_rate,
               reg_weight=args.weight_decay, cl_weight=args.cl_weight)


MODEL = ModelEntry(
    name='BM3', build=build, summary='bootstrapped latent views of each positive pair, no negatives (docs/models.md)',
    # enoche/BM3's README, Baby: 1 layer, dropout 0.5, reg_weight 0.1; MMRec's overall.yaml: lr 1e-3, batch 2048,
    # Adam without decay (weight_decay is reg_weight, the loss's λ)
    defaults=dict(l_r=0.001, weight_decay=0.1, batch_size=2048, num_layer=1, num_epoch=1000, dropout_rate=0.5,
                  cl_weight=2.0),
    flags=(
        Flag('cl_weight', None, 'weight of the contrastive / bootstrap loss (per model)', type=float,
             check=lambda a: a.cl_weight is None or (finite(a.cl_weight) and a.cl_weight >= 0),
             problem='must be a finite number >= 0'),
    ),
    reads=('dropout_rate',),
    # the table's row takes the learning-rate grid as every row does; BM3-tuned also searches the authors' grid
    rows={'BM3': ('BM3', []), 'BM3-tuned': ("BM3, tuned (the authors' grid)", [])},
    tuning_grid={'BM3-tuned': {'num_layer': [1, 2], 'dropout_rate': [0.3, 0.5], 'weight_decay': [0.1, 0.01]}},
    # the authors' grid: reg_weight {0.1, 0.01} x dropout {0.3, 0.5} (n_layers left at 1), two learning rates
    search_grid=dict(l_r=[0.01, 0.001], weight_decay=[0.1, 0.01], dropout_rate=[0.3, 0.5]),
)
