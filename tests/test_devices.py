"""Every registered model moves whole (SPEC 5): every tensor it holds or caches is a parameter or a buffer,
so ``.to(torch.float64)`` (and ``.to('cuda')``) moves all of it.

For each model of the registry, built on a tiny Tiktok-shaped set (dense and word-id modalities) after one
training loss (so per-epoch caches exist):

- no tensor lives outside the parameters and buffers (its modules' attributes walked, with the lists,
  tuples, dicts and plain objects they hold), and after ``.to(float64)`` every floating one is float64;
- the forward and the loss computed in float64 agree with float32 to float32 tolerance (the loss in eval
  mode, where no random draw depends on the dtype), and a training loss runs in float64;
- a state dict round trip into a model built with another seed gives the same scores.

``DEVICE=cuda python -m pytest tests/test_devices.py`` (bench/cuda_check.sh) runs the same with ``.to('cuda')``
and one optimiser step on the GPU.
"""
import os

import numpy as np
import pytest
import torch

import config
import registry
from DataLoad import load_dataset

MODELS = list(registry.entries())
DEVICE = os.environ.get('DEVICE', 'cpu')


def build(name, folder, seed):
    args = config.parse_args(['--data_path', folder, '--model_name', name, '--seed', str(seed),
                              '--dim_latent', '8', '--batch_size', '32'])
    torch.manual_seed(seed)
    data = load_dataset(folder)
    return registry.build_model(args, data), data


def batch(model, data, size=16, device='cpu'):
    """A fixed batch of training pairs (with one negative each for a BPR model)."""
    rng = np.random.default_rng(0)
    pairs = np.asarray(data.train)[rng.choice(len(data.train), size, replace=False)]
    tensors = [pairs[:, 0], pairs[:, 1]] + ([rng.integers(0, data.num_item, size)] if model.needs_negatives else [])
    return [torch.as_tensor(t, device=device) for t in tensors]


def stray_tensors(model):
    """``[(path, tensor)]``: tensors a model holds outside its parameters and buffers (module attributes, and
    what their lists, tuples, dicts and plain objects hold)."""
    found, seen = [], set()

    def walk(value, path):
        if id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            found.append((path, value))
        elif isinstance(value, torch.nn.Module):
            return                                    # a submodule: walked on its own below
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f'{path}[{key!r}]')
        elif isinstance(value, (list, tuple, set, frozenset)):
            for n, item in enumerate(value):
                walk(item, f'{path}[{n}]')
        elif hasattr(value, '__dict__') and not callable(value) and type(value).__module__ not in ('builtins',):
            for key, item in vars(value).items():
                walk(item, f'{path}.{key}')
    for prefix, module in model.named_modules():
        for key, value in vars(module).items():
            if key in ('_parameters', '_buffers', '_modules') or key.startswith('_') and key.endswith('hooks'):
                continue
            walk(value, f'{prefix or type(model).__name__}.{key}')
    return found


def training_loss(model, data, device='cpu'):
    model.train()
    model.on_epoch_start()
    torch.manual_seed(7)
    return model.loss(*batch(model, data, device=device))[0]


def eval_loss(model, data):
    model.eval()
    torch.manual_seed(7)
    with torch.no_grad():
        return model.loss(*batch(model, data))[0]


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    import prepare_data
    return prepare_data.synthetic('tiny_devices', like='tiktok', num_user=40, num_item=50, inter_per_user=10,
                                  seed=3, vocab=30, root=str(tmp_path_factory.mktemp('devices')))


@pytest.mark.parametrize('name', MODELS)
def test_every_tensor_moves_with_the_model(name, tiny):
    model, data = build(name, tiny, seed=1)
    training_loss(model, data)                         # fills what a model caches during an epoch
    assert stray_tensors(model) == [], f'{name} holds tensors outside its parameters and buffers'
    model.eval()
    with torch.no_grad():
        narrow_z = [z.clone() for z in model()]      # BPR returns its parameters, which .to() converts
    narrow_loss = eval_loss(model, data)

    model.to(torch.float64)
    for label, tensor in [*model.named_parameters(), *model.named_buffers()]:
        assert not tensor.is_floating_point() or tensor.dtype == torch.float64, f'{name}.{label} is {tensor.dtype}'
    model.eval()
    with torch.no_grad():
        wide_z = model()
    for a, b in zip(narrow_z, wide_z):
        assert b.dtype == torch.float64
        assert torch.allclose(b.float(), a, rtol=1e-4, atol=1e-5), f'{name}: float64 forward differs'
    wide_loss = eval_loss(model, data)
    assert wide_loss.dtype == torch.float64
    assert wide_loss.item() == pytest.approx(narrow_loss.item(), rel=1e-4, abs=1e-5)
    loss = training_loss(model, data)
    assert loss.dtype == torch.float64 and torch.isfinite(loss)


@pytest.mark.parametrize('name', MODELS)
def test_a_state_dict_round_trip_restores_the_scores(name, tiny):
    model, data = build(name, tiny, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    training_loss(model, data).backward()
    optimizer.step()                               # trained weights, not the initial ones
    other, _ = build(name, tiny, seed=2)
    other.load_state_dict(model.state_dict())
    model.eval(), other.eval()
    users = torch.arange(data.num_user)
    with torch.no_grad():
        assert torch.equal(model.scores(users), other.scores(users)), f'{name}: scores differ after loading'


@pytest.mark.skipif(DEVICE == 'cpu' or not torch.cuda.is_available(), reason='DEVICE=cuda with a GPU')
@pytest.mark.parametrize('name', MODELS)
def test_the_model_on_the_gpu_scores_as_on_the_cpu_and_trains(name, tiny):
    model, data = build(name, tiny, seed=1)
    training_loss(model, data)
    model.eval()
    with torch.no_grad():
        cpu_z = model()
    model.to(DEVICE)
    for label, tensor in [*model.named_parameters(), *model.named_buffers()]:
        assert tensor.device.type == 'cuda', f'{name}.{label} stayed on {tensor.device}'
    with torch.no_grad():
        for a, b in zip(cpu_z, model()):
            assert torch.allclose(b.cpu(), a, rtol=1e-4, atol=1e-4), f'{name}: the GPU forward differs'
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loss = training_loss(model, data, device=DEVICE)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and all(torch.isfinite(p).all() for p in model.parameters())
