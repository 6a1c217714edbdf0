"""MGCN (Yu et al., ACM MM 2023, "Multi-View Graph Convolutional Network for Multimedia Recommendation"):
behaviour-purified modality features, a user-item view and an item-item view per modality, and a
behaviour-aware fuser; BPR plus a contrast between the two views (docs/models.md).

Item-item graph per modality m, built once from the raw features (blocked, ``weighted_knn``): each item's
``k`` most cosine-similar items (``--knn_k`` 10, itself included with weight 1), weighted by their cosine
similarity ``W_m[i, j] = cos(f_i, f_j)`` (negative ones 0), normalised ``Ŝ_m = D^-1/2 W_m D^-1/2`` with ``D``
the row sums of ``W_m`` (≥ 1: the self-loop).  ``R̂`` is the user-item block of ``Â`` (SPEC 3.1).

Encoder (``E_u, E_i`` xavier-uniform; ``T_m = Linear(dim F_m → d)``, the tables ``F_m`` trainable):

    ẽ_m   = E_i ⊙ σ(G_m T_m F_m)                          behaviour-guided purifier (G_m: Linear(d → d))
    x_m   = [R̂ Ŝ_m^{L_mm} ẽ_m ; Ŝ_m^{L_mm} ẽ_m]            item-item view, users from their items (L_mm = 1)
    c     = mean_{k=0..L} Â^k [E_u ; E_i]                  user-item view (L = --num_layer, 2)
    a_m   = q₂ᵀ tanh(Q₁ x_m + b),  w = softmax(a) over the modalities per node (the authors' code since
            commit c3eac8f, the paper and MMRec's port; --mgcn_softmax nodes: over the U+I nodes per
            modality, the authors' first commit 09095cb)
    x_c   = Σ_m w_m x_m,   s = (x_c + Σ_m σ(P_m c + p_m) ⊙ (x_m - x_c)) / (M + 1)
    z     = c + s,   s(u, i) = z_u · z_i

Loss for a batch of (user, positive, sampled negative):

    L = BPR(z_u, z_{i⁺}, z_{i⁻}) + λ ½ (‖z_u‖² + ‖z_{i⁺}‖² + ‖z_{i⁻}‖²) / B
        + β (InfoNCE(s_{i⁺}, c_{i⁺}) + InfoNCE(s_u, c_u))     (temperature 0.2, in-batch negatives)

with ``λ = --weight_decay`` 1e-4, ``β = --cl_weight`` 0.01, ``InfoNCE(a, b) = -mean_r log(exp(â_r·b̂_r/τ) /
Σ_r' exp(â_r·b̂_r'/τ))`` on L2-normalised rows.
"""
import torch
from torch import nn
from torch.nn import functional as F

from BaseModel import (
    _RowMeanProduct, _quiet_csr, normalized_adjacency, propagate_layers, row_submatrix, similarity_logsumexp, take_rows,
    transpose_csr)
import knn_graph
from errors import InputError
from knn_graph import SIMILARITY_FLOATS, knn_neighbours, unit_matrix
from model_LightGCN import bpr_loss
from registry import Flag, ModelEntry, Recommender, needs_modality

TEMPERATURE = 0.2          # the authors' code: InfoNCE(..., 0.2) (its self.tau = 0.5 is never read)


# ---------------------------------------------------------------------- the item-item graphs

def weighted_knn(feature, num_item, k, block_floats=SIMILARITY_FLOATS):
    """``(indices [I, k], values [I, k])``: each item's ``k`` most cosine-similar items, itself first with
    value 1, and their similarities (negative ones as 0; an all-zero row has itself alone, the rest 0).
    Blocked (``knn_graph.knn_neighbours``): never a dense I × I matrix."""
    indices, values = knn_neighbours(unit_matrix(feature, num_item), k, block_floats)
    return indices, values.clamp_(min=0.0)


def normalized_weighted_knn(indices, values, num_item):
    """``Ŝ = D^-1/2 W D^-1/2`` as CSR, ``W[i, indices[i]] = values[i]``, ``D`` its row sums; zero entries
    dropped."""
    rows = torch.arange(num_item).repeat_interleave(indices.shape[1])
    cols, vals = indices.reshape(-1), values.reshape(-1)
    keep = vals > 0
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    inv_sqrt = torch.zeros(num_item).index_add_(0, rows, vals).pow(-0.5)
    with _quiet_csr():
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), inv_sqrt[rows] * vals * inv_sqrt[cols],
                                       (num_item, num_item), check_invariants=True).coalesce().to_sparse_csr()


def cached_weighted_knn(name, feature, num_item, k, cache_dir):
    """``weighted_knn`` of one modality, through ``knn_graph.cached_graph`` (``mgcn_knn_<name>_k<k>.pt``;
    shapes, id range and weights checked)."""
    def valid(saved):
        indices, values = saved['indices'], saved['values']
        return (indices.dtype == torch.long and values.dtype == torch.float32
                and tuple(indices.shape) == tuple(values.shape) == (num_item, k)
                and int(indices.min()) >= 0 and int(indices.max()) < num_item
                and bool(((values >= 0) & (values <= 1 + 1e-5)).all()) and bool((values[:, 0] == 1).all()))

    def build():
        indices, values = weighted_knn(feature, num_item, k)
        return {'indices': indices, 'values': values}
    graph = knn_graph.cached_graph('mgcn_knn', name, feature, num_item, k, cache_dir, build, valid)
    return graph['indices'], graph['values']


def item_graphs(features, num_item, k, cache_dir=None):
    """``{m: Ŝ_m}`` for every modality (each modality's kNN ids and weights cached in ``cache_dir`` when slow)."""
    return {m: normalized_weighted_knn(*cached_weighted_knn(m, f, num_item, k, cache_dir), num_item)
            for m, f in features.items()}


def user_item_block(adj, num_user):
    """``R̂``: the user rows and item columns of ``Â`` (CSR [U, I])."""
    coo = adj.to_sparse_coo().coalesce()
    (rows, cols), vals = coo.indices(), coo.values()
    keep = (rows < num_user) & (cols >= num_user)
    num_item = adj.shape[0] - num_user
    with _quiet_csr():
        return torch.sparse_coo_tensor(torch.stack([rows[keep], cols[keep] - num_user]), vals[keep],
                                       (num_user, num_item), check_invariants=True).coalesce().to_sparse_csr()


def register_view_graphs(model, adj, num_user, item_adj):
    """``model``'s buffers for ``through_item_graph``: ``adj`` (``Â``), ``user_item`` (``R̂``) with its transpose,
    and each item-item graph ``item_adj_<v>`` with its transpose ``item_adj_t_<v>`` (MGCN's and SMORE's)."""
    model.register_buffer('adj', adj, persistent=False)
    user_item = user_item_block(adj, num_user)
    model.register_buffer('user_item', user_item, persistent=False)
    model.register_buffer('user_item_t', transpose_csr(user_item), persistent=False)
    for v, graph in item_adj.items():
        model.register_buffer(f'item_adj_{v}', graph, persistent=False)
        model.register_buffer(f'item_adj_t_{v}', transpose_csr(graph), persistent=False)


def through_item_graph(item, graph, graph_t, user_item, user_item_t, layers):
    """``[R̂ Ŝ^layers item ; Ŝ^layers item]``: item rows through an item-item graph (``graph_t`` its transpose),
    each user the ``R̂``-weighted sum of its items (MGCN's and SMORE's views)."""
    for _ in range(layers):
        item = _RowMeanProduct.apply(item, graph, graph_t)
    return torch.cat([_RowMeanProduct.apply(item, user_item, user_item_t), item])


def view_loss(content, side, users, pos, neg, num_user, reg_weight, cl_weight, temperature=TEMPERATURE,
              plain=False):
    """MGCN's loss from its two views ``c`` and ``s`` (SMORE's too): BPR with its λ term on ``z = c + s``, plus β
    times the two view contrasts; the loss and its parts.  The views' rows are node ids (items after
    ``num_user`` users); the contrasts by ``view_contrast`` (``plain``: by the formula, ``info_nce``)."""
    z = content + side
    z_user, z_pos, z_neg = take_rows(z, torch.cat([users, pos + num_user, neg + num_user])).split(len(users))
    bpr = bpr_loss(z_user, z_pos, z_neg)
    reg = 0.5 * (z_user.pow(2).sum() + z_pos.pow(2).sum() + z_neg.pow(2).sum()) / len(users)
    cl = view_contrast(side, content, pos + num_user, temperature, plain) + \
        view_contrast(side, content, users, temperature, plain)
    return bpr + reg_weight * reg + cl_weight * cl, {'bpr': bpr.item(), 'reg': reg.item(), 'cl': cl.item()}


def view_contrast(side, content, nodes, temperature=TEMPERATURE, plain=False):
    """``info_nce(side[nodes], content[nodes])``.  A batch repeats nodes (Tiktok: 2,048 pairs hold about 700
    users and 1,350 positive items), and a repeated node is a repeated row and column of the logits: the fast
    path computes each distinct node once, weighted by its count ``w``:

        Σ_r w_r (log Σ_c w_c exp(ŝ_r · ĉ_c / τ) - ŝ_r · ĉ_r / τ) / Σ_r w_r      (r, c over the distinct nodes)

    with the denominators by ``similarity_logsumexp``; the same value and gradients up to float rounding."""
    if plain:
        return info_nce(take_rows(side, nodes), take_rows(content, nodes), temperature)
    unique, counts = torch.unique(nodes, return_counts=True)
    weights = counts.to(side.dtype)
    a, b = F.normalize(take_rows(side, unique), dim=1), F.normalize(take_rows(content, unique), dim=1)
    per_node = similarity_logsumexp(a, b, temperature, weights) - (a * b).sum(1) / temperature
    return (weights * per_node).sum() / len(nodes)


def info_nce(a, b, temperature=TEMPERATURE):
    """``-mean_r log softmax_r'(â_r · b̂_r' / τ)[r]``: row r of ``a`` against every row of ``b``.  The plain
    formula (``view_contrast`` computes it fast)."""
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).t() / temperature
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))


# ---------------------------------------------------------------------- the model

class MGCN(Recommender):
    """MGCN over a fixed user-item graph and per-modality item-item graphs.

    Args:
        num_user, num_item: sizes.
        features: modality -> float array [num_item, f] or ``DataLoad.WordFeature`` (at least one).
        adj: ``Â`` of the training graph, sparse CSR [(U+I), (U+I)].
        item_adj: ``{m: Ŝ_m}`` (``item_graphs``), sparse CSR [I, I].
        dim_latent: ``d`` (64).
        num_layer: ``L`` (2), user-item layers.
        reg_weight: ``λ`` (``--weight_decay``, 1e-4).
        cl_weight: ``β`` (``--cl_weight``, 0.01).
        num_item_layer: ``L_mm`` (1), item-item layers.
        fuser_softmax: ``'modalities'`` (the authors' current code) or ``'nodes'`` (their first commit): what
            the fuser's attention weights sum to 1 over.
    """

    needs_negatives = True

    def __init__(self, num_user, num_item, features, adj, item_adj, dim_latent=64, num_layer=2, reg_weight=1e-4,
                 cl_weight=0.01, num_item_layer=1, fuser_softmax='modalities'):
        super().__init__()
        if not features:
            raise ValueError('MGCN needs at least one modality')
        self.num_user, self.num_item, self.num_layer, self.num_item_layer = num_user, num_item, num_layer, num_item_layer
        self.reg_weight, self.cl_weight, self.fuser_softmax = reg_weight, cl_weight, fuser_softmax
        self.modalities = list(features)
        register_view_graphs(self, adj, num_user, item_adj)

        self.embedding_user = nn.Parameter(torch.empty(num_user, dim_latent))
        self.embedding_item = nn.Parameter(torch.empty(num_item, dim_latent))
        nn.init.xavier_uniform_(self.embedding_user)
        nn.init.xavier_uniform_(self.embedding_item)
        widths = self.register_item_features(features, trainable=True)      # F_m trainable, as the authors' code
        self.transforms = nn.ModuleDict({m: nn.Linear(widths[m], dim_latent) for m in self.modalities})
        self.purifiers = nn.ModuleDict({m: nn.Linear(dim_latent, dim_latent) for m in self.modalities})
        self.preferences = nn.ModuleDict({m: nn.Linear(dim_latent, dim_latent) for m in self.modalities})
        self.query = nn.Sequential(nn.Linear(dim_latent, dim_latent), nn.Tanh(), nn.Linear(dim_latent, 1, bias=False))

    def purified(self, m):
        """``ẽ_m = E_i ⊙ σ(G_m T_m F_m)`` [I, d]."""
        return self.embedding_item * torch.sigmoid(self.purifiers[m](self.transforms[m](self.item_input(m))))

    def modality_view(self, m):
        """``x_m`` [(U+I), d]: the purified item embedding through ``Ŝ_m``, users as ``R̂`` of their items."""
        return through_item_graph(self.purified(m), getattr(self, f'item_adj_{m}'), getattr(self, f'item_adj_t_{m}'),
                                  self.user_item, self.user_item_t, self.num_item_layer)

    def fuse(self, views, content):
        """``s``: the behaviour-aware fuser of the modality views ``[x_m]`` given the user-item view ``c``."""
        # 'modalities': per node, the authors' nn.Softmax(dim=-1) since c3eac8f; 'nodes': per modality over the
        # U+I nodes, their nn.Softmax(dim=0) of 09095cb
        weights = torch.softmax(torch.cat([self.query(x) for x in views], dim=1),
                                dim=0 if self.fuser_softmax == 'nodes' else 1)              # [(U+I), M]
        common = sum(weights[:, n:n + 1] * x for n, x in enumerate(views))
        specific = sum(torch.sigmoid(self.preferences[m](content)) * (x - common)
                       for m, x in zip(self.modalities, views))
        return (common + specific) / (len(views) + 1)

    def views(self):
        """``(c, s)`` [(U+I), d] each: the user-item view and the fused modality views."""
        content = propagate_layers(self.adj, torch.cat([self.embedding_user, self.embedding_item]), self.num_layer)
        return content, self.fuse([self.modality_view(m) for m in self.modalities], content)

    def forward(self):
        content, side = self.views()
        z = content + side
        return z[:self.num_user], z[self.num_user:]

    def row_views(self, rows):
        """``(c, s)`` at the node rows ``rows`` only (sorted and unique, so users first): the fast path of a
        batch's loss.  With the fuser's softmax over the modalities every row of ``s`` depends on that row of
        ``c`` and of each ``x_m`` alone, so the fuser runs on these rows, ``c`` comes from
        ``propagate_layers(rows=)`` and the users' rows of ``x_m`` from their rows of ``R̂``."""
        content = propagate_layers(self.adj, torch.cat([self.embedding_user, self.embedding_item]), self.num_layer,
                                   rows=rows)
        users = int(torch.searchsorted(rows, self.num_user))
        block, block_t = row_submatrix(self.user_item, rows[:users])
        item_rows = rows[users:] - self.num_user
        views = []
        for m in self.modalities:
            item = self.purified(m)
            for _ in range(self.num_item_layer):
                item = _RowMeanProduct.apply(item, getattr(self, f'item_adj_{m}'), getattr(self, f'item_adj_t_{m}'))
            views.append(torch.cat([_RowMeanProduct.apply(item, block, block_t), take_rows(item, item_rows)]))
        return content, self.fuse(views, content)

    def loss(self, users, pos, neg):
        """BPR with its λ term on the final embeddings, plus β times the two view contrasts (``loss_plain``'s
        value and gradients up to float rounding).  The views at the batch's rows alone (``row_views``) where
        they are under half of the nodes and the fuser's softmax is per node; each contrast over the distinct
        nodes, weighted (``view_contrast``)."""
        rows, inverse = torch.unique(torch.cat([users, pos + self.num_user, neg + self.num_user]), return_inverse=True)
        if self.fuser_softmax != 'modalities' or 2 * len(rows) > self.num_user + self.num_item:
            return view_loss(*self.views(), users, pos, neg, self.num_user, self.reg_weight, self.cl_weight)
        at_users, at_pos, at_neg = inverse.split(len(users))       # each node's position among ``rows``
        return view_loss(*self.row_views(rows), at_users, at_pos, at_neg, 0, self.reg_weight, self.cl_weight)

    def loss_plain(self, users, pos, neg):
        """The loss as the formula: every node's views, the plain contrast (what ``loss`` is tested against)."""
        return view_loss(*self.views(), users, pos, neg, self.num_user, self.reg_weight, self.cl_weight, plain=True)


# ---------------------------------------------------------------------- the registry entry (SPEC 5)

def build(args, data):
    needs_modality('MGCN', data)
    if args.knn_k > data.num_item:
        raise InputError(f'--knn_k {args.knn_k} exceeds the number of items ({data.num_item})')
    adj = normalized_adjacency(data.train, data.num_user, data.num_item)
    return MGCN(data.num_user, data.num_item, data.features, adj, item_graphs(data.features, data.num_item, args.knn_k, data.path),
                args.dim_latent, args.num_layer, reg_weight=args.weight_decay, cl_weight=args.cl_weight,
                fuser_softmax=args.mgcn_softmax)


MODEL = ModelEntry(
    name='MGCN', build=build, summary='purified modality views, item-item kNN graphs and a behaviour-aware fuser, '
                                      'BPR plus view contrast (docs/models.md)',
    # demonph10/MGCN's MGCN.yaml / overall.yaml: lr 1e-3, reg_weight 1e-4 (the loss's λ; Adam without decay),
    # batch 2048, n_ui_layers 2, n_layers 1, knn_k 10, cl_loss 0.01
    defaults=dict(l_r=0.001, weight_decay=1e-4, batch_size=2048, num_layer=2, num_epoch=1000, cl_weight=0.01),
    flags=(
        Flag('mgcn_softmax', 'modalities', "what the fuser's attention weights are normalised over: 'modalities' "
             "(the authors' code since commit c3eac8f, nn.Softmax(dim=-1); the paper; MMRec's port) or 'nodes' "
             "(their first commit 09095cb, nn.Softmax(dim=0))", choices=('modalities', 'nodes')),
    ),
    reads=('knn_k', 'cl_weight'),
    rows={'MGCN': ('MGCN', []),
          'MGCN-nodes': ("MGCN, fuser softmax over the nodes (the authors' first commit)", ['--mgcn_softmax', 'nodes'])},
    # MMRec's MGCN.yaml: cl_loss over {0.001, 0.01, 0.1}
    search_grid=dict(l_r=[0.01, 0.001], cl_weight=[0.001, 0.01, 0.1]),
)
