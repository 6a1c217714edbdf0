"""SLMRec (Tao et al., IEEE TMM 2022): a multimodal graph encoder trained with an
in-batch InfoNCE loss plus one self-supervised task (SPEC 3).

Encoder (``backbone='lightgcn'``, SPEC 3.1). Branches ``id, m_1, ..., m_M``
share the user embedding ``E_u``; branch b's item side is ``E_i`` (id) or
``H_m = Linear_m(normalise(F_m))``.  With ``X⁰ = [E_u ; item side]``:

    X^{k+1} = Â X^k,   branch output = mean(X⁰, ..., X^L)

Fusion: ``concat`` (or ``mean``) of the branch outputs, then separate linear
maps for users and items give ``z_u`` and ``z_i``; ``s(u, i) = z_u · z_i``.

Losses (SPEC 3.2, 3.3): ``L = InfoNCE(z_u, z_i; temp) + ssl_alpha · L_ssl`` with
``L_ssl`` one of FD (dropout views), FM (masked-branch views), FD+FM, FAC
(fine and coarse cross-modal contrast of the pre-fusion item outputs), none.

The plain view costs one ``d``-wide propagation whatever the number of
modalities (SPEC 3.6, ``plain_parts``): the user part is shared by every
branch, dense modalities read tables propagated once per graph, and one
propagation of ``[E_u ; E_i]`` gives both the user and the item part through
its even and odd layers.  FM's views are sums of the same parts; FD's dropout
views propagate every branch side by side as one wide matrix
(``propagate``, which is also the per-branch reference the tests compare with).
"""
import re

import torch
from torch import nn
from torch.nn import functional as F

import distributed
from BaseModel import bipartite_edges, check_symmetric, csr_adjacency, normalized_adjacency, propagate_layers, take_rows
from model_MMGCN import MMGCN
from registry import Flag, ModelEntry, Recommender, finite

SSL_TASKS = ('FAC', 'FD', 'FM', 'FD+FM', 'none')
FUSION_MODES = ('concat', 'mean')
BACKBONES = ('lightgcn', 'mmgcn')
FM_VIEWS = ('official', 'clean')


def info_nce(a, b, temp):
    """``CE(a bᵀ / temp, diag)``: row r of ``a`` should pick row r of ``b`` (one direction).

    Under torchrun each rank scores its share of the rows of ``a`` against all of ``b`` and
    returns ``W ·`` its share of the mean (``distributed.row_share``; SPEC 7).
    """
    lo, hi, weight = distributed.row_share(len(a))
    logits = (a[lo:hi] / temp) @ b.t()       # scaling a (n x d) is cheaper than scaling the n x n logits
    return weight * F.cross_entropy(logits, torch.arange(lo, hi, device=a.device))


def fac_widths(num_modalities, dim):
    """Stage widths of FAC (SPEC 3.3): ``d`` for stages 1-2, ``d/2`` from stage 3 on."""
    return [dim if s < 2 else dim // 2 for s in range(num_modalities)]


def _xavier_linear(n_in, n_out):
    layer = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(layer.weight)
    return layer


class SLMRec(Recommender):
    """SLMRec over a fixed user-item graph.

    Args:
        num_user, num_item: sizes.
        features: modality -> float array [num_item, f] or ``DataLoad.WordFeature``;
            may be empty (then the model is LightGCN-style, ID only).
        adj: sparse CSR adjacency: ``Â`` (normalised) for the lightgcn backbone,
            the plain 0/1 adjacency for the mmgcn backbone.
        dim_latent: ``d`` (64).
        num_layer: ``L`` (3).
        fusion: 'concat' (default) or 'mean'.
        ssl_task: 'FAC' (default), 'FD', 'FM', 'FD+FM' or 'none'.
        ssl_alpha: weight of the SSL loss (0.1).
        temp: temperature of the main InfoNCE (0.2).
        ssl_temp: temperature of the SSL losses (0.2).
        dropout_rate: FD dropout (0.3).
        backbone: 'lightgcn' (default) or 'mmgcn' (SPEC 3.1 extension).
        aggr, concat: MMGCN options, used by the mmgcn backbone only.
        fm_views: FM/FD+FM views, 'official' (default: each view's layer 0 from its own mask,
            its propagated layers from the other view's, SPEC 3.3) or 'clean' (its own mask at every
            layer).  The mmgcn backbone has no layer list to cross: its views are always 'clean'.
    """

    needs_negatives = False

    def __init__(self, num_user, num_item, features, adj, dim_latent=64, num_layer=3, fusion='concat',
                 ssl_task='FAC', ssl_alpha=0.1, temp=0.2, ssl_temp=0.2, dropout_rate=0.3,
                 backbone='lightgcn', aggr='mean', concat=False, fm_views='official'):
        super().__init__()
        for value, valid, flag in ((fusion, FUSION_MODES, 'mm_fusion_mode'), (ssl_task, SSL_TASKS, 'ssl_task'),
                                   (backbone, BACKBONES, 'backbone'), (fm_views, FM_VIEWS, 'fm_views')):
            if value not in valid:
                raise ValueError(f'--{flag} must be one of {list(valid)}, got {value!r}')
        self.modalities = list(features)
        num_branch = 1 + len(self.modalities)
        if ssl_task in ('FM', 'FD+FM') and num_branch < 2:
            raise ValueError(f'--ssl_task {ssl_task} masks one of two branches: it needs at least one modality')
        if ssl_task == 'FAC' and not self.modalities:
            raise ValueError('--ssl_task FAC contrasts the id branch with the modalities: it needs at least one modality')
        self.num_user, self.num_item = num_user, num_item
        self.dim, self.num_layer, self.fusion, self.backbone = dim_latent, num_layer, fusion, backbone
        self.ssl_task, self.ssl_alpha, self.temp, self.ssl_temp = ssl_task, ssl_alpha, temp, ssl_temp
        self.dropout_rate, self.fm_views = dropout_rate, fm_views
        self.register_buffer('adj', adj, persistent=False)

        if backbone == 'lightgcn':
            check_symmetric(adj)            # the closed-form backward uses Âᵀ = Â (MMGCN checks its own)
            self.embedding_user = nn.Embedding(num_user, dim_latent)
            self.embedding_item = nn.Embedding(num_item, dim_latent)
            nn.init.xavier_uniform_(self.embedding_user.weight)
            nn.init.xavier_uniform_(self.embedding_item.weight)
            widths = self.register_item_features(features, normalize=True)
            self.dense = nn.ModuleDict()
            for m in self.modalities:
                self.dense[m] = _xavier_linear(widths[m], dim_latent)
            self._propagate_fixed_inputs([m for m in self.modalities if m not in self.word_means])
        else:
            self.encoder = MMGCN(num_user, num_item, features, adj, dim_latent, num_layer, aggr, concat, has_id=True)

        fused = num_branch * dim_latent if fusion == 'concat' else dim_latent
        self.fuse_user = _xavier_linear(fused, dim_latent)
        self.fuse_item = _xavier_linear(fused, dim_latent)
        if ssl_task == 'FAC':
            widths = fac_widths(len(self.modalities), dim_latent)
            self.fac_x = nn.ModuleList(_xavier_linear(w_in, w) for w_in, w in zip([dim_latent] + widths, widths))
            self.fac_y = nn.ModuleList(_xavier_linear(dim_latent, w) for w in widths)

    @property
    def num_branch(self):
        return 1 + len(self.modalities)

    # ------------------------------------------------------------------ encoder

    def item_sides(self):
        """Item input of each branch, [I, d] each: ``E_i``, then ``H_m`` per modality."""
        sides = [self.embedding_item.weight]
        for m in self.modalities:
            sides.append(self.dense[m](self.item_input(m)))
        return sides

    def item_side_rows(self, branch, items):
        """Branch ``branch``'s item input at the items ``items`` [n, d] (``item_sides()[branch][items]``)."""
        if branch == 0:
            return take_rows(self.embedding_item.weight, items)
        m = self.modalities[branch - 1]
        return self.dense[m](take_rows(self.item_input(m), items))

    # SPEC 3.6: the plain view at LightGCN's price.  With P = (I + Â + … + Â^L) / (L+1), branch b's
    # output is P[E_u ; S_b] = P[E_u ; 0] + P[0 ; S_b]; ``propagate`` below is the per-branch reference.

    def _propagate_fixed_inputs(self, dense):
        """Buffers ``prop_<m> = P[0 ; F̂_m]`` per dense modality (``dense``, in dataset order) and ``prop_ones = P[0 ; 1]``: they
        depend on the graph alone, so they are propagated once (not parameters, not in checkpoints)."""
        inputs = [getattr(self, f'feat_{m}') for m in dense] + [torch.ones(self.num_item, 1)]
        widths = [x.shape[1] for x in inputs]
        items = torch.cat(inputs, dim=1)
        with torch.no_grad():
            x0 = torch.cat([items.new_zeros(self.num_user, items.shape[1]), items])
            fixed = propagate_layers(self.adj, x0, self.num_layer).split(widths, dim=1)
        for name, table in zip([f'prop_{m}' for m in dense] + ['prop_ones'], fixed):
            self.register_buffer(name, table.contiguous(), persistent=False)

    def plain_parts(self, rows=None):
        """``(P[E_u ; 0], [P[0 ; S_b] per branch])`` at the node rows ``rows`` (all nodes when None).

        One propagation of ``[E_u ; E_i]`` keeps the sums of its even and of its
        odd layers: ``Â`` is bipartite, so ``Â^k [E_u ; 0]`` lives on the user rows
        for even k and on the item rows for odd k, and ``Â^k [0 ; E_i]`` the other
        way round.  A dense modality needs no propagation at all:
        ``P[0 ; S_m] = P[0 ; F̂_m] W_mᵀ + P[0 ; 1] b_mᵀ`` from the buffers.  Word-id text
        is trained, so its ``[0 ; S_t]`` joins the propagated columns (d wide each).
        """
        d, num_user = self.dim, self.num_user
        words = [m for m in self.modalities if m in self.word_means]
        x0 = torch.cat([self.embedding_user.weight, self.embedding_item.weight])
        if words:
            word_sides = torch.cat([self.dense[m](self.word_means[m]()) for m in words], dim=1)
            x0 = torch.cat([x0, torch.cat([word_sides.new_zeros(num_user, word_sides.shape[1]), word_sides])], dim=1)
        even, odd = propagate_layers(self.adj, x0, self.num_layer, rows=rows, parity=True).chunk(2, dim=1)
        nodes = torch.arange(len(even), device=even.device) if rows is None else rows
        is_user = (nodes < num_user).unsqueeze(1)
        user_part = torch.where(is_user, even[:, :d], odd[:, :d])
        parts = {'id': torch.where(is_user, odd[:, :d], even[:, :d])}
        parts.update(zip(words, (even[:, d:] + odd[:, d:]).split(d, dim=1)))
        ones = self.prop_ones if rows is None else take_rows(self.prop_ones, rows)
        for m in self.modalities:
            if m not in parts:
                feat = getattr(self, f'prop_{m}')
                feat = feat if rows is None else take_rows(feat, rows)
                parts[m] = F.linear(feat, self.dense[m].weight) + ones * self.dense[m].bias
        return user_part, [parts[m] for m in ['id'] + self.modalities]

    @staticmethod
    def join_branches(user_part, item_parts, masked=None):
        """One view's pre-fusion rows [n, B·d]: ``P[E_u ; 0] + P[0 ; S_b]`` per branch, the item part
        of branch ``masked`` left out (its item side is zeros)."""
        return torch.cat([user_part if b == masked else user_part + part for b, part in enumerate(item_parts)], 1)

    def view_rows(self, rows, first=None, second=None):
        """The pre-fusion rows [n, B·d] of the plain view and, for FD, FM and FD+FM, of the two
        SSL views (each with its own mask, ``first`` and ``second``, at every layer)."""
        if self.backbone == 'mmgcn':
            return self.view_rows_per_branch(rows, first, second)
        user_part, item_parts = self.plain_parts(rows)
        views = [self.join_branches(user_part, item_parts)]
        if 'FD' in self.ssl_task:       # dropout is not linear in the inputs: these views propagate every branch
            p = self.dropout_rate
            views += self.propagate([(p, first), (p, second)], rows).split(self.num_branch * self.dim, dim=1)
        elif self.ssl_task == 'FM':     # masked views are sums of the same parts
            views += [self.join_branches(user_part, item_parts, masked) for masked in (first, second)]
        return views

    def view_rows_per_branch(self, rows, first=None, second=None):
        """The readable reference of ``view_rows``: every branch of every view propagated (SPEC 3.1)."""
        views = [(0.0, None)]
        if self.ssl_task in ('FD', 'FM', 'FD+FM'):
            p = self.dropout_rate if 'FD' in self.ssl_task else 0.0
            views += [(p, first), (p, second)]
        return list(self.propagate(views, rows).split(self.num_branch * self.dim, dim=1))

    def propagate(self, views, rows=None):
        """Pre-fusion outputs of several views, side by side: [(U+I), len(views) * B * d],
        or only the node rows ``rows`` (users, then ``U + item``) when given.

        ``views`` is a list of ``(dropout, masked_branch)``; ``masked_branch``
        (an index, or None) has its item side replaced by zeros.  View v holds
        columns ``v*B*d .. (v+1)*B*d``, branch b of it the d columns at ``b*d``.
        Every branch is propagated on its own columns, as SPEC 3.1 writes it: the
        reference of ``plain_parts``, and what FD's dropout views need.
        """
        if self.backbone == 'mmgcn':
            block = None if rows is None else self.encoder.row_block(rows)
            if block is None:
                wide = torch.cat([torch.cat(self._mmgcn_branches(p, masked), dim=1) for p, masked in views], dim=1)
                return wide if rows is None else take_rows(wide, rows)
            nodes, inverse, plan = block          # the batch's rows (and their neighbours) only
            return take_rows(torch.cat([torch.cat(self._mmgcn_branches(p, masked, nodes, plan), dim=1)
                                        for p, masked in views], dim=1), inverse)
        rates = {p for p, _ in views if p > 0}
        n_plain = sum(p == 0 for p, _ in views)
        if len(rates) > 1 or any(p > 0 for p, _ in views[:n_plain]):
            raise ValueError('dropout views share one rate and come after the views without dropout')
        sides = self.item_sides()
        item_cols = [torch.zeros_like(side) if b == masked else side
                     for _, masked in views for b, side in enumerate(sides)]
        user_cols = self.embedding_user.weight.repeat(1, len(item_cols))
        x0 = torch.cat([user_cols, torch.cat(item_cols, dim=1)])
        return propagate_layers(self.adj, x0, self.num_layer, dropout=rates.pop() if rates else 0.0,
                                training=self.training, drop_from=n_plain * self.num_branch * self.dim, rows=rows)

    def branch_outputs(self, views):
        """Per view, the list of branch outputs [(U+I), d] in branch order (see ``propagate``)."""
        wide = self.propagate(views)
        return [list(view.split(self.dim, dim=1)) for view in wide.split(self.num_branch * self.dim, dim=1)]

    def _mmgcn_branches(self, dropout, masked, nodes=None, plan=None):
        id_branch = self.encoder.id_embedding
        if masked == 0:
            id_branch = torch.cat([id_branch[:self.num_user], torch.zeros_like(id_branch[self.num_user:])])
        if nodes is not None:
            id_branch = take_rows(id_branch, nodes)
        masked_modality = self.modalities[masked - 1] if masked else None
        return [id_branch] + self.encoder.modality_outputs(dropout, masked_modality, plan)

    def fuse(self, user_rows, item_rows):
        """``(z_u, z_i)`` from one view's pre-fusion rows [n, B*d] (branches side by side)."""
        if self.fusion == 'mean':
            user_rows = user_rows.view(len(user_rows), self.num_branch, self.dim).mean(1)
            item_rows = item_rows.view(len(item_rows), self.num_branch, self.dim).mean(1)
        return self.fuse_user(user_rows), self.fuse_item(item_rows)

    def forward(self):
        """Fused representations ``(z_user [U, d], z_item [I, d])`` of the plain view."""
        if self.backbone == 'mmgcn':
            wide = self.propagate([(0.0, None)])
        else:
            wide = self.join_branches(*self.plain_parts())
        return self.fuse(wide[:self.num_user], wide[self.num_user:])

    # ------------------------------------------------------------------ losses

    def loss(self, users, items):
        """Total loss of one batch of (user, positive item) pairs, and its parts."""
        first, second = self.masked_pair() if 'FM' in self.ssl_task else (None, None)
        # Only the batch's rows are needed: the last layer is computed for them alone.
        views = self.view_rows(torch.cat([users, items + self.num_user]), first, second)
        user_views = [view[:len(users)] for view in views]
        item_views = [view[len(users):] for view in views]
        if 'FM' in self.ssl_task and self.fm_views == 'official' and self.backbone == 'lightgcn':
            user_views = [user_views[0], user_views[2], user_views[1]]   # users' X⁰ agree: their rows swap
            item_views = [item_views[0], *self.cross_fm_views(item_views[1:], items, first, second)]
        z_u, z_i = self.fuse(user_views[0], item_views[0])
        main = info_nce(F.normalize(z_u, dim=1), F.normalize(z_i, dim=1), self.temp)
        if self.ssl_task == 'none':
            return main, {'main': main.item()}
        if self.ssl_task == 'FAC':
            ssl = self.fac_loss(item_views[0].split(self.dim, dim=1))
        else:
            u1, i1 = self.fuse(user_views[1], item_views[1])
            u2, i2 = self.fuse(user_views[2], item_views[2])
            ssl = (info_nce(F.normalize(u1, dim=1), F.normalize(u2, dim=1), self.ssl_temp)
                   + info_nce(F.normalize(i1, dim=1), F.normalize(i2, dim=1), self.ssl_temp))
        return main + self.ssl_alpha * ssl, {'main': main.item(), 'ssl': ssl.item()}

    def masked_pair(self):
        """FM's two different masked branches, drawn uniformly among all branches (``id`` included)."""
        first, second = torch.randperm(self.num_branch)[:2].tolist()
        return first, second

    def cross_fm_views(self, item_views, items, first, second):
        """The official FM views (SPEC 3.3) at the batch's items, from the two clean ones.

        Clean view v is ``mean(X⁰₍v₎, Â X⁰₍v₎, …)``; the official view 1 is
        ``mean(X⁰₍₁₎, Â X⁰₍₂₎, …) = clean view 2 + (X⁰₍₁₎ − X⁰₍₂₎) / (L+1)``, view 2
        the reverse.  The inputs differ only on the item rows of the masked
        branches (``X⁰₍₁₎ − X⁰₍₂₎`` is ``−S_b₁`` in branch b₁, ``+S_b₂`` in b₂): the user
        rows simply swap, which the caller does.  Layer 0 is never dropped, so
        this holds for FD+FM's dropout views too.
        """
        d, scale = self.dim, 1.0 / (self.num_layer + 1)
        delta = item_views[0].new_zeros(item_views[0].shape)
        delta[:, first * d:(first + 1) * d] = -self.item_side_rows(first, items) * scale
        delta[:, second * d:(second + 1) * d] = self.item_side_rows(second, items) * scale
        return [item_views[1] + delta, item_views[0] - delta]

    def fm_views_per_branch(self, rows, first, second):
        """The readable reference of the official FM views (SPEC 3.3), what ``cross_fm_views`` computes:
        every branch propagated, each view's layer 0 from its own mask and its layers 1..L from the other's

            view 1 = mean(X⁰₍₁₎, Â X⁰₍₂₎, …, Â^L X⁰₍₂₎),   view 2 = mean(X⁰₍₂₎, Â X⁰₍₁₎, …, Â^L X⁰₍₁₎)

        as pre-fusion rows [len(rows), B·d] at the node rows ``rows`` (no dropout: FM)."""
        sides = self.item_sides()

        def inputs(masked):
            items = torch.cat([torch.zeros_like(side) if b == masked else side for b, side in enumerate(sides)], 1)
            return torch.cat([self.embedding_user.weight.repeat(1, self.num_branch), items])
        views = []
        for own, other in ((first, second), (second, first)):
            layers, x = [inputs(own)], inputs(other)
            for _ in range(self.num_layer):
                x = torch.sparse.mm(self.adj, x)
                layers.append(x)
            views.append(take_rows(sum(layers) / (self.num_layer + 1), rows))
        return views

    def fac_loss(self, item_branches):
        """FAC (SPEC 3.3): ``x_1 = g(id)``, ``x_s = g(x_{s-1})``, ``y_s = g'(m_s)``; no normalisation."""
        x, total = item_branches[0], 0.0
        for s, (head_x, head_y) in enumerate(zip(self.fac_x, self.fac_y)):
            x = head_x(x)
            total = total + info_nce(x, head_y(item_branches[s + 1]), self.ssl_temp)
        return total

    # ------------------------------------------------------------------ official checkpoints

    def official_key_map(self):
        """Our state-dict key -> the official SLMRec key (SPEC 3.5)."""
        names = {'embedding_user.weight': 'embedding_user.weight',
                 'embedding_item.weight': 'embedding_item.weight'}
        for part in ('weight', 'bias'):
            names[f'fuse_user.{part}'] = f'embedding_user_after_GCN.{part}'
            names[f'fuse_item.{part}'] = f'embedding_item_after_GCN.{part}'
            for m in self.modalities:
                names[f'dense.{m}.{part}'] = f'{m}_dense.{part}'
            if self.ssl_task == 'FAC':
                prefix = 'i'
                for s, m in enumerate(self.modalities):
                    names[f'fac_x.{s}.{part}'] = f'g_{prefix}_{prefix + m}.{part}'
                    names[f'fac_y.{s}.{part}'] = f'g_{m}_{prefix + m}.{part}'
                    prefix += m
        for m in getattr(self, 'word_means', {}):
            names[f'word_means.{m}.weight'] = 'word_embedding.weight'
        return names


# The six FAC heads the official code creates whenever the task is FAC (stages i -> iv -> iva -> ivat).
OFFICIAL_FAC_HEADS = {f'g_{a}_{b}.{part}' for a, b in (('i', 'iv'), ('v', 'iv'), ('iv', 'iva'), ('a', 'iva'),
                                                        ('iva', 'ivat'), ('t', 'ivat'))
                      for part in ('weight', 'bias')}


def is_official_state_dict(state):
    return any(k.startswith('embedding_user_after_GCN.') for k in state)


def from_official_state_dict(model, state):
    """Rename an official SLMRec state dict to ``model``'s keys; unknown keys are an error."""
    if model.backbone != 'lightgcn':
        raise ValueError('official SLMRec checkpoints hold the lightgcn backbone; use --backbone lightgcn')
    reverse = {official: ours for ours, official in model.official_key_map().items()}
    converted, unknown = {}, []
    for key, value in state.items():
        head = re.match(r'g_(\w+)_(\w+)\.(weight|bias)$', key)
        if key in reverse:
            converted[reverse[key]] = value
        elif head and model.ssl_task != 'FAC':
            continue   # FAC heads are not part of a model trained with another task
        elif head and key in OFFICIAL_FAC_HEADS and head.group(2)[-1] not in model.modalities:
            continue   # SPEC 3.5: the official code made all six heads, also for a modality the data lacks
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f'unexpected official key {unknown[0]!r} (modalities here: {model.modalities})')
    return converted


# ---------------------------------------------------------------------- the registry entry (SPEC 5)

def build(args, data):
    """SLMRec for ``data``: the normalised graph ``Â`` (lightgcn backbone) or the plain one (mmgcn)."""
    n = data.num_user + data.num_item
    if args.backbone == 'mmgcn':
        adj = csr_adjacency(bipartite_edges(data.train, data.num_user), n)
    else:
        adj = normalized_adjacency(data.train, data.num_user, data.num_item)
    return SLMRec(data.num_user, data.num_item, data.features, adj, args.dim_latent, args.num_layer,
                  args.mm_fusion_mode, args.ssl_task, args.ssl_alpha, args.temp, args.ssl_temp,
                  args.dropout_rate, args.backbone, args.aggr_mode, args.concat, args.fm_views)


MODEL = ModelEntry(
    name='SLMRec', build=build, summary='in-batch InfoNCE plus a self-supervised task (SPEC 3)',
    # The published budget: 1000 epochs, early stopping by --patience (the default run on ML-100K stops
    # after about 45; README, Quick start).
    defaults=dict(l_r=0.01, weight_decay=1e-4, batch_size=2048, num_layer=3, num_epoch=1000, dropout_rate=0.3),
    flags=(
        Flag('ssl_task', 'FAC', 'self-supervised task', choices=SSL_TASKS),
        Flag('ssl_alpha', 0.1, 'weight of the SSL loss', type=float,
             check=lambda a: finite(a.ssl_alpha) and a.ssl_alpha >= 0, problem='must be a finite number >= 0'),
        Flag('ssl_temp', 0.2, 'temperature of the SSL losses', type=float,
             check=lambda a: finite(a.ssl_temp) and a.ssl_temp > 0, problem='must be a positive finite number'),
        Flag('temp', 0.2, 'temperature of the main InfoNCE', type=float,
             check=lambda a: finite(a.temp) and a.temp > 0, problem='must be a positive finite number'),
        Flag('mm_fusion_mode', 'concat', 'branch fusion', choices=FUSION_MODES),
        Flag('backbone', 'lightgcn', 'encoder', choices=BACKBONES),
        Flag('fm_views', 'official', "FM/FD+FM views: 'official' (each view's layer 0 from its own mask, its "
             "propagated layers from the other view's, as the official code) or 'clean' (its own mask at every "
             "layer; extension)", choices=FM_VIEWS),
    ),
    reads=('aggr_mode', 'concat'),
    adam_weight_decay=True,
    run_tag=lambda args: f'-{args.ssl_task}',
    official_weights=(is_official_state_dict, from_official_state_dict),
    rows={'FAC': ('SLMRec, FAC', ['--ssl_task', 'FAC']),
          'FD': ('SLMRec, FD', ['--ssl_task', 'FD']),
          'FM': ('SLMRec, FM', ['--ssl_task', 'FM']),
          'FD+FM': ('SLMRec, FD+FM', ['--ssl_task', 'FD+FM']),
          'none': ('SLMRec, no SSL task', ['--ssl_task', 'none']),
          'ID': ('ID only (LightGCN-style)', ['--ssl_task', 'none', '--modalities', 'none']),
          'FAC-tuned': ('SLMRec, FAC, tuned (sweep.py grid)', ['--ssl_task', 'FAC'])},
    lr_grid=(0.01, 0.001),
    # the published SLMRec grid (MMRec's lr x ssl_temp x ssl_alpha), run by sweep.py for the tuned row
    tuning_grid={'FAC-tuned': {'l_r': [0.01, 0.001], 'ssl_temp': [0.1, 0.2, 0.5], 'ssl_alpha': [0.01, 0.1, 0.5]}},
    # MMRec's SLMRec.yaml: ssl_alpha over {0.01, 0.05, 0.1, 0.5, 1}, learning_rate over {1e-4, ..., 0.1}
    search_grid=dict(l_r=[0.01, 0.001], ssl_alpha=[0.01, 0.1, 0.5, 1.0]),
)
