"""PGL, SMORE and DRAGON (issue #31): one training step at Tiktok's size, and DRAGON's user-user
co-occurrence graph built at Amazon-Clothing's size.

    python bench/models_pgl_smore_dragon.py                        # both parts, full sizes
    python bench/models_pgl_smore_dragon.py --scale 0.25 --skip_users
    python bench/models_pgl_smore_dragon.py --users_only

Step: synthetic Tiktok (``prepare_data.synthetic --like tiktok --scale s``: 36,656 users and 76,085 items
at s = 1, modalities v, a and word-id t), one Adam step on a batch of the model's default size (2048 pairs, a
uniform negative each; PGL's principal subgraph drawn first), median of ``--repeat`` after ``--warmup``, with
the process's peak resident memory during the timed steps; beside it the same step with the plain reference
of its fast path: ``propagate_layers_plain`` for the user-item propagation of all three; for SMORE
``loss_plain`` too (the view contrasts over every batch row, autograd's InfoNCE) and for DRAGON (every user's
co-occurrence sum and every item's item-item product, then the batch's rows, the authors' order).
``--data tiktok`` runs the step on a prepared dataset instead.  The item-item graphs have the real number of entries (PGL and DRAGON: FREEDOM's k = 10
per modality; SMORE: MGCN's weighted graphs, k 40 for the first modality and 15 for the others, and their
max fusion) but random neighbours: the step's cost depends on the entries alone, and the kNN builds are
measured by bench/freedom_knn.py and bench/models_bm3_mgcn_lgmrec.py.  DRAGON's user-user graph is the real
one (``cooccurrence_topk``).

User graph: ``model_DRAGON.cooccurrence_topk`` (K = 40) on a synthetic dataset of Amazon-Clothing's size
(39,387 users, 23,033 items, 7.08 interactions a user: ``prepare_data.py synthetic --num_user 39387
--num_item 23033 --inter_per_user 7.075``), its time and the process's peak resident memory (VmHWM, absolute
and above the memory held before); a dense U × U matrix (the authors' script) would need 5.8 GiB.
"""
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import BaseModel  # noqa: E402
import config  # noqa: E402
import model_DRAGON  # noqa: E402
import model_FREEDOM  # noqa: E402
import model_PGL  # noqa: E402
import model_SMORE  # noqa: E402
import prepare_data  # noqa: E402
from bench import PeakMemory, _release_free_memory, _status_mib  # noqa: E402
from DataLoad import load_dataset  # noqa: E402
from models_bm3_mgcn_lgmrec import random_item_graphs, step_data, step_parser, time_step  # noqa: E402


def random_freedom_graph(modalities, num_item, k, image_weight, seed=0):
    """FREEDOM's ``S`` with the real number of entries but random neighbours (itself first)."""
    gen = torch.Generator().manual_seed(seed)
    indices = []
    for _ in modalities:
        ids = torch.randint(0, num_item, (num_item, k), generator=gen)
        ids[:, 0] = torch.arange(num_item)
        indices.append(ids)
    return model_FREEDOM.combine_knn(indices, num_item, image_weight)


def build(name, data, folder):
    args = config.parse_args(['--model_name', name, '--data_path', folder])
    adj = BaseModel.normalized_adjacency(data.train, data.num_user, data.num_item)
    if name == 'SMORE':
        graphs = {}
        for m, k in model_SMORE.modality_ks(data.features, args.image_knn_k, args.text_knn_k).items():
            graphs.update(random_item_graphs({m: None}, data.num_item, k, seed=len(graphs)))
        return model_SMORE.SMORE(data.num_user, data.num_item, data.features, adj, graphs, args.dim_latent,
                                 args.num_layer, dropout=args.dropout_rate, reg_weight=args.weight_decay,
                                 cl_weight=args.cl_weight), args
    item_adj = random_freedom_graph(data.features, data.num_item, args.knn_k, args.mm_image_weight)
    if name == 'PGL':
        return model_PGL.PGL(data.num_user, data.num_item, data.features, data.train, adj, item_adj, args.dim_latent,
                             args.num_layer, dropout=args.dropout_rate, cl_weight=args.cl_weight), args
    users = model_DRAGON.cooccurrence_topk(data.train, data.num_user, data.num_item, args.user_graph_k)
    return model_DRAGON.DRAGON(data.num_user, data.num_item, data.features, adj, item_adj, users, args.dim_latent,
                               args.num_layer, reg_weight=args.weight_decay), args


def bench_steps(args):
    folder, data = step_data(args)
    print(f'{data.summary()}; {args.threads} thread(s)', flush=True)
    print(f'{"step":<34} {"ours s":>9} {"plain s":>9} {"ratio":>7} {"peak MiB":>9} {"plain MiB":>9}')
    modules = {'PGL': model_PGL, 'SMORE': model_SMORE, 'DRAGON': model_DRAGON}
    for name in args.models.split(','):
        torch.manual_seed(0)
        model, margs = build(name, data, folder)
        time_step(name, model, margs, data, modules[name], model.loss_plain if name != 'PGL' else model.loss, args)
        del model
        _release_free_memory()


def bench_users(args):
    cpu = torch.device('cpu')
    folder = prepare_data.synthetic('clothing_b', num_user=39387, num_item=23033, inter_per_user=7.075, seed=0)
    data = load_dataset(folder)
    print(f'{data.summary()}; {args.threads} thread(s); DRAGON user-user graph, K {args.user_k}; a dense U x U '
          f'float32 matrix: {data.num_user ** 2 * 4 / 2 ** 30:.1f} GiB', flush=True)
    _release_free_memory()
    before = _status_mib('VmRSS')
    with PeakMemory(cpu) as peak:
        started = time.time()
        ids, counts, found = model_DRAGON.cooccurrence_topk(data.train, data.num_user, data.num_item, args.user_k)
        seconds = time.time() - started
    print(f'  cooccurrence_topk: {seconds:.1f} s, peak RSS {peak.peak:.0f} MiB ({peak.peak - before:.0f} MiB above '
          f'the {before:.0f} MiB held before); {len(data.train)} training pairs, users with a full K: '
          f'{int((found == args.user_k).sum())}, with none: {int((found == 0).sum())}', flush=True)


def main_(argv=None):
    p = step_parser(__doc__, 'PGL,SMORE,DRAGON')
    p.add_argument('--user_k', type=int, default=40)
    p.add_argument('--skip_users', action='store_true')
    p.add_argument('--users_only', action='store_true')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.users_only:
        bench_steps(args)
    if not args.skip_users:
        bench_users(args)


if __name__ == '__main__':
    main_()
