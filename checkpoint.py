"""Checkpoints, weights and random states: save, validate, resume (exactly), load.

Every epoch ends with a checkpoint ``runs/<run>.last.pt`` (model, Adam and a
model's other optimisers, the random states, the training state, the hyper-parameters); ``--resume``
validates it entry by entry before any of it is used (a malformed one is one
line), refuses one written with other hyper-parameters unless
``--resume_override``, and continues exactly where it stopped: the same
seed gives the same metrics with or without the interruption.  The best
model by validation is a plain state dict ``runs/<run>.best.pt``.

    ckpt = read_checkpoint(path, args, sampler_rng)
    state = resume_from(ckpt, path, optimizer, sampler_rng)

One run per checkpoint: ``checkpoint_lock`` holds an exclusive lock
(``fcntl.flock``) on ``<checkpoint>.lock`` for the run's lifetime; a second
run on the same checkpoint is refused with one line before any work.  The
operating system drops the lock when its process ends, however it ends, so a
killed run's lock never blocks (its file stays, unlocked; a run that ends
removes its own).

Under torchrun the random states are rank 0's, and mean the same under any
world size (``distributed``, data mode): a checkpoint written by W ranks
resumes under W' ranks or as one process, with the next epoch's permutation
the one the uninterrupted run draws.
"""
import contextlib
import fcntl
import math
import os
import random

import numpy as np
import torch

import distributed
import registry
from config import hyper_params, parse_args
from errors import InputError, describe
from safe_write import atomic_save


def same_folder(a, b):
    """Whether two ``--data_path`` values name one dataset folder ('./x' and 'x', 'x/', a link)."""
    from DataLoad import dataset_path
    return os.path.realpath(dataset_path(a)) == os.path.realpath(dataset_path(b))


class Saver:
    """The run's two outputs: the best model by validation and the end-of-epoch checkpoint.

    Only the main process writes (SPEC 7); every rank's random states are rank 0's.
    """

    def __init__(self, best_path, last_path, args, sampler_rng):
        self.best_path, self.last_path, self.args, self.sampler_rng = best_path, last_path, args, sampler_rng

    def best(self, model):
        if distributed.is_main():
            atomic_save(model.state_dict(), self.best_path)

    def last(self, model, optimizer, state, extra=None):
        """The end-of-epoch checkpoint; ``extra``: the model's other optimisers by name (their states kept as
        ``extra_optimizers``)."""
        if distributed.is_main():
            ckpt = {'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                    'rng': rng_state(self.sampler_rng), 'state': state, 'args': hyper_params(self.args)}
            if extra:
                ckpt['extra_optimizers'] = {name: opt.state_dict() for name, opt in extra.items()}
            atomic_save(ckpt, self.last_path)


def _take_lock(lock_path):
    """The open lock file, locked (exclusive, not waiting), or the pid text of the run that holds it."""
    while True:
        held = open(lock_path, 'a+')            # not 'w': the holder's pid stays readable until we hold the lock
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            held.seek(0)
            pid = held.read().strip() or '?'
            held.close()
            return pid
        try:                                    # the holder before us may have removed the file it locked
            if os.stat(lock_path).st_ino == os.fstat(held.fileno()).st_ino:
                return held
        except FileNotFoundError:
            pass
        held.close()


@contextlib.contextmanager
def checkpoint_lock(path, what='checkpoint', flag='--checkpoint'):
    """Hold ``<path>.lock`` (rank 0; every rank learns of a refusal) while the block runs; ``InputError``
    naming the holder's pid when another live run holds it.  The file is removed when the run ends (a
    killed run leaves it, unlocked).  ``what``/``flag``: the output ``path`` is, for the refusal's line."""
    held, refusal = None, None
    lock_path = path + '.lock'
    if distributed.is_main():
        os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
        held = _take_lock(lock_path)
        if isinstance(held, str):
            refusal = (f'{path}: another run (pid {held}) is using this {what}; wait for it to end, '
                       f'or give this run another {flag}')
            held = None
        else:
            held.seek(0)
            held.truncate()
            held.write(f'{os.getpid()}\n')
            held.flush()
    try:
        if distributed.any_rank(refusal is not None):
            raise InputError(refusal or 'rank 0 was refused the checkpoint lock')
        yield
    finally:
        if held is not None:
            os.unlink(lock_path)                # while locked: a run that opened it first retries (_take_lock)
            held.close()                        # closing the file releases the lock


@contextlib.contextmanager
def output_locks(outputs):
    """``checkpoint_lock`` on each file a run replaces (``[(path, what, flag)]``): two live runs never write one
    checkpoint, best model or export (the results file is shared: each line is appended under a lock of its own,
    ``safe_write.append_results_line``)."""
    with contextlib.ExitStack() as stack:
        for path, what, flag in outputs:
            stack.enter_context(checkpoint_lock(path, what, flag))
        yield


def new_state():
    """The training state of a run that has not trained yet (what a checkpoint's 'state' holds)."""
    return {'epoch': 0, 'best_epoch': None, 'best_val': None, 'best_test': None, 'best_recall': -1.0,
            'bad_evals': 0, 'history': []}


def load_checkpoint_file(path, what):
    if not os.path.isfile(path):
        raise InputError(f'{path}: {what} not found')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise InputError(f'{path}: not a readable {what} ({describe(e)})') from None


def load_weights(model, path, model_name):
    """Load our state dict (plain, or inside a checkpoint) or one saved by a model's authors' code that its
    registry entry converts (SLMRec's, SPEC 3.5)."""
    state = load_checkpoint_file(path, 'weight file')
    if isinstance(state, dict) and isinstance(state.get('model'), dict):
        state = state['model']
    if not isinstance(state, dict) or not all(isinstance(k, str) and _plain_tensor(v) for k, v in state.items()):
        raise InputError(f'{path}: expected a state dict of dense real tensors')
    bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise InputError(f'{path}: non-finite weights in {bad!r}')
    try:
        for entry in registry.entries().values():
            if entry.official_weights and entry.official_weights[0](state):
                if entry.name != model_name:
                    raise ValueError(f'an official {entry.name} checkpoint needs --model_name {entry.name}')
                state = entry.official_weights[1](model, state)
                break
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as e:
        raise InputError(f'{path}: does not fit this model ({describe(e)}; '
                         f'check --model_name, --dim_latent, --modalities and the fusion and SSL flags)') from None


def _plain_tensor(value):
    """A dense real tensor: a sparse one fails the finiteness check, a complex one is cast with a warning."""
    return (isinstance(value, torch.Tensor) and not value.is_nested and value.layout == torch.strided
            and value.device.type == 'cpu' and not value.is_complex())


class MalformedCheckpoint(Exception):
    """What is wrong with a checkpoint's structure (one phrase)."""


def _need(ok, problem):
    if not ok:
        raise MalformedCheckpoint(problem)


def _is_int(x, low=0):
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


def _is_real(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _plain_state(state, depth=0):
    """A NumPy bit generator's state as NumPy saves it: strings and integers in dicts of at most 3 levels
    (a tensor or an array in it makes NumPy fail with an error of its own choosing, or a warning line)."""
    if isinstance(state, dict):
        return depth < 3 and all(isinstance(k, str) and _plain_state(v, depth + 1) for k, v in state.items())
    return isinstance(state, (str, int))


def _check_metrics(metrics, where, topk):
    _need(isinstance(metrics, dict) and set(metrics) == set(topk),
          f'{where} must map each --topK cut-off {sorted(topk)} to metrics')
    for k, m in metrics.items():
        _need(isinstance(m, dict) and set(m) == {'precision', 'recall', 'ndcg'} and all(map(_is_real, m.values())),
              f'{where}[{k}] must hold finite precision, recall and ndcg')


def validate_checkpoint(ckpt, path, args, sampler_rng):
    """Check a ``--resume`` checkpoint before any of it is used; ``InputError`` names the problem.

    The optimiser's state is checked against the parameters by ``validate_optimizer_state``, once the
    model weights are loaded (loading may replace a parameter) and the optimiser is built.
    """
    try:
        _need(isinstance(ckpt, dict), f'expected a dict, found {type(ckpt).__name__}')
        missing = [k for k in ('model', 'optimizer', 'rng', 'state') if k not in ckpt]
        _need(not missing, f'no {", ".join(map(repr, missing))} entry')
        weights = ckpt['model']
        _need(isinstance(weights, dict) and all(isinstance(k, str) and _plain_tensor(v) for k, v in weights.items()),
              "'model' must be a state dict of dense real tensors")
        _need(all(bool(torch.isfinite(v).all()) for v in weights.values() if v.is_floating_point()),
              "'model' holds non-finite weights")
        extra = ckpt.get('extra_optimizers', {})
        _need(isinstance(extra, dict) and all(isinstance(k, str) for k in extra),
              "'extra_optimizers' must map optimiser names to their states")
        for where, opt in [("'optimizer'", ckpt['optimizer'])] + [(f"'extra_optimizers' {k!r}", v) for k, v in extra.items()]:
            _need(isinstance(opt, dict) and isinstance(opt.get('state'), dict)
                  and isinstance(opt.get('param_groups'), list)
                  and all(isinstance(g, dict) and isinstance(g.get('params'), list) for g in opt['param_groups']),
                  f"{where} must be an optimiser state dict")
        rng = ckpt['rng']
        _need(isinstance(rng, dict) and all(k in rng for k in ('python', 'numpy', 'torch')),
              "'rng' must hold the python, numpy and torch states")
        _need(_plain_state(rng['numpy']), "'rng' holds an unusable random state")
        try:
            random.Random().setstate(rng['python'])
            type(sampler_rng.bit_generator)().state = rng['numpy']
            torch.Generator().set_state(rng['torch'])
        except (TypeError, ValueError, KeyError, IndexError, RuntimeError, OverflowError):
            raise MalformedCheckpoint("'rng' holds an unusable random state") from None
        state = ckpt['state']
        _need(isinstance(state, dict), f"'state' must be a dict, found {type(state).__name__}")
        missing = [k for k in ('epoch', 'best_epoch', 'best_val', 'best_test', 'best_recall', 'bad_evals', 'history')
                   if k not in state]
        _need(not missing, f"'state' has no {', '.join(map(repr, missing))}")
        _need(_is_int(state['epoch']), "'state' epoch must be an integer >= 0")
        _need(_is_int(state['bad_evals']), "'state' bad_evals must be an integer >= 0")
        _need(_is_real(state['best_recall']) and -1 <= state['best_recall'] <= 1,
              "'state' best_recall must be a recall (or -1 before the first evaluation)")
        _need(isinstance(state.get('board_dir'), (str, type(None))), "'state' board_dir must be a folder name")
        history = state['history']
        _need(isinstance(history, list) and len(history) == state['epoch']
              and all(isinstance(h, dict) and _is_int(h.get('epoch')) and _is_real(h.get('loss'))
                      and _is_real(h.get('val_recall')) for h in history),
              "'state' history must list one {epoch, loss, val_recall} per epoch")
        if state['best_epoch'] is None:
            _need(state['best_val'] is None and state['best_test'] is None, "'state' has best metrics but no best epoch")
        else:
            _need(_is_int(state['best_epoch']) and state['best_epoch'] <= state['epoch'],
                  "'state' best_epoch must be an integer <= epoch")
            _check_metrics(state['best_val'], "'state' best_val", args.topK)
            _check_metrics(state['best_test'], "'state' best_test", args.topK)
        saved = ckpt.get('args')
        plain = (type(None), bool, int, float, str)
        _need(saved is None or (isinstance(saved, dict) and all(
            isinstance(k, str) and (isinstance(v, plain) or (isinstance(v, list) and all(isinstance(x, plain) for x in v)))
            for k, v in saved.items())), "'args' must map flag names to plain values")
    except MalformedCheckpoint as e:
        raise InputError(f'{path}: malformed checkpoint: {e}') from None


def validate_optimizer_state(opt, path, optimizer):
    """The checkpoint's optimiser state against this optimiser's parameters (Adam's or AdamW's, the only ones
    here: the same per-parameter state)."""
    try:
        params = [p for g in optimizer.param_groups for p in g['params']]
        ids = [i for g in opt['param_groups'] for i in g['params']]
        _need(len(opt['param_groups']) == len(optimizer.param_groups) and all(_is_int(i) for i in ids)
              and sorted(ids) == list(range(len(params))), "'optimizer' does not cover this model's parameters")
        for i, entry in opt['state'].items():       # Adam's (and AdamW's) state per parameter
            _need(_is_int(i) and i < len(params) and isinstance(entry, dict)
                  and set(entry) == {'step', 'exp_avg', 'exp_avg_sq'}, "'optimizer' state is not Adam's per parameter")
            step = entry['step']
            _need(isinstance(step, torch.Tensor) and step.numel() == 1 and step.is_floating_point()
                  and bool(torch.isfinite(step).all()) and float(step) >= 1,
                  f"'optimizer' step of parameter {i} must be a number >= 1")
            for name in ('exp_avg', 'exp_avg_sq'):
                value = entry[name]
                _need(isinstance(value, torch.Tensor) and value.shape == params[i].shape
                      and value.dtype == params[i].dtype and bool(torch.isfinite(value).all())
                      and (name == 'exp_avg' or bool((value >= 0).all())),
                      f"'optimizer' {name} of parameter {i} has the wrong shape, type or values")
    except MalformedCheckpoint as e:
        raise InputError(f'{path}: malformed checkpoint: {e}') from None


def changed_hyper_params(ckpt, args):
    """Flags whose value differs from the checkpoint's run, as '--flag old -> new' phrases.

    A flag the checkpoint does not record was added to the package after it was written (a new model's):
    that run had its default, so it counts as changed only when this run sets another value."""
    if ckpt.get('args') is not None:
        saved, now = ckpt['args'], hyper_params(args)
        added = {k for k in now if k not in saved}
        if added:
            defaults = hyper_params(parse_args(['--model_name', args.model_name]))
            saved = {**{k: defaults[k] for k in added}, **saved}
        same_data = isinstance(saved.get('data_path'), str) and \
            same_folder(saved['data_path'], now['data_path'])    # './x' and 'x', 'x/', a link
        # a flag this model does not read (None now) changed nothing, whatever an older package recorded for it
        # (BPR's and VBPR's num_layer was 1 until they stopped declaring one)
        readers = registry.flag_readers()
        unread = {k for k in now if now[k] is None and args.model_name not in readers.get(k, [args.model_name])}
        return [f'--{k} {saved.get(k)!r} -> {now[k]!r}' for k in now
                if saved.get(k) != now[k] and not (k == 'data_path' and same_data) and k not in unread]
    group = ckpt['optimizer']['param_groups'][0]     # a checkpoint from before 'args' was saved
    adam_decay = registry.adam_weight_decay(args)
    return [f'--{k} {group.get(key)!r} -> {value!r}' for k, key, value in
            (('l_r', 'lr', args.l_r), ('weight_decay', 'weight_decay', adam_decay)) if group.get(key) != value]


def read_checkpoint(path, args, sampler_rng):
    """The ``--resume`` checkpoint at ``path``, its structure validated and its hyper-parameters compared."""
    ckpt = load_checkpoint_file(path, 'checkpoint')
    saved = ckpt.get('args') if isinstance(ckpt, dict) else None
    if isinstance(saved, dict) and isinstance(saved.get('topK'), list) and \
            all(type(k) is int for k in saved['topK']) and saved['topK'] != args.topK:   # else malformed, below
        # the best metrics so far are per cut-off: they cannot be compared with other ones (not even with override)
        raise InputError(f'{path}: checkpoint of a run with --topK {" ".join(map(str, saved["topK"]))}; '
                         f'--resume needs the same cut-offs')
    validate_checkpoint(ckpt, path, args, sampler_rng)
    changed = changed_hyper_params(ckpt, args)
    if changed and not args.resume_override:
        raise InputError(f'{path}: checkpoint of a run with other hyper-parameters ({"; ".join(changed)}); '
                         f'pass --resume_override to continue with the new values')
    if changed:
        print(f'resuming with changed hyper-parameters: {"; ".join(changed)}')
    return ckpt


def resume_from(ckpt, path, optimizer, sampler_rng, extra=None):
    """Optimiser and RNG states from a checkpoint of ``read_checkpoint``; returns the training state.
    ``extra``: the model's other optimisers by name, each restored from the checkpoint's ``extra_optimizers``."""
    extra = extra or {}
    saved = ckpt.get('extra_optimizers', {})
    if set(saved) != set(extra):
        raise InputError(f'{path}: not a checkpoint of this run (its other optimisers: '
                         f'{", ".join(sorted(saved)) or "none"}; this model\'s: {", ".join(sorted(extra)) or "none"})')
    for opt, state in [(optimizer, ckpt['optimizer'])] + [(extra[name], saved[name]) for name in sorted(extra)]:
        validate_optimizer_state(state, path, opt)
        own_groups = [{k: v for k, v in g.items() if k != 'params'} for g in opt.param_groups]
        try:
            opt.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise InputError(f'{path}: not a checkpoint of this run ({describe(e)})') from None
        for group, own in zip(opt.param_groups, own_groups):     # this command line's values apply, never the file's
            group.update(own)
    set_rng_state(ckpt['rng'], sampler_rng)
    return ckpt['state']


def rng_state(sampler_rng):
    state = {'python': random.getstate(), 'numpy': sampler_rng.bit_generator.state, 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state, sampler_rng):
    random.setstate(state['python'])
    sampler_rng.bit_generator.state = state['numpy']
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        if distributed.active():    # every rank's GPU drew what rank 0's, cuda:0, drew
            torch.cuda.set_rng_state(state['cuda'][0])
        else:
            torch.cuda.set_rng_state_all(state['cuda'])


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)

