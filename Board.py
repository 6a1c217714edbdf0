"""TensorBoard curves of one run (``--tensorboard DIR``), one folder per run: DIR/<run name>[-N].

    python main.py --tensorboard runs/tb && tensorboard --logdir runs/tb

Per epoch (global step = epoch): ``loss/total`` and each part the model
reports (``loss/main``, ``loss/ssl``; MMGCN ``loss/bpr``, ``loss/reg``),
``val/<metric>@K`` and ``test/<metric>@K`` for every K, ``time/epoch_s``.
At the end, the hyper-parameters with the best validation metrics and their
test metrics (the HParams tab).  A resumed run opens the same folder with
``purge_step`` = the first epoch it trains, so whatever the killed process
wrote after its last checkpoint is discarded and no epoch appears twice.
"""
import os


def open_board(log_root, name, state):
    """A Board for this run under ``log_root``, or None when ``log_root`` is None (off).

    A new run takes the first free folder of ``<name>``, ``<name>-2``, ... (runs
    that differ only in flags the name leaves out do not share curves) and keeps
    it in ``state``, which the checkpoint carries, so ``--resume`` continues it
    (unless it is resumed with another DIR: then a new folder there).
    """
    if not log_root:
        return None
    folder = state.get('board_dir')
    if folder is None or os.path.dirname(os.path.abspath(folder)) != os.path.abspath(log_root):
        folder, n = os.path.join(log_root, name), 1
        while os.path.exists(folder):
            n += 1
            folder = os.path.join(log_root, f'{name}-{n}')
        state['board_dir'] = os.path.abspath(folder)
    return Board(folder, state['epoch'])


def _flat(metrics, prefix):
    return {f'{prefix}/{m}@{k}': float(v) for k, d in metrics.items() for m, v in d.items()}


class Board:
    def __init__(self, log_dir, last_epoch):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir, purge_step=last_epoch + 1 if last_epoch > 0 else None)

    def epoch(self, epoch, loss, parts, metrics, seconds):
        """One epoch's curves; ``loss`` None for an evaluation-only run (epoch 0)."""
        w = self.writer
        if loss is not None:
            w.add_scalar('loss/total', loss, epoch)
            for part, value in parts.items():
                w.add_scalar(f'loss/{part}', value, epoch)
            w.add_scalar('time/epoch_s', seconds, epoch)
        for split in ('val', 'test'):
            for tag, value in _flat(metrics[split], split).items():
                w.add_scalar(tag, value, epoch)
        w.flush()

    def close(self, args, state):
        """The hyper-parameters with the best validation and its test metrics, then close."""
        if state['best_epoch'] is not None:
            hparams = {k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in vars(args).items()}
            results = {**_flat(state['best_val'], 'hparam/val'), **_flat(state['best_test'], 'hparam/test'),
                       'hparam/best_epoch': float(state['best_epoch'])}
            self.writer.add_hparams(hparams, results, run_name='.', global_step=state['best_epoch'])
        self.writer.close()
