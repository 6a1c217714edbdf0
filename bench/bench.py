"""Benchmark: each fast path against a plain reference of the same math, in one process.

    python bench/bench.py --quick                      # < 1 minute, small Tiktok-shaped data (CI smoke)
    python bench/bench.py                              # published Tiktok size (36,656 x 76,085, ~726k pairs)
    python bench/bench.py --like movielens --scale 1.0

For every measurement it prints our time, the reference's, their ratio and the
peak memory of each (resident set on CPU, allocated memory on CUDA), and it
asserts that both give the same outputs, gradients or metrics.

References, written the way the official codes work:
  * SLMRec step / epoch: one COO ``torch.sparse.mm`` per branch, per view and per layer;
  * MMGCN step: PyG ``MessagePassing`` over ``edge_index`` (one message per edge);
  * evaluation: a Python loop over users;
  * negative sampling: per-sample rejection against a Python set of the user's items.

``--torchrun`` (on unless --quick) times main.py's training epoch in one
process and in 2 CPU processes under torchrun (the "reference" column is the
one process).  On a 2-core machine the two ranks share the cores the one
process had: the figure shows the cost of data parallelism (a full-graph
propagation on every rank, gradient all-reduce), not a speed-up.
"""
import argparse
import json
import os
import random
import re
import subprocess
import sys
import threading
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import prepare_data  # noqa: E402
from BaseModel import bipartite_edges, csr_adjacency, normalized_adjacency  # noqa: E402
from DataLoad import TrainSampler, load_dataset  # noqa: E402
from main import keep_freed_memory  # noqa: E402
from Full_vt import SplitIndex, rank_metrics, rank_metrics_loop  # noqa: E402
from model_MMGCN import MMGCN  # noqa: E402
from model_SSL import SLMRec  # noqa: E402


# --------------------------------------------------------------------------
# Measuring

class PeakMemory:
    """Peak resident memory of the process or peak allocated CUDA memory, in MiB.

    On Linux the kernel keeps the peak itself (VmHWM), and writing 5 to
    /proc/self/clear_refs resets it, so nothing runs beside the timed code.
    Elsewhere a thread samples the resident set every 2 ms; on this 2-core
    machine that thread preempted the BLAS threads and slowed evaluation by
    up to a fifth, so it is only the fallback.
    """

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self
        self.thread = None
        if not _reset_peak_rss():
            self.peak, self.running = _rss(), True
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()
        return self

    def _poll(self):
        while self.running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.device.type == 'cuda':
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2 ** 20
        elif self.thread is None:
            self.peak = _status_mib('VmHWM')
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.peak, _rss())


def _rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


def _status_mib(field):
    """A kB field of /proc/self/status in MiB, or None when the file or field is missing."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss():
    """Reset the kernel's peak resident set to the current one; False where that is not possible."""
    if _status_mib('VmHWM') is None:
        return False
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        return False
    return True


def _release_free_memory():
    """Give freed heap memory back to the system, so the next peak is the next path's own."""
    import ctypes
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass


def timed(fn, device, repeat=3, warmup=2):
    """Median seconds of ``fn()`` over ``repeat`` runs after ``warmup`` runs, the peak memory
    during them (resident set on CPU, allocated on CUDA), and ``fn``'s last result."""
    _release_free_memory()
    for _ in range(warmup):
        fn()
    times, result = [], None
    with PeakMemory(device) as mem:
        for _ in range(repeat):
            if device.type == 'cuda':
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            result = fn()
            if device.type == 'cuda':
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return float(np.median(times)), mem.peak, result


ROWS = []


def report(name, ours, reference, note=''):
    (t_ours, m_ours, _), (t_ref, m_ref, _) = ours, reference
    row = {'measurement': name, 'ours_s': t_ours, 'reference_s': t_ref, 'speedup': t_ref / t_ours,
           'ours_peak_mib': m_ours, 'reference_peak_mib': m_ref, 'note': note}
    ROWS.append(row)
    print(f'{name:<34} {t_ours:10.4f} {t_ref:10.4f} {t_ref / t_ours:8.1f}x {m_ours:10.0f} {m_ref:10.0f}  {note}',
          flush=True)


# --------------------------------------------------------------------------
# References

def coo_propagate(model, adj_coo):
    """SLMRec's propagation the official way: one COO product per branch, view and layer."""
    def propagate(views, rows=None):
        user, sides = model.embedding_user.weight, plain_item_sides(model)
        result = []
        for dropout, masked in views:
            for b, side in enumerate(sides):
                x = torch.cat([user, torch.zeros_like(side) if b == masked else side])
                total = x
                for _ in range(model.num_layer):
                    x = torch.sparse.mm(adj_coo, x)
                    if dropout > 0:
                        x = torch.nn.functional.dropout(x, dropout, model.training)
                    total = total + x
                result.append(total / (model.num_layer + 1))
        wide = torch.cat(result, dim=1)
        return wide if rows is None else wide[rows]
    return propagate


def plain_item_sides(model):
    """``model.item_sides()`` with word means gathered per (item, word) pair and scattered back."""
    sides = [model.embedding_item.weight]
    for m in model.modalities:
        if m in model.word_means:
            words = model.word_means[m]
            item_index, word_id = (t.to(words.weight.device) for t in words._pairs)
            total = words.weight.new_zeros(model.num_item, words.weight.shape[1])
            total = total.index_add(0, item_index, words.weight[word_id])
            count = torch.bincount(item_index, minlength=model.num_item).clamp(min=1).unsqueeze(1)
            feat = total / count
        else:
            feat = getattr(model, f'feat_{m}')
        sides.append(model.dense[m](feat))
    return sides


def reference_negatives(train, num_item, seed):
    """Per-sample rejection sampling against Python sets, as the official samplers do."""
    user_items = {}
    for u, i in train:
        user_items.setdefault(int(u), set()).add(int(i))
    rng = random.Random(seed)

    def sample():
        out = []
        for u, _ in train:
            items = user_items[int(u)]
            neg = rng.randrange(num_item)
            while neg in items:
                neg = rng.randrange(num_item)
            out.append(neg)
        return out
    return sample


# --------------------------------------------------------------------------
# Measurements

def step_fn(model, optimizer, batch):
    def step():
        loss, _ = model.loss(*batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def grads_of(model, batch, seed):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    loss, _ = model.loss(*batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(name, a, b, rtol=1e-4, atol=1e-5):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert torch.allclose(loss_a, loss_b, rtol=rtol, atol=atol), f'{name}: losses differ {loss_a} {loss_b}'
    assert grads_a.keys() == grads_b.keys(), name
    for key in grads_a:
        scale = grads_b[key].abs().max().item() + 1e-12
        err = (grads_a[key] - grads_b[key]).abs().max().item()
        assert err <= 1e-3 * scale + atol, f'{name}: gradient of {key} differs by {err:.3g} (scale {scale:.3g})'


def _slmrec_pair(data, task, device):
    """An SLMRec model with its fast propagation and the COO reference of it."""
    adj = normalized_adjacency(data.train, data.num_user, data.num_item)
    torch.manual_seed(0)
    model = SLMRec(data.num_user, data.num_item, data.features, adj, ssl_task=task).to(device)
    return model, model.propagate, coo_propagate(model, adj.to_sparse_coo().coalesce().to(device))


def bench_slmrec(data, device, args):
    sampler = TrainSampler(data.train, data.num_item, args.batch_size, np.random.default_rng(0))
    batch = tuple(t.to(device) for t in next(sampler.batches(False)))
    for task in ('FAC', 'FD'):
        model, fast, reference = _slmrec_pair(data, task, device)
        # Same outputs and gradients (dropout off, so both paths draw no random mask).
        rate, model.dropout_rate = model.dropout_rate, 0.0
        ours = grads_of(model, batch, 1)
        model.propagate = reference
        assert_same(f'SLMRec {task}', ours, grads_of(model, batch, 1))
        model.propagate, model.dropout_rate = fast, rate
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        t_ours = timed(step_fn(model, optimizer, batch), device, args.repeat, args.warmup)
        model.propagate = reference
        t_ref = timed(step_fn(model, optimizer, batch), device, args.repeat, args.warmup)
        report(f'SLMRec {task} step (batch {args.batch_size})', t_ours, t_ref, 'outputs+grads equal')


def bench_epochs(data, device, args):
    """One whole SLMRec epoch per path (sampling, steps), on ``data``."""
    for task in ('FAC', 'FD'):
        model, fast, reference = _slmrec_pair(data, task, device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        sampler = TrainSampler(data.train, data.num_item, args.batch_size, np.random.default_rng(0))

        def epoch():
            for b in sampler.batches(False):
                step_fn(model, optimizer, tuple(t.to(device) for t in b))()
        model.propagate = fast
        e_ours = timed(epoch, device, 1, warmup=0)
        model.propagate = reference
        e_ref = timed(epoch, device, 1, warmup=0)
        report(f'SLMRec {task} epoch ({len(sampler)} steps)', e_ours, e_ref, f'{len(data.train)} pairs')


def bench_mmgcn(data, device, args):
    edges = bipartite_edges(data.train, data.num_user)
    adj = csr_adjacency(edges, data.num_user + data.num_item)
    sampler = TrainSampler(data.train, data.num_item, 1024, np.random.default_rng(0))
    batch = tuple(t.to(device) for t in next(sampler.batches(True)))
    for aggr in ('mean', 'max'):
        torch.manual_seed(0)
        model = MMGCN(data.num_user, data.num_item, data.features, adj, aggr=aggr).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        ours = grads_of(model, batch, 1)
        model.adj = edges.to(device)                   # PyG's per-edge path, same layer
        assert_same(f'MMGCN {aggr}', ours, grads_of(model, batch, 1))
        t_ref = timed(step_fn(model, optimizer, batch), device, args.repeat, args.warmup)
        model.adj = adj.to(device)
        t_ours = timed(step_fn(model, optimizer, batch), device, args.repeat, args.warmup)
        report(f'MMGCN {aggr} step (batch 1024)', t_ours, t_ref, 'outputs+grads equal')


def bench_eval(data, device, args):
    torch.manual_seed(0)
    z_user = torch.randn(data.num_user, 64, device=device)
    z_item = torch.randn(data.num_item, 64, device=device)
    indptr, items = data.train_csr()
    index = SplitIndex(data.test, indptr, items)
    t_ours = timed(lambda: rank_metrics(z_user, z_item, index, [10, 20], args.eval_batch), device, args.repeat,
                   args.warmup)
    t_ref = timed(lambda: rank_metrics_loop(z_user, z_item, index, [10, 20]), device, 1, warmup=0)
    for k in (10, 20):
        for m in ('precision', 'recall', 'ndcg'):
            assert abs(t_ours[2][k][m] - t_ref[2][k][m]) < 1e-9, (k, m)
    report(f'evaluation, {len(index.users)} users', t_ours, t_ref, f'metrics equal; eval_batch {args.eval_batch}')
    for chunk in (256, 4096):
        t, mem, _ = timed(lambda: rank_metrics(z_user, z_item, index, [10, 20], chunk), device, 1)
        print(f'    eval_batch {chunk:5d}: {t:.3f}s, peak {mem:.0f} MiB', flush=True)
        ROWS.append({'measurement': f'evaluation eval_batch {chunk}', 'ours_s': t, 'ours_peak_mib': mem})


def bench_sampling(data, device, args):
    sampler = TrainSampler(data.train, data.num_item, 1024, np.random.default_rng(0))
    users = data.train[:, 0]
    t_ours = timed(lambda: sampler.sample_negatives(users), torch.device('cpu'), args.repeat, args.warmup)
    t_ref = timed(reference_negatives(data.train, data.num_item, 0), torch.device('cpu'), 1, warmup=0)
    keys = set((data.train[:, 0] * data.num_item + data.train[:, 1]).tolist())
    neg = sampler.sample_negatives(users)
    assert not any(k in keys for k in (users * data.num_item + neg).tolist())
    report(f'negative sampling, {len(users)} pairs', t_ours, t_ref, 'no positive drawn')


def _main_epoch_seconds(command, epochs):
    """Run main.py; the training time of its last epoch as printed ('epoch    N  loss x  (Ts)')."""
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f'{" ".join(command)} failed:\n{done.stderr[-2000:]}')
    seconds = re.findall(rf'^epoch +{epochs}  loss \S+  \(([0-9.]+)s\)$', done.stdout, re.M)
    return float(seconds[-1])


def bench_torchrun(folder, args):
    """Epoch time of main.py under torchrun, 2 CPU ranks of T/2 threads each, against one process of T
    threads and one of T/2 threads (a rank's share); the second epoch of each run (the first warms up)."""
    out = os.path.join(args.out, 'torchrun')
    os.makedirs(out, exist_ok=True)
    threads = torch.get_num_threads()
    half = max(1, threads // 2)
    for model in ('SLMRec', 'MMGCN'):
        flags = [os.path.join(ROOT, 'main.py'), '--data_path', folder, '--model_name', model, '--num_epoch', '2',
                 '--no-progress', '--no-cuda', '--save_file', os.path.join(out, 'results.jsonl'),
                 '--checkpoint', os.path.join(out, 'last.pt'), '--PATH_weight_save', os.path.join(out, 'best.pt')]
        two = _main_epoch_seconds([sys.executable, '-m', 'torch.distributed.run', '--standalone',
                                   '--nproc_per_node', '2', *flags, '--num_workers', str(half)], 2)
        for n in (threads, half):
            one = _main_epoch_seconds([sys.executable, *flags, '--num_workers', str(n)], 2)
            name = f'{model} epoch, 2 ranks vs 1 proc x{n}'
            note = f'2 ranks x {half} threads on {os.cpu_count()} cores: overhead, not speed-up'
            ROWS.append({'measurement': name, 'ours_s': two, 'reference_s': one, 'speedup': one / two, 'note': note})
            print(f'{name:<34} {two:10.4f} {one:10.4f} {one / two:8.2f}x {"":>10} {"":>10}  {note}', flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--quick', action='store_true', help='small data, no epochs: under a minute')
    p.add_argument('--like', default='tiktok', choices=('tiktok', 'movielens', 'kwai'))
    p.add_argument('--scale', type=float, default=None, help='fraction of the published size (default 1.0, quick 0.03)')
    p.add_argument('--batch_size', type=int, default=2048)
    p.add_argument('--eval_batch', type=int, default=1024)
    p.add_argument('--repeat', type=int, default=3, help='timed runs per measurement (after --warmup runs)')
    p.add_argument('--warmup', type=int, default=4,
                   help='untimed runs first: the heap stops growing (no more page faults) after 3 to 5 steps')
    p.add_argument('--epochs', action=argparse.BooleanOptionalAction, default=None,
                   help='also time whole epochs (default: on unless --quick)')
    p.add_argument('--epoch_scale', type=float, default=None,
                   help='scale of the data for the epoch timings (default: --scale on CUDA, 0.1 on CPU)')
    p.add_argument('--torchrun', action=argparse.BooleanOptionalAction, default=None,
                   help='also time main.py epochs in 1 and 2 CPU processes, at --epoch_scale '
                        '(default: on unless --quick)')
    p.add_argument('--only', default=None, help='comma list of slmrec,mmgcn,eval,sampling')
    p.add_argument('--no-cuda', dest='no_cuda', action='store_true')
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'out'), help='folder for the JSON results')
    args = p.parse_args(argv)
    keep_freed_memory()                    # as main.py does; both paths run under it
    scale = args.scale if args.scale is not None else (0.03 if args.quick else 1.0)
    args.epochs = (not args.quick) if args.epochs is None else args.epochs
    args.torchrun = (not args.quick) if args.torchrun is None else args.torchrun
    device = torch.device('cuda' if torch.cuda.is_available() and not args.no_cuda else 'cpu')
    name = f'bench_{args.like}_{scale:g}'
    t0 = time.time()
    folder = prepare_data.synthetic(name, like=args.like, scale=scale, seed=0)
    data = load_dataset(folder)
    machine = (torch.cuda.get_device_name() if device.type == 'cuda'
               else f'CPU, {torch.get_num_threads()} threads, {os.cpu_count()} cores')
    print(f'{data.summary()}\ndevice: {machine}; data ready in {time.time() - t0:.0f}s')
    print(f'{"measurement":<34} {"ours s":>10} {"ref s":>10} {"ratio":>9} {"ours MiB":>10} {"ref MiB":>10}')
    only = set(args.only.split(',')) if args.only else {'slmrec', 'mmgcn', 'eval', 'sampling'}
    for key, fn in (('slmrec', bench_slmrec), ('mmgcn', bench_mmgcn), ('eval', bench_eval),
                    ('sampling', bench_sampling)):
        if key in only:
            fn(data, device, args)
    if args.epochs or args.torchrun:
        epoch_scale = args.epoch_scale or (scale if device.type == 'cuda' else min(scale, 0.1))
        epoch_folder = folder if epoch_scale == scale else prepare_data.synthetic(
            f'bench_{args.like}_{epoch_scale:g}', like=args.like, scale=epoch_scale, seed=0)
        if args.epochs:
            bench_epochs(data if epoch_folder == folder else load_dataset(epoch_folder), device, args)
        if args.torchrun:
            bench_torchrun(epoch_folder, args)
    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, f'{name}_{device.type}.json')
    with open(out, 'w') as f:
        json.dump({'data': data.summary(), 'device': machine, 'rows': ROWS}, f, indent=1)
    print(f'written {out}')


if __name__ == '__main__':
    main()
