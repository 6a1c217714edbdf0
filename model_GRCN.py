"""GRCN (Wei et al., ACM MM 2020, "Graph-Refined Convolutional Network for Multimedia Recommendation with
Implicit Feedback"): each modality scores every training edge by how well the user's preference for that
modality matches the item's content; the scores re-weight (and, with pruning, cut) the edges of the ID graph.
Equations as the authors' code computes them (weiyinwei/GRCN, ``Model_routing.py``; docs/models.md).

For each modality m, with ``P_m`` a trainable user preference [U, d_C] and the item content

    f_m = leaky_relu(T_m F_m)       (dense feature F_m, T_m = Linear(dim F_m → d_C))
    f_m = mean of the item's trainable word embeddings (a word-id modality, width d_C)
    p̂ = normalize(P_m),  f̂ = normalize(f_m),  x_m = [p̂ ; f̂]

every training edge e = (u, i) gets the score ``a_e = p̂_u · f̂_i`` and two attentions, one per direction:

    α^{→i}_e = softmax of a over the users of item i    (the weight of u's message to i)
    α^{→u}_e = softmax of a over the items of user u    (the weight of i's message to u)
    c_m[i] = f̂_i + Σ_u α^{→i}_e p̂_u,   c_m[u] = p̂_u + Σ_i α^{→u}_e f̂_i

(The authors' routing loop, ``num_routing`` updates of ``P_m``, sends its messages from users to items
only and keeps the user rows, which receive nothing: the preference stays ``p̂``; computed as such.)

Edge weights (``--grcn_weight_mode``; ``confid``, the default, with a trainable confidence ``C`` [U+I, M]):

    confid: w^{→i}_e = max_m α^{m,→i}_e C[u, m],   w^{→u}_e = max_m α^{m,→u}_e C[i, m]
    max:    w = max_m α^m        mean: w = mean_m α^m
    w ← relu(w)  with --grcn_pruning (default True)

ID graph (``E`` trainable [U+I, d], aggregation by sum):

    x⁰ = normalize(E),   x^{k+1}[v] = Σ_{e into v} w_e x^k[source of e],   h = Σ_{k=0..L} x^k   (L = 2)
    z = [h ‖ c_1 ‖ … ‖ c_M],   s(u, i) = z_u · z_i

Loss over a batch of B triples (user, positive, sampled negative), the authors' element means:

    L = -mean log σ(s⁺ - s⁻) + λ [ (Σ_b 2‖E_u‖² + ‖E_{i⁺}‖² + ‖E_{i⁻}‖²) / (2 B d) + Σ_m Σ_b ‖P_{m,u}‖² / (B d_C) ]

Every batch runs the whole forward (the attentions normalise over all of a node's edges), as the authors' code;
its edge products take the fast path below (``Bipartite``, ``EdgeDot``, ``EdgeSpmm``) beside the plain formulas.
"""
import dataclasses

import torch
from torch import nn
from torch.nn import functional as F
from torch_geometric.utils import softmax

from BaseModel import _quiet_csr, pair_tensors, take_rows
from config import str2bool
from DataLoad import WordFeature
from model_LightGCN import bpr_loss
from registry import Flag, ModelEntry, Recommender, needs_modality

WEIGHT_MODES = ('confid', 'max', 'mean')


def aggregate(weights, source_rows, target, num_target):
    """``out[t] = Σ_{e: target_e = t} weights_e · source_rows_e`` [num_target, d] (the plain formula)."""
    out = source_rows.new_zeros(num_target, source_rows.shape[1])
    return out.index_add(0, target, weights.unsqueeze(1) * source_rows)


# ---------------------------------------------------------------------- the fast path of the edge products
#
# GRCN's step is two kinds of products over the E training edges, both plain above and in ``GRCN.modality``:
# the edge scores ``a_e = p_u · f_i`` (an SDDMM) and the weighted sums ``Σ_e w_e x_source`` (an SpMM with the
# edge weights as values).  Autograd of the plain form materialises several [E, d] tensors per product (the
# gathered rows, their product with the weights, the gradient's gathers) and is bound by memory.  Each is the
# other's adjoint: the SpMM's gradient by its weights is an SDDMM and by its rows the transposed SpMM; the
# SDDMM's gradient is two SpMMs whose values are the incoming gradient.  ``Bipartite`` keeps the edges sorted
# by user and by item (CSR), so every SpMM is one sparse-dense product, and computes the SDDMM in chunks of
# edges that stay in cache.  Same values as the plain formulas (tests/test_models_grcn_lattice.py); the step's
# time against them: python bench/models_grcn_lattice.py step --models GRCN.

DOT_CHUNK = 8192           # edges per SDDMM chunk: two [chunk, 64] float blocks stay within a 2 MiB L2 cache


class Bipartite:
    """The training edges (``users[e]``, ``items[e]``) with two CSR orderings, ``(order, crow, cols)`` each: by
    user (the rows of R) and by item (the rows of Rᵀ).  ``orderings`` builds them once; a model keeps them as
    buffers (they move with it) and wraps them here per call."""

    def __init__(self, users, items, by_user, by_item):
        self.users, self.items, self.by_user, self.by_item = users, items, by_user, by_item

    @staticmethod
    def orderings(users, items, num_user, num_item):
        """``(by_user, by_item)``."""
        def ordering(rows, cols, num_rows):
            order = torch.argsort(rows, stable=True)
            crow = torch.zeros(num_rows + 1, dtype=torch.long)
            crow[1:] = torch.cumsum(torch.bincount(rows, minlength=num_rows), 0)
            return order, crow, cols[order]
        return ordering(users, items, num_user), ordering(items, users, num_item)

    def spmm(self, values, x, to_users):
        """``out[t] = Σ_{e into t} values_e x[source_e]``: into users from item rows ``x``, or the reverse."""
        order, crow, cols = self.by_user if to_users else self.by_item
        with _quiet_csr():
            matrix = torch.sparse_csr_tensor(crow, cols, values[order].to(x.dtype),
                                             (len(crow) - 1, x.shape[0]), check_invariants=False)
            return matrix @ x

    def dots(self, user_rows, item_rows):
        """``out_e = user_rows[users_e] · item_rows[items_e]`` [E], a chunk of edges at a time."""
        out = user_rows.new_empty(len(self.users))
        for lo in range(0, len(self.users), DOT_CHUNK):
            hi = lo + DOT_CHUNK
            out[lo:hi] = (user_rows.index_select(0, self.users[lo:hi])
                          * item_rows.index_select(0, self.items[lo:hi])).sum(1)
        return out


class EdgeSpmm(torch.autograd.Function):
    """``aggregate(values, x[source], target, n)`` with the closed-form gradient of its two inputs."""

    @staticmethod
    def forward(ctx, values, x, graph, to_users):
        ctx.save_for_backward(values, x)
        ctx.graph, ctx.to_users = graph, to_users
        return graph.spmm(values, x, to_users)

    @staticmethod
    def backward(ctx, grad):
        values, x = ctx.saved_tensors
        graph, to_users = ctx.graph, ctx.to_users
        grad_values = grad_x = None
        if ctx.needs_input_grad[0]:        # ∂/∂w_e = grad[target_e] · x[source_e]
            grad_values = graph.dots(grad, x) if to_users else graph.dots(x, grad)
        if ctx.needs_input_grad[1]:        # the transposed sum: from the targets back to the sources
            grad_x = graph.spmm(values, grad, not to_users)
        return grad_values, grad_x, None, None


class EdgeDot(torch.autograd.Function):
    """``(p[users] * f[items]).sum(1)`` [E] with the closed-form gradient (two SpMMs valued by the gradient)."""

    @staticmethod
    def forward(ctx, user_rows, item_rows, graph):
        ctx.save_for_backward(user_rows, item_rows)
        ctx.graph = graph
        return graph.dots(user_rows, item_rows)

    @staticmethod
    def backward(ctx, grad):
        user_rows, item_rows = ctx.saved_tensors
        graph = ctx.graph
        grad_user = graph.spmm(grad, item_rows, True) if ctx.needs_input_grad[0] else None
        grad_item = graph.spmm(grad, user_rows, False) if ctx.needs_input_grad[1] else None
        return grad_user, grad_item, None


class GRCN(Recommender):
    """GRCN over the training graph.

    Args:
        num_user, num_item: sizes.
        features: modality -> float array [num_item, f] or ``DataLoad.WordFeature`` (at least one).
        train: [E, 2] training (user, item) pairs, the edges.
        dim_latent: ``d`` = ``d_C`` (64 both, as the authors' defaults).
        num_layer: ``L`` (2), layers of the ID graph.
        reg_weight: ``λ`` (``--weight_decay``, 1e-5): the loss coefficient, not an Adam decay.
        weight_mode: 'confid', 'max' or 'mean'.
        pruning: relu on the edge weights.
        fast: the edge products through ``Bipartite`` (sparse products, closed-form gradients); False: the
            plain formulas (``aggregate``), for tests and the bench.
    """

    needs_negatives = True

    def __init__(self, num_user, num_item, features, train, dim_latent=64, num_layer=2, reg_weight=1e-5,
                 weight_mode='confid', pruning=True, fast=True):
        super().__init__()
        if not features:
            raise ValueError('GRCN needs at least one modality')
        if weight_mode not in WEIGHT_MODES:
            raise ValueError(f'weight_mode must be one of {WEIGHT_MODES}, got {weight_mode!r}')
        self.num_user, self.num_item, self.num_layer, self.reg_weight = num_user, num_item, num_layer, reg_weight
        self.weight_mode, self.pruning, self.fast = weight_mode, pruning, fast
        self.modalities = list(features)
        edge_users, edge_items = pair_tensors(train)
        self.register_buffer('edge_users', edge_users, persistent=False)
        self.register_buffer('edge_items', edge_items, persistent=False)
        by_user, by_item = Bipartite.orderings(self.edge_users, self.edge_items, num_user, num_item)
        for name, ordering in (('by_user', by_user), ('by_item', by_item)):
            for part, t in zip(('order', 'crow', 'cols'), ordering):
                self.register_buffer(f'{name}_{part}', t, persistent=False)
        # A word-id modality's embeddings are d_C wide (the authors' nn.Embedding(vocab, dim_C)), no transform.
        features = {m: dataclasses.replace(f, dim=dim_latent) if isinstance(f, WordFeature) else f
                    for m, f in features.items()}
        widths = self.register_item_features(features)
        self.transforms = nn.ModuleDict({m: nn.Linear(widths[m], dim_latent) for m in self.modalities
                                         if m not in self.word_means})
        self.embedding = nn.Parameter(nn.init.xavier_normal_(torch.empty(num_user + num_item, dim_latent)))
        self.preference = nn.ParameterDict({m: nn.Parameter(nn.init.xavier_normal_(torch.empty(num_user, dim_latent)))
                                            for m in self.modalities})
        self.confidence = nn.Parameter(nn.init.xavier_normal_(torch.empty(num_user + num_item, len(self.modalities))))

    # ------------------------------------------------------------------ the content graphs

    def content(self, m):
        """``f̂_m`` [I, d_C]: the item content, transformed (dense) or the word mean, rows normalised."""
        f = self.item_input(m)
        if m in self.transforms:
            f = F.leaky_relu(self.transforms[m](f))
        return F.normalize(f, dim=1)

    def graph(self):
        """The edges as ``Bipartite`` (the fast path's products)."""
        return Bipartite(self.edge_users, self.edge_items,
                         (self.by_user_order, self.by_user_crow, self.by_user_cols),
                         (self.by_item_order, self.by_item_crow, self.by_item_cols))

    def edge_scores(self, p, f):
        """``a_e = p[u_e] · f[i_e]`` [E]."""
        if self.fast:
            return EdgeDot.apply(p, f, self.graph())
        return (take_rows(p, self.edge_users) * take_rows(f, self.edge_items)).sum(1)

    def sum_into(self, weights, x, to_users):
        """``Σ_{e into t} w_e x[source_e]``: into the users from item rows ``x`` (or into the items from user rows)."""
        if self.fast:
            return EdgeSpmm.apply(weights, x, self.graph(), to_users)
        if to_users:
            return aggregate(weights, take_rows(x, self.edge_items), self.edge_users, self.num_user)
        return aggregate(weights, take_rows(x, self.edge_users), self.edge_items, self.num_item)

    def modality(self, m):
        """``(c_m [U+I, d_C], α^{→i} [E], α^{→u} [E])`` of modality m."""
        p, f = F.normalize(self.preference[m], dim=1), self.content(m)
        score = self.edge_scores(p, f)                                          # a_e = p̂_u · f̂_i
        to_item = softmax(score, self.edge_items, num_nodes=self.num_item)
        to_user = softmax(score, self.edge_users, num_nodes=self.num_user)
        c_user = p + self.sum_into(to_user, f, to_users=True)
        c_item = f + self.sum_into(to_item, p, to_users=False)
        return torch.cat([c_user, c_item]), to_item, to_user

    def edge_weights(self, to_item, to_user):
        """``(w^{→i}, w^{→u})`` [E] each, from the modalities' attentions ([E, M] each)."""
        if self.weight_mode == 'mean':
            w_item, w_user = to_item.mean(1), to_user.mean(1)
        elif self.weight_mode == 'max':
            w_item, w_user = to_item.amax(1), to_user.amax(1)
        else:
            w_item = (to_item * take_rows(self.confidence, self.edge_users)).amax(1)
            w_user = (to_user * take_rows(self.confidence, self.edge_items + self.num_user)).amax(1)
        if self.pruning:
            w_item, w_user = F.relu(w_item), F.relu(w_user)
        return w_item, w_user

    def id_graph(self, w_item, w_user):
        """``h = Σ_{k=0..L} x^k`` [U+I, d] on the weighted graph, ``x⁰ = normalize(E)``."""
        x = F.normalize(self.embedding, dim=1)
        total = x
        for _ in range(self.num_layer):
            users, items = x[:self.num_user], x[self.num_user:]
            x = torch.cat([self.sum_into(w_user, items, to_users=True), self.sum_into(w_item, users, to_users=False)])
            total = total + x
        return total

    def forward(self):
        """``(z_user, z_item)``, ``d + M d_C`` wide: the ID graph's ``h`` and each modality's ``c_m``."""
        parts = [self.modality(m) for m in self.modalities]
        w_item, w_user = self.edge_weights(torch.stack([p[1] for p in parts], 1), torch.stack([p[2] for p in parts], 1))
        z = torch.cat([self.id_graph(w_item, w_user)] + [p[0] for p in parts], dim=1)
        return z[:self.num_user], z[self.num_user:]

    def loss(self, users, pos, neg):
        """BPR plus the authors' element-mean regulariser; returns the loss and its parts."""
        z_user, z_item = self()
        items = torch.cat([pos, neg])
        z_u = take_rows(z_user, users)
        z_pos, z_neg = take_rows(z_item, items).split(len(pos))
        bpr = bpr_loss(z_u, z_pos, z_neg)
        dim = self.embedding.shape[1]
        reg_id = (2 * take_rows(self.embedding, users).pow(2).sum()
                  + take_rows(self.embedding, items + self.num_user).pow(2).sum()) / (2 * len(users) * dim)
        reg_pref = sum(take_rows(self.preference[m], users).pow(2).sum() for m in self.modalities) \
            / (len(users) * self.preference[self.modalities[0]].shape[1])
        return bpr + self.reg_weight * (reg_id + reg_pref), {'bpr': bpr.item(), 'reg_id': reg_id.item(),
                                                             'reg_pref': reg_pref.item()}


# ---------------------------------------------------------------------- the registry entry (SPEC 5)

def build(args, data):
    needs_modality('GRCN', data)
    return GRCN(data.num_user, data.num_item, data.features, data.train, args.dim_latent, args.num_layer,
                reg_weight=args.weight_decay, weight_mode=args.grcn_weight_mode, pruning=args.grcn_pruning)


MODEL = ModelEntry(
    name='GRCN', build=build, summary='graph refined by per-modality routing, edges pruned, BPR (docs/models.md)',
    # the authors' main.py: l_r 1e-4, weight_decay 1e-5 (the loss's λ; Adam without decay), batch 1024, two ID layers
    defaults=dict(l_r=0.0001, weight_decay=1e-5, batch_size=1024, num_layer=2, num_epoch=1000),
    flags=(
        Flag('grcn_weight_mode', 'confid', 'how the modalities\' edge attentions make one weight: confid '
             '(max of attention x trainable confidence, the authors\' default), max, mean', choices=WEIGHT_MODES),
        Flag('grcn_pruning', True, 'relu on the edge weights (hard pruning; the authors\' default True, '
             'their README commands use False)', type=str2bool),
    ),
    lr_grid=(0.001, 0.0001),
    # MMRec's GRCN.yaml: reg_weight over {0.1, ..., 1e-5}, learning_rate over {1, 0.1, ..., 1e-4}
    search_grid=dict(l_r=[0.01, 0.001], weight_decay=[1e-4, 1e-3, 1e-2, 0.1]),
)
