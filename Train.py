"""Training: one epoch of shuffled mini-batches (``train_epoch``), and the run's loop (``fit``).

    from Train import fit, train_epoch
    mean_loss, mean_parts = train_epoch(model, sampler, optimizer, device, epoch)
    status = fit(model, trainer, sampler, optimizer, device, state, evaluate, saver, args)

``fit`` trains epoch after epoch, evaluates after each (validation and test,
SPEC 4), keeps the best model by validation Recall at the first K (by test
Recall with ``--select_on test``, the papers' optimistic protocol), stops
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


def _step(optimizer, where):
    """``optimizer.step()``, a step size beyond the float range (Adam divides l_r by 1 - beta1^t) a Divergence."""
    try:
        optimizer.step()
    except RuntimeError as e:
        if 'overflow' not in str(e):
            raise
        raise Divergence(f'the optimiser step overflows {where}') from None


def extra_steps(steps, optimizers, where, per_batch):
    """Take the steps of a model's other optimisers (``registry.Recommender.epoch_steps`` / ``batch_steps``):
    each ``(name, loss, parts)`` is stepped before the next is drawn.  A batch step saw the rank's own batch, so
    its gradients are averaged over the ranks (``per_batch``); an epoch step is the same on every rank.
    Returns ``({part: sum}, count)``; a non-finite loss is a ``Divergence``, a SIGTERM on some rank
    ``Terminated`` after an epoch step (the last checkpoint is the previous epoch's)."""
    sums, count = {}, 0
    for name, loss, parts in steps:
        value, parts, stop = distributed.global_values(loss, parts, startup.stop_requested())
        if not math.isfinite(value):
            raise Divergence(f'the {name} loss is {value} {where}')
        optimizer = optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if per_batch:
            distributed.average_gradients(optimizer)
        _step(optimizer, where)
        count += 1
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
        if stop and not per_batch:       # a batch step's stop is taken after the batch's main step
            raise Terminated()
    return sums, count


def train_epoch(model, sampler, optimizer, device, epoch, show_bar=True, extra=None):
    """Train ``model`` for one pass over ``sampler``; returns the mean loss and the mean of each loss part.

    A model with an ``on_epoch_start()`` method has it called first, before any batch is drawn; a model with
    other optimisers (``extra``: name -> optimiser) then takes its ``epoch_steps``, and its ``batch_steps``
    before each batch's main step (``extra_steps``); their parts are averaged over their own steps.

    Raises ``Divergence`` at the first non-finite loss, before the step that
    would spread it into the parameters, and when a parameter is non-finite
    after the epoch (a finite loss can still take a step to Inf: ``--l_r 1e30``).
    """
    model.train()
    if hasattr(model, 'on_epoch_start'):    # per-epoch state drawn from the seeded RNG (FREEDOM's pruned graph)
        model.on_epoch_start()
    extra = extra or {}
    epoch_sums, epoch_count = extra_steps(model.epoch_steps(), extra, f'at the start of epoch {epoch}',
                                          per_batch=False) if extra else ({}, 0)
    total, steps, part_sums, batch_sums = 0.0, 0, {}, {}
    bar = tqdm(sampler.batches(model.needs_negatives), total=len(sampler), desc=f'epoch {epoch}',
               leave=False, disable=not show_bar, dynamic_ncols=True)
    for batch in bar:
        batch = tuple(t.to(device) for t in batch)
        if extra:
            sums, _ = extra_steps(model.batch_steps(*batch), extra, f'at epoch {epoch}, batch {steps + 1}',
                                  per_batch=True)
            for k, v in sums.items():
                batch_sums[k] = batch_sums.get(k, 0.0) + v
        loss, parts = model.loss(*batch)
        # the global batch's values, under torchrun; and whether a SIGTERM arrived on some rank (a safe point
        # once this step is taken: every rank learns it from the same all-reduce and stops after the same step)
        value, parts, stop = distributed.global_values(loss, parts, startup.stop_requested())
        if not math.isfinite(value):
            raise Divergence(f'loss is {value} at epoch {epoch}, batch {steps + 1}')
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _step(optimizer, f'at epoch {epoch}, batch {steps + 1}')
        total += value
        steps += 1
        if stop:
            raise Terminated()
        for k, v in parts.items():
            part_sums[k] = part_sums.get(k, 0.0) + v
        bar.set_postfix({k: f'{v:.4f}' for k, v in parts.items()})
    check_finite_parameters(model, f'after epoch {epoch}')
    means = {k: v / max(steps, 1) for k, v in {**part_sums, **batch_sums}.items()}
    means.update({k: v / max(epoch_count, 1) for k, v in epoch_sums.items()})
    return total / max(steps, 1), means


def fit(model, trainer, sampler, optimizer, device, state, evaluate, saver, args, board=None, extra=None):
    """Train until ``--num_epoch`` or ``--patience``; ``state`` (see ``checkpoint.new_state``) is updated in
    place.  ``evaluate(epoch)`` returns ``{'val': metrics, 'test': metrics}``; ``saver`` writes the best model
    and the checkpoint.  The best epoch (and early stopping) follows Recall at the first K of ``--select_on``'s
    split: validation, or with ``test`` the papers' optimistic protocol (SPEC 4; each epoch's test metrics are
    then in the history too, beside its validation metrics).  ``extra``: the model's other optimisers (``train_epoch``).  Returns the run's
    status, 'done' or 'diverged'.  ``--num_epoch 0`` only evaluates."""
    key, split = args.topK[0], args.select_on
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
                                           show_bar=args.progress and distributed.is_main(), extra=extra)
            tqdm.write(f'epoch {epoch:4d}  loss {loss:.4f}  ({time.time() - t0:.1f}s)')
            metrics = evaluate(epoch)
            seconds = time.time() - t0
            if board:
                board.epoch(epoch, loss, loss_parts, metrics, seconds)
            recall = metrics[split][key]['recall']
            if recall > state['best_recall']:
                state.update(best_epoch=epoch, best_val=metrics['val'], best_test=metrics['test'],
                             best_recall=recall, bad_evals=0)
                saver.best(model)
            else:
                state['bad_evals'] += 1
            state['epoch'] = epoch
            entry = {'epoch': epoch, 'loss': loss, 'val_recall': metrics['val'][key]['recall'],
                     'loss_parts': loss_parts, 'val': metrics['val'], 'seconds': round(seconds, 3)}
            if split == 'test':                 # the test curve too: its best epoch is what the run reports
                entry['test'] = metrics['test']
            state['history'].append(entry)
            distributed.share_rng_state()       # data mode: the checkpoint's states are every rank's
            saver.last(model, optimizer, state, extra)
            stop_point()
        if state['bad_evals'] >= args.patience:
            print(f'early stop: no {"validation" if split == "val" else "test"} improvement in {args.patience} '
                  f'evaluations')
    except Divergence as e:
        kept = f'the best model so far is kept in {saver.best_path}' if state['best_epoch'] else 'no best model was saved'
        if distributed.is_main():               # every rank diverges at the same step: one line
            print(f'training diverged: {e}; {kept}', file=sys.stderr)
        return 'diverged'
    return 'done'
