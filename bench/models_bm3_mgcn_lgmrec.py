"""BM3, MGCN and LGMRec (issue #24): one training step at Tiktok's size, and MGCN's item-item graph
build at Amazon-Electronics' size.

    python bench/models_bm3_mgcn_lgmrec.py                      # both parts, full sizes
    python bench/models_bm3_mgcn_lgmrec.py --scale 0.25 --skip_knn
    python bench/models_bm3_mgcn_lgmrec.py --knn_only --knn_items 63001
    python bench/models_bm3_mgcn_lgmrec.py --data tiktok --models MGCN,LGMRec --skip_knn   # the real Tiktok split

Step: synthetic Tiktok (``prepare_data.synthetic --like tiktok --scale s``: 36,656 users and 76,085 items
at s = 1), or a prepared dataset (``--data tiktok``: the HKUDS Tiktok split, 9,308 users and 6,710 items),
one Adam step on a batch of the model's default size (2048 pairs, a uniform negative each), median of
``--repeat`` after ``--warmup``, with the peak resident memory of the process during the timed steps;
beside it the same step by the plain formulas: each model's ``loss_plain`` with ``propagate_layers_plain``
(BM3: the authors' order; MGCN: every node's views and autograd's InfoNCE; LGMRec: autograd's
``logsumexp`` of the whole similarity matrices).  MGCN's
step runs on item-item graphs of the real size (k neighbours per item, cosine-like weights) but random
neighbours: the step's cost depends on the number of entries only, and the real build is the second part.

kNN build: random non-negative features for 63,001 items, 4,096-d (image) and 384-d (text), as the
Amazon-Electronics release of MMRec; ``model_MGCN.weighted_knn`` and ``normalized_weighted_knn`` per
modality, time and the process's peak resident memory (VmHWM, absolute and above the memory held before).
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import BaseModel  # noqa: E402
import config  # noqa: E402
import model_BM3  # noqa: E402
import model_LGMRec  # noqa: E402
import model_MGCN  # noqa: E402
import prepare_data  # noqa: E402
import registry  # noqa: E402
from bench import PeakMemory, _release_free_memory, _status_mib, timed  # noqa: E402
from DataLoad import load_dataset  # noqa: E402
from knn_graph import SIMILARITY_FLOATS  # noqa: E402


def random_item_graphs(features, num_item, k, seed=0):
    """MGCN's ``{m: Ŝ_m}`` with the real number of entries but random neighbours (itself first)."""
    gen = torch.Generator().manual_seed(seed)
    graphs = {}
    for m in features:
        indices = torch.randint(0, num_item, (num_item, k), generator=gen)
        indices[:, 0] = torch.arange(num_item)
        values = torch.rand(num_item, k, generator=gen)
        values[:, 0] = 1.0
        graphs[m] = model_MGCN.normalized_weighted_knn(indices, values, num_item)
    return graphs


def build(name, data, folder):
    args = config.parse_args(['--model_name', name, '--data_path', folder])
    if name != 'MGCN':
        return registry.build_model(args, data), args
    adj = BaseModel.normalized_adjacency(data.train, data.num_user, data.num_item)
    model = model_MGCN.MGCN(data.num_user, data.num_item, data.features, adj,
                            random_item_graphs(data.features, data.num_item, args.knn_k), args.dim_latent,
                            args.num_layer, reg_weight=args.weight_decay, cl_weight=args.cl_weight)
    return model, args


def batch_of(data, size, needs_negatives, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, len(data.train), (size,), generator=gen)
    pairs = torch.as_tensor(data.train)[rows]
    if not needs_negatives:
        return pairs[:, 0], pairs[:, 1]
    return pairs[:, 0], pairs[:, 1], torch.randint(0, data.num_item, (size,), generator=gen)


def step_data(args):
    """``(folder, dataset)`` of the step benchmarks: ``--data`` when given, else synthetic Tiktok at ``--scale``."""
    if args.data:
        from DataLoad import resolve_data
        folder = resolve_data(args.data)
    else:
        folder = prepare_data.synthetic(f'tiktok_b{args.scale:g}', like='tiktok', scale=args.scale, seed=0)
    return folder, load_dataset(folder)


def bench_steps(args):
    folder, data = step_data(args)
    print(f'{data.summary()}; {args.threads} thread(s)', flush=True)
    print(f'{"step":<34} {"ours s":>9} {"plain s":>9} {"ratio":>7} {"peak MiB":>9} {"plain MiB":>9}')
    for name in args.models.split(','):
        torch.manual_seed(0)
        model, margs = build(name, data, folder)
        module = {'BM3': model_BM3, 'MGCN': model_MGCN, 'LGMRec': model_LGMRec}[name]
        time_step(name, model, margs, data, module, model.loss_plain, args)
        del model
        _release_free_memory()


def time_step(name, model, margs, data, module, plain_loss, args):
    """Print one row: an Adam step of ``model.loss`` (after ``on_epoch_start``) and of ``plain_loss`` with
    ``module.propagate_layers`` replaced by ``propagate_layers_plain``, each timed by ``timed``."""
    cpu = torch.device('cpu')
    model.train()
    model.on_epoch_start()
    optimizer = registry.optimizer(margs, model)
    batch = batch_of(data, margs.batch_size, model.needs_negatives)

    def step(loss_fn):
        def run():
            loss, _ = loss_fn(*batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return run
    ours = timed(step(model.loss), cpu, args.repeat, args.warmup)
    fast_propagation = module.propagate_layers
    module.propagate_layers = BaseModel.propagate_layers_plain
    try:
        plain = timed(step(plain_loss), cpu, args.repeat, args.warmup)
    finally:
        module.propagate_layers = fast_propagation
    print(f'{name + " step (batch " + str(margs.batch_size) + ")":<34} {ours[0]:9.3f} {plain[0]:9.3f} '
          f'{plain[0] / ours[0]:6.2f}x {ours[1]:9.0f} {plain[1]:9.0f}', flush=True)


def bench_knn(args):
    cpu = torch.device('cpu')
    rng = np.random.default_rng(0)
    print(f'MGCN kNN graph: {args.knn_items} items, k {args.knn_k}, {args.threads} thread(s), block '
          f'{SIMILARITY_FLOATS} floats ({max(1, SIMILARITY_FLOATS // args.knn_items)} items); a dense I x I float32 '
          f'matrix: {args.knn_items ** 2 * 4 / 2 ** 30:.1f} GiB', flush=True)
    for m, dim in (('t', 384), ('v', 4096)):
        feature = rng.random((args.knn_items, dim), dtype=np.float32)
        _release_free_memory()
        before = _status_mib('VmRSS')
        with PeakMemory(cpu) as peak:
            started = time.time()
            indices, values = model_MGCN.weighted_knn(feature, args.knn_items, args.knn_k)
            graph = model_MGCN.normalized_weighted_knn(indices, values, args.knn_items)
            seconds = time.time() - started
        print(f'  {m} ({dim}-d): {seconds:.1f} s, peak RSS {peak.peak:.0f} MiB ({peak.peak - before:.0f} MiB above '
              f'the {before:.0f} MiB held before; the features {feature.nbytes / 2 ** 20:.0f} MiB), '
              f'{graph.values().numel()} entries', flush=True)
        del feature, indices, values, graph


def step_parser(doc, models):
    """The step benchmarks' shared flags (size, models, repetitions, threads)."""
    p = argparse.ArgumentParser(description=doc.split('\n\n')[0])
    p.add_argument('--scale', type=float, default=1.0, help='Tiktok size factor for the step (1 = published)')
    p.add_argument('--models', default=models)
    p.add_argument('--repeat', type=int, default=3)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--data', default=None, help='a prepared dataset (e.g. tiktok) instead of the synthetic one')
    return p


def main_(argv=None):
    p = step_parser(__doc__, 'BM3,MGCN,LGMRec')
    p.add_argument('--knn_items', type=int, default=63001)
    p.add_argument('--knn_k', type=int, default=10)
    p.add_argument('--skip_knn', action='store_true')
    p.add_argument('--knn_only', action='store_true')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.knn_only:
        bench_steps(args)
    if not args.skip_knn:
        bench_knn(args)


if __name__ == '__main__':
    main_()
