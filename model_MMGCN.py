"""MMGCN (Wei et al., ACM MM 2019): one graph convolution network per modality,
fused by their mean, trained with BPR (SPEC 2).

Per modality m, with ``x⁰ = normalise([P_m ; item input])`` and for l = 1..L:

    h  = leaky_relu(conv_l(x, edges))
    x̂  = leaky_relu(linear_l(x)) + E_id                  (E_id dropped by has_id=False)
    x  = leaky_relu(g_l([h ‖ x̂]))    if concat
    x  = leaky_relu(g_l(h) + x̂)      otherwise

Representation ``z = mean_m x_m^L``; score ``s(u, i) = z_u · z_i``; loss

    -mean logsigmoid(s(u,i⁺) - s(u,i⁻)) + λ (mean(E_id[u]²) + ½ (mean(E_id[i⁺]²) + mean(E_id[i⁻]²)) + mean(P_{m₀}²))

(each mean over the batch's rows and the d columns; SPEC 2).
"""
import torch
from torch import nn
from torch.nn import functional as F

from BaseModel import (BaseModel, bipartite_edges, check_symmetric, csr_adjacency, edge_share, row_submatrix,
                       rows_are_sparse, take_rows, xavier_normal_param)
from config import str2bool
from registry import Flag, ModelEntry, Recommender, needs_modality

MLP_WIDTH = 256   # item features of the visual modality or wider than this go through Linear(dim → 256)
INNER_ROWS_SHARE = 0.75   # see row_plan


class GCN(nn.Module):
    """The graph convolution network of one modality (SPEC 2).

    Args:
        num_user: users; the preference matrix ``P_m`` has one row each.
        feat_dim: width of the modality's item features.
        dim_latent: output width ``d``.
        num_layer: ``L`` (graph layers).
        aggr: 'mean', 'max' or 'add'.
        concat: ``g_l`` on ``[h ‖ x̂]`` (True) or ``g_l(h) + x̂`` (False).
        use_mlp: map item features through ``Linear(feat_dim → 256)`` first.
    """

    def __init__(self, num_user, feat_dim, dim_latent, num_layer, aggr, concat, use_mlp):
        super().__init__()
        self.concat = concat
        self.mlp = nn.Linear(feat_dim, MLP_WIDTH) if use_mlp else None
        width = MLP_WIDTH if use_mlp else feat_dim
        self.preference = xavier_normal_param(num_user, width)
        widths = [width] + [dim_latent] * (num_layer - 1)
        self.convs = nn.ModuleList(BaseModel(w, w, aggr) for w in widths)
        self.linears = nn.ModuleList(nn.Linear(w, dim_latent) for w in widths)
        self.gates = nn.ModuleList(nn.Linear(w + dim_latent if concat else w, dim_latent) for w in widths)
        # As official (SPEC 2): xavier-normal for every linear_l and the first gate (the convolutions
        # do their own); the later gates and the item MLP keep PyTorch's default initialisation.
        for layer in list(self.linears) + [self.gates[0]]:
            nn.init.xavier_normal_(layer.weight)

    def layer(self, l, x, x_rows, adj, adj_t, ids):
        """Layer l of SPEC 2, for the rows of ``adj``: ``x`` the layer input of every node, ``x_rows`` and
        ``ids`` (``E_id`` or None) those of the rows.

            h = leaky_relu(conv_l(x, edges)),  x̂ = leaky_relu(linear_l(x)) + E_id,
            x = leaky_relu(g_l([h ‖ x̂]))  (concat)  or  leaky_relu(g_l(h) + x̂)
        """
        h = F.leaky_relu(self.convs[l](x, adj, adj_t))
        x_hat = F.leaky_relu(self.linears[l](x_rows))
        if ids is not None:
            x_hat = x_hat + ids
        return F.leaky_relu(self.gates[l](torch.cat([h, x_hat], dim=1)) if self.concat else self.gates[l](h) + x_hat)

    def forward(self, item_features, adj, id_embedding=None, dropout=0.0, plan=None):
        """``x^L`` of every node [(U+I), d] (``layer`` over the whole graph, the plain formula).  With a
        ``plan`` (``row_plan``) a layer whose entry is ``(nodes, block, block_t)`` is computed for
        ``nodes`` alone; the output is then ``x^L`` of the last layer's nodes, in their order."""
        items = self.mlp(item_features) if self.mlp is not None else item_features
        x = F.normalize(torch.cat([self.preference, items]), dim=1)
        num_nodes, last = x.shape[0], len(self.convs) - 1
        for l in range(len(self.convs)):
            rows = None if plan is None else plan[l]
            if rows is None:                         # the bipartite graph is symmetric: its own transpose
                x = self.layer(l, x, x, adj, adj, id_embedding)
            else:
                nodes, block, block_t = rows
                ids = None if id_embedding is None else take_rows(id_embedding, nodes)
                x = self.layer(l, x, take_rows(x, nodes), block, block_t, ids)
            if dropout > 0:
                x = F.dropout(x, dropout, self.training)
            if rows is not None and l < last:
                # Back to node ids; the next layer reads only these rows (its nodes and their neighbours).
                x = x.new_zeros(num_nodes, x.shape[1]).index_copy(0, nodes, x)
        return x


def row_plan(adj, nodes, num_layer):
    """Which rows each layer must compute for the outputs at ``nodes`` (sorted, unique): per layer
    None (all rows) or ``(rows, row_submatrix(adj, rows)...)``, or None when no layer gains.

    The last layer needs ``nodes``; the layer before it, those and their
    neighbours; and so on.  A layer is restricted while its rows hold under
    ``INNER_ROWS_SHARE`` of the graph's edges (a quarter for the last layer,
    ``rows_are_sparse``); once a layer needs all rows, every earlier one does.
    """
    if num_layer == 0:
        return None
    plan, rows = [None] * num_layer, nodes
    for layer in reversed(range(num_layer)):
        if layer == num_layer - 1:
            if not rows_are_sparse(adj, rows):
                return None
        elif edge_share(adj, rows) > INNER_ROWS_SHARE:
            break
        block, block_t = row_submatrix(adj, rows, symmetric=True)
        plan[layer] = (rows, block, block_t)
        rows = torch.unique(torch.cat([rows, block.col_indices()]))
    return plan


class MMGCN(Recommender):
    """MMGCN over a fixed user-item graph.

    Args:
        num_user, num_item: sizes.
        features: modality -> float array [num_item, f] or ``DataLoad.WordFeature``.
        adj: the unnormalised bipartite adjacency, sparse CSR [(U+I), (U+I)].
        dim_latent: ``d`` (64).
        num_layer: ``L`` (2).
        aggr: 'mean' (default), 'max' or 'add'.
        concat: see ``GCN`` (False in the published command).
        has_id: add the trainable ID embedding ``E_id`` (True).
        reg_weight: ``λ`` of the BPR regulariser (``--weight_decay``, 0.1 in the published command).
    """

    needs_negatives = True

    def __init__(self, num_user, num_item, features, adj, dim_latent=64, num_layer=2, aggr='mean',
                 concat=False, has_id=True, reg_weight=0.1):
        super().__init__()
        self.reg_weight = reg_weight
        if not features:
            raise ValueError('MMGCN needs at least one modality')
        self.num_user, self.num_item = num_user, num_item
        self.modalities = list(features)
        check_symmetric(adj)
        self.register_buffer('adj', adj, persistent=False)
        widths = self.register_item_features(features)
        self.id_embedding = xavier_normal_param(num_user + num_item, dim_latent) if has_id else None
        self.gcns = nn.ModuleDict()
        for m in self.modalities:
            self.gcns[m] = GCN(num_user, widths[m], dim_latent, num_layer, aggr, concat,
                               use_mlp=(m == 'v' or widths[m] > MLP_WIDTH))

    def modality_outputs(self, dropout=0.0, masked=None, plan=None):
        """Each modality's ``x^L`` [(U+I), d]; ``masked`` names one whose item input is zeroed;
        ``plan`` (see ``row_plan``) restricts the outputs to a few nodes."""
        outs = []
        for m in self.modalities:
            items = self.item_input(m)
            if m == masked:
                items = torch.zeros_like(items)
            outs.append(self.gcns[m](items, self.adj, self.id_embedding, dropout, plan))
        return outs

    def row_block(self, nodes):
        """``(unique nodes, inverse, plan for GCN.forward)`` when the nodes touch few edges of a CSR
        adjacency, else None (an ``edge_index`` adjacency is PyG's per-edge reference: always full)."""
        if self.adj.layout != torch.sparse_csr:
            return None
        unique, inverse = torch.unique(nodes, return_inverse=True)
        plan = row_plan(self.adj, unique, len(self.gcns[self.modalities[0]].convs))
        return None if plan is None else (unique, inverse, plan)

    def forward(self):
        """Fused representations ``(z_user [U, d], z_item [I, d])``."""
        z = torch.stack(self.modality_outputs()).mean(0)
        return z[:self.num_user], z[self.num_user:]

    def loss(self, users, pos, neg):
        """BPR with the regulariser of SPEC 2; returns the loss and its parts."""
        nodes = torch.cat([users, pos + self.num_user, neg + self.num_user])
        block = self.row_block(nodes)
        if block is None:           # the batch touches much of the graph: all rows are as cheap
            z = take_rows(torch.stack(self.modality_outputs()).mean(0), nodes)
        else:                       # only the rows the batch's outputs depend on
            _, inverse, plan = block
            z = take_rows(torch.stack(self.modality_outputs(plan=plan)).mean(0), inverse)
        u, z_pos, z_neg = z.split(len(users))
        pos_score = (u * z_pos).sum(1)
        neg_score = (u * z_neg).sum(1)
        bpr = -F.logsigmoid(pos_score - neg_score).mean()
        reg = self.gcns[self.modalities[0]].preference.pow(2).mean()
        if self.id_embedding is not None:
            # As official: mean(E[u]²) + ½ (mean(E[i⁺]²) + mean(E[i⁻]²)), each mean over rows and columns
            # (the official code averaged over the rows (u, i⁺) and (u, i⁻), so an item weighs half a user).
            e_user, e_pos, e_neg = take_rows(self.id_embedding, nodes).pow(2).split(len(users))
            reg = reg + e_user.mean() + (e_pos.mean() + e_neg.mean()) / 2
        return bpr + self.reg_weight * reg, {'bpr': bpr.item(), 'reg': reg.item()}


# ---------------------------------------------------------------------- the registry entry (SPEC 5)

def build(args, data):
    """MMGCN for ``data`` over the plain (unnormalised) bipartite graph."""
    needs_modality('MMGCN', data)
    adj = csr_adjacency(bipartite_edges(data.train, data.num_user), data.num_user + data.num_item)
    return MMGCN(data.num_user, data.num_item, data.features, adj, args.dim_latent, args.num_layer,
                 args.aggr_mode, args.concat, args.has_id, reg_weight=args.weight_decay)


MODEL = ModelEntry(
    name='MMGCN', build=build, summary='one GCN per modality, BPR (SPEC 2)',
    defaults=dict(l_r=0.0005, weight_decay=0.1, batch_size=1024, num_layer=2, num_epoch=1000),
    flags=(
        Flag('aggr_mode', 'mean', 'neighbour aggregation', choices=('mean', 'max', 'add')),
        Flag('concat', False, 'g_l on [h ‖ x̂] (True) or g_l(h) + x̂ (False)', type=str2bool),
        Flag('has_id', True, 'add the trainable ID embedding', type=str2bool,
             check=lambda a: a.has_id or a.model_name == 'MMGCN', problem='False applies to MMGCN only'),
    ),
    rows={'MMGCN': ('MMGCN', ['--aggr_mode', 'mean', '--concat', 'False'])},
    lr_grid=(0.001, 0.0005),
    # MMRec's MMGCN.yaml: reg_weight over {0, 1e-5, ..., 0.1}, learning_rate over {1e-4, 5e-4, ..., 1e-2}
    search_grid=dict(l_r=[0.005, 0.0005], weight_decay=[1e-4, 1e-3, 1e-2, 0.1]),
)
