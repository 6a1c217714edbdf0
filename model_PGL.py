"""PGL (Yu et al., AAAI 2025, "Mind Individual Information! Principal Graph Learning for Multimedia
Recommendation"): the user-item graph propagated on a principal subgraph in training (the local one: a
degree-sensitive sample of the edges, redrawn every epoch), modality-only item embeddings on a frozen
item-item graph, BPR plus a dropout-view contrast (docs/models.md).

With ``P_m`` [U, d] per modality (xavier-uniform), ``T_m = Linear(dim F_m → d)``, the feature tables ``F_m``
trainable (from the raw features, as the authors' code) and ``‖`` side by side over the modalities:

    x_u = ‖_m P_m,   x_i = ‖_m normalise(T_m F_m)                   (M·d wide; no item ID embedding)
    h   = S^{L_mm} x_i                                               (S: FREEDOM's item-item graph, L_mm = 1)
    [z_u ; z'_i] = mean_{k=0..L} Ã^k [x_u ; x_i],   z_i = z'_i + h    (L = --num_layer, 2)

``Ã`` is, in training, the local principal subgraph of the epoch: ``⌊0.3 E⌋`` of the E training edges drawn
without replacement with probability ∝ ``1/√(deg_u deg_i)`` and renormalised ``D^-1/2 A D^-1/2`` (FREEDOM's
pruning at ρ = 0.7, redrawn by ``on_epoch_start`` from torch's seeded RNG); in evaluation the full ``Â``.

Loss for a batch of (user, positive, sampled negative):

    L = BPR(z_u, z_{i⁺}, z_{i⁻}) + β ½ [InfoNCE(δ₁(z_u), δ₂(z_u)) + InfoNCE(δ₃(z_{i⁺}), δ₄(z_{i⁺}))]

with ``δ`` four independent dropout masks (``--dropout_rate`` 0.2), InfoNCE on L2-normalised rows at
temperature 0.2 over the batch's rows (``model_MGCN.info_nce``), ``β = --cl_weight`` 0.05.  ``--weight_decay``
is Adam's weight decay here (0, as the authors' overall.yaml): PGL's loss has no λ term.
"""
import torch
from torch import nn
from torch.nn import functional as F

from BaseModel import _RowMeanProduct, normalized_adjacency, propagate_layers, take_rows, transpose_csr
from model_FREEDOM import cached_item_graph, pruned_adjacency, register_edges
from model_LightGCN import bpr_loss
from model_MGCN import info_nce
from registry import ModelEntry, Recommender, needs_modality

LOCAL_KEEP = 0.3        # the authors' pre_epoch_processing: int(0.3 * edges) kept, a constant there
TEMPERATURE = 0.2       # the authors' InfoNCE(..., 0.2)


class PGL(Recommender):
    """PGL (local principal subgraph) over a fixed user-item graph and item-item graph.

    Args:
        num_user, num_item: sizes.
        features: modality -> float array [num_item, f] or ``DataLoad.WordFeature`` (at least one).
        train: [E, 2] training (user, item) pairs, the edges the principal subgraph is drawn from.
        adj: ``Â`` of the full training graph, sparse CSR (evaluation).
        item_adj: ``S``, the item-item graph (``model_FREEDOM.item_graph``), sparse CSR [I, I].
        dim_latent: ``d`` (64), per modality.
        num_layer: ``L`` (2), user-item layers.
        dropout: the contrast views' dropout (0.2).
        cl_weight: ``β`` (0.05).
        keep: the share of edges the local subgraph keeps (0.3).
        num_item_layer: ``L_mm`` (1), item-item layers.
    """

    needs_negatives = True

    def __init__(self, num_user, num_item, features, train, adj, item_adj, dim_latent=64, num_layer=2, dropout=0.2,
                 cl_weight=0.05, keep=LOCAL_KEEP, num_item_layer=1):
        super().__init__()
        if not features:
            raise ValueError('PGL needs at least one modality')
        self.num_user, self.num_item, self.num_layer, self.num_item_layer = num_user, num_item, num_layer, num_item_layer
        self.dropout, self.cl_weight, self.keep = dropout, cl_weight, keep
        self.modalities = list(features)
        self.register_buffer('adj', adj, persistent=False)
        self.register_buffer('item_adj', item_adj, persistent=False)
        self.register_buffer('item_adj_t', transpose_csr(item_adj), persistent=False)
        register_edges(self, train, num_user, num_item)                 # Ã of the epoch: on_epoch_start

        self.user_embeddings = nn.ParameterDict(
            {m: nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_user, dim_latent))) for m in self.modalities})
        widths = self.register_item_features(features, trainable=True)      # F_m trainable, as the authors' code
        self.transforms = nn.ModuleDict({m: nn.Linear(widths[m], dim_latent) for m in self.modalities})

    def on_epoch_start(self):
        """Draw this epoch's local principal subgraph ``Ã`` (called by ``Train.train_epoch``)."""
        # ⌊(1 - (1 - 0.3)) E⌋ equals the authors' ⌊0.3 E⌋ for every E below 2·10⁶ (checked)
        self.train_adj = pruned_adjacency(self.edge_users, self.edge_items, self.edge_weights, 1.0 - self.keep,
                                          self.num_user, self.num_item)

    def inputs(self):
        """``[x_u ; x_i]`` [(U+I), M·d]: the users' per-modality embeddings and the normalised item features."""
        users = torch.cat([self.user_embeddings[m] for m in self.modalities], dim=1)
        items = torch.cat([F.normalize(self.transforms[m](self.item_input(m)), dim=1) for m in self.modalities], dim=1)
        return torch.cat([users, items])

    def item_item(self, items):
        """``h = S^{L_mm} x_i`` [I, M·d]."""
        for _ in range(self.num_item_layer):
            items = _RowMeanProduct.apply(items, self.item_adj, self.item_adj_t)
        return items

    def forward(self):
        """``(z_user [U, M·d], z_item [I, M·d])`` over the full user-item graph (evaluation)."""
        x0 = self.inputs()
        z = propagate_layers(self.adj, x0, self.num_layer)
        return z[:self.num_user], z[self.num_user:] + self.item_item(x0[self.num_user:])

    def loss(self, users, pos, neg):
        """BPR on this epoch's principal subgraph plus β times the two dropout-view contrasts."""
        if self.train_adj is None:
            raise RuntimeError('PGL.loss before on_epoch_start: no principal subgraph drawn yet')
        x0 = self.inputs()
        items = torch.cat([pos, neg])
        z = propagate_layers(self.train_adj, x0, self.num_layer, rows=torch.cat([users, items + self.num_user]))
        z_user, z_items = z[:len(users)], z[len(users):] + take_rows(self.item_item(x0[self.num_user:]), items)
        z_pos, z_neg = z_items.split(len(pos))
        bpr = bpr_loss(z_user, z_pos, z_neg)

        def drop(x):
            return F.dropout(x, self.dropout, training=True)
        cl = (info_nce(drop(z_user), drop(z_user), TEMPERATURE) + info_nce(drop(z_pos), drop(z_pos), TEMPERATURE)) / 2
        return bpr + self.cl_weight * cl, {'bpr': bpr.item(), 'cl': cl.item()}


# ---------------------------------------------------------------------- the registry entry (SPEC 5)

def build(args, data):
    needs_modality('PGL', data)
    adj = normalized_adjacency(data.train, data.num_user, data.num_item)
    return PGL(data.num_user, data.num_item, data.features, data.train, adj, cached_item_graph(args, data),
               args.dim_latent, args.num_layer,
               dropout=args.dropout_rate, cl_weight=args.cl_weight)


MODEL = ModelEntry(
    name='PGL', build=build, summary='modality-only embeddings on a local principal subgraph (degree-sensitive '
                                     'edge sample per epoch) and an item kNN graph, BPR plus dropout-view '
                                     'contrast (docs/models.md)',
    # demonph10/PGL at dbc871c: PGL.yaml / overall.yaml: lr 1e-3, batch 2048, n_ui_layers 2, n_mm_layers 1, knn_k 10,
    # mm_image_weight 0.1, mode local, Adam weight_decay 0.0; the contrast's weight (the code's reg_weight) and
    # dropout from its published Baby run (log/local/PGL-baby-Jun-24-2024-15-51-32.log, R@20 0.1022, the paper's
    # number): reg_weight 0.05, dropout 0.2 (PGL.yaml's reg_weight [0] is a later edit; Sports 0.1 / 0.05,
    # Clothing 0.5 / 0.1 in their logs)
    defaults=dict(l_r=0.001, weight_decay=0.0, batch_size=2048, num_layer=2, num_epoch=1000, dropout_rate=0.2,
                  cl_weight=0.05),
    adam_weight_decay=True,
    reads=('knn_k', 'mm_image_weight', 'dropout_rate', 'cl_weight'),
    # PGL's contrast weight (the published Baby run: 0.05) around its value, two learning rates
    search_grid=dict(l_r=[0.01, 0.001], cl_weight=[0.01, 0.05, 0.1, 0.5]),
)
