"""Data-parallel training under torchrun (SPEC 7): set-up, the rank's share of a batch, sums over ranks.

    torchrun --nproc_per_node 2 main.py --data_path ml100k          # two processes on this machine
    python main.py --data_path ml100k                               # one process: nothing here is set up

torchrun starts one process per rank and sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; without them (a plain ``python main.py``) ``setup`` does
nothing and every helper below is the identity, bit for bit.

Two modes (``--dist_mode``).

``data`` (the default): the work is split.  Each epoch's permutation of the
training pairs is drawn from the seeded sampler RNG exactly as one process
draws it, cut into global batches of ``W · --batch_size`` pairs, and rank r
trains on rows ``r/W .. (r+1)/W`` of each (``DataLoad.TrainSampler(ranks=W,
rank=r)``): an epoch takes 1/W of the steps, the effective batch is
``W · --batch_size``, in-batch losses contrast within the rank's batch as one
process does with that batch, and DDP averages the gradients.  Sampled
negatives are drawn for the whole global batch on every rank (then sliced), so
every rank's sampler RNG stays where rank 0's is; the torch RNG (dropout, FM's
branch pair) is rank 0's on every rank at each epoch end (``share_rng_state``).
So the checkpoint's random states mean the same under any world size: the next
epoch's permutation is the same whoever resumes it (W' ranks or one process).
``--lr_scale_ranks`` multiplies the learning rate by W (``scale_lr``).

``exact``: N processes compute the one-process loss of each global batch of
``--batch_size`` pairs (for verification).  Every rank draws the same batches
and returns ``W · share`` as its loss, where the W ranks' shares add up to the
one-process loss; DDP averages the gradients over the ranks, so every rank
steps with the gradient of the one-process loss (to float rounding):

* BPR models (``needs_negatives``: a mean over the batch's pairs plus terms
  that do not depend on the batch) get rows ``lo:hi`` of the global batch,
  negatives included, and their loss is weighted by ``W (hi - lo) / n``
  (``row_share``), which is exact also when the last batch splits unevenly;
* in-batch models (SLMRec) get the whole global batch: each rank computes its
  forward as one process does (so FD's dropout masks and FM's branch draw,
  which depend on the batch's rows and on the torch RNG stream, are those of
  one process), and ``model_SSL.info_nce`` takes the rank's share of the
  contrast's rows against all of the batch's columns; the logits and their
  backward, the quadratic part, are what the ranks split.

Evaluation splits the users' chunks across ranks and adds the per-user values
(``my_chunks``, ``sum_over_ranks``).  At every step the ranks agree whether a
SIGTERM reached any of them (in ``global_values``' all-reduce; between epochs
``any_rank``), so they stop after the same step.  A rank that dies ends the job: torchrun
stops the others; a rank that hangs makes the others' next collective fail
after ``--dist_timeout`` seconds.
"""
import contextlib
import datetime
import os
import sys

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

ENV = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')
MODES = ('data', 'exact')
_mode = ['data']      # set by setup: --dist_mode of this process


def requested():
    """Whether torchrun started this process (its environment variables are set)."""
    return all(name in os.environ for name in ENV)


def active():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if active() else int(os.environ.get('RANK', 0))


def world_size():
    return dist.get_world_size() if active() else 1


def is_main():
    """Rank 0, or the only process: the one that prints and writes files."""
    return rank() == 0


def exact():
    """Whether N ranks compute the one-process loss (``--dist_mode exact``) rather than split the pairs."""
    return active() and _mode[0] == 'exact'


def data_parallel():
    """Whether the ranks train on their own shares of the pairs (``--dist_mode data`` under torchrun)."""
    return active() and _mode[0] == 'data'


def setup(use_cuda, timeout_s, mode='data'):
    """Join torchrun's process group: NCCL on CUDA (one GPU per local rank), gloo on the CPU.

    Returns the device of this rank, or None when torchrun did not start the
    process (then nothing is set up).  Ranks other than 0 print nothing.
    """
    if not requested():
        return None
    _mode[0] = mode
    timeout = datetime.timedelta(seconds=timeout_s)
    if use_cuda:
        device = torch.device('cuda', int(os.environ['LOCAL_RANK']))
        torch.cuda.set_device(device)
        dist.init_process_group('nccl', timeout=timeout, device_id=device)
    else:
        device = torch.device('cpu')
        dist.init_process_group('gloo', timeout=timeout)
    if not is_main():
        sys.stdout = open(os.devnull, 'w')
    return device


def lost_peer(error):
    """One line for a collective that failed because another rank died or hung (``--dist_timeout``), else None."""
    if not active() or not (isinstance(error, dist.DistError) or 'gloo' in str(error)):
        return None
    lines = str(error).strip().splitlines()
    return (f'rank {rank()}: another process stopped answering ({lines[-1] if lines else type(error).__name__}); '
            f'it failed, was killed, or hung for longer than --dist_timeout')


def cleanup():
    if active():
        dist.destroy_process_group()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. prepares a dataset), the others after it."""
    if active() and not is_main():
        dist.barrier()
    yield
    if active() and is_main():
        dist.barrier()


def rows_of_rank(n, r, w):
    """Rank r's rows ``lo:hi`` of ``n`` rows split across ``w`` ranks: contiguous, in rank order, sizes within one."""
    return r * n // w, (r + 1) * n // w


def row_share(n):
    """``(lo, hi, weight)``: in exact mode, this rank's rows ``lo:hi`` of ``n`` rows and the weight
    ``W (hi - lo) / n`` that turns the mean over them into ``W ·`` its share of the mean over all ``n``.
    One process, and data mode (the rank's batch is its own): ``(0, n, 1.0)``."""
    if not exact():
        return 0, n, 1.0
    lo, hi = rows_of_rank(n, dist.get_rank(), dist.get_world_size())
    return lo, hi, dist.get_world_size() * (hi - lo) / n


def sampler_share():
    """``(ranks, rank)`` for ``DataLoad.TrainSampler``: the pairs are dealt in data mode, else ``(1, 0)``."""
    return (world_size(), rank()) if data_parallel() else (1, 0)


def check_batches(num_pairs, batch_size):
    """A message when some global batch has fewer pairs than there are ranks (a rank would get none), else None.
    The global batch is ``batch_size`` pairs in exact mode, ``W · batch_size`` in data mode."""
    w = world_size()
    step = batch_size * sampler_share()[0]
    smallest = num_pairs % step or step       # the last batch, or every batch
    if smallest < w:
        return (f'--batch_size: a batch of {smallest} training pairs cannot be split across {w} processes '
                f'({num_pairs} pairs, batches of {step}); choose a batch size whose last batch holds '
                f'at least {w} pairs')
    return None


def scale_lr(optimizer, on):
    """``--lr_scale_ranks``: the linear scaling rule, every group's learning rate times W (the effective batch
    grows W-fold in data mode).  Returns the factor (1 in one process or when off)."""
    factor = world_size() if on else 1
    for group in optimizer.param_groups:
        group['lr'] *= factor
    return factor


def any_rank(flag):
    """Whether ``flag`` is true on some rank (one small all-reduce under torchrun): the ranks stop together."""
    if not active():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == 'nccl':
        t = t.cuda()
    dist.all_reduce(t)
    return bool(t.item() > 0)


def share_rng_state():
    """Data mode, at an epoch's end: every rank takes rank 0's torch RNG state.  The ranks' streams may part
    (dropout over batches of different sizes); after this the checkpoint's state (rank 0's) is every rank's,
    so a resumed run draws what the uninterrupted one draws, under any world size."""
    if not data_parallel():
        return
    torch.set_rng_state(_from_rank0(torch.get_rng_state()))
    if dist.get_backend() == 'nccl':
        torch.cuda.set_rng_state(_from_rank0(torch.cuda.get_rng_state()))


def _from_rank0(state):
    """Rank 0's copy of a CPU byte tensor (through the device under NCCL)."""
    if dist.get_backend() == 'nccl':
        on_device = state.cuda()
        dist.broadcast(on_device, 0)
        return on_device.cpu()
    dist.broadcast(state, 0)
    return state


class _Loss(nn.Module):
    """DDP synchronises the gradients of what its ``forward`` computed: here, the model's loss."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *batch):
        return self.model.loss(*batch)


class DataParallel:
    """The model as ``Train.train_epoch`` uses it (``train``, ``needs_negatives``, ``loss``), with
    DDP's gradient averaging.  Data mode: ``loss`` is the model's loss of the rank's batch.  Exact mode: it
    takes the global batch and returns ``W ·`` this rank's share."""

    def __init__(self, model, device, extra=None):
        self.model, self.needs_negatives = model, model.needs_negatives
        if hasattr(model, 'on_epoch_start'):    # FREEDOM's pruned graph: every rank draws the same one
            self.on_epoch_start = model.on_epoch_start
        for hook in ('epoch_steps', 'batch_steps'):     # a model's other optimisers' steps (Train.extra_steps)
            if hasattr(model, hook):
                setattr(self, hook, getattr(model, hook))
        for p in model.parameters():            # they agree already (same seed, same weight file)
            dist.broadcast(p.data, 0)
        # The other optimisers' parameters are not the main loss's: DDP leaves them to Train.extra_steps.
        taken = {id(p) for opt in (extra or {}).values() for group in opt.param_groups for p in group['params']}
        loss = _Loss(model)
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            loss, [f'model.{name}' for name, p in model.named_parameters() if id(p) in taken])
        # The buffers (graph, features) are built from the data on every rank; DDP cannot broadcast sparse ones.
        self.ddp = nn.parallel.DistributedDataParallel(
            loss, device_ids=[device.index] if device.type == 'cuda' else None,
            init_sync=False, forward_sync_buffers=False)

    def train(self, mode=True):
        self.model.train(mode)
        return self

    def named_parameters(self):
        return self.model.named_parameters()

    def loss(self, *batch):
        if not exact() or not self.needs_negatives:
            return self.ddp(*batch)             # data mode: the rank's own batch; exact: info_nce takes its rows
        lo, hi, weight = row_share(len(batch[0]))
        loss, parts = self.ddp(*(t[lo:hi] for t in batch))
        return weight * loss, {k: weight * v for k, v in parts.items()}


def wrap(model, device, extra=None):
    """``DataParallel(model)`` under torchrun, else the model itself; ``extra``: the model's other optimisers
    (their parameters are left out of DDP's gradient averaging, ``average_gradients`` does theirs)."""
    return DataParallel(model, device, extra) if active() else model


def average_gradients(optimizer):
    """Data mode: each gradient of ``optimizer``'s parameters averaged over the ranks (what DDP does for the main
    loss), for a step on the rank's own batch; one process: nothing."""
    if not active():
        return
    for group in optimizer.param_groups:
        for p in group['params']:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(dist.get_world_size())


def gather_rows(rows):
    """The rows [n, c] of every rank, in rank order (each rank may hold another n); one process: ``rows``.
    What a model learns from its batch and keeps for all ranks (MMSSL's learned graph edges) stays the same
    on every rank, and is the global batch's, as one process collects it."""
    if not active():
        return rows
    w = dist.get_world_size()
    count = torch.tensor([rows.shape[0]], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(w)]
    dist.all_gather(counts, count)
    most = int(max(c.item() for c in counts))
    padded = rows.new_zeros((most, *rows.shape[1:]))
    padded[:rows.shape[0]] = rows
    parts = [torch.zeros_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:int(c.item())] for part, c in zip(parts, counts)])


def global_values(loss, parts, stop=False):
    """The loss and its parts (floats) of the global batch: the sum of the ranks' shares (exact mode), the mean
    of the ranks' batch losses (data mode); and whether ``stop`` is true on some rank.  One all-reduce carries
    all three, so a step meets the other ranks once besides DDP's gradient all-reduce.
    One process: ``loss.item()``, ``parts`` and ``stop`` unchanged."""
    if not active():
        return loss.item(), parts, bool(stop)
    values = torch.tensor([loss.item(), *parts.values(), 1.0 if stop else 0.0], dtype=torch.float64)
    if dist.get_backend() == 'nccl':
        values = values.cuda()
    dist.all_reduce(values)
    stop = bool(values[-1].item() > 0)
    values = (values[:-1] / dist.get_world_size()).tolist()
    return values[0], dict(zip(parts, values[1:])), stop


def my_chunks(starts):
    """This rank's share of evaluation's chunks (every W-th, from its rank on); one process: all."""
    return starts[rank()::world_size()] if active() else starts


def sum_over_ranks(values):
    """Element-wise sum of a float64 numpy array over the ranks (each filled its own users, zeros elsewhere)."""
    if not active():
        return values
    t = torch.from_numpy(np.ascontiguousarray(values))
    if dist.get_backend() == 'nccl':
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().numpy()
