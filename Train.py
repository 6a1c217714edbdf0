"""One training epoch: shuffled mini-batches, one optimiser step each, a tqdm bar.

    from Train import train_epoch
    mean_loss, mean_parts = train_epoch(model, sampler, optimizer, device, epoch)
"""
import math

from tqdm import tqdm

import distributed


class Divergence(RuntimeError):
    """The loss became NaN or Inf."""


def train_epoch(model, sampler, optimizer, device, epoch, show_bar=True):
    """Train ``model`` for one pass over ``sampler``; returns the mean loss and the mean of each loss part.

    A model with an ``on_epoch_start()`` method has it called first, before any batch is drawn.

    Raises ``Divergence`` at the first non-finite loss, before the step that
    would spread it into the parameters.
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
        optimizer.step()
        total += value
        steps += 1
        for k, v in parts.items():
            part_sums[k] = part_sums.get(k, 0.0) + v
        bar.set_postfix({k: f'{v:.4f}' for k, v in parts.items()})
    return total / max(steps, 1), {k: v / max(steps, 1) for k, v in part_sums.items()}
