"""SMORE (Ong & Khong, WSDM 2025, "Spectrum-based Modality Representation Fusion Graph Convolutional Network
for Multimodal Recommendation"): each modality's projected features filtered in the frequency domain, fused
by a product of spectra, gated into item-item views, weighted by a modality-aware preference; BPR plus a
contrast between the views and the user-item graph (docs/models.md).

Item-item graph per modality m, built once from the raw features (blocked, ``model_MGCN.weighted_knn``):
each item's ``k_m`` most cosine-similar items weighted by the cosine, ``Ŝ_m = D^-1/2 W_m D^-1/2`` with the
row sums (MGCN's graph; ``k`` = ``--image_knn_k`` 40 for the first modality, ``--text_knn_k`` 15 for the
others).  The fusion graph ``Ŝ_f[i, j] = max_m Ŝ_m[i, j]`` over the entries any modality has.  ``R̂`` is the
user-item block of ``Â`` (SPEC 3.1).

Encoder (``E_u, E_i`` xavier-uniform; ``T_m = Linear(dim F_m → d)`` with the tables ``F_m`` trainable;
``𝓕`` the real FFT along the d features, orthonormal; ``w_m, w_f`` [d/2 + 1] complex, standard normal):

    t_m  = T_m F_m,   X_m = 𝓕(t_m)
    ẽ_m  = E_i ⊙ σ(G_m 𝓕⁻¹(X_m ⊙ w_m)),   ẽ_f = E_i ⊙ σ(G_f 𝓕⁻¹(w_f ⊙ Π_m X_m))    (G: Linear(d → d))
    x_v  = [R̂ Ŝ_v^{L_mm} ẽ_v ; Ŝ_v^{L_mm} ẽ_v]   for v = each m and f               (L_mm = 1)
    c    = mean_{k=0..L} Â^k [E_u ; E_i]                                               (L = --num_layer, 4)
    a_m  = softmax_d(Q_m x_f) ⊙ x_m            (Q_m: Linear(d → d), tanh, Linear(d → d, no bias); over the d features)
    s    = mean(δ(σ(P_m c)) ⊙ a_m for each m,  δ(σ(P_f c)) ⊙ x_f)                    (δ: dropout --dropout_rate 0.1)
    z    = c + s,   s(u, i) = z_u · z_i

Loss for a batch of (user, positive, sampled negative):

    L = BPR(z) + λ ½ (‖z_u‖² + ‖z_{i⁺}‖² + ‖z_{i⁻}‖²) / B + β (InfoNCE(s_{i⁺}, c_{i⁺}) + InfoNCE(s_u, c_u))

with ``λ = --weight_decay`` 1e-4, ``β = --cl_weight`` 0.01 and MGCN's InfoNCE (temperature 0.2).  One modality:
the same equations (its fusion view filters its own spectrum with ``w_f`` on its own graph); M ≥ 3: the
product runs over every spectrum and the fusion graph over every graph.
"""
import torch
from torch import nn
from torch.nn import functional as F

from BaseModel import _quiet_csr, normalized_adjacency, propagate_layers
from errors import InputError
from model_MGCN import (
    cached_weighted_knn, normalized_weighted_knn, register_view_graphs, through_item_graph, view_loss)
from registry import Flag, ModelEntry, Recommender, needs_modality

TEMPERATURE = 0.2          # the authors' InfoNCE(..., 0.2)


def modality_ks(modalities, image_k, text_k):
    """``{m: k}``: ``image_k`` for the first modality (the authors' image), ``text_k`` for each other one."""
    return {m: image_k if n == 0 else text_k for n, m in enumerate(modalities)}


def item_graphs(features, num_item, ks, cache_dir=None):
    """``{m: Ŝ_m}``, MGCN's weighted kNN graph of every modality with its own ``k`` (cached as MGCN's)."""
    return {m: normalized_weighted_knn(*cached_weighted_knn(m, f, num_item, ks[m], cache_dir), num_item)
            for m, f in features.items()}


def max_fusion(graphs, num_item):
    """``Ŝ_f[i, j] = max_m Ŝ_m[i, j]`` over the union of the graphs' entries (an entry a graph lacks does not
    compete: the authors' -inf), as CSR [I, I]."""
    coos = [g.to_sparse_coo().coalesce() for g in graphs]
    keys = torch.cat([c.indices()[0] * num_item + c.indices()[1] for c in coos])
    values = torch.cat([c.values() for c in coos])
    unique, inverse = torch.unique(keys, return_inverse=True)
    fused = values.new_zeros(len(unique)).scatter_reduce(0, inverse, values, 'amax', include_self=False)
    with _quiet_csr():
        return torch.sparse_coo_tensor(torch.stack([unique // num_item, unique % num_item]), fused,
                                       (num_item, num_item), check_invariants=True).coalesce().to_sparse_csr()


def gate(dim):
    return nn.Sequential(nn.Linear(dim, dim), nn.Sigmoid())


class SMORE(Recommender):
    """SMORE over a fixed user-item graph and per-modality item-item graphs.

    Args:
        num_user, num_item: sizes.
        features: modality -> float array [num_item, f] or ``DataLoad.WordFeature`` (at least one).
        adj: ``Â`` of the training graph, sparse CSR [(U+I), (U+I)].
        item_adj: ``{m: Ŝ_m}`` (``item_graphs``), sparse CSR [I, I].
        dim_latent: ``d`` (64).
        num_layer: ``L`` (4), user-item layers.
        dropout: ``δ``'s rate on the preference gates (0.1).
        reg_weight: ``λ`` (``--weight_decay``, 1e-4).
        cl_weight: ``β`` (``--cl_weight``, 0.01).
        num_item_layer: ``L_mm`` (1), item-item layers.
    """

    needs_negatives = True

    def __init__(self, num_user, num_item, features, adj, item_adj, dim_latent=64, num_layer=4, dropout=0.1,
                 reg_weight=1e-4, cl_weight=0.01, num_item_layer=1):
        super().__init__()
        if not features:
            raise ValueError('SMORE needs at least one modality')
        self.num_user, self.num_item, self.num_layer, self.num_item_layer = num_user, num_item, num_layer, num_item_layer
        self.dropout, self.reg_weight, self.cl_weight = dropout, reg_weight, cl_weight
        self.modalities = list(features)
        register_view_graphs(self, adj, num_user,
                             {**item_adj, 'fusion': max_fusion([item_adj[m] for m in self.modalities], num_item)})

        d = dim_latent
        self.embedding_user = nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_user, d)))
        self.embedding_item = nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_item, d)))
        widths = self.register_item_features(features, trainable=True)      # F_m trainable, as the authors' code
        self.transforms = nn.ModuleDict({m: nn.Linear(widths[m], d) for m in self.modalities})
        views = self.modalities + ['fusion']
        # the filters [d/2 + 1] complex, stored as (real, imaginary) pairs, torch.randn as the authors' code
        self.filters = nn.ParameterDict({v: nn.Parameter(torch.randn(d // 2 + 1, 2)) for v in views})
        self.item_gates = nn.ModuleDict({v: gate(d) for v in views})
        self.preference_gates = nn.ModuleDict({v: gate(d) for v in views})
        self.queries = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d, bias=False))
                                      for m in self.modalities})

    def spectral_items(self):
        """``{v: ẽ_v}`` [I, d] for every modality and the fusion: the filtered spectra gating ``E_i``."""
        d = self.embedding_item.shape[1]
        spectra = {m: torch.fft.rfft(self.transforms[m](self.item_input(m)), dim=1, norm='ortho')
                   for m in self.modalities}
        product = spectra[self.modalities[0]]
        for m in self.modalities[1:]:
            product = product * spectra[m]
        spectra['fusion'] = product
        return {v: self.embedding_item * self.item_gates[v](torch.fft.irfft(
            x * torch.view_as_complex(self.filters[v]), n=d, dim=1, norm='ortho')) for v, x in spectra.items()}

    def views(self):
        """``(c, s)`` [(U+I), d] each: the user-item view and the modality side."""
        content = propagate_layers(self.adj, torch.cat([self.embedding_user, self.embedding_item]), self.num_layer)
        views = {v: through_item_graph(item, getattr(self, f'item_adj_{v}'), getattr(self, f'item_adj_t_{v}'),
                                       self.user_item, self.user_item_t, self.num_item_layer)
                 for v, item in self.spectral_items().items()}
        fusion = views['fusion']

        def preference(v):
            return F.dropout(self.preference_gates[v](content), self.dropout, self.training)
        side = [preference(m) * torch.softmax(self.queries[m](fusion), dim=1) * views[m] for m in self.modalities]
        side.append(preference('fusion') * fusion)
        return content, sum(side) / len(side)

    def forward(self):
        content, side = self.views()
        z = content + side
        return z[:self.num_user], z[self.num_user:]

    def loss(self, users, pos, neg):
        """BPR with its λ term on the final embeddings, plus β times the two view contrasts (MGCN's loss)."""
        return view_loss(*self.views(), users, pos, neg, self.num_user, self.reg_weight, self.cl_weight, TEMPERATURE)

    def loss_plain(self, users, pos, neg):
        """``loss`` with the view contrasts by the formula (``view_loss(plain=True)``: every batch row, autograd's
        InfoNCE): what ``loss`` is tested against."""
        return view_loss(*self.views(), users, pos, neg, self.num_user, self.reg_weight, self.cl_weight, TEMPERATURE,
                         plain=True)


# ---------------------------------------------------------------------- the registry entry (SPEC 5)

def build(args, data):
    needs_modality('SMORE', data)
    ks = modality_ks(data.features, args.image_knn_k, args.text_knn_k)
    for m, k in ks.items():
        if k > data.num_item:
            raise InputError(f'--{"image" if m == data.modalities[0] else "text"}_knn_k {k} exceeds the number of '
                             f'items ({data.num_item})')
    adj = normalized_adjacency(data.train, data.num_user, data.num_item)
    return SMORE(data.num_user, data.num_item, data.features, adj, item_graphs(data.features, data.num_item, ks, data.path),
                 args.dim_latent, args.num_layer, dropout=args.dropout_rate, reg_weight=args.weight_decay,
                 cl_weight=args.cl_weight)


MODEL = ModelEntry(
    name='SMORE', build=build, summary='spectrum-filtered and spectrum-fused modality views on item kNN graphs, '
                                       'modality-aware preferences, BPR plus view contrast (docs/models.md)',
    # kennethorq/SMORE at 0148d92: its README's best hyper-parameters for Baby: n_ui_layers 4, n_layers 1,
    # image_knn_k 40, text_knn_k 15, cl_loss 0.01, reg_weight 1e-4 (the loss's λ), dropout_rate 0.1; SMORE.yaml /
    # overall.yaml: lr 1e-3, batch 2048, Adam without decay (Sports: 3 layers, k 10/10, cl 0.03, dropout 0;
    # Clothing: 3 layers, k 40/10, reg 1e-5, dropout 0)
    defaults=dict(l_r=0.001, weight_decay=1e-4, batch_size=2048, num_layer=4, num_epoch=1000, dropout_rate=0.1,
                  cl_weight=0.01),
    flags=(
        Flag('image_knn_k', 40, "neighbours per item in the first modality's (the authors' image) item-item graph",
             type=int, check=lambda a: 1 <= a.image_knn_k <= 10000, problem='must be in [1, 10000]'),
        Flag('text_knn_k', 15, "neighbours per item in every other modality's (the authors' text) item-item graph",
             type=int, check=lambda a: 1 <= a.text_knn_k <= 10000, problem='must be in [1, 10000]'),
    ),
    reads=('dropout_rate', 'cl_weight'),
    # MMRec's SMORE.yaml: reg_weight {1e-5, 1e-4} x dropout_rate {0, 0.1} (its k and layer grids left at the README's)
    search_grid=dict(l_r=[0.01, 0.001], weight_decay=[1e-5, 1e-4], dropout_rate=[0.0, 0.1]),
)
