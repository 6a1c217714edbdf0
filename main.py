"""Train and evaluate a model of the registry (SLMRec, MMGCN and the baselines) on a dataset in the MMGCN layout.

    python main.py                                   # SLMRec with its defaults on MovieLens-100K
    python main.py --model_name='MMGCN' --l_r=0.0005 --weight_decay=0.1 --batch_size=1024 \\
        --dim_latent=64 --num_workers=30 --aggr_mode='mean' --num_layer=2 --concat=False --data_path tiktok_small

Each evaluation prints one Val and one Test line; the run ends with the best
epoch by validation Recall@K (first K) and its test metrics, and appends one
JSON line to ``--save_file`` (``--select_on test``: the best epoch by test
Recall, the papers' protocol; the summary and the line say it is optimistic).  Exit status: 0 done, 1 unexpected error,
2 bad input or arguments (also: another live run holds ``--checkpoint``, ``--PATH_weight_save`` or ``--export_topk``),
3 training diverged (a NaN/Inf loss, parameter or score), 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM, a scheduler's preemption: the run stops at
the next safe point and ``--resume`` continues it; docs/torchrun.md).

Before torch loads, ``startup`` chooses the CPU threads and their wait policy
so that a busy neighbour costs a run no more than its share of the cores
(an explicit ``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY`` or ``--num_workers`` wins).

``run`` reads as the run's steps; each step is a call into the module that
owns it: ``config`` (flags), ``DataLoad`` (the dataset), ``registry`` (the
model), ``checkpoint`` (weights, resume, random states), ``Train`` (the
loop), ``Full_vt`` (evaluation), ``export`` (top-K lists), ``safe_write``
(outputs).
"""
import os
import sys
import time

import startup

if __name__ == '__main__':
    startup.configure_threads()    # OpenMP reads these when torch loads
    startup.catch_sigterm()        # from here on SIGTERM is a stop request (Train.stop_point)

try:
    import torch

    import distributed
    import registry
    from checkpoint import (Saver, load_weights, output_locks, new_state, read_checkpoint, resume_from,
                            seed_everything)
    from config import parse_args, run_name
    from errors import (EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_TERMINATED, TERMINATED_EARLY_LINE,
                        TERMINATED_LINE, DataError,
                        InputError, describe, one_line)
    from safe_write import (append_results_line, check_not_inputs, check_outputs, check_writable,
                            no_empty_folders_left)
except KeyboardInterrupt:          # Ctrl-C while torch loads (a second or two): the one line, not a traceback
    if __name__ != '__main__':
        raise
    print('interrupted before anything was read or written', file=sys.stderr)
    sys.exit(130)


def planned_outputs(args, name):
    """``(best model, checkpoint, [(output, what)])``: the files this run writes."""
    best_path = args.PATH_weight_save or os.path.join('runs', f'{name}.best.pt')
    last_path = args.checkpoint or os.path.join('runs', f'{name}.last.pt')
    outputs = [(args.save_file, 'results file'), (best_path, 'best-model file'), (last_path, 'checkpoint')]
    if args.export_topk:
        outputs.append((args.export_topk, 'top-K export'))
    return best_path, last_path, outputs


def output_paths(args, name):
    """``planned_outputs``, each checked writable before any work."""
    best_path, last_path, outputs = planned_outputs(args, name)
    if distributed.is_main():                    # rank 0 alone writes files (SPEC 7)
        check_outputs(outputs, [(args.tensorboard, 'TensorBoard folder')] if args.tensorboard else [])
        if args.tensorboard:
            check_writable(os.path.join(args.tensorboard, 'events'), 'TensorBoard folder')
    return best_path, last_path, outputs


def keep_freed_memory():
    """Ask glibc to serve large blocks from the heap and keep freed memory in the process.

    The graph tensors are hundreds of MB; by default glibc maps each one afresh
    and unmaps it when freed, so every training step pays page faults on
    several GB (measured here: a 100 MB copy 43 ms by default, 12 ms after
    this).  A no-op where glibc's ``mallopt`` is absent.
    """
    import ctypes
    try:
        libc = ctypes.CDLL('libc.so.6')
        libc.mallopt(-8, 1)            # M_ARENA_MAX: one arena, so freed blocks are found again
        libc.mallopt(-4, 0)            # M_MMAP_MAX: no mmap for large blocks
        libc.mallopt(-1, 2 ** 31 - 1)  # M_TRIM_THRESHOLD: never give freed top memory back
    except (OSError, AttributeError):
        pass


def start_process(args):
    """Memory, threads, the device and (under torchrun) the process group; returns the device."""
    keep_freed_memory()
    if args.num_workers > 0:
        torch.set_num_threads(max(1, min(args.num_workers, os.cpu_count() or 1)))
    use_cuda = torch.cuda.is_available() and not args.no_cuda
    return (distributed.setup(use_cuda, args.dist_timeout, args.dist_mode)
            or torch.device('cuda' if use_cuda else 'cpu'))


def load_data(args, outputs):
    """``(folder, dataset)`` with the selected modalities; every check that can fail on the data runs now."""
    from DataLoad import load_dataset, resolve_data, select_modalities
    from export import read_ids
    with distributed.main_first():              # one rank prepares a dataset on first use
        folder = resolve_data(args.data_path)
    check_not_inputs(outputs, folder, args)    # every rank: it only reads, and all of them stop together
    data = load_dataset(folder, require_val=args.num_epoch > 0)
    data.features = {m: data.features[m] for m in select_modalities(args, data.modalities)}
    registry.check_memory(args, data)
    if args.export_topk:            # the export reads the source ids at the end: their errors are found now
        for ids_file, count in (('user_ids.txt', data.num_user), ('item_ids.txt', data.num_item)):
            read_ids(folder, ids_file, count)
    print(data.summary())
    return folder, data


def build(args, data, last_path, sampler_rng, device):
    """``(model, optimizer, {name: other optimiser}, checkpoint or None)``: the model with its loaded weights,
    on ``device``; the main loss's optimiser and the model's others (``registry.optimizers``)."""
    model = registry.build_model(args, data)
    if args.PATH_weight_load:
        load_weights(model, args.PATH_weight_load, args.model_name)
    ckpt = read_checkpoint(last_path, args, sampler_rng) if args.resume else None
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt['model'])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise InputError(f'{last_path}: not a checkpoint of this run ({describe(e)})') from None
    model.to(device)
    # Built after every load: loading may replace a parameter (a larger official word table, WordMean).
    optimizer, extra = registry.optimizers(args, model)
    factor = distributed.scale_lr(optimizer, args.lr_scale_ranks)
    if distributed.active():
        ranks, mode = distributed.world_size(), args.dist_mode
        step = (f'{ranks} x {args.batch_size} pairs a step (effective batch {ranks * args.batch_size})'
                if mode == 'data' else f'{args.batch_size} pairs a step, each rank computing the whole batch')
        print(f'torchrun: {ranks} processes, --dist_mode {mode}: {step}; learning rate {args.l_r * factor:g}'
              + (f' (--l_r x {factor}, --lr_scale_ranks)' if factor != 1 else ''))
    return model, optimizer, extra, ckpt


def training_data(args, data, folder, sampler_rng):
    """``(sampler, evaluate)``: the shuffled training batches and the validation/test evaluation."""
    from DataLoad import TrainSampler
    from Full_vt import SplitIndex, format_metrics, full_ranking
    from tqdm import tqdm
    ranks, rank = distributed.sampler_share()     # data mode deals each global batch's rows to the ranks
    sampler = TrainSampler(data.train, data.num_item, args.batch_size, sampler_rng,
                           source=os.path.join(folder, 'train.npy'), ranks=ranks, rank=rank)
    uneven = distributed.check_batches(len(data.train), args.batch_size)
    if uneven:
        raise InputError(uneven)
    indptr, items = data.train_csr()
    indexes = {'val': SplitIndex(data.val, indptr, items), 'test': SplitIndex(data.test, indptr, items)}

    def evaluate(model, epoch):
        metrics = full_ranking(model, indexes, args.topK, args.eval_batch)
        tqdm.write(f'epoch {epoch:4d}  Val   {format_metrics(metrics["val"])}')
        tqdm.write(f'epoch {epoch:4d}  Test  {format_metrics(metrics["test"])}')
        return metrics
    return sampler, evaluate


def run(args):
    """Train and report; a run refused before it wrote anything leaves no folder it made."""
    name = run_name(args)
    folders = []
    if distributed.is_main():                    # rank 0 alone writes files, and output_paths checks them there
        folders = [path for path, _ in planned_outputs(args, name)[2]]
        if args.tensorboard:
            folders.append(os.path.join(args.tensorboard, 'events'))
    with no_empty_folders_left(folders):
        return train(args, name)


def train(args, name):
    from Board import open_board
    from Train import Terminated, fit
    started = time.time()
    best_path, last_path, outputs = output_paths(args, name)
    device = start_process(args)
    locked = [(last_path, 'checkpoint', '--checkpoint'), (best_path, 'best-model file', '--PATH_weight_save')]
    if args.export_topk:
        locked.append((args.export_topk, 'top-K export', '--export_topk'))
    with output_locks(locked):                  # one run per checkpoint (and best model, export), before any work
        sampler_rng = seed_everything(args.seed)
        folder, data = load_data(args, outputs)
        model, optimizer, extra, ckpt = build(args, data, last_path, sampler_rng, device)
        sampler, evaluate = training_data(args, data, folder, sampler_rng)
        trainer = distributed.wrap(model, device, extra)   # the model itself in one process
        state = new_state()
        if ckpt is not None:
            state = resume_from(ckpt, last_path, optimizer, sampler_rng, extra)
            print(f'resumed from {last_path} after epoch {state["epoch"]}')
        if args.select_on == 'test':
            print(OPTIMISTIC_LINE)
        board = open_board(args.tensorboard, name, state) if distributed.is_main() else None
        try:
            status = fit(model, trainer, sampler, optimizer, device, state, lambda epoch: evaluate(model, epoch),
                         Saver(best_path, last_path, args, sampler_rng), args, board, extra)
        except Terminated as e:
            e.checkpoint = last_path if state['epoch'] > 0 else None     # resumed from one, or wrote one
            raise
        if board:
            board.close(args, state)
        finish(args, name, status, state, model, data, folder, best_path, device, started)
        return EXIT_DIVERGED if status == 'diverged' else 0


def finish(args, name, status, state, model, data, folder, best_path, device, started):
    """The export, the summary and the results line."""
    from export import export_best_topk
    if args.export_topk and distributed.is_main():
        export_best_topk(args, model, data, folder, best_path, state, device)
    wall = time.time() - started
    summary(state, args.topK[0], status, args.select_on)
    if state['best_epoch'] and os.path.exists(best_path):
        print(f'best model: {best_path}')
    record = {'run': name, 'status': status, 'args': vars(args), 'best_epoch': state['best_epoch'],
              'val': state['best_val'], 'test': state['best_test'], 'epochs_run': state['epoch'],
              'wall_time_s': round(wall, 2), 'device': str(device), 'processes': distributed.world_size(),
              'device_name': torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu',
              'data': data.summary(), 'history': state['history']}
    if args.select_on == 'test':
        record['optimistic'] = OPTIMISTIC_LINE
    if distributed.is_main():
        append_results_line(args.save_file, record)


# Printed at the start and the end of a --select_on test run, and kept in its results line (SPEC 4).
OPTIMISTIC_LINE = ('selected on TEST (--select_on test): the best epoch and early stopping follow the test '
                   'metric, so these numbers are optimistic, not a held-out estimate')


def summary(state, key, status, select_on='val'):
    from Full_vt import format_metrics
    if state['best_epoch'] is None:
        print(f'finished ({status}) with no completed evaluation')
        return
    split = 'best_val' if select_on == 'val' else 'best_test'
    print(f'best epoch {state["best_epoch"]} ({"validation" if select_on == "val" else "TEST"} '
          f'Recall@{key} {state[split][key]["recall"]:.4f})')
    print(f'  Val   {format_metrics(state["best_val"])}')
    print(f'  Test  {format_metrics(state["best_test"])}')
    if select_on == 'test':
        print(f'  {OPTIMISTIC_LINE}')


def flush_denormals():
    """Treat subnormal floats as zero on the CPU; returns a function that restores the default.

    As training sharpens the in-batch softmaxes, many of their probabilities
    fall below 1.2e-38, where x86 arithmetic takes a slow path: an ML-100K
    SLMRec epoch went from 3.3 s to 13.4 s over five epochs, and stays at
    3.0 s with this (README, Performance).  Values that small change no
    reported digit.
    """
    if not torch.set_flush_denormal(True):
        return lambda: None
    return lambda: torch.set_flush_denormal(False)


def main(argv=None):
    from Train import Terminated
    threads = torch.get_num_threads()
    restore = flush_denormals()
    try:
        return run(parse_args(argv))
    except (DataError, InputError) as e:
        if distributed.is_main():               # every rank meets the same bad input
            print(f'error: {one_line(e)}', file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        if distributed.is_main():               # a terminal's Ctrl-C reaches every rank
            print('interrupted: the last end-of-epoch checkpoint is intact (continue with --resume)', file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated as e:                     # every rank stops at the same safe point (Train.stop_point)
        if distributed.is_main():
            print(TERMINATED_LINE if getattr(e, 'checkpoint', None) else TERMINATED_EARLY_LINE, file=sys.stderr)
        return EXIT_TERMINATED
    except RuntimeError as e:                   # torch.distributed's errors are RuntimeErrors
        message = distributed.lost_peer(e)
        if message is None:
            raise
        print(f'error: {message}', file=sys.stderr)
        return 1
    finally:
        distributed.cleanup()
        restore()
        # an in-process caller (a test) gets its thread count back: threads started under the flush-to-zero
        # mode above keep it, and would flush its subnormals (BaseModel._amax_with_sources needs them)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def report_status(code):
    """Under launch.py: rank 0's exit status, for the launcher to exit with (its one line is rank 0's)."""
    path = os.environ.get('SLMREC_LAUNCH_STATUS')
    if path and distributed.is_main():
        try:
            with open(path, 'w') as f:
                f.write(f'{code}\n')
        except OSError:
            pass


if __name__ == '__main__':
    code = main()
    report_status(code)
    if code == EXIT_TERMINATED:
        # Stopping already: torchrun ends the other ranks with SIGTERM once one has exited, and Python's own
        # shutdown puts SIGTERM's default back (death by signal, -15), but leaves an ignored signal ignored.
        startup.ignore_sigterm()
    sys.exit(code)
