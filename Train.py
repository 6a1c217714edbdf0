"""Training: one epoch of shuffled mini-batches (``train_epoch``), and the run's loop (``fit``).

    from Train import fit, train_epoch
    mean_loss, mean_parts = train_epoch(model, sampler, optimizer, device, epoch)
    status = fit(model, trainer, sampler, optimizer, device, state, evaluate, saver, args)

``fit`` trains epoch after epoch, evaluates after each (validation and test,
SPEC 4), keeps the best model by validation Recall at the first K, stops
early after ``--patience`` evaluations without improvement, writes the
end-of-epoch checkpoint, and stops cleanly when training diverges (the best
model so far is kept).  A SIGTERM (``startup.catch_sigterm``) stops it at the
next safe point, between two steps or after the epoch's checkpoint, on every
rank together: ``Terminated``; the last completed epoch's checkpoint is intact.
"""
import math
import sys
import time

import torch
from tqdm import tqdm

import distributed
import startup


class Divergence(RuntimeError):
    """The loss, a parameter or an evaluation score became NaN or Inf."""


class Terminated(Exception):
    """SIGTERM arrived (on some rank): the run stopped at a safe point; the last checkpoint is intact."""


def stop_point():
    """A safe point: raise ``Terminated`` when a SIGTERM arrived on any rank (they all stop here together)."""
    if distributed.any_rank(startup.stop_requested()):
        raise Terminated()


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
        # the global batch's values, under torchrun; and whether a SIGTERM arrived on some rank (a safe point
        # once this step is taken: every rank learns it from the same all-reduce and stops after the same step)
        value, parts, stop = distributed.global_values(loss, parts, startup.stop_requested())
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
        if stop:
            raise Terminated()
        for k, v in parts.items():
            part_sums[k] = part_sums.get(k, 0.0) + v
        bar.set_postfix({k: f'{v:.4f}' for k, v in parts.items()})
    check_finite_parameters(model, f'after epoch {epoch}')
    return total / max(steps, 1), {k: v / max(steps, 1) for k, v in part_sums.items()}


def fit(model, trainer, sampler, optimizer, device, state, evaluate, saver, args, board=None):
    """Train until ``--num_epoch`` or ``--patience``; ``state`` (see ``checkpoint.new_state``) is updated in
    place.  ``evaluate(epoch)`` returns ``{'val': metrics, 'test': metrics}``; ``saver`` writes the best model
    and the checkpoint.  Returns the run's status, 'done' or 'diverged'.  ``--num_epoch 0`` only evaluates."""
    key = args.topK[0]
    try:
        if args.num_epoch == 0:
            metrics = evaluate(0)
            state.update(best_epoch=0, best_val=metrics['val'], best_test=metrics['test'])
            if board:
                board.epoch(0, None, {}, metrics, 0.0)
        stop_point()
        while state['epoch'] < args.num_epoch and state['bad_evals'] < args.patience:
            epoch = state['epoch'] + 1
            t0 = time.time()
            loss, loss_parts = train_epoch(trainer, sampler, optimizer, device, epoch,
                                           show_bar=args.progress and distributed.is_main())
            tqdm.write(f'epoch {epoch:4d}  loss {loss:.4f}  ({time.time() - t0:.1f}s)')
            metrics = evaluate(epoch)
            seconds = time.time() - t0
            if board:
                board.epoch(epoch, loss, loss_parts, metrics, seconds)
            recall = metrics['val'][key]['recall']
            if recall > state['best_recall']:
                state.update(best_epoch=epoch, best_val=metrics['val'], best_test=metrics['test'],
                             best_recall=recall, bad_evals=0)
                saver.best(model)
            else:
                state['bad_evals'] += 1
            state['epoch'] = epoch
            state['history'].append({'epoch': epoch, 'loss': loss, 'val_recall': recall, 'loss_parts': loss_parts,
                                     'val': metrics['val'], 'seconds': round(seconds, 3)})
            distributed.share_rng_state()       # data mode: the checkpoint's states are every rank's
            saver.last(model, optimizer, state)
            stop_point()
        if state['bad_evals'] >= args.patience:
            print(f'early stop: no validation improvement in {args.patience} evaluations')
    except Divergence as e:
        kept = f'the best model so far is kept in {saver.best_path}' if state['best_epoch'] else 'no best model was saved'
        if distributed.is_main():               # every rank diverges at the same step: one line
            print(f'training diverged: {e}; {kept}', file=sys.stderr)
        return 'diverged'
    return 'done'
