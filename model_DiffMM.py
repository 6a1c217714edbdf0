"""DiffMM (Jiang et al., ACM MM 2024, "DiffMM: Multi-Modal Diffusion Model for Recommendation"): per-modality
user-item graphs rebuilt each epoch by a diffusion model over the users' interaction rows, a modality-aware
graph encoder, BPR and cross-modal contrast (docs/models.md).

With ``R`` the binary training matrix [U, I], ``Â = D^-1/2 (A + I) D^-1/2`` (the bipartite graph with
self-loops), ``E = [E_u ; E_i]`` xavier-uniform and per modality ``f_m = normalise(T_m(F_m))`` (``T_m`` a
``Linear``, or ``leaky_relu(F_m W_m)`` with ``--diffmm_trans leaky``):

    h_m   = Â [E_u ; f_m] + Â [(Â [E_u ; f_m])_users ; E_i] + λ_adj G_m E         (λ_adj = --diffmm_ris_adj_lambda)
    x     = Σ_m softmax(w)_m h_m,     z = Σ_{l=0..L} Â^l x + λ normalise(x)       (λ = --diffmm_ris_lambda, L 1)
    v_m   = Σ_{l=0..L} Â^l G_m [E_u ; f_m]                                         (the modality views)

Loss of a batch of (user, positive, sampled negative), with ``C(a, b, n) = -mean_r log softmax_j(â_r·b̂_j/τ)``
at ``j = r`` over every row ``j`` of ``b`` (users or items) for the batch's nodes ``r``:

    L = -Σ log σ(z_u·z_{i⁺} - z_u·z_{i⁻}) / B + λ_reg (‖E_u‖² + ‖E_i‖²)
        + β Σ_m [C(z_user, v_m user, u) + C(z_item, v_m item, i⁺)]                (--diffmm_cl main; β --cl_weight)

The graphs ``G_m`` come from the diffusion model (``epoch_steps``, before each epoch's batches): per modality a
denoiser ``f_θm`` (an MLP over a user's interaction row with a sinusoidal step embedding) trains for one pass
over all users, in batches of rows ``x_0 = R[users]`` (a batch of users × all items, never all users):

    x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε,   t ~ U{0..T-1},   ε ~ N(0, I)
    L_diff = mean_rows w_t mean_items (x_0 - f_θm(x_t, t))²  +  e · mean_rows mean_d (f_θm(x_t, t) T_m(F_m) - x_0 E_i)²

(``w_t = SNR(t-1) - SNR(t)``, 1 at t = 0; ``T_m(F_m)`` and ``E_i`` held fixed).  Then every user's row is
denoised from ``x_0`` (T steps of the posterior mean), its ``--diffmm_rebuild_k`` best items become its edges in
``G_m = D^-1/2 (A_m + I) D^-1/2``, and each entry of ``G_m`` is kept with probability 1 - ρ (``--dropout_rate``
ρ 0.5, kept entries scaled by 1/(1 - ρ)), as the authors' code: the dropped graph serves the epoch's batches and
its evaluation.  Every draw is torch's seeded RNG; the graphs are persistent buffers (resume, best model).
"""
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from BaseModel import (_RowMeanProduct, normalized_adjacency, propagate_layers, row_submatrix, symmetric_norm,
                       take_rows, with_self_loops)
from model_LGMRec import hyper_contrast, interaction_matrices
from registry import Flag, ModelEntry, Recommender, at_least, finite, needs_modality

TIME_DIM = 10              # the authors' d_emb_size
DENOISER_DROPOUT = 0.5     # the authors' Denoise(dropout=0.5) on its input, in training


def diffusion_schedule(steps, noise_scale, noise_min, noise_max):
    """``{name: float64 array [steps]}``: ``sqrt_ab``, ``sqrt_1m_ab`` (of ``ᾱ_t``), the posterior mean's
    ``coef_out`` and ``coef_x`` and the loss weight ``w_t = SNR(t-1) - SNR(t)`` (1 at t = 0); β_0 = 1e-4."""
    variance = np.linspace(noise_scale * noise_min, noise_scale * noise_max, steps, dtype=np.float64)
    alpha_bar = 1 - variance
    betas = np.array([1 - alpha_bar[0]] + [min(1 - alpha_bar[i] / alpha_bar[i - 1], 0.999) for i in range(1, steps)])
    betas[0] = 0.0001                                   # the authors' beta_fixed
    ab = np.cumprod(1 - betas)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    snr = ab / (1 - ab)
    return {'sqrt_ab': np.sqrt(ab), 'sqrt_1m_ab': np.sqrt(1 - ab),
            'coef_out': betas * np.sqrt(ab_prev) / (1 - ab), 'coef_x': (1 - ab_prev) * np.sqrt(1 - betas) / (1 - ab),
            'weight': np.concatenate([[1.0], snr[:-1] - snr[1:]])}


class Denoiser(nn.Module):
    """``f_θ(x, t)``: ``out(tanh(in([dropout(x) ‖ emb(t)])))``, ``emb(t) = Linear([cos(t ω) ‖ sin(t ω)])`` with
    ``ω_k = 10000^(-k/(D/2))``; weights ~ N(0, 2/(fan_in + fan_out)), biases ~ N(0, 1e-6) (the authors' init)."""

    def __init__(self, num_item, hidden=1000, time_dim=TIME_DIM):
        super().__init__()
        self.time_dim = time_dim
        self.time_layer = nn.Linear(time_dim, time_dim)
        self.in_layer = nn.Linear(num_item + time_dim, hidden)
        self.out_layer = nn.Linear(hidden, num_item)
        for layer in (self.in_layer, self.out_layer, self.time_layer):
            out_dim, in_dim = layer.weight.shape
            nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0 / (in_dim + out_dim)))
            nn.init.normal_(layer.bias, 0.0, 0.001)

    def time_embedding(self, t, like):
        half = self.time_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=like.dtype, device=like.device) / half)
        angles = t[:, None].to(like.dtype) * freqs[None]
        emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
        if self.time_dim % 2:
            emb = torch.cat([emb, emb.new_zeros(len(emb), 1)], dim=1)
        return emb

    def forward(self, x, t, drop=True):
        emb = self.time_layer(self.time_embedding(t, x))
        if drop:
            x = F.dropout(x, DENOISER_DROPOUT, self.training)
        return self.out_layer(torch.tanh(self.in_layer(torch.cat([x, emb], dim=1))))


class DiffMM(Recommender):
    """DiffMM over a fixed user-item graph, with one diffusion model per modality.

    Args:
        num_user, num_item: sizes.
        features: modality -> float array [num_item, f] or ``DataLoad.WordFeature`` (at least one).
        train: [E, 2] training (user, item) pairs.
        dim_latent: ``d`` (64).  num_layer: ``L`` (1, the authors' gnn_layer).
        batch_size: ``B`` of the BPR sum (the authors divide by the nominal batch size) and of the diffusion passes.
        reg_weight: ``λ_reg`` (``--weight_decay``, 1e-4 on TikTok).  cl_weight: ``β`` (1e-2).  temperature: ``τ`` (0.5).
        keep: 1 - ρ, the share of ``G_m``'s entries kept (0.5).
        trans: 'linear' (``nn.Linear``, TikTok) or 'leaky' (``leaky_relu(F W)``, Baby).
        cl: 'main' (each view against the main embeddings, TikTok) or 'modalities' (each pair of views).
        steps, noise_scale, noise_min, noise_max, sampling_steps, hidden, e_loss, ris_lambda, ris_adj_lambda,
        rebuild_k: the diffusion model's (the authors' names).
    """

    needs_negatives = True
    resizable_buffers = ()          # set per instance: each modality's graph entries

    def __init__(self, num_user, num_item, features, train, dim_latent=64, num_layer=1, batch_size=1024,
                 reg_weight=1e-4, cl_weight=1e-2, temperature=0.5, keep=0.5, trans='linear', cl='main', steps=5,
                 noise_scale=0.1, noise_min=0.0001, noise_max=0.02, sampling_steps=0, hidden=1000, e_loss=0.1,
                 ris_lambda=0.5, ris_adj_lambda=0.2, rebuild_k=1):
        super().__init__()
        if not features:
            raise ValueError('DiffMM needs at least one modality')
        self.num_user, self.num_item, self.num_layer, self.batch_size = num_user, num_item, num_layer, batch_size
        self.reg_weight, self.cl_weight, self.temperature, self.keep = reg_weight, cl_weight, temperature, keep
        self.trans, self.cl, self.steps, self.sampling_steps = trans, cl, steps, sampling_steps
        self.e_loss, self.ris_lambda, self.ris_adj_lambda, self.rebuild_k = e_loss, ris_lambda, ris_adj_lambda, rebuild_k
        self.modalities = list(features)
        self.register_buffer('adj', normalized_adjacency(train, num_user, num_item, self_loops=True), persistent=False)
        self.register_buffer('inter', interaction_matrices(train, num_user, num_item)[0], persistent=False)
        for name, values in diffusion_schedule(steps, noise_scale, noise_min, noise_max).items():
            self.register_buffer(f'schedule_{name}', torch.as_tensor(values, dtype=torch.float32), persistent=False)
        self.embedding_user = nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_user, dim_latent)))
        self.embedding_item = nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_item, dim_latent)))
        widths = self.register_item_features(features)             # raw features, frozen (as the authors')
        if trans == 'linear':
            self.transforms = nn.ModuleDict({m: nn.Linear(widths[m], dim_latent) for m in self.modalities})
        else:
            self.transforms = nn.ParameterDict({m: nn.Parameter(nn.init.xavier_uniform_(torch.empty(widths[m], dim_latent)))
                                                for m in self.modalities})
        self.modal_weight = nn.Parameter(torch.full((len(self.modalities),), 1.0 / len(self.modalities)))
        self.denoisers = nn.ModuleDict({m: Denoiser(num_item, hidden) for m in self.modalities})
        # G_m as (indices [2, nnz], values [nnz]); empty until the first epoch rebuilds it
        self.resizable_buffers = tuple(f'graph_{m}_{part}' for m in self.modalities for part in ('index', 'value'))
        for m in self.modalities:
            self.register_buffer(f'graph_{m}_index', torch.zeros(2, 0, dtype=torch.long))
            self.register_buffer(f'graph_{m}_value', torch.zeros(0))

    # ------------------------------------------------------------------ encoder

    def modality_items(self, m):
        """``T_m(F_m)`` [I, d], before the normalisation (what the diffusion's e-loss reads)."""
        if self.trans == 'linear':
            return self.transforms[m](self.item_input(m))
        return F.leaky_relu(self.item_input(m) @ self.transforms[m], 0.2)

    def graph(self, m):
        """``G_m`` as a sparse COO matrix [(U+I), (U+I)]."""
        n = self.num_user + self.num_item
        return torch.sparse_coo_tensor(getattr(self, f"graph_{m}_index"), getattr(self, f"graph_{m}_value"), (n, n),
                                       check_invariants=False)

    def layer_sum(self, x):
        """``Σ_{l=0..L} Â^l x`` (a sum, as the authors' code, not a mean)."""
        return propagate_layers(self.adj, x, self.num_layer) * (self.num_layer + 1)

    def _hat(self, x):
        return _RowMeanProduct.apply(x, self.adj, self.adj)          # Â x (Âᵀ = Â)

    def embeddings(self, views=False):
        """``(z [(U+I), d], {m: v_m [(U+I), d]} or None)``."""
        ids = torch.cat([self.embedding_user, self.embedding_item])
        weight = torch.softmax(self.modal_weight, 0)
        mixed, view = 0, {}
        for n, m in enumerate(self.modalities):
            side = torch.cat([self.embedding_user, F.normalize(self.modality_items(m), dim=1)])
            graph = self.graph(m)
            first = self._hat(side)
            h = first + self._hat(torch.cat([first[:self.num_user], self.embedding_item]))
            mixed = mixed + weight[n] * (h + self.ris_adj_lambda * torch.sparse.mm(graph, ids))
            if views:
                view[m] = self.layer_sum(torch.sparse.mm(graph, side))
        return self.layer_sum(mixed) + self.ris_lambda * F.normalize(mixed, dim=1), (view if views else None)

    def forward(self):
        z, _ = self.embeddings()
        return z[:self.num_user], z[self.num_user:]

    def contrast(self, a, b, nodes):
        """``C(a, b, nodes)``: the mean over ``nodes`` of -log softmax_j(â_r·b̂_j / τ) at j = r, j over all of b."""
        return hyper_contrast(take_rows(a, nodes), take_rows(b, nodes), b, self.temperature) / len(nodes)

    def loss(self, users, pos, neg):
        """BPR (a sum over the batch divided by the nominal batch size), the squared-norm term of the whole tables
        and the views' contrast."""
        z, views = self.embeddings(views=True)
        U = self.num_user
        nodes = torch.cat([users, pos + U, neg + U])
        z_user, z_pos, z_neg = take_rows(z, nodes).split(len(users))
        bpr = -F.logsigmoid((z_user * z_pos).sum(1) - (z_user * z_neg).sum(1)).sum() / self.batch_size
        reg = self.embedding_user.square().sum() + self.embedding_item.square().sum()
        pairs = ([(z, views[m]) for m in self.modalities] if self.cl == 'main' else
                 [(views[a], views[b]) for n, a in enumerate(self.modalities) for b in self.modalities[n + 1:]])
        cl = z.new_zeros(())
        for a, b in pairs:
            cl = cl + self.contrast(a[:U], b[:U], users) + self.contrast(a[U:], b[U:], pos)
        loss = bpr + self.reg_weight * reg + self.cl_weight * cl
        return loss, {'bpr': bpr.item(), 'reg': reg.item(), 'cl': cl.item()}

    # ------------------------------------------------------------------ the diffusion model

    def extra_optimizers(self, args):
        """The denoisers' Adam (the authors' one Adam per denoiser, same rate, no decay: the same steps)."""
        return {'denoisers': torch.optim.Adam(self.denoisers.parameters(), lr=args.l_r, weight_decay=0)}

    def interaction_rows(self, users):
        """``R[users]`` dense [len(users), I] (``users`` sorted), from the CSR: a batch of rows, never all."""
        return row_submatrix(self.inter, users)[0].to_dense()

    def _at(self, name, t, like):
        return getattr(self, f'schedule_{name}')[t].to(like.dtype).unsqueeze(1)

    def diffusion_loss(self, m, x0, item_ids):
        """``(w_t-weighted reconstruction + e · the collaborative term)`` of modality m's denoiser on rows ``x0``."""
        t = torch.randint(0, self.steps, (len(x0),), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = self._at('sqrt_ab', t, x0) * x0 + self._at('sqrt_1m_ab', t, x0) * noise
        out = self.denoisers[m](x_t, t)
        reconstruction = (self._at('weight', t, x0).squeeze(1) * (x0 - out).square().mean(1)).mean()
        with torch.no_grad():
            items = self.modality_items(m)
        collaborative = (out @ items - x0 @ item_ids).square().mean()
        return reconstruction + self.e_loss * collaborative

    def epoch_steps(self):
        """One pass of the denoisers over all users (shuffled, batches of ``B``), then the graphs rebuilt."""
        order = torch.randperm(self.num_user, device=self.embedding_user.device)
        item_ids = self.embedding_item.detach()
        for start in range(0, self.num_user, self.batch_size):
            x0 = self.interaction_rows(order[start:start + self.batch_size].sort().values)
            losses = {m: self.diffusion_loss(m, x0, item_ids) for m in self.modalities}
            yield 'denoisers', sum(losses.values()), {f'diff_{m}': v.item() for m, v in losses.items()}
        self.rebuild_graphs()

    @torch.no_grad()
    def denoise(self, m, x0):
        """The rows ``x0`` denoised: from ``x_{S-1} = q(x0)`` (``x0`` itself with ``--diffmm_sampling_steps 0``),
        ``x ← coef_out_t f(x, t) + coef_x_t x`` for t = T-1..0 (the posterior mean, no sampling noise)."""
        x = x0
        if self.sampling_steps > 0:
            t = torch.full((len(x0),), self.sampling_steps - 1, device=x0.device, dtype=torch.long)
            x = self._at('sqrt_ab', t, x0) * x0 + self._at('sqrt_1m_ab', t, x0) * torch.randn_like(x0)
        for i in reversed(range(self.steps)):
            t = torch.full((len(x0),), i, device=x0.device, dtype=torch.long)
            x = self._at('coef_out', t, x0) * self.denoisers[m](x, t, drop=False) + self._at('coef_x', t, x0) * x
        return x

    @torch.no_grad()
    def rebuild_graphs(self):
        """Each ``G_m`` from every user's ``rebuild_k`` best denoised items, normalised, its entries dropped."""
        U, n = self.num_user, self.num_user + self.num_item
        picked = {m: [] for m in self.modalities}
        for start in range(0, U, self.batch_size):
            users = torch.arange(start, min(start + self.batch_size, U), device=self.embedding_user.device)
            x0 = self.interaction_rows(users)
            for m in self.modalities:
                picked[m].append(self.denoise(m, x0).topk(self.rebuild_k, dim=1).indices)
        for m in self.modalities:
            items = torch.cat(picked[m]).reshape(-1) + U
            users = torch.arange(U, device=items.device).repeat_interleave(self.rebuild_k)
            edges = with_self_loops(torch.stack([torch.cat([users, items]), torch.cat([items, users])]), n)
            graph = torch.sparse_coo_tensor(edges, symmetric_norm(edges, n, self.embedding_user.dtype), (n, n),
                                            check_invariants=True).coalesce()
            kept = (torch.rand(graph.values().shape, device=items.device) + self.keep).floor().bool()
            setattr(self, f'graph_{m}_index', graph.indices()[:, kept])
            setattr(self, f'graph_{m}_value', graph.values()[kept] / self.keep)


# ---------------------------------------------------------------------- the registry entry (SPEC 5)

def build(args, data):
    needs_modality('DiffMM', data)
    if args.diffmm_rebuild_k > data.num_item:
        raise ValueError(f'--diffmm_rebuild_k {args.diffmm_rebuild_k} exceeds the number of items ({data.num_item})')
    return DiffMM(data.num_user, data.num_item, data.features, data.train, args.dim_latent, args.num_layer,
                  batch_size=args.batch_size, reg_weight=args.weight_decay, cl_weight=args.cl_weight,
                  temperature=args.cl_temp, keep=1 - args.dropout_rate, trans=args.diffmm_trans, cl=args.diffmm_cl,
                  steps=args.diffmm_steps, noise_scale=args.diffmm_noise_scale, noise_min=args.diffmm_noise_min,
                  noise_max=args.diffmm_noise_max, sampling_steps=args.diffmm_sampling_steps,
                  hidden=args.diffmm_dims, e_loss=args.diffmm_e_loss, ris_lambda=args.diffmm_ris_lambda,
                  ris_adj_lambda=args.diffmm_ris_adj_lambda, rebuild_k=args.diffmm_rebuild_k)


MODEL = ModelEntry(
    name='DiffMM', build=build, summary='modality graphs rebuilt each epoch by per-modality diffusion models over '
                                        'the interaction rows, BPR plus cross-modal contrast (docs/models.md)',
    # HKUDS/DiffMM (commit fae20e6) README, TikTok: python Main.py --data tiktok --reg 1e-4 --ssl_reg 1e-2
    # --epoch 50 --trans 1 --e_loss 0.1 --cl_method 1; Params.py for the rest: lr 1e-3, batch 1024, gnn_layer 1,
    # temp 0.5, keepRate 0.5 (ρ = 1 - keepRate), dims [1000], d_emb_size 10, steps 5, noise_scale 0.1,
    # noise_min 1e-4, noise_max 0.02, sampling_steps 0, rebuild_k 1, ris_lambda 0.5, ris_adj_lambda 0.2;
    # Adam without decay (reg is the loss's λ), no early stopping (run it with --patience 50 --topK 20)
    defaults=dict(l_r=0.001, weight_decay=1e-4, batch_size=1024, num_layer=1, num_epoch=50, dropout_rate=0.5,
                  cl_weight=1e-2, cl_temp=0.5),
    # its README's ssl_reg (the contrast weight) is 1e-2 on TikTok and Sports, 1e-1 on Baby; lr 1e-3 in Params.py
    search_grid=dict(l_r=[0.01, 0.001], cl_weight=[1e-3, 1e-2, 1e-1]),
    flags=(
        Flag('diffmm_trans', 'linear', "the modality transform: 'linear' (nn.Linear, the authors' trans 1, TikTok) "
             "or 'leaky' (leaky_relu(F W), trans 0, Baby)", choices=('linear', 'leaky')),
        Flag('diffmm_cl', 'main', "the contrast: 'main' (each modality view against the main embeddings, "
             "cl_method 1, TikTok) or 'modalities' (each pair of views, cl_method 0)", choices=('main', 'modalities')),
        Flag('diffmm_steps', 5, 'diffusion steps T', type=int, check=lambda a: 1 <= a.diffmm_steps <= 1000,
             problem='must be in [1, 1000]'),
        Flag('diffmm_noise_scale', 0.1, 'noise scale of the β schedule', **at_least('diffmm_noise_scale', strict=True)),
        Flag('diffmm_noise_min', 0.0001, 'smallest noise of the β schedule', **at_least('diffmm_noise_min')),
        Flag('diffmm_noise_max', 0.02, 'largest noise of the β schedule', type=float,
             check=lambda a: finite(a.diffmm_noise_max) and a.diffmm_noise_min <= a.diffmm_noise_max
             and a.diffmm_noise_scale * a.diffmm_noise_max < 1, problem='must lie in [--diffmm_noise_min, '
             '1 / --diffmm_noise_scale)'),
        Flag('diffmm_sampling_steps', 0, 'noising steps before the rebuild denoises (0: from the rows themselves)',
             type=int, check=lambda a: 0 <= a.diffmm_sampling_steps <= a.diffmm_steps,
             problem='must be in [0, --diffmm_steps]'),
        Flag('diffmm_dims', 1000, "the denoisers' hidden width (the authors' dims [1000])", type=int,
             check=lambda a: 1 <= a.diffmm_dims <= 100000, problem='must be in [1, 100000]'),
        Flag('diffmm_e_loss', 0.1, "weight e of the denoisers' collaborative term", **at_least('diffmm_e_loss')),
        Flag('diffmm_ris_lambda', 0.5, 'weight λ of the normalised modality mix added to the output',
             **at_least('diffmm_ris_lambda')),
        Flag('diffmm_ris_adj_lambda', 0.2, 'weight λ_adj of the diffusion graph G_m in each modality view',
             **at_least('diffmm_ris_adj_lambda')),
        Flag('diffmm_rebuild_k', 1, "items per user in each rebuilt graph G_m", type=int,
             check=lambda a: 1 <= a.diffmm_rebuild_k <= 10000, problem='must be in [1, 10000]'),
    ),
    reads=('dropout_rate', 'cl_weight', 'cl_temp'),
    exact_split=False,
    lr_grid=(0.001,),
)
