"""One training epoch: shuffled mini-batches, one optimiser step each, a tqdm bar.

    from Train import train_epoch
    mean_loss, mean_parts = train_epoch(model, sampler, optimizer, device, epoch)
"""
import math

import torch
from tqdm import tqdm

import distributed


class Divergence(RuntimeError):
    """The loss, a parameter or an evaluation score became NaN or Inf."""


def check_finite_parameters(model, when):
    """Raise ``Divergence`` naming the first parameter with a NaN or Inf (one device sync)."""
    params = list(model.named_parameters())
    finite = torch.stack([torch.isfinite(p).all() for _, p in params]) if params else torch.ones(0, dtype=torch.bool)
    if not bool(finite.all()):
        name = params[int((~finite).nonzero()[0])][0]
        raise Divergence(f'parameter {name} is non-finite {when}')


def train_epoch(model, sampler, optimizer, device, epoch, show_bar=True):
    """Train ``model`` for one pass over ``sampler``; returns the mean loss and the mean of each loss part.

    A model with an ``on_epoch_start()`` method has it called first, before any batch is drawn.

    Raises ``Divergence`` at the first non-finite loss, before the step that
    would spread it into the parameters, and when a parameter is non-finite
    after the epoch (a finite loss can still take a step to Inf: ``--l_r 1e30``).
    """
    model.train()
    if hasattr(model, 'on_epoch_start'):    # per-epoch state drawn from the seeded RNG (FREEDOM's pruned graph)
        model.on_epoch_start()
    total, steps, part_sums = 0.0, 0, {}
    bar = tqdm(sampler.batches(model.needs_negatives), total=len(sampler), desc=f'epoch {epoch}',
               leave=False, disable=not show_bar, dynamic_ncols=True)
    for batch in bar:
        loss, parts = model.loss(*(t.to(device) for t in batch))
        value, parts = distributed.global_values(loss, parts)     # the global batch's, under torchrun
        if not math.isfinite(value):
            raise Divergence(f'loss is {value} at epoch {epoch}, batch {steps + 1}')
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        try:
            optimizer.step()
        except RuntimeError as e:      # a step size beyond the float range (Adam divides l_r by 1 - beta1^t)
            if 'overflow' not in str(e):
                raise
            raise Divergence(f'the optimiser step overflows at epoch {epoch}, batch {steps + 1}') from None
        total += value
        steps += 1
        for k, v in parts.items():
            part_sums[k] = part_sums.get(k, 0.0) + v
        bar.set_postfix({k: f'{v:.4f}' for k, v in parts.items()})
    check_finite_parameters(model, f'after epoch {epoch}')
    return total / max(steps, 1), {k: v / max(steps, 1) for k, v in part_sums.items()}
