"""MF-BPR (Rendle et al., UAI 2009): matrix factorisation trained with BPR, the first row of every
multimodal comparison table (SPEC 6).

    s(u, i) = E_u · E_i

Loss over a batch of B triples (user, positive, uniformly sampled negative):

    BPR = -mean log σ(s(u, i⁺) - s(u, i⁻))
    reg = ½ (‖E_u‖² + ‖E_{i⁺}‖² + ‖E_{i⁻}‖²) / B        (the batch's rows)
    L   = BPR + λ · reg                                  (λ = --weight_decay; Adam without decay)

Defaults as MMRec's ``bpr.py`` and its overall configuration: ``d`` 64, batch
2048, ``l_r`` 1e-3, xavier-normal embeddings; λ 1e-4 from its ``reg_weight``
grid (2.0 ... 1e-5).  No graph and no item features: ``--num_layer`` and the
modalities are unused.
"""
import torch
from torch import nn

from BaseModel import take_rows
from model_LightGCN import bpr_loss
from registry import ModelEntry, Recommender


class BPR(Recommender):
    """Matrix factorisation.

    Args:
        num_user, num_item: sizes.
        dim_latent: ``d`` (64).
        reg_weight: ``λ`` (``--weight_decay``, 1e-4): the loss coefficient, not an Adam decay.
    """

    needs_negatives = True

    def __init__(self, num_user, num_item, dim_latent=64, reg_weight=1e-4):
        super().__init__()
        self.num_user, self.num_item, self.reg_weight = num_user, num_item, reg_weight
        self.embedding_user = nn.Parameter(torch.empty(num_user, dim_latent))
        self.embedding_item = nn.Parameter(torch.empty(num_item, dim_latent))
        nn.init.xavier_normal_(self.embedding_user)
        nn.init.xavier_normal_(self.embedding_item)

    def forward(self):
        """``(E_u [U, d], E_i [I, d])``."""
        return self.embedding_user, self.embedding_item

    def loss(self, users, pos, neg):
        """BPR plus ½ the squared norms of the batch's rows over B; returns the loss and its parts."""
        e_user = take_rows(self.embedding_user, users)
        e_pos, e_neg = take_rows(self.embedding_item, torch.cat([pos, neg])).split(len(pos))
        bpr = bpr_loss(e_user, e_pos, e_neg)
        reg = 0.5 * (e_user.pow(2).sum() + e_pos.pow(2).sum() + e_neg.pow(2).sum()) / len(users)
        return bpr + self.reg_weight * reg, {'bpr': bpr.item(), 'reg': reg.item()}


def build(args, data):
    return BPR(data.num_user, data.num_item, args.dim_latent, reg_weight=args.weight_decay)


MODEL = ModelEntry(
    name='BPR', build=build, summary='matrix factorisation, BPR (SPEC 6)',
    defaults=dict(l_r=0.001, weight_decay=1e-4, batch_size=2048, num_epoch=1000),      # no graph: no num_layer
    item_features=False,
    rows={'BPR': ('MF-BPR', [])},
    # MMRec's BPR.yaml: reg_weight over {2, 1, 0.1, ..., 1e-5}; learning rate around its 1e-3
    search_grid=dict(l_r=[0.01, 0.001], weight_decay=[1e-5, 1e-4, 1e-3, 1e-2]),
)
