"""One training epoch's wall and CPU time per rank, through Train.train_epoch, alone or under torchrun.

    python bench/dist_epoch.py DATA [main.py flags]                                       # one process
    torchrun --standalone --nproc_per_node 2 bench/dist_epoch.py DATA [main.py flags]    # 2 ranks (--dist_mode)

On a shared machine wall time says as much about the neighbours as about the
code; the CPU time a rank spends on its epoch (``time.process_time``) says what
work it does.  If 2 data-mode ranks each spend about half of one process's CPU
time, two free cores give about twice the speed.  Epoch 1 warms up (the heap),
epoch 2 is timed; the evaluation of the epoch's model is timed the same way.
Prints one line per rank: ``rank r/W: epoch wall s cpu s; eval wall s cpu s``.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import checkpoint  # noqa: E402
import config  # noqa: E402
import distributed  # noqa: E402
import registry  # noqa: E402
from DataLoad import TrainSampler, load_dataset, select_modalities  # noqa: E402
from Full_vt import SplitIndex, full_ranking  # noqa: E402
from Train import train_epoch  # noqa: E402


def main():
    args = config.parse_args(['--data_path', *sys.argv[1:]])
    device = distributed.setup(False, 300, args.dist_mode) or torch.device('cpu')
    if args.num_workers:
        torch.set_num_threads(args.num_workers)
    sampler_rng = checkpoint.seed_everything(args.seed)
    data = load_dataset(args.data_path)
    data.features = {m: data.features[m] for m in select_modalities(args, data.modalities)}
    model = registry.build_model(args, data)
    optimizer = registry.optimizer(args, model)
    ranks, rank = distributed.sampler_share()
    sampler = TrainSampler(data.train, data.num_item, args.batch_size, sampler_rng, ranks=ranks, rank=rank)
    trainer = distributed.wrap(model, device)
    indptr, items = data.train_csr()
    indexes = {'val': SplitIndex(data.val, indptr, items), 'test': SplitIndex(data.test, indptr, items)}
    times = []
    for epoch in (1, 2):
        wall, cpu = time.perf_counter(), time.process_time()
        train_epoch(trainer, sampler, optimizer, device, epoch, show_bar=False)
        train = (time.perf_counter() - wall, time.process_time() - cpu)
        wall, cpu = time.perf_counter(), time.process_time()
        full_ranking(model, indexes, args.topK, args.eval_batch)
        times.append((train, (time.perf_counter() - wall, time.process_time() - cpu)))
    (train_wall, train_cpu), (eval_wall, eval_cpu) = times[-1]
    print(f'rank {distributed.rank()}/{distributed.world_size()}: epoch wall {train_wall:.2f} s cpu {train_cpu:.2f} s; '
          f'eval wall {eval_wall:.2f} s cpu {eval_cpu:.2f} s; {len(sampler)} steps, '
          f'{torch.get_num_threads()} threads', file=sys.stderr, flush=True)
    distributed.cleanup()


if __name__ == '__main__':
    main()
