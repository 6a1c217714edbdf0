"""CUDA paths against the CPU ones (skipped without a GPU)."""
import numpy as np
import pytest
import torch

from BaseModel import BaseModel, bipartite_edges, csr_adjacency, normalized_adjacency, propagate_layers
from Full_vt import SplitIndex, rank_metrics

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')


def _graph(seed=0, users=40, items=50, pairs=300):
    rng = np.random.default_rng(seed)
    return np.unique(np.stack([rng.integers(0, users, pairs), rng.integers(0, items, pairs)], 1), axis=0)


@pytest.mark.parametrize('rows', [None, [1, 5, 5, 60]])
def test_propagation_cuda_matches_cpu(rows):
    adj = normalized_adjacency(_graph(), 40, 50)
    x = torch.randn(90, 16, requires_grad=True)
    rows_t = None if rows is None else torch.tensor(rows)
    out = propagate_layers(adj, x, 3, rows=rows_t)
    out.pow(2).sum().backward()
    x_cuda = x.detach().cuda().requires_grad_()
    out_cuda = propagate_layers(adj.cuda(), x_cuda, 3, rows=None if rows is None else rows_t.cuda())
    out_cuda.pow(2).sum().backward()
    assert torch.allclose(out, out_cuda.cpu(), atol=1e-5)
    assert torch.allclose(x.grad, x_cuda.grad.cpu(), atol=1e-5)


@pytest.mark.parametrize('aggr', ['add', 'mean', 'max'])
def test_mmgcn_conv_cuda_matches_cpu(aggr):
    edges = bipartite_edges(_graph(1), 40)
    adj = csr_adjacency(edges, 90)
    conv = BaseModel(8, 8, aggr)
    x = torch.randn(90, 8)
    expected = conv(x, adj)
    conv_cuda = BaseModel(8, 8, aggr).cuda()
    conv_cuda.load_state_dict(conv.state_dict())
    assert torch.allclose(expected, conv_cuda(x.cuda(), adj.cuda()).cpu(), atol=1e-5)


def test_rank_metrics_cuda_matches_cpu():
    train = _graph(2)
    indptr = np.searchsorted(train[:, 0], np.arange(41))
    split = {u: np.array([i for i in range(50) if i % 7 == u % 7][:3]) for u in range(0, 40, 3)}
    index = SplitIndex(split, indptr, train[:, 1].copy())
    z_user, z_item = torch.randn(40, 8), torch.randn(50, 8)
    cpu = rank_metrics(z_user, z_item, index, [5, 10], eval_batch=7)
    gpu = rank_metrics(z_user.cuda(), z_item.cuda(), index, [5, 10], eval_batch=7)
    for k in (5, 10):
        for m in cpu[k]:
            assert cpu[k][m] == pytest.approx(gpu[k][m], abs=1e-9)


def test_training_runs_on_cuda(tiny_tiktok, tmp_path):
    import json
    import main
    code = main.main(['--data_path', tiny_tiktok, '--num_epoch', '2', '--ssl_task', 'FD+FM', '--batch_size', '128',
                      '--save_file', str(tmp_path / 'r.jsonl'), '--checkpoint', str(tmp_path / 'c.pt'),
                      '--PATH_weight_save', str(tmp_path / 'b.pt'), '--no-progress'])
    assert code == 0
    with open(tmp_path / 'r.jsonl') as f:
        assert json.loads(f.read())['device'] == 'cuda'
