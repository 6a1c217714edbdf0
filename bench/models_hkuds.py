"""MMSSL and DiffMM (issue #32): their expensive steps at TikTok's size (the HKUDS TikTok set), each against a
plain reference of the same math in this process.

    python bench/models_hkuds.py                         # Data/tiktok, prepared by prepare_data.py hkuds
    python bench/models_hkuds.py --data tiktok_small --repeat 1 --warmup 0

MMSSL: one batch's two steps at its default batch (1024 users): the discriminator's (a forward without
gradient, D on the fake, real and interpolated rows, the gradient penalty, backward) and the main loss's
(forward, the adversarial term, backward), with the fast path (``model.fast``: D's first layer on the fake rows
from their rank-d form, the real rows' first layer once for their copies, the interpolation's as a mix of the
two) and with the plain formulas (``fast=False``: every row dense, as the authors' code).

DiffMM: the denoisers' pass (one step on a batch of 1024 interaction rows, every modality) and the rebuild of
every user's graph rows, with the rows taken from the interaction CSR a batch at a time against the authors'
arrangement (the whole dense users x items matrix held, rows sliced from it: the same numbers, its memory is
the difference); and one main (BPR) step.

Each line: the median seconds of ``--repeat`` runs after ``--warmup``, and the process's peak resident memory
during them.
"""
import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import config  # noqa: E402
import registry  # noqa: E402
from bench import _release_free_memory, timed  # noqa: E402
from DataLoad import load_dataset, resolve_data  # noqa: E402
from models_bm3_mgcn_lgmrec import batch_of  # noqa: E402


def build(name, folder, data):
    torch.manual_seed(0)
    args = config.parse_args(['--model_name', name, '--data_path', folder])
    model = registry.build_model(args, data).train()
    optimizer, extra = registry.optimizers(args, model)
    return model, args, optimizer, extra


def step(optimizer, loss):
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def line(label, ours, plain=None):
    if plain is None:
        print(f'{label:<44} {ours[0]:9.3f} {"":>9} {"":>7} {ours[1]:9.0f}', flush=True)
    else:
        print(f'{label:<44} {ours[0]:9.3f} {plain[0]:9.3f} {plain[0] / ours[0]:6.2f}x {ours[1]:9.0f} {plain[1]:9.0f}',
              flush=True)


def bench_mmssl(folder, data, args):
    cpu = torch.device('cpu')
    model, margs, optimizer, extra = build('MMSSL', folder, data)
    users, pos, neg = batch_of(data, margs.batch_size, True)

    def discriminator():
        step(extra['discriminator'], model.discriminator_loss(users)[0])

    def main_step():
        step(optimizer, model.loss(users, pos, neg)[0])
    for label, fn in ((f'MMSSL discriminator step (batch {margs.batch_size})', discriminator),
                      (f'MMSSL main step (batch {margs.batch_size})', main_step)):
        model.fast = True
        ours = timed(fn, cpu, args.repeat, args.warmup)
        model.fast = False
        plain = timed(fn, cpu, args.repeat, args.warmup)
        line(label, ours, plain)
    del model, optimizer, extra
    _release_free_memory()


def bench_diffmm(folder, data, args):
    cpu = torch.device('cpu')
    model, margs, optimizer, extra = build('DiffMM', folder, data)
    blocked = model.interaction_rows
    users = torch.randperm(data.num_user)[:margs.batch_size].sort().values
    item_ids = model.embedding_item.detach()

    def denoisers():
        x0 = model.interaction_rows(users)
        step(extra['denoisers'], sum(model.diffusion_loss(m, x0, item_ids) for m in model.modalities))

    def dense_rows(rows, dense=[]):
        if not dense:                               # the authors' whole users x items matrix, held from now on
            dense.append(model.inter.to_dense())
        return dense[0][rows]
    for label, fn in ((f'DiffMM denoisers step ({len(users)} rows)', denoisers),
                      ('DiffMM rebuild (every user)', model.rebuild_graphs)):
        model.interaction_rows = blocked
        ours = timed(fn, cpu, args.repeat, args.warmup)
        model.interaction_rows = dense_rows
        plain = timed(fn, cpu, args.repeat, args.warmup)
        line(label, ours, plain)
    model.interaction_rows = blocked
    users, pos, neg = batch_of(data, margs.batch_size, True)
    line(f'DiffMM main step (batch {margs.batch_size})', timed(lambda: step(optimizer, model.loss(users, pos, neg)[0]), cpu,
                                                args.repeat, args.warmup))


def main_(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data', default='tiktok', help='dataset folder or name under Data/ (default: the HKUDS TikTok)')
    p.add_argument('--models', default='MMSSL,DiffMM')
    p.add_argument('--repeat', type=int, default=3)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--threads', type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = resolve_data(args.data)
    data = load_dataset(folder)
    print(f'{data.summary()}; {args.threads} thread(s)', flush=True)
    print(f'{"step":<44} {"ours s":>9} {"plain s":>9} {"ratio":>7} {"peak MiB":>9} {"plain MiB":>9}')
    for name in args.models.split(','):
        {'MMSSL': bench_mmssl, 'DiffMM': bench_diffmm}[name](folder, data, args)


if __name__ == '__main__':
    main_()
