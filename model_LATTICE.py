"""LATTICE (Zhang et al., ACM MM 2021, "Mining Latent Structures for Multimedia Recommendation"): an
item-item graph learned from transformed features, mixed with the frozen kNN graphs of the raw features,
convolves the item IDs; the result is added to LightGCN's item vectors.  Equations as the authors' code
computes them (CRIPAC-DIG/LATTICE, ``codes/Models.py``; docs/models.md).

kNN graph of a matrix X [I, f] (``weighted_knn``, blocked: never a dense I x I matrix): each item's ``k``
most cosine-similar items (``--knn_k``, 10), itself included, weighted by the cosine (itself by 1; an
all-zero row keeps only itself), ``S(X)[i, j] = cos(x_i, x_j)`` on those entries, 0 elsewhere;
``N(A) = D^-1/2 A D^-1/2`` with ``D`` the row sums of A (a zero sum gives 0).

    O_m = N(S(F_m^raw))                        frozen, from the raw features (a word-id modality: its bag of words)
    w = softmax(ω)                             ω trainable [M], initialised equal
    G = (1 - λ) N(Σ_m w_m S(T_m F_m)) + λ Σ_m w_m O_m          (λ = --lattice_lambda, 0.9)
    h = G^{L_i} E_i                            (L_i = --lattice_item_layers, 1)

with ``F_m`` the trainable item features (initialised from the raw ones) and ``T_m = Linear(dim F_m → d)``.
The user-item side is LightGCN on the authors' ``Â = D^-1 (A + I)`` (row-normalised, with self-loops):

    [z_u ; z'_i] = mean_{k=0..L} Â^k [E_u ; E_i]     (L = --num_layer, 2),   z_i = z'_i + normalize(h)

Loss over a batch of B triples: ``-mean log σ(s⁺ - s⁻) + λ_reg ½ (‖z_u‖² + ‖z_{i⁺}‖² + ‖z_{i⁻}‖²) / B``
(``λ_reg = --weight_decay``, 1e-5, on the final vectors).  As the authors' code: ``G`` is built with its
gradient at each epoch's first batch and reused, detached, by the epoch's other batches; evaluation
builds it afresh from the current weights.
"""
import torch
from torch import nn
from torch.nn import functional as F

from BaseModel import _RowMeanProduct, csr_adjacency, pair_tensors, take_rows
from knn_graph import SIMILARITY_FLOATS, knn_neighbours, unit_matrix
from model_LightGCN import bpr_loss
from registry import Flag, ModelEntry, Recommender, finite, needs_modality


# ---------------------------------------------------------------------- the item-item graphs

def weighted_knn(x, k, block_floats=SIMILARITY_FLOATS):
    """``S(x)`` as ``(rows [I k], cols [I k], values [I k])``: the values keep ``x``'s gradient (the
    neighbours are chosen without it, as ``topk`` does).  Itself has value 1; an all-zero row only itself."""
    unit = F.normalize(x, dim=1)
    ids, _ = knn_neighbours(unit.detach(), k, block_floats)
    num_item = x.shape[0]
    others = take_rows(unit, ids[:, 1:].reshape(-1)).view(num_item, k - 1, -1)
    values = (unit.unsqueeze(1) * others).sum(-1)                           # cos(x_i, x_j), j ≠ i
    values = torch.cat([values.new_ones(num_item, 1), values], dim=1)    # a zero row: 1 on itself, 0 elsewhere
    return torch.arange(num_item, device=x.device).repeat_interleave(k), ids.reshape(-1), values.reshape(-1)


def raw_knn(feature, num_item, k):
    """``S(F_m^raw)`` of a raw modality (dense array or ``WordFeature``'s bag of words), blocked."""
    ids, cos = knn_neighbours(unit_matrix(feature, num_item), k)          # a zero row's cosines are 0: its only entry is itself
    return torch.arange(num_item).repeat_interleave(k), ids.reshape(-1), cos.reshape(-1)


def inv_sqrt_row_sums(rows, values, num_item):
    """``D^-1/2`` of the entries ``(rows, ·, values)``: ``D`` the row sums, a sum ≤ 0 gives 0."""
    total = values.new_zeros(num_item).index_add(0, rows, values)
    inv_sqrt = torch.where(total > 0, total.clamp(min=1e-30).pow(-0.5), torch.zeros_like(total))
    return inv_sqrt


def normalized(graph, num_item):
    """``N(A)`` of one graph ``(rows, cols, values)``."""
    rows, cols, values = graph
    inv_sqrt = inv_sqrt_row_sums(rows, values, num_item)
    return rows, cols, inv_sqrt[rows] * values * inv_sqrt[cols]


def mixed_graph(learned, original, weights, skip, num_item):
    """``G = (1 - λ) N(Σ_m w_m S_m) + λ Σ_m w_m O_m`` as one entry list ``(rows, cols, values)``
    (repeated entries add up); ``learned`` and ``original`` are per-modality entry lists."""
    rows = torch.cat([g[0] for g in learned])
    cols = torch.cat([g[1] for g in learned])
    values = torch.cat([w * g[2] for w, g in zip(weights, learned)])
    inv_sqrt = inv_sqrt_row_sums(rows, values, num_item)
    parts_r, parts_c = [rows], [cols]
    parts_v = [(1 - skip) * inv_sqrt[rows] * values * inv_sqrt[cols]]
    for w, (r, c, v) in zip(weights, original):
        parts_r.append(r)
        parts_c.append(c)
        parts_v.append(skip * w * v)
    return torch.cat(parts_r), torch.cat(parts_c), torch.cat(parts_v)


def graph_product(graph, x, num_item):
    """``G x`` from the entry list (gradient to the values and to x): the plain formula."""
    rows, cols, values = graph
    return x.new_zeros(num_item, x.shape[1]).index_add(0, rows, values.unsqueeze(1) * take_rows(x, cols))


def dense_graph_plain(learned_features, raw_features, weights, k, skip):
    """``G`` as a dense [I, I] matrix, as the authors' code builds it: for tests on small graphs only."""
    def knn(x):
        unit = F.normalize(x, dim=1)
        sim = unit @ unit.t()
        sim.fill_diagonal_(1.0)
        keep = torch.zeros_like(sim).scatter_(1, (sim + 2 * torch.eye(len(sim))).topk(k, dim=1).indices, 1.0)
        return sim * keep

    def norm(a):
        d = a.sum(1)
        inv = torch.where(d > 0, d.clamp(min=1e-30).pow(-0.5), torch.zeros_like(d))
        return inv[:, None] * a * inv[None, :]
    learned = norm(sum(w * knn(x) for w, x in zip(weights, learned_features)))
    original = sum(w * norm(knn(x)) for w, x in zip(weights, raw_features))
    return (1 - skip) * learned + skip * original


# ---------------------------------------------------------------------- the model

def row_normalized_adjacency(train, num_user, num_item):
    """The authors' ``Â = D^-1 (A + I)`` [(U+I), (U+I)] as CSR, and its transpose."""
    users, items = pair_tensors(train)
    items = items + num_user
    n = num_user + num_item
    loops = torch.arange(n)
    edges = torch.stack([torch.cat([users, items, loops]), torch.cat([items, users, loops])])
    degree = torch.bincount(edges[0], minlength=n).float()
    adj = csr_adjacency(edges, n, 1.0 / degree[edges[0]])
    adj_t = csr_adjacency(edges.flip(0), n, 1.0 / degree[edges[0]])
    return adj, adj_t


class LATTICE(Recommender):
    """LATTICE with the LightGCN user-item side (the authors' default ``cf_model``).

    Args:
        num_user, num_item: sizes.
        features: modality -> float array [num_item, f] or ``DataLoad.WordFeature`` (at least one).
        train: [E, 2] training (user, item) pairs.
        dim_latent: ``d`` (64), also the width of ``T_m F_m`` (the authors' ``feat_embed_dim``, 64).
        num_layer: ``L`` (2), user-item layers.
        reg_weight: ``λ_reg`` (``--weight_decay``, 1e-5): the loss coefficient, not an Adam decay.
        knn_k: ``k`` (10).
        skip: ``λ`` (0.9), the share of the frozen graphs in ``G``.
        num_item_layer: ``L_i`` (1).
    """

    needs_negatives = True

    def __init__(self, num_user, num_item, features, train, dim_latent=64, num_layer=2, reg_weight=1e-5, knn_k=10,
                 skip=0.9, num_item_layer=1):
        super().__init__()
        if not features:
            raise ValueError('LATTICE needs at least one modality')
        if knn_k > num_item:
            raise ValueError(f'--knn_k {knn_k} exceeds the number of items ({num_item})')
        self.num_user, self.num_item, self.num_layer, self.reg_weight = num_user, num_item, num_layer, reg_weight
        self.knn_k, self.skip, self.num_item_layer = knn_k, skip, num_item_layer
        self.modalities = list(features)
        adj, adj_t = row_normalized_adjacency(train, num_user, num_item)
        self.register_buffer('adj', adj, persistent=False)
        self.register_buffer('adj_t', adj_t, persistent=False)
        for m, feature in features.items():                                # O_m, kept as buffers: they move with .to()
            for part, tensor in zip(('rows', 'cols', 'values'), normalized(raw_knn(feature, num_item, knn_k), num_item)):
                self.register_buffer(f'original_{part}_{m}', tensor, persistent=False)
        self.embedding_user = nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_user, dim_latent)))
        self.embedding_item = nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_item, dim_latent)))
        widths = self.register_item_features(features, trainable=True)     # F_m trainable, as the authors' code
        self.transforms = nn.ModuleDict({m: nn.Linear(widths[m], dim_latent) for m in self.modalities})
        self.modal_weight = nn.Parameter(torch.full((len(self.modalities),), 0.5))
        # G of the current epoch, detached, as CSR (G, Gᵀ), built by the epoch's first batch; buffers, so a
        # model moved mid-epoch moves its graph too
        self.register_buffer('epoch_graph', None, persistent=False)
        self.register_buffer('epoch_graph_t', None, persistent=False)

    def on_epoch_start(self):
        self.epoch_graph = self.epoch_graph_t = None

    @property
    def original(self):
        """``[O_m]`` as entry lists ``(rows, cols, values)``, in modality order."""
        return [tuple(getattr(self, f'original_{part}_{m}') for part in ('rows', 'cols', 'values'))
                for m in self.modalities]

    def item_graph(self):
        """``G`` as an entry list ``(rows, cols, values)``, from the current weights (with their gradient)."""
        learned = [weighted_knn(self.transforms[m](self.item_input(m)), self.knn_k) for m in self.modalities]
        return mixed_graph(learned, self.original, torch.softmax(self.modal_weight, 0), self.skip, self.num_item)

    def item_side(self, graph):
        """``normalize(G^{L_i} E_i)``; ``graph`` an entry list (gradient to its values) or a CSR pair (fixed)."""
        h = self.embedding_item
        for _ in range(self.num_item_layer):
            if graph[0].layout == torch.sparse_csr:
                h = _RowMeanProduct.apply(h, *graph)
            else:
                h = graph_product(graph, h, self.num_item)
        return F.normalize(h, dim=1)

    def encode(self, graph):
        x = torch.cat([self.embedding_user, self.embedding_item])
        total = x
        for _ in range(self.num_layer):
            x = _RowMeanProduct.apply(x, self.adj, self.adj_t)
            total = total + x
        z = total / (self.num_layer + 1)
        return z[:self.num_user], z[self.num_user:] + self.item_side(graph)

    def forward(self):
        """``(z_user [U, d], z_item [I, d])`` with ``G`` built from the current weights."""
        return self.encode(self.item_graph())

    def loss(self, users, pos, neg):
        """BPR plus ``λ_reg ½ ‖·‖² / B`` of the final vectors; the loss and its parts."""
        if self.epoch_graph is None:               # the epoch's first batch: G with its gradient
            graph = self.item_graph()
            self.epoch_graph, self.epoch_graph_t = fixed_csr(graph, self.num_item)
        else:
            graph = self.epoch_graph, self.epoch_graph_t
        z_user, z_item = self.encode(graph)
        z_u = take_rows(z_user, users)
        z_pos, z_neg = take_rows(z_item, torch.cat([pos, neg])).split(len(pos))
        bpr = bpr_loss(z_u, z_pos, z_neg)
        reg = 0.5 * (z_u.pow(2).sum() + z_pos.pow(2).sum() + z_neg.pow(2).sum()) / len(users)
        return bpr + self.reg_weight * reg, {'bpr': bpr.item(), 'reg': reg.item()}


def fixed_csr(graph, num_item):
    """A detached entry list as ``(G, Gᵀ)`` CSR (repeated entries summed): the fast product for the
    epoch's other batches."""
    rows, cols, values = graph
    values = values.detach()
    return (csr_adjacency(torch.stack([rows, cols]), num_item, values),
            csr_adjacency(torch.stack([cols, rows]), num_item, values))


# ---------------------------------------------------------------------- the registry entry (SPEC 5)

def build(args, data):
    needs_modality('LATTICE', data)
    return LATTICE(data.num_user, data.num_item, data.features, data.train, args.dim_latent, args.num_layer,
                   reg_weight=args.weight_decay, knn_k=args.knn_k, skip=args.lattice_lambda,
                   num_item_layer=args.lattice_item_layers)


MODEL = ModelEntry(
    name='LATTICE', build=build, summary='learned item-item graph mixed with the modality kNN graphs, '
                                         'LightGCN, BPR (docs/models.md)',
    # the authors' parser.py: lr 5e-4, regs[0] 1e-5 (the loss's λ; Adam without decay), batch 1024,
    # weight_size [64, 64] (two user-item layers), topk 10 (= --knn_k's default)
    defaults=dict(l_r=0.0005, weight_decay=1e-5, batch_size=1024, num_layer=2, num_epoch=1000),
    flags=(
        Flag('lattice_lambda', 0.9, "share λ of the frozen raw-feature kNN graphs in the item graph "
             "(the authors' lambda_coeff)", type=float,
             check=lambda a: finite(a.lattice_lambda) and 0 <= a.lattice_lambda <= 1, problem='must be in [0, 1]'),
        Flag('lattice_item_layers', 1, 'item-item graph layers (the authors\' n_layers)', type=int,
             check=lambda a: 1 <= a.lattice_item_layers <= 32, problem='must be in [1, 32]'),
    ),
    reads=('knn_k',),
    # MMRec's LATTICE.yaml: reg_weight over {0, 1e-5, 1e-4, 1e-3}, learning_rate over {1e-4, 5e-4, 1e-3, 5e-3}
    search_grid=dict(l_r=[0.005, 0.001], weight_decay=[0.0, 1e-5, 1e-4, 1e-3]),
)
