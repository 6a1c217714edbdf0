"""MMSSL (Wei et al., WWW 2023, "Multi-Modal Self-Supervised Learning for Recommendation"): modality-aware
user-item structure learned adversarially (a discriminator tells the modalities' user-item score rows from the
observed interactions), plus a cross-modal contrast (docs/models.md).

With ``R`` the binary training matrix [U, I], ``R̃ = D_u^-1/2 R`` and ``R̃ᵢ = D_i^-1/2 Rᵀ`` (each side
normalised by its own degrees only, as the authors' ``csr_norm(mean_flag=True)``), ``E_u, E_i``
xavier-uniform, per modality ``f_m = dropout(T_m(F_m))`` (``T_m`` a ``Linear``, dropout ``--dropout_rate``)
and the learned graph ``S_m`` (binary [U, I], the training matrix until it is first rebuilt):

    p_m = R̃ f_m,   q_m = R̃ᵢ p_m                                   modality user / item features
    a_m = S̃_m E_i,   b_m = S̃ᵢ_m E_u                                  modality ID views (S̃ normalised as R̃)
    u⁰ = E_u + γ normalise(mean_m(a_m) W),   i⁰ = E_i + γ normalise(mean_m(b_m) W)     (γ = --mmssl_id_cat_rate)
    u¹ = R̃ i⁰,  i¹ = R̃ᵢ u¹,  u² = softmax(R̃ i¹),  i² = softmax(R̃ᵢ u²)                 (softmax over the d columns)
    z_u = mean(u⁰, u¹, u²) + κ Σ_m normalise(p_m),   z_i = mean(i⁰, i¹, i²) + κ Σ_m normalise(q_m)   (κ 0.55)

``W = Σ_h W_cat,h`` is what the authors' multi-head self-attention computes (docs/models.md).  The score rows
of a batch's users, ``σ(x, y) = normalise((x[users] yᵀ) ⊙ (1 - R[users]))`` (training items zeroed), feed
the discriminator ``D(x) = 100 sigmoid(Lin(drop(BN(Lin(drop(BN(Lin x)))))))`` (widths I/4, I/8, 1):

    fake = [σ(p_m, q_m)]_m,   real = normalise(softmax(R[users] - c g / τ_r) + s σ(z_u, z_i)) (M copies)
    L_D  = -mean D(real) + mean D(fake) + λ_gp 0.3 mean(‖∇D(α real + (1-α) fake)‖ - 1)²    (g: Gumbel noise)

one discriminator step (Adam, --mmssl_d_lr, betas 0.5/0.9) before each batch's main step
(``batch_steps``, on a forward without gradient), then the main loss of (user, positive, negative):

    L = BPR(z) + λ ½(‖z_u‖² + ‖z_{i⁺}‖² + ‖z_{i⁻}‖²)/B + μ ½ Σ_m (‖p_m‖² + ‖q_m‖²)/I
        + β Σ_m GRACE(a_m[users], z_u[users]) - η mean D([σ(p_m, q_m)]_m)

(λ = --weight_decay, μ = --mmssl_feat_reg, β = --cl_weight, η = --mmssl_g_rate; AdamW at --l_r, decay 0.01).
Every ``--mmssl_graph_every`` (T) steps of an epoch (not at its first), ``S_m`` becomes the edges collected
since the last rebuild: each batch user's ``⌊I · --mmssl_topk_rate⌋`` best items by ``σ(p_m, q_m)``.

Fast path (``discriminator_loss`` and ``generator_term``; the plain formulas beside them): a fake row is a
rank-d score row with the user's few training items cut out, so D's first layer is
``(x (W₁ y)ᵀ - Σ_{i ∈ R[u]} (x·y_i) W₁[:, i]) / ‖·‖ + b₁`` with ``‖·‖² = x (yᵀy) xᵀ - Σ_{i ∈ R[u]} (x·y_i)²``,
never the dense [B, I] rows; the real rows' first layer is computed once for their M copies, and the
interpolation's as ``α h_real + (1 - α) h_fake`` (the layer is affine).
"""
import torch
from torch import nn
from torch.nn import functional as F

import distributed
from BaseModel import _RowMeanProduct, _quiet_csr, pair_tensors, row_submatrix, take_rows, transpose_csr
from model_LGMRec import interaction_matrices
from model_LightGCN import bpr_loss
from registry import Flag, ModelEntry, Recommender, at_least, finite, needs_modality, rate

HEADS = 4                  # the authors' head_num: the width of W_cat
GP_LAMBDA = 0.3            # the authors' LAMBDA inside gradient_penalty
ADAMW_DECAY = 0.01         # torch's AdamW default, which the authors' optimiser keeps
D_BETAS = (0.5, 0.9)       # the discriminator's Adam


def degree_normalized(users, items, num_user, num_item, dtype=torch.float32):
    """``(S̃ = D_u^-1/2 S, S̃ᵢ = D_i^-1/2 Sᵀ)`` as CSR from edge lists (duplicates add up, as SciPy's
    ``csr_matrix`` does); a row without edges stays zero."""
    with _quiet_csr():
        s = torch.sparse_coo_tensor(torch.stack([users, items]), torch.ones(len(users), device=users.device, dtype=dtype),
                                    (num_user, num_item), check_invariants=False).coalesce()
        (rows, cols), values = s.indices(), s.values()
        deg_u = values.new_zeros(num_user).index_add_(0, rows, values)
        deg_i = values.new_zeros(num_item).index_add_(0, cols, values)
        inv_u, inv_i = deg_u.clamp(min=1).rsqrt(), deg_i.clamp(min=1).rsqrt()
        user_side = torch.sparse_coo_tensor(s.indices(), values * inv_u[rows], s.shape,
                                            check_invariants=False).to_sparse_csr()
        item_side = torch.sparse_coo_tensor(s.indices().flip(0), values * inv_i[cols], (num_item, num_user),
                                            check_invariants=False).coalesce().to_sparse_csr()
    return user_side, item_side


def masked_scores(x, y, mask):
    """``σ``, the plain formula: ``normalise((x yᵀ) ⊙ (1 - mask))`` rows, dense [n, I] (``mask`` dense 0/1)."""
    return F.normalize((x @ y.t()) * (1 - mask), dim=1)


class _CutColumns(torch.autograd.Function):
    """``C Wᵀ`` [n, H] for the sparse C [n, I] holding ``cut`` at the (row, item) ``pairs`` (sorted by row, then
    item, as a coalesced block's): one sparse product, and in the backward ``Cᵀ g`` for W and ``g W`` at the pairs
    alone for ``cut`` (a sampled product), never a dense [n, I] or [pairs, H] matrix."""

    @staticmethod
    def forward(ctx, cut, weight, rows, items, n):
        crow = torch.cat([rows.new_zeros(1), torch.bincount(rows, minlength=n).cumsum(0)])
        with _quiet_csr():
            c = torch.sparse_csr_tensor(crow, items, cut, (n, weight.shape[1]), check_invariants=False)
        ctx.c = c
        ctx.save_for_backward(weight)
        return torch.sparse.mm(c, weight.t())

    @staticmethod
    def backward(ctx, grad):
        weight, = ctx.saved_tensors
        grad = grad.contiguous()
        with _quiet_csr():
            grad_cut = torch.sparse.sampled_addmm(ctx.c, grad, weight, beta=0).values()
            grad_weight = torch.sparse.mm(transpose_csr(ctx.c), grad).t()
        return grad_cut, grad_weight, None, None, None


def masked_scores_layer(x, y, pairs, weight, bias):
    """``Lin(σ)`` without σ: ``(x (W y)ᵀ - Σ_{(r, i) ∈ pairs} (x_r·y_i) W[:, i]) / ‖σ‖ + b`` [n, H], with
    ``‖σ_r‖² = x_r (yᵀy) x_rᵀ - Σ_i (x_r·y_i)²``; ``pairs`` the (row, item) of the mask's ones."""
    r, i = pairs
    cut = (take_rows(x, r) * take_rows(y, i)).sum(1)                  # the masked-out scores
    norm2 = ((x @ (y.t() @ y)) * x).sum(1) - x.new_zeros(len(x)).index_add(0, r, cut * cut)
    norm = norm2.clamp(min=1e-24).sqrt()                              # F.normalize's eps, 1e-12 on the norm
    proj = x @ (weight @ y).t() - _CutColumns.apply(cut, weight, r, i, len(x))
    # a row whose mask covers every item is zero (the subtraction above would leave only its rounding)
    kept = torch.bincount(r, minlength=len(x)) < y.shape[0]
    return proj * (kept / norm)[:, None] + bias


class Discriminator(nn.Module):
    """``D(x) = 100 sigmoid(...)``: Linear(I → I/4), BatchNorm, dropout, Linear(→ I/8), BatchNorm, dropout,
    Linear(→ 1) (the authors' ``LeakyReLU(True)`` has slope 1: no activation); kaiming-normal weights, zero
    biases (the authors' ``weights_init``)."""

    def __init__(self, num_item, drop1=0.31, drop2=0.5):
        super().__init__()
        wide, narrow = num_item // 4, num_item // 8
        self.first, self.second, self.last = nn.Linear(num_item, wide), nn.Linear(wide, narrow), nn.Linear(narrow, 1)
        # batch statistics always (the authors' D never leaves training mode): no running statistics to keep
        self.norm1 = nn.BatchNorm1d(wide, track_running_stats=False)
        self.norm2 = nn.BatchNorm1d(narrow, track_running_stats=False)
        self.drop1, self.drop2 = drop1, drop2
        for layer in (self.first, self.second, self.last):
            nn.init.kaiming_normal_(layer.weight)
            nn.init.zeros_(layer.bias)

    def rest(self, h):
        """D after its first layer's pre-activation ``h``."""
        h = F.dropout(self.norm1(h), self.drop1, self.training)
        h = F.dropout(self.norm2(self.second(h)), self.drop2, self.training)
        return 100 * torch.sigmoid(self.last(h)).view(-1)

    def forward(self, x):
        return self.rest(self.first(x))


def grace(z1, z2, temperature):
    """The authors' ``batched_contrastive_loss``: mean over rows r of
    ``-log(e(z1_r, z2_r) / (Σ_j e(z1_r, z1_j) + Σ_j e(z1_r, z2_j) - e(z1_r, z1_r)) + 1e-8)``, ``e = exp(cos / τ)``."""
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    refl, between = torch.exp(a @ a.t() / temperature), torch.exp(a @ b.t() / temperature)
    ratio = between.diagonal() / (refl.sum(1) + between.sum(1) - refl.diagonal())
    return -torch.log(ratio + 1e-8).mean()


class MMSSL(Recommender):
    """MMSSL with its discriminator and learned modality graphs.

    Args:
        num_user, num_item: sizes.
        features: modality -> float array [num_item, f] or ``DataLoad.WordFeature`` (at least one).
        train: [E, 2] training (user, item) pairs.
        dim_latent: ``d`` (64).  num_layer: user-item layers (2, the authors' len(weight_size)).
        batch_size: ``B`` of the λ term (the authors divide by the nominal batch size).
        dropout: on ``T_m(F_m)`` (0.2).  reg_weight: ``λ`` (1e-5).  cl_weight: ``β`` (0.03).  temperature (0.5).
        feat_reg, g_rate, gp_rate, d_drop1, d_drop2, real_tau, ui_pre_scale, log_log_scale, graph_every,
        topk_rate, id_cat_rate, model_cat_rate: the authors' feat_reg_decay, G_rate, gp_rate, G_drop1,
        G_drop2, real_data_tau, ui_pre_scale, log_log_scale, T, m_topk_rate, id_cat_rate, model_cat_rate.
        fast: the discriminator's first layer on the fake rows without the dense rows (module docstring).
    """

    needs_negatives = True
    resizable_buffers = ()

    def __init__(self, num_user, num_item, features, train, dim_latent=64, num_layer=2, batch_size=1024,
                 dropout=0.2, reg_weight=1e-5, cl_weight=0.03, temperature=0.5, feat_reg=1e-5, g_rate=1e-4,
                 gp_rate=1.0, d_drop1=0.31, d_drop2=0.5, real_tau=0.005, ui_pre_scale=100.0, log_log_scale=1e-5,
                 graph_every=1, topk_rate=1e-4, id_cat_rate=0.36, model_cat_rate=0.55, fast=True):
        super().__init__()
        if not features:
            raise ValueError('MMSSL needs at least one modality')
        self.num_user, self.num_item, self.num_layer, self.batch_size = num_user, num_item, num_layer, batch_size
        self.dropout, self.reg_weight, self.cl_weight, self.temperature = dropout, reg_weight, cl_weight, temperature
        self.feat_reg, self.g_rate, self.gp_rate, self.real_tau = feat_reg, g_rate, gp_rate, real_tau
        self.ui_pre_scale, self.log_log_scale, self.graph_every = ui_pre_scale, log_log_scale, graph_every
        self.topk = int(num_item * topk_rate)
        self.id_cat_rate, self.model_cat_rate, self.fast = id_cat_rate, model_cat_rate, fast
        self.modalities = list(features)
        self.step_in_epoch = 0
        users, items = pair_tensors(train)
        self.register_buffer('inter', interaction_matrices(train, num_user, num_item)[0], persistent=False)
        user_side, item_side = degree_normalized(users, items, num_user, num_item)
        self.register_buffer('ui', user_side, persistent=False)
        self.register_buffer('ui_t', transpose_csr(user_side), persistent=False)
        self.register_buffer('iu', item_side, persistent=False)
        self.register_buffer('iu_t', transpose_csr(item_side), persistent=False)
        self.embedding_user = nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_user, dim_latent)))
        self.embedding_item = nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_item, dim_latent)))
        widths = self.register_item_features(features)            # raw features, frozen (as the authors')
        self.transforms = nn.ModuleDict({m: nn.Linear(widths[m], dim_latent) for m in self.modalities})
        for layer in self.transforms.values():
            nn.init.xavier_uniform_(layer.weight)
        self.attention_cat = nn.Parameter(nn.init.xavier_uniform_(torch.empty(HEADS * dim_latent, dim_latent)))
        self.discriminator = Discriminator(num_item, d_drop1, d_drop2)
        # S_m as (user, item) edge lists: the training pairs until the first rebuild; the edges collected since
        self.resizable_buffers = tuple(f'{kind}_{m}' for m in self.modalities for kind in ('learned', 'pending'))
        for m in self.modalities:
            self.register_buffer(f'learned_{m}', torch.stack([users, items]))
            self.register_buffer(f'pending_{m}', torch.zeros(2, 0, dtype=torch.long))

    # ------------------------------------------------------------------ encoder

    def _ui(self, x):
        return _RowMeanProduct.apply(x, self.ui, self.ui_t)          # R̃ x

    def _iu(self, x):
        return _RowMeanProduct.apply(x, self.iu, self.iu_t)          # R̃ᵢ x

    def encode(self):
        """``(z_u, z_i, {m: (p_m, q_m)}, {m: a_m})``."""
        item_views, user_views, modal, ids = [], [], {}, {}
        for m in self.modalities:
            f = F.dropout(self.transforms[m](self.item_input(m)), self.dropout, self.training)
            p = self._ui(f)
            modal[m] = (p, self._iu(p))
            learned = getattr(self, f'learned_{m}')
            s_user, s_item = degree_normalized(learned[0], learned[1], self.num_user, self.num_item,
                                               self.embedding_user.dtype)
            ids[m] = torch.sparse.mm(s_user, self.embedding_item)
            user_views.append(ids[m])
            item_views.append(torch.sparse.mm(s_item, self.embedding_user))
        w = self.attention_cat.view(HEADS, -1, self.attention_cat.shape[1]).sum(0)        # Σ_h W_cat,h
        user = self.embedding_user + self.id_cat_rate * F.normalize(torch.stack(user_views).mean(0) @ w, dim=1)
        item = self.embedding_item + self.id_cat_rate * F.normalize(torch.stack(item_views).mean(0) @ w, dim=1)
        users, items = [user], [item]
        for layer in range(self.num_layer):
            last = layer == self.num_layer - 1
            user = self._ui(item)
            user = torch.softmax(user, dim=1) if last else user
            item = self._iu(user)
            item = torch.softmax(item, dim=1) if last else item
            users.append(user)
            items.append(item)
        z_user = torch.stack(users).mean(0) + self.model_cat_rate * sum(F.normalize(p, dim=1) for p, _ in modal.values())
        z_item = torch.stack(items).mean(0) + self.model_cat_rate * sum(F.normalize(q, dim=1) for _, q in modal.values())
        return z_user, z_item, modal, ids

    def forward(self):
        z_user, z_item, _, _ = self.encode()
        return z_user, z_item

    # ------------------------------------------------------------------ the adversarial structure learning

    def extra_optimizers(self, args):
        return {'discriminator': torch.optim.Adam(self.discriminator.parameters(), lr=args.mmssl_d_lr,
                                                  betas=D_BETAS)}

    def batch_rows(self, users):
        """``(R[users] dense [B, I], (row, item) of its ones)``: a batch of rows, never all users."""
        block = row_submatrix(self.inter, users)[0]
        return block.to_dense(), tuple(block.to_sparse_coo().indices())

    def real_rows(self, mask, z_user, z_item, users):
        """``normalise(softmax(R[u] - c g / τ_r) + s σ(z_u, z_i))`` [B, I], ``g = log(-log(U + 1e-8) + 1e-8)``
        (as the authors' code: τ_r divides the noise only, so the softmax is nearly flat, a training item
        weighing e ≈ 2.7 times another)."""
        gumbel = torch.log(-torch.log(torch.rand_like(mask) + 1e-8) + 1e-8)
        soft = torch.softmax(mask - self.log_log_scale * gumbel / self.real_tau, dim=1)
        return F.normalize(soft + self.ui_pre_scale * masked_scores(z_user[users], z_item, mask), dim=1)

    def fake_layer(self, modal, users, mask, pairs, weight, bias):
        """D's first layer on the fake rows ``[σ(p_m, q_m)]_m`` [M B, H]: the fast path or the plain formula."""
        if self.fast:
            return torch.cat([masked_scores_layer(p[users], q, pairs, weight, bias) for p, q in modal.values()])
        return F.linear(torch.cat([masked_scores(p[users], q, mask) for p, q in modal.values()]), weight, bias)

    def discriminator_loss(self, users):
        """``L_D`` on a forward without gradient (the authors' order of draws: that forward's dropout, D on the
        fake rows, the Gumbel noise, D on the real rows, α, D on the interpolation)."""
        with torch.no_grad():
            z_user, z_item, modal, _ = self.encode()
        mask, pairs = self.batch_rows(users)
        d, copies = self.discriminator, len(self.modalities)
        fake_h = self.fake_layer(modal, users, mask, pairs, d.first.weight, d.first.bias)
        fake = d.rest(fake_h).mean()
        real_x = self.real_rows(mask, z_user, z_item, users)
        if self.fast:
            real_h = d.first(real_x).repeat(copies, 1)                  # the M copies' first layer, once
        else:
            real_h = d.first(real_x.repeat(copies, 1))
        real = d.rest(real_h).mean()
        alpha = torch.rand(len(real_h), 1, device=real_h.device, dtype=real_h.dtype)
        if self.fast:                                                   # the first layer is affine
            mixed_h = alpha * real_h + (1 - alpha) * fake_h
            grad_h, = torch.autograd.grad(d.rest(mixed_h).sum(), mixed_h, create_graph=True)
            grad = grad_h @ d.first.weight
        else:
            fake_x = torch.cat([masked_scores(p[users], q, mask) for p, q in modal.values()])
            mixed = (alpha * real_x.repeat(copies, 1) + (1 - alpha) * fake_x).requires_grad_()
            grad, = torch.autograd.grad(d(mixed).sum(), mixed, create_graph=True)
        penalty = GP_LAMBDA * (grad.norm(dim=1) - 1).square().mean()
        loss = -real + fake + self.gp_rate * penalty
        return loss, {'d_loss': loss.item(), 'gp': penalty.item()}

    def batch_steps(self, users, pos, neg):
        yield ('discriminator', *self.discriminator_loss(users))

    def generator_term(self, modal, users, mask, pairs):
        """``mean D([σ(p_m, q_m)]_m)`` with gradient to the model (D's first layer held fixed on the fast path:
        its gradient is never used, the discriminator's step zeroes it)."""
        d = self.discriminator
        if self.fast:
            return d.rest(self.fake_layer(modal, users, mask, pairs, d.first.weight.detach(), d.first.bias.detach())).mean()
        return d(torch.cat([masked_scores(p[users], q, mask) for p, q in modal.values()])).mean()

    def on_epoch_start(self):
        self.step_in_epoch = 0

    @torch.no_grad()
    def update_graphs(self, modal, users, mask):
        """The structure step after a batch's forward: every T-th step (not an epoch's first) ``S_m`` becomes the
        collected edges, else the batch users' top items by ``σ(p_m, q_m)`` are collected (all ranks' users)."""
        step, self.step_in_epoch = self.step_in_epoch, self.step_in_epoch + 1
        for m, (p, q) in modal.items():
            if step % self.graph_every == 0 and step != 0:
                setattr(self, f'learned_{m}', getattr(self, f'pending_{m}'))
                setattr(self, f'pending_{m}', getattr(self, f'pending_{m}').new_zeros(2, 0))
            elif self.topk > 0:
                items = masked_scores(p[users], q, mask).topk(self.topk, dim=1).indices
                edges = torch.stack([users.repeat_interleave(self.topk), items.reshape(-1)], dim=1)
                edges = distributed.gather_rows(edges).t()
                setattr(self, f'pending_{m}', torch.cat([getattr(self, f'pending_{m}'), edges], dim=1))

    def loss(self, users, pos, neg):
        """BPR with its λ term, the feature term, the ID views' contrast and the adversarial term."""
        z_user, z_item, modal, ids = self.encode()
        mask, pairs = self.batch_rows(users)
        if self.training:                      # a training step's structure update; a loss in eval mode changes nothing
            self.update_graphs(modal, users, mask)
        u, p, n = take_rows(z_user, users), take_rows(z_item, pos), take_rows(z_item, neg)
        bpr = bpr_loss(u, p, n)
        reg = 0.5 * (u.square().sum() + p.square().sum() + n.square().sum()) / self.batch_size
        feat = 0.5 * sum(a.square().sum() + b.square().sum() for a, b in modal.values()) / self.num_item
        cl = sum(grace(take_rows(ids[m], users), u, self.temperature) for m in self.modalities)
        adversarial = self.generator_term(modal, users, mask, pairs)
        loss = (bpr + self.reg_weight * reg + self.feat_reg * feat + self.cl_weight * cl
                - self.g_rate * adversarial)
        return loss, {'bpr': bpr.item(), 'reg': reg.item(), 'feat': feat.item(), 'cl': cl.item(),
                      'g': adversarial.item()}


# ---------------------------------------------------------------------- the registry entry (SPEC 5)

def build(args, data):
    needs_modality('MMSSL', data)
    if data.num_item < 8:
        raise ValueError(f'MMSSL needs at least 8 items (its discriminator is {data.num_item} → I/4 → I/8 wide)')
    return MMSSL(data.num_user, data.num_item, data.features, data.train, args.dim_latent, args.num_layer,
                 batch_size=args.batch_size, dropout=args.dropout_rate, reg_weight=args.weight_decay,
                 cl_weight=args.cl_weight, temperature=args.cl_temp, feat_reg=args.mmssl_feat_reg,
                 g_rate=args.mmssl_g_rate, gp_rate=args.mmssl_gp_rate, d_drop1=args.mmssl_d_drop1,
                 d_drop2=args.mmssl_d_drop2, real_tau=args.mmssl_real_tau, ui_pre_scale=args.mmssl_ui_pre_scale,
                 log_log_scale=args.mmssl_log_log_scale, graph_every=args.mmssl_graph_every,
                 topk_rate=args.mmssl_topk_rate, id_cat_rate=args.mmssl_id_cat_rate,
                 model_cat_rate=args.mmssl_model_cat_rate)


def adamw(args, params):
    """The authors' main optimiser: AdamW at --l_r with torch's default decay 0.01."""
    return torch.optim.AdamW(params, lr=args.l_r, weight_decay=ADAMW_DECAY)


MODEL = ModelEntry(
    name='MMSSL', build=build, summary='adversarial modality-aware structure learning plus cross-modal contrast, '
                                       'BPR (docs/models.md)',
    # HKUDS/MMSSL (commit f8d8955) README: python ./main.py --dataset Tiktok, i.e. MMSSL/utility/parser.py's
    # defaults: lr 0.00055 (AdamW, torch's decay 0.01), batch 1024, embed 64, weight_size [64, 64],
    # regs[0] 1e-5 (the λ term), drop_rate 0.2, cl_rate 0.03, tau 0.5, D_lr 3e-4, G_rate 1e-4, gp_rate 1,
    # G_drop1 0.31, G_drop2 0.5, real_data_tau 0.005, ui_pre_scale 100, log_log_scale 1e-5, T 1,
    # m_topk_rate 1e-4, id_cat_rate 0.36, model_cat_rate 0.55, feat_reg_decay 1e-5, head_num 4, epoch 1000;
    # early stopping after 8 evaluations without validation improvement (run it with --patience 8 --topK 20)
    defaults=dict(l_r=0.00055, weight_decay=1e-5, batch_size=1024, num_layer=2, num_epoch=1000, dropout_rate=0.2,
                  cl_weight=0.03, cl_temp=0.5),
    # its README gives one command per dataset (parser.py's lr 0.00055, cl_rate 0.03): those values and their
    # neighbours on a log scale
    search_grid=dict(l_r=[0.001, 0.00055], cl_weight=[0.01, 0.03, 0.1]),
    flags=(
        Flag('cl_temp', None, 'temperature of the contrast (per model)', type=float,
             check=lambda a: a.cl_temp is None or (finite(a.cl_temp) and a.cl_temp > 0),
             problem='must be a positive finite number'),
        Flag('mmssl_d_lr', 3e-4, "the discriminator's Adam learning rate (the authors' D_lr)",
             **at_least('mmssl_d_lr', strict=True)),
        Flag('mmssl_g_rate', 1e-4, 'weight η of the adversarial term in the main loss (G_rate)',
             **at_least('mmssl_g_rate')),
        Flag('mmssl_gp_rate', 1.0, 'weight of the gradient penalty (gp_rate)', **at_least('mmssl_gp_rate')),
        Flag('mmssl_d_drop1', 0.31, "the discriminator's first dropout (G_drop1)", **rate('mmssl_d_drop1')),
        Flag('mmssl_d_drop2', 0.5, "the discriminator's second dropout (G_drop2)", **rate('mmssl_d_drop2')),
        Flag('mmssl_real_tau', 0.005, 'temperature τ_r of the real rows\' softmax (real_data_tau)',
             **at_least('mmssl_real_tau', strict=True)),
        Flag('mmssl_ui_pre_scale', 100.0, "weight s of the model's score row in the real rows (ui_pre_scale)",
             **at_least('mmssl_ui_pre_scale')),
        Flag('mmssl_log_log_scale', 1e-5, "weight c of the real rows' Gumbel noise (log_log_scale)",
             **at_least('mmssl_log_log_scale')),
        Flag('mmssl_graph_every', 1, 'steps T between rebuilds of the learned graphs (T)', type=int,
             check=lambda a: 1 <= a.mmssl_graph_every <= 10 ** 6, problem='must be in [1, 10**6]'),
        Flag('mmssl_topk_rate', 1e-4, 'share of the items each batch user contributes to a learned graph '
             '(m_topk_rate; ⌊I × rate⌋ items, 0 on TikTok)', **rate('mmssl_topk_rate')),
        Flag('mmssl_id_cat_rate', 0.36, 'weight γ of the modality ID views (id_cat_rate)',
             **at_least('mmssl_id_cat_rate')),
        Flag('mmssl_model_cat_rate', 0.55, 'weight κ of the modality features (model_cat_rate)',
             **at_least('mmssl_model_cat_rate')),
        Flag('mmssl_feat_reg', 1e-5, 'weight μ of the modality features\' squared norms (feat_reg_decay)',
             **at_least('mmssl_feat_reg')),
    ),
    reads=('dropout_rate', 'cl_weight'),
    optimizer=adamw,
    exact_split=False,
    lr_grid=(0.00055,),
)
