"""LightGCN (He et al., SIGIR 2020) trained with BPR: the ID-only graph baseline (SPEC 6).

With ``E⁰ = [E_u ; E_i]`` (normal, std 0.1) and ``Â = D^-1/2 A D^-1/2`` (SPEC 3.1):

    E^{k+1} = Â E^k,   [z_u ; z_i] = mean(E⁰, ..., E^L),   s(u, i) = z_u · z_i

Loss over a batch of B triples (user, positive, sampled negative):

    BPR = -mean log σ(s(u, i⁺) - s(u, i⁻))
    reg = ½ (‖E⁰_u‖² + ‖E⁰_{i⁺}‖² + ‖E⁰_{i⁻}‖²) / B        (the layer-0 rows of the batch)
    L   = BPR + λ · reg

The propagation is ``BaseModel.propagate_layers``, SLMRec's fast path (the
last layer for the batch's rows alone).
"""
import torch
from torch import nn
from torch.nn import functional as F

from BaseModel import normalized_adjacency, propagate_layers, take_rows
from registry import ModelEntry, Recommender

INIT_STD = 0.1


def bpr_loss(user, pos, neg):
    """``-mean log σ(u·p - u·n)`` over the rows (SPEC 6), as ``-logsigmoid`` (finite for large gaps)."""
    return -F.logsigmoid((user * pos).sum(1) - (user * neg).sum(1)).mean()


class LightGCN(Recommender):
    """LightGCN over a fixed user-item graph.

    Args:
        num_user, num_item: sizes.
        adj: ``Â``, the normalised bipartite adjacency as sparse CSR [(U+I), (U+I)].
        dim_latent: ``d`` (64).
        num_layer: ``L`` (3).
        reg_weight: ``λ`` (``--weight_decay``, 1e-4): the loss coefficient, not an Adam decay.
    """

    needs_negatives = True

    def __init__(self, num_user, num_item, adj, dim_latent=64, num_layer=3, reg_weight=1e-4):
        super().__init__()
        self.num_user, self.num_item, self.num_layer, self.reg_weight = num_user, num_item, num_layer, reg_weight
        self.register_buffer('adj', adj, persistent=False)
        self.embedding = nn.Parameter(torch.empty(num_user + num_item, dim_latent))
        nn.init.normal_(self.embedding, std=INIT_STD)

    def forward(self):
        """``(z_user [U, d], z_item [I, d])``, the layer means over the whole graph."""
        z = propagate_layers(self.adj, self.embedding, self.num_layer)
        return z[:self.num_user], z[self.num_user:]

    def loss(self, users, pos, neg):
        """BPR plus the layer-0 regulariser (SPEC 6); returns the loss and its parts."""
        nodes = torch.cat([users, pos + self.num_user, neg + self.num_user])
        z_user, z_pos, z_neg = propagate_layers(self.adj, self.embedding, self.num_layer, rows=nodes).split(len(users))
        bpr = bpr_loss(z_user, z_pos, z_neg)
        reg = 0.5 * take_rows(self.embedding, nodes).pow(2).sum() / len(users)
        return bpr + self.reg_weight * reg, {'bpr': bpr.item(), 'reg': reg.item()}


# ---------------------------------------------------------------------- the registry entry (SPEC 5)

def build(args, data):
    adj = normalized_adjacency(data.train, data.num_user, data.num_item)
    return LightGCN(data.num_user, data.num_item, adj, args.dim_latent, args.num_layer, reg_weight=args.weight_decay)


MODEL = ModelEntry(
    name='LightGCN', build=build, summary='ID-only graph baseline, BPR (SPEC 6)',
    # its authors' code: weight_decay is the loss coefficient λ
    defaults=dict(l_r=0.001, weight_decay=1e-4, batch_size=2048, num_layer=3, num_epoch=1000),
    item_features=False,
    rows={'LightGCN': ('LightGCN (BPR)', [])},
    # MMRec's LightGCN.yaml: reg_weight over {1e-2, ..., 1e-6} (its n_layers grid left at the authors' 3)
    search_grid=dict(l_r=[0.01, 0.001], weight_decay=[1e-5, 1e-4, 1e-3, 1e-2]),
)
