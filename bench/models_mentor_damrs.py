"""MENTOR and DA-MRS (issue #31): one training step at Tiktok's size beside the plain reference of its fast
paths, and the item-item graphs' build at Amazon-Clothing's size.

    python bench/models_mentor_damrs.py                           # both parts, full sizes
    python bench/models_mentor_damrs.py --scale 0.25 --parts steps
    python bench/models_mentor_damrs.py --parts graphs
    python bench/models_mentor_damrs.py --device cuda --parts steps   # on a GPU

Step: synthetic Tiktok (``prepare_data.synthetic --like tiktok --scale s``: 36,656 users and 76,085 items at
s = 1; dense v and a, word-id t), one Adam step on a batch of the model's default size (MENTOR 2048 pairs, DA-MRS
4096, a uniform negative each), median of ``--repeat`` after ``--warmup``, with the peak memory during the timed
steps (resident set on the CPU, allocated memory on CUDA).  Beside it the same step with the plain references:
``BaseModel.similarity_logsumexp_plain`` (the whole [rows, I] or [U, U] / [I, I] similarity matrix with autograd)
for the InfoNCE denominators, DA-MRS's pseudo-labels in one block, and ``propagate_layers_plain``.  A plain step
whose similarity matrices alone would take more than ``--plain_limit_gib`` is skipped, with its estimate.

Graphs: Amazon-Clothing's size (39,387 users, 23,033 items; synthetic interactions, ``--inter_per_user`` 7 as the
MMRec release's 278,677 / 39,387, and random non-negative 4,096-d image and 384-d text features as that release):
DA-MRS's denoised content graphs (``model_DAMRS.denoised_knn``, both modalities together) and behaviour graph
(``behaviour_neighbours``), MENTOR's (FREEDOM's) kNN graph per modality (``knn_graph.knn_indices``); seconds and
the peak resident memory above what was held before.
"""
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import BaseModel  # noqa: E402
import config  # noqa: E402
import knn_graph  # noqa: E402
import model_DAMRS  # noqa: E402
import model_MENTOR  # noqa: E402
import prepare_data  # noqa: E402
import registry  # noqa: E402
from bench import PeakMemory, _release_free_memory, _status_mib, timed  # noqa: E402
from DataLoad import load_dataset  # noqa: E402
from models_bm3_mgcn_lgmrec import step_parser  # noqa: E402

CLOTHING = (39387, 23033)


def batch_of(data, size, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, len(data.train), (size,), generator=gen)
    pairs = torch.as_tensor(data.train)[rows]
    return [t.to(device) for t in (pairs[:, 0], pairs[:, 1], torch.randint(0, data.num_item, (size,), generator=gen))]


def plain_similarity_gib(name, data, batch_size):
    """The float32 similarity matrices the plain step holds at once (logits, their exponentials, the gradient)."""
    if name == 'MENTOR':
        return 3 * 4 * max(data.num_user, data.num_item) ** 2 / 2 ** 30
    rows = min(2 * batch_size, data.num_item)                    # the batch's distinct items, at most
    graphs = len(data.features) + 1
    return 4 * 4 * rows * data.num_item * graphs / 2 ** 30


class Plain:
    """Swap the fast paths of one model's module for their plain references while in the block."""

    def __init__(self, module):
        self.module = module

    def __enter__(self):
        self.saved = {name: getattr(self.module, name) for name in ('similarity_logsumexp', 'propagate_layers')}
        self.module.similarity_logsumexp = BaseModel.similarity_logsumexp_plain
        self.module.propagate_layers = BaseModel.propagate_layers_plain
        if self.module is model_DAMRS:
            self.saved['pseudo_labels'] = model_DAMRS.pseudo_labels
            fast = model_DAMRS.pseudo_labels
            model_DAMRS.pseudo_labels = lambda views, rows, k: fast(views, rows, k, block_floats=2 ** 62)
        return self

    def __exit__(self, *exc):
        for name, value in self.saved.items():
            setattr(self.module, name, value)


def bench_steps(args):
    device = torch.device(args.device)
    folder = prepare_data.synthetic(f'tiktok_b{args.scale:g}', like='tiktok', scale=args.scale, seed=0)
    data = load_dataset(folder)
    print(f'{data.summary()}; {args.threads} thread(s), {device}', flush=True)
    print(f'{"step":<34} {"ours s":>9} {"plain s":>9} {"ratio":>7} {"peak MiB":>9} {"plain MiB":>9}')
    for name in args.models.split(','):
        margs = config.parse_args(['--model_name', name, '--data_path', folder])
        torch.manual_seed(0)
        started = time.time()
        model = registry.build_model(margs, data).to(device)
        build_s = time.time() - started
        model.train()
        optimizer = registry.optimizer(margs, model)
        batch = batch_of(data, margs.batch_size, device)

        def step():
            loss, _ = model.loss(*batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        ours = timed(step, device, args.repeat, args.warmup)
        need = plain_similarity_gib(name, data, margs.batch_size)
        label = f'{name} step (batch {margs.batch_size})'
        if need > args.plain_limit_gib:
            print(f'{label:<34} {ours[0]:9.3f} {"-":>9} {"-":>7} {ours[1]:9.0f} {"-":>9}  plain skipped: its '
                  f'similarity matrices need ~{need:.0f} GiB (> --plain_limit_gib {args.plain_limit_gib:g}); '
                  f'graphs built in {build_s:.0f} s', flush=True)
        else:
            with Plain(model_MENTOR if name == 'MENTOR' else model_DAMRS):
                plain = timed(step, device, args.repeat, args.warmup)
            print(f'{label:<34} {ours[0]:9.3f} {plain[0]:9.3f} {plain[0] / ours[0]:6.2f}x {ours[1]:9.0f} '
                  f'{plain[1]:9.0f}  graphs built in {build_s:.0f} s', flush=True)
        del model, optimizer, batch
        _release_free_memory()
        if device.type == 'cuda':
            torch.cuda.empty_cache()


def measured(label, fn):
    cpu = torch.device('cpu')
    _release_free_memory()
    before = _status_mib('VmRSS')
    with PeakMemory(cpu) as peak:
        started = time.time()
        result = fn()
        seconds = time.time() - started
    print(f'  {label}: {seconds:.1f} s, peak RSS {peak.peak:.0f} MiB ({peak.peak - before:.0f} MiB above the '
          f'{before:.0f} MiB held before)', flush=True)
    return result


def bench_graphs(args):
    users, items = (round(n * args.graph_scale) for n in CLOTHING)
    folder = prepare_data.synthetic(f'clothing_size{args.graph_scale:g}', num_user=users, num_item=items,
                                    inter_per_user=args.inter_per_user, seed=0)
    data = load_dataset(folder, modalities=[])
    rng = np.random.default_rng(0)
    features = {'v': rng.random((items, 4096), dtype=np.float32), 't': rng.random((items, 384), dtype=np.float32)}
    print(f'Amazon-Clothing size: {data.summary()}; features v 4096-d, t 384-d (random, non-negative); '
          f'{args.threads} thread(s); a dense I x I float32 matrix: {items ** 2 * 4 / 2 ** 30:.1f} GiB', flush=True)
    ids = measured(f'DA-MRS content graphs (v and t together, k {args.knn_k})',
                   lambda: model_DAMRS.denoised_knn(features, items, args.knn_k))
    print(f'    neighbours per item (v): mean {(ids[0] >= 0).sum(1).float().mean():.2f} of {args.knn_k}')
    ids = measured(f'DA-MRS behaviour graph (k {args.behaviour_k}, {len(data.train)} training pairs)',
                   lambda: model_DAMRS.behaviour_neighbours(data.train, users, items, args.behaviour_k))
    print(f'    items with a behaviour neighbour: {int((ids[:, 0] >= 0).sum())} of {items}')
    for m, feature in features.items():
        measured(f'MENTOR (FREEDOM) kNN graph {m} ({feature.shape[1]}-d, k {args.knn_k})',
                 lambda: knn_graph.knn_indices(feature, items, args.knn_k))


def main_(argv=None):
    p = step_parser(__doc__, 'MENTOR,DAMRS')
    p.add_argument('--device', default='cpu')
    p.add_argument('--plain_limit_gib', type=float, default=8.0,
                   help='skip a plain step whose similarity matrices would need more memory than this')
    p.add_argument('--knn_k', type=int, default=10)
    p.add_argument('--behaviour_k', type=int, default=2)
    p.add_argument('--inter_per_user', type=float, default=7.08)
    p.add_argument('--graph_scale', type=float, default=1.0, help="Amazon-Clothing size factor for the graphs")
    p.add_argument('--parts', default='steps,graphs', help="what to run, in order: 'steps', 'graphs' or both")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    for part in args.parts.split(','):
        {'steps': bench_steps, 'graphs': bench_graphs}[part](args)


if __name__ == '__main__':
    main_()
