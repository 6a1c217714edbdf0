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

``--torchrun`` (on unless --quick) times main.py's training epoch and its
evaluation in 2 CPU ranks of one thread under torchrun (``--dist_mode data``:
each rank trains on half the pairs, evaluation splits the users) against one
process of one thread and one of two threads (the "reference" column), SLMRec
FAC and LightGCN; ``--torchrun_repeat`` rounds of side-by-side runs.
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
from main import flush_denormals, keep_freed_memory  # noqa: E402
from Full_vt import SplitIndex, rank_metrics, rank_metrics_loop  # noqa: E402
from model_MMGCN import MMGCN  # noqa: E402
from model_SSL import SLMRec, info_nce  # noqa: E402


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
JSON_LINES = False       # --json: each row also as one JSON object on stdout
SIZES = {}


def report(name, ours, reference, note=''):
    """One row: our time and peak, the reference's, and ``ratio = reference / ours``."""
    (t_ours, m_ours, _), (t_ref, m_ref, _) = ours, reference
    row = {'name': name, 'ours_s': t_ours, 'reference_s': t_ref, 'ratio': t_ref / t_ours,
           'peak_mib': m_ours, 'reference_peak_mib': m_ref, 'sizes': dict(SIZES), 'note': note}
    ROWS.append(row)
    print(f'{name:<44} {t_ours:10.4f} {t_ref:10.4f} {t_ref / t_ours:8.2f}x {m_ours:10.0f} {m_ref:10.0f}  {note}',
          flush=True)
    if JSON_LINES:
        print(json.dumps(row), flush=True)


def report_alone(name, seconds, peak):
    """A row with no reference: what one part costs."""
    row = {'name': name, 'ours_s': seconds, 'reference_s': None, 'ratio': None, 'peak_mib': peak,
           'sizes': dict(SIZES)}
    ROWS.append(row)
    print(f'    {name}: {seconds:.4f}s, peak {peak:.0f} MiB', flush=True)
    if JSON_LINES:
        print(json.dumps(row), flush=True)


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
            item_index, word_id = words.item_index, words.word_id
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


def _slmrec(data, task, device, features=None):
    adj = normalized_adjacency(data.train, data.num_user, data.num_item)
    torch.manual_seed(0)
    model = SLMRec(data.num_user, data.num_item, data.features if features is None else features, adj,
                   ssl_task=task).to(device)
    if 'FM' in task:                 # one masked pair for every path, so that they compute the same loss
        model.masked_pair = lambda: (model.num_branch - 1, 0)
    return model


def use_reference(model, adj_coo):
    """The official-style path: every branch of every view propagated, one COO product per layer."""
    model.view_rows = model.view_rows_per_branch
    model.propagate = coo_propagate(model, adj_coo)


def use_fast(model):
    for name in ('view_rows', 'propagate'):
        model.__dict__.pop(name, None)


def bench_slmrec(data, device, args):
    """SLMRec steps against the official-style reference, and against the ID-only LightGCN-style step."""
    sampler = TrainSampler(data.train, data.num_item, args.batch_size, np.random.default_rng(0))
    batch = tuple(t.to(device) for t in next(sampler.batches(False)))
    adj_coo = normalized_adjacency(data.train, data.num_user, data.num_item).to_sparse_coo().coalesce().to(device)
    mine = {}
    id_only = _slmrec(data, 'none', device, features={})
    mine['ID-only'] = timed(step_fn(id_only, torch.optim.Adam(id_only.parameters(), lr=1e-3), batch), device,
                            args.repeat, args.warmup)
    del id_only
    for task in ('FAC', 'FM', 'FD'):
        model = _slmrec(data, task, device)
        if task == 'FAC':
            tables = sum(b.numel() * b.element_size() for n, b in model.named_buffers() if n.startswith('prop_'))
            print(f'    precomputed P[0;F̂_m] and P[0;1] (SPEC 3.6): {tables / 2 ** 20:.0f} MiB', flush=True)
        # Same outputs and gradients (dropout off, so both paths draw no random mask).
        rate, model.dropout_rate = model.dropout_rate, 0.0
        ours = grads_of(model, batch, 1)
        use_reference(model, adj_coo)
        assert_same(f'SLMRec {task}', ours, grads_of(model, batch, 1))
        use_fast(model)
        model.dropout_rate = rate
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        mine[task] = timed(step_fn(model, optimizer, batch), device, args.repeat, args.warmup)
        use_reference(model, adj_coo)
        full = task != 'FM' or args.quick            # FM's reference is timed once: no target rides on it
        t_ref = timed(step_fn(model, optimizer, batch), device, args.repeat if full else 1, args.warmup if full else 0)
        report(f'SLMRec {task} step (batch {args.batch_size})', mine[task], t_ref, 'outputs+grads equal')
        del model, optimizer
    a = torch.randn(args.batch_size, 64, device=device, requires_grad=True)
    b = torch.randn(args.batch_size, 64, device=device, requires_grad=True)
    t, mem, _ = timed(lambda: info_nce(a, b, 0.2).backward(), device, args.repeat, args.warmup)
    report_alone(f'one in-batch InfoNCE, forward and backward ({args.batch_size}^2 logits)', t, mem)
    report('ID-only step / SLMRec FAC step', mine['ID-only'], mine['FAC'], 'ratio = FAC time / ID-only time')
    report('SLMRec FAC step / SLMRec FM step', mine['FAC'], mine['FM'], 'ratio = FM time / FAC time')


def bench_epochs(data, device, args):
    """One whole SLMRec epoch per path (sampling, steps), on ``data``."""
    adj_coo = normalized_adjacency(data.train, data.num_user, data.num_item).to_sparse_coo().coalesce().to(device)
    for task in ('FAC', 'FD'):
        model = _slmrec(data, task, device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        sampler = TrainSampler(data.train, data.num_item, args.batch_size, np.random.default_rng(0))

        def epoch():
            for b in sampler.batches(False):
                step_fn(model, optimizer, tuple(t.to(device) for t in b))()
        use_fast(model)
        e_ours = timed(epoch, device, 1, warmup=0)
        use_reference(model, adj_coo)
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


def _eval_case(data, device):
    """Random 64-d user and item representations and the test split's index, for timing the evaluation."""
    torch.manual_seed(0)
    z_user = torch.randn(data.num_user, 64, device=device)
    z_item = torch.randn(data.num_item, 64, device=device)
    indptr, items = data.train_csr()
    return z_user, z_item, SplitIndex(data.test, indptr, items)


def bench_eval(data, device, args):
    z_user, z_item, index = _eval_case(data, device)
    t_ours = timed(lambda: rank_metrics(z_user, z_item, index, [10, 20], args.eval_batch), device, args.repeat,
                   args.warmup)
    t_ref = timed(lambda: rank_metrics_loop(z_user, z_item, index, [10, 20]), device, 1, warmup=0)
    for k in (10, 20):
        for m in ('precision', 'recall', 'ndcg'):
            assert abs(t_ours[2][k][m] - t_ref[2][k][m]) < 1e-9, (k, m)
    report(f'evaluation, {len(index.users)} users', t_ours, t_ref, f'metrics equal; eval_batch {args.eval_batch}')
    for chunk in (256, 4096):
        t, mem, _ = timed(lambda: rank_metrics(z_user, z_item, index, [10, 20], chunk), device, 1)
        report_alone(f'evaluation eval_batch {chunk}', t, mem)


def bench_sampling(data, device, args):
    sampler = TrainSampler(data.train, data.num_item, 1024, np.random.default_rng(0))
    users = data.train[:, 0]
    t_ours = timed(lambda: sampler.sample_negatives(users), torch.device('cpu'), args.repeat, args.warmup)
    t_ref = timed(reference_negatives(data.train, data.num_item, 0), torch.device('cpu'), 1, warmup=0)
    keys = set((data.train[:, 0] * data.num_item + data.train[:, 1]).tolist())
    neg = sampler.sample_negatives(users)
    assert not any(k in keys for k in (users * data.num_item + neg).tolist())
    report(f'negative sampling, {len(users)} pairs', t_ours, t_ref, 'no positive drawn')


ML1M_SIZE = (6040, 3260, 804141)    # users, items, training pairs of the prepared MovieLens-1M


def synthetic_like(name, like, scale):
    """Synthetic data shaped like a legacy dataset, or like ML-1M (sizes above, dense features)."""
    if like != 'ml1m':
        return prepare_data.synthetic(name, like=like, scale=scale, seed=0)
    users, items, pairs = ML1M_SIZE
    return prepare_data.synthetic(name, like='none', num_user=max(20, round(users * scale)),
                                  num_item=max(30, round(items * scale)), inter_per_user=pairs / users, seed=0)


def _compare(name, run, switch, device, args):
    """Time ``run`` as it is and with one path plain: ``switch()`` turns the plain form on and returns
    a function that turns it off again."""
    fast = timed(run, device, args.repeat, args.warmup)
    undo = switch()
    try:
        plain = timed(run, device, args.repeat, args.warmup)
    finally:
        undo()
    report(name, fast, plain, 'reference: that path plain')


def _patch(owner, attr, value):
    def switch():
        old = owner.__dict__.get(attr) if isinstance(owner, torch.nn.Module) else getattr(owner, attr)
        setattr(owner, attr, value)
        if isinstance(owner, torch.nn.Module) and old is None:
            return lambda: owner.__dict__.pop(attr)
        return lambda: setattr(owner, attr, old)
    return switch


def bench_fast_slmrec(data, device, args):
    """What each fast path of the SLMRec step gains: the same step with that one path plain."""
    import BaseModel
    sampler = TrainSampler(data.train, data.num_item, args.batch_size, np.random.default_rng(0))
    batch = tuple(t.to(device) for t in next(sampler.batches(False)))

    def compare(name, run, switch):
        _compare(name, run, switch, device, args)
    model = _slmrec(data, 'FAC', device)
    step = step_fn(model, torch.optim.Adam(model.parameters(), lr=1e-3), batch)
    compare('fast path: one propagation (SPEC 3.6)', step, _patch(model, 'view_rows', model.view_rows_per_branch))
    compare('fast path: last layer for batch rows', step, _patch(BaseModel, 'sparse_rows', lambda adj, rows: None))
    if model.word_means:
        def gathered(self):          # the mean of an item's word rows, gathered per (item, word) pair
            item_index, word_id = self.item_index, self.word_id
            total = self.weight.new_zeros(self.num_item, self.weight.shape[1]).index_add(0, item_index,
                                                                                          self.weight[word_id])
            return total / torch.bincount(item_index, minlength=self.num_item).clamp(min=1).unsqueeze(1)
        compare('fast path: word mean as sparse product', step, _patch(BaseModel.WordMean, 'forward', gathered))
    del model, step


def bench_fast_mmgcn(data, device, args):
    """What each fast path of the MMGCN step gains (mean and max aggregation)."""
    import BaseModel
    import model_MMGCN

    def compare(name, run, switch):
        _compare(name, run, switch, device, args)
    mm_batch = tuple(t.to(device) for t in next(TrainSampler(data.train, data.num_item, 1024,
                                                              np.random.default_rng(0)).batches(True)))
    adj = csr_adjacency(bipartite_edges(data.train, data.num_user), data.num_user + data.num_item)
    for aggr in ('mean', 'max'):
        torch.manual_seed(0)
        mmgcn = MMGCN(data.num_user, data.num_item, data.features, adj, aggr=aggr).to(device)
        step = step_fn(mmgcn, torch.optim.Adam(mmgcn.parameters(), lr=1e-4), mm_batch)
        if aggr == 'mean':
            compare('fast path: MMGCN row plan (mean step)', step, _patch(mmgcn, 'row_block', lambda nodes: None))

            def sorted_transpose(adj, rows, symmetric=False):
                return BaseModel.row_submatrix(adj, rows, symmetric=False)
            compare('fast path: symmetric row-block transpose', step,
                    _patch(model_MMGCN, 'row_submatrix', sorted_transpose))
        else:
            compare('fast path: MMGCN max winners in float64', step,
                    _patch(BaseModel, '_amax_with_sources', lambda adj, x, empty: None))
        del mmgcn, step


def bench_fast_eval(data, device, args):
    """What each fast path of the evaluation gains."""
    z_user, z_item, index = _eval_case(data, device)
    fast = timed(lambda: rank_metrics(z_user, z_item, index, [10, 20], args.eval_batch), device, args.repeat,
                 args.warmup)
    plain = timed(lambda: rank_metrics(z_user, z_item, index, [10, 20], args.eval_batch, item_block=None), device,
                  args.repeat, args.warmup)
    report('fast path: blocked top-k (evaluation)', fast, plain, 'reference: one product, one topk')


def _main_epoch_seconds(command, epochs, threads=None):
    """Run main.py; ``(training seconds, evaluation seconds)`` of its last epoch: the training time as printed
    ('epoch    N  loss x  (Ts)'), the evaluation time as the epoch's recorded seconds (training + evaluation,
    the results line's history) minus it."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads or torch.get_num_threads()))
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f'{" ".join(command)} failed:\n{done.stderr[-2000:]}')
    seconds = float(re.findall(rf'^epoch +{epochs}  loss \S+  \(([0-9.]+)s\)$', done.stdout, re.M)[-1])
    save = command[command.index('--save_file') + 1]
    with open(save) as f:
        record = json.loads(f.read().splitlines()[-1])
    # the epoch line has 0.1 s resolution: tiny data (--quick) reads as at least 0.05 s, never 0
    return max(seconds, 0.05), max(record['history'][-1]['seconds'] - seconds, 0.05)


TORCHRUN_MODELS = {'SLMRec FAC': ['--model_name', 'SLMRec', '--ssl_task', 'FAC'],
                   'LightGCN': ['--model_name', 'LightGCN']}


def bench_torchrun(folder, args):
    """Epoch and evaluation time of main.py under torchrun, 2 CPU ranks of 1 thread each (``--dist_mode
    data``, the default: each rank trains on half of the pairs, evaluation splits the users), against one
    process of 1 thread and one of 2 threads; epoch 2 of each run (the first warms up), the runs of a model
    side by side.  ``--dist_modes data exact`` adds the exact mode (every rank computes each batch's forward)."""
    out = os.path.join(args.out, 'torchrun')
    os.makedirs(out, exist_ok=True)
    for model, model_flags in TORCHRUN_MODELS.items():
        flags = [os.path.join(ROOT, 'main.py'), '--data_path', folder, *model_flags, '--num_epoch', '2',
                 '--no-progress', '--no-cuda', '--save_file', os.path.join(out, 'results.jsonl'),
                 '--checkpoint', os.path.join(out, 'last.pt'), '--PATH_weight_save', os.path.join(out, 'best.pt')]
        torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', *flags,
                    '--num_workers', '1']
        for _ in range(args.torchrun_repeat):
            two = {mode: _main_epoch_seconds(torchrun + ['--dist_mode', mode], 2, threads=1)
                   for mode in args.dist_modes}
            one = {n: _main_epoch_seconds([sys.executable, *flags, '--num_workers', str(n)], 2, threads=n)
                   for n in (1, 2)}
            for mode, (train, evaluation) in two.items():
                for n, (train_one, eval_one) in one.items():
                    note = f'ratio = 1 proc x{n} / 2 ranks x 1 ({os.cpu_count()} cores)'
                    report(f'{model} epoch, 2 ranks {mode} vs 1 proc x{n}', (train, float('nan'), None),
                           (train_one, float('nan'), None), note)
                    report(f'{model} eval, 2 ranks {mode} vs 1 proc x{n}', (evaluation, float('nan'), None),
                           (eval_one, float('nan'), None), note)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--quick', action='store_true', help='small data, no epochs: under a minute')
    p.add_argument('--like', default='tiktok', choices=('tiktok', 'movielens', 'kwai', 'ml1m'),
                   help='data shape; ml1m: 6,040 users, 3,260 items, ~804k pairs with dense features')
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
    p.add_argument('--torchrun_repeat', type=int, default=1, help='--torchrun: rounds of side-by-side runs')
    p.add_argument('--dist_modes', nargs='+', default=['data'], choices=('data', 'exact'),
                   help='--torchrun: the modes of the 2-rank runs (default data)')
    p.add_argument('--only', default=None,
                   help='comma list of slmrec,mmgcn,eval,sampling and fastpaths (= fast-slmrec,fast-mmgcn,'
                        'fast-eval: each fast path against the same code with that path plain); '
                        'default: all but the fastpaths')
    p.add_argument('--json', action='store_true', help='also print each row as one JSON object on stdout')
    p.add_argument('--no-cuda', dest='no_cuda', action='store_true')
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'out'), help='folder for the JSON results')
    args = p.parse_args(argv)
    keep_freed_memory()                    # as main.py does; both paths run under it
    flush_denormals()                      # likewise
    scale = args.scale if args.scale is not None else (0.03 if args.quick else 1.0)
    args.epochs = (not args.quick) if args.epochs is None else args.epochs
    args.torchrun = (not args.quick) if args.torchrun is None else args.torchrun
    device = torch.device('cuda' if torch.cuda.is_available() and not args.no_cuda else 'cpu')
    global JSON_LINES
    JSON_LINES = args.json
    name = f'bench_{args.like}_{scale:g}'
    t0 = time.time()
    folder = synthetic_like(name, args.like, scale)
    data = load_dataset(folder)
    SIZES.update(users=data.num_user, items=data.num_item, pairs=len(data.train), batch=args.batch_size)
    machine = (torch.cuda.get_device_name() if device.type == 'cuda'
               else f'CPU, {torch.get_num_threads()} threads, {os.cpu_count()} cores')
    print(f'{data.summary()}\ndevice: {machine}; data ready in {time.time() - t0:.0f}s')
    print(f'{"measurement":<44} {"ours s":>10} {"ref s":>10} {"ratio":>9} {"ours MiB":>10} {"ref MiB":>10}')
    only = set(args.only.split(',')) if args.only else {'slmrec', 'mmgcn', 'eval', 'sampling'}
    if 'fastpaths' in only:
        only |= {'fast-slmrec', 'fast-mmgcn', 'fast-eval'}
    for key, fn in (('slmrec', bench_slmrec), ('mmgcn', bench_mmgcn), ('eval', bench_eval),
                    ('sampling', bench_sampling), ('fast-slmrec', bench_fast_slmrec),
                    ('fast-mmgcn', bench_fast_mmgcn), ('fast-eval', bench_fast_eval)):
        if key in only:
            fn(data, device, args)
    if args.epochs or args.torchrun:
        epoch_scale = args.epoch_scale or (scale if device.type == 'cuda' else min(scale, 0.1))
        epoch_folder = folder if epoch_scale == scale else synthetic_like(
            f'bench_{args.like}_{epoch_scale:g}', args.like, epoch_scale)
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
