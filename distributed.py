"""Data-parallel training under torchrun (SPEC 7): set-up, the rank's share of a batch, sums over ranks.

    torchrun --nproc_per_node 2 main.py --data_path ml100k          # two processes on this machine
    python main.py --data_path ml100k                               # one process: nothing here is set up

torchrun starts one process per rank and sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; without them (a plain ``python main.py``) ``setup`` does
nothing and every helper below is the identity, bit for bit.

What N processes compute.  Every rank holds the graph and the model, draws the
same global batches from the same seed (``DataLoad.TrainSampler``) and returns
``W · share`` as its loss, where the W ranks' shares add up to the one-process
loss of the global batch; DDP averages the gradients over the ranks, so every
rank steps with the gradient of the one-process loss (to float rounding):

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
(``my_chunks``, ``sum_over_ranks``).  A rank that dies ends the job: torchrun
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


def setup(use_cuda, timeout_s):
    """Join torchrun's process group: NCCL on CUDA (one GPU per local rank), gloo on the CPU.

    Returns the device of this rank, or None when torchrun did not start the
    process (then nothing is set up).  Ranks other than 0 print nothing.
    """
    if not requested():
        return None
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


def row_share(n):
    """``(lo, hi, weight)``: this rank's rows ``lo:hi`` of ``n`` rows and the weight ``W (hi - lo) / n``
    that turns the mean over them into ``W ·`` its share of the mean over all ``n``.
    One process: ``(0, n, 1.0)``.  The ranks' rows are contiguous, in rank order, sizes within one."""
    if not active():
        return 0, n, 1.0
    r, w = dist.get_rank(), dist.get_world_size()
    lo, hi = r * n // w, (r + 1) * n // w
    return lo, hi, w * (hi - lo) / n


def check_batches(num_pairs, batch_size):
    """A message when some global batch has fewer pairs than there are ranks (a rank would get none), else None."""
    w = world_size()
    smallest = num_pairs % batch_size or batch_size       # the last batch, or every batch
    if smallest < w:
        return (f'--batch_size: a batch of {smallest} training pairs cannot be split across {w} processes '
                f'({num_pairs} pairs, batches of {batch_size}); choose a batch size whose last batch holds '
                f'at least {w} pairs')
    return None


class _Loss(nn.Module):
    """DDP synchronises the gradients of what its ``forward`` computed: here, the model's loss."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *batch):
        return self.model.loss(*batch)


class DataParallel:
    """The model as ``Train.train_epoch`` uses it (``train``, ``needs_negatives``, ``loss``), with
    DDP's gradient averaging.  ``loss`` takes the global batch and returns ``W ·`` this rank's share."""

    def __init__(self, model, device):
        self.model, self.needs_negatives = model, model.needs_negatives
        if hasattr(model, 'on_epoch_start'):    # FREEDOM's pruned graph: every rank draws the same one
            self.on_epoch_start = model.on_epoch_start
        for p in model.parameters():            # they agree already (same seed, same weight file)
            dist.broadcast(p.data, 0)
        # The buffers (graph, features) are built from the data on every rank; DDP cannot broadcast sparse ones.
        self.ddp = nn.parallel.DistributedDataParallel(
            _Loss(model), device_ids=[device.index] if device.type == 'cuda' else None,
            init_sync=False, forward_sync_buffers=False)

    def train(self, mode=True):
        self.model.train(mode)
        return self

    def named_parameters(self):
        return self.model.named_parameters()

    def loss(self, *batch):
        if not self.needs_negatives:
            return self.ddp(*batch)             # model_SSL.info_nce takes the rank's rows
        lo, hi, weight = row_share(len(batch[0]))
        loss, parts = self.ddp(*(t[lo:hi] for t in batch))
        return weight * loss, {k: weight * v for k, v in parts.items()}


def wrap(model, device):
    """``DataParallel(model)`` under torchrun, else the model itself."""
    return DataParallel(model, device) if active() else model


def global_values(loss, parts):
    """The loss and its parts (floats) of the global batch: the sum of the ranks' shares.
    One process: ``loss.item()`` and ``parts`` unchanged."""
    if not active():
        return loss.item(), parts
    values = torch.tensor([loss.item(), *parts.values()], dtype=torch.float64)
    if dist.get_backend() == 'nccl':
        values = values.cuda()
    dist.all_reduce(values)
    values = (values / dist.get_world_size()).tolist()
    return values[0], dict(zip(parts, values[1:]))


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
