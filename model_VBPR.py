"""VBPR (He & McAuley, AAAI 2016) in the form multimodal toolkits use: matrix factorisation
whose item vectors carry a learnt projection of the item's content (SPEC 6).

    z_u = [γ_u ‖ θ_u] ∈ R^{2d},   z_i = [γ_i ‖ E f_i],   s(u, i) = z_u · z_i

``f_i`` joins the item's modality features, each dense row L2-normalised; a
word-id modality (Tiktok) contributes its feature of SPEC 1.2, the mean of
the item's trainable word embeddings.  ``E = Linear(Σ dim → d)``.  Loss over
a batch of B triples (user, positive, sampled negative):

    L = -mean log σ(s(u, i⁺) - s(u, i⁻)) + λ (‖z_u‖² + ‖z_{i⁺}‖² + ‖z_{i⁻}‖²) / B
"""
import torch
from torch import nn

from BaseModel import take_rows
from model_LightGCN import bpr_loss
from registry import ModelEntry, Recommender, needs_modality


class VBPR(Recommender):
    """VBPR; no graph.

    Args:
        num_user, num_item: sizes.
        features: modality -> float array [num_item, f] or ``DataLoad.WordFeature`` (at least one).
        dim_latent: ``d`` (64); users are ``2d`` wide.
        reg_weight: ``λ`` (``--weight_decay``, 1e-4): the loss coefficient, not an Adam decay.
    """

    needs_negatives = True

    def __init__(self, num_user, num_item, features, dim_latent=64, reg_weight=1e-4):
        super().__init__()
        if not features:
            raise ValueError('VBPR needs at least one modality')
        self.num_user, self.num_item, self.reg_weight = num_user, num_item, reg_weight
        self.modalities = list(features)
        width = sum(self.register_item_features(features, normalize=True).values())
        self.user = nn.Parameter(torch.empty(num_user, 2 * dim_latent))      # [γ_u ‖ θ_u]
        self.item = nn.Parameter(torch.empty(num_item, dim_latent))          # γ_i
        self.project = nn.Linear(width, dim_latent)                           # E
        for weight in (self.user, self.item, self.project.weight):
            nn.init.xavier_uniform_(weight)

    def content(self, items=None):
        """``f_i`` [I, Σ dim] (or its rows ``items``): the modalities side by side, in dataset order."""
        parts = [self.item_input(m) for m in self.modalities]
        if items is not None:
            parts = [take_rows(p, items) for p in parts]
        return torch.cat(parts, dim=1)

    def item_vectors(self, items=None):
        """``z_i = [γ_i ‖ E f_i]`` for all items (or the rows ``items``)."""
        gamma = self.item if items is None else take_rows(self.item, items)
        return torch.cat([gamma, self.project(self.content(items))], dim=1)

    def forward(self):
        """``(z_user [U, 2d], z_item [I, 2d])``."""
        return self.user, self.item_vectors()

    def loss(self, users, pos, neg):
        """BPR plus the squared norms of the batch's rows (SPEC 6); returns the loss and its parts."""
        z_user = take_rows(self.user, users)
        z_pos, z_neg = self.item_vectors(torch.cat([pos, neg])).split(len(pos))
        bpr = bpr_loss(z_user, z_pos, z_neg)
        reg = (z_user.pow(2).sum() + z_pos.pow(2).sum() + z_neg.pow(2).sum()) / len(users)
        return bpr + self.reg_weight * reg, {'bpr': bpr.item(), 'reg': reg.item()}


# ---------------------------------------------------------------------- the registry entry (SPEC 5)

def build(args, data):
    needs_modality('VBPR', data)
    return VBPR(data.num_user, data.num_item, data.features, args.dim_latent, reg_weight=args.weight_decay)


MODEL = ModelEntry(
    name='VBPR', build=build, summary='matrix factorisation with a content projection, BPR (SPEC 6)',
    defaults=dict(l_r=0.001, weight_decay=1e-4, batch_size=2048, num_epoch=1000),      # no graph: no num_layer
    # MMRec's VBPR.yaml: reg_weight over {2, 1, 0.1, ..., 1e-5}
    search_grid=dict(l_r=[0.01, 0.001], weight_decay=[1e-5, 1e-4, 1e-3, 1e-2]),
)
