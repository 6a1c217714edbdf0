"""The model contract and registry (SPEC 5): a model defined in a test goes through the whole command
line; MF-BPR's equations by hand; a checkpoint written before the registry resumes after it."""
import csv
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

import pytest
import torch
from torch import nn

import config
import main
import registry
from conftest import ROOT
from model_BPR import BPR
from test_train import _run


class Toy(registry.Recommender):
    """Matrix factorisation with a per-item bias, trained with BPR: the 20-line model of a fork."""

    def __init__(self, num_user, num_item, dim, reg):
        super().__init__()
        self.num_user, self.num_item, self.reg = num_user, num_item, reg
        self.user = nn.Parameter(torch.randn(num_user, dim) * 0.1)
        self.item = nn.Parameter(torch.randn(num_item, dim) * 0.1)
        self.bias = nn.Parameter(torch.zeros(num_item))

    def forward(self):       # s(u, i) = [E_u ‖ 1] · [E_i ‖ b_i]
        return (torch.cat([self.user, torch.ones(self.num_user, 1)], 1),
                torch.cat([self.item, self.bias[:, None]], 1))

    def loss(self, users, pos, neg):
        z_user, z_item = self()
        u, p, n = z_user[users], z_item[pos], z_item[neg]
        bpr = -torch.nn.functional.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
        return bpr + self.reg * self.bias.pow(2).mean(), {'bpr': bpr.item()}


TOY = registry.ModelEntry(
    name='Toy', summary='a test model',
    build=lambda args, data: Toy(data.num_user, data.num_item, args.dim_latent, args.toy_reg),
    defaults=dict(l_r=0.01, weight_decay=0.0, batch_size=256, num_layer=1, num_epoch=3),
    flags=(registry.Flag('toy_reg', 0.01, 'bias regulariser', type=float,
                         check=lambda a: a.toy_reg >= 0, problem='must be >= 0'),))


@pytest.fixture
def toy():
    registry.register(TOY)
    yield
    registry.unregister('Toy')


def test_a_model_defined_in_a_test_trains_evaluates_resumes_and_exports(toy, tiny_plain, tmp_path, capsys):
    assert '--toy_reg' in config.build_parser().format_help()                     # --help lists its flag
    args = config.parse_args(['--model_name', 'Toy'])
    assert (args.l_r, args.num_epoch, args.toy_reg) == (0.01, 3, 0.01)             # its published defaults
    assert config.run_name(config.parse_args(['--model_name', 'Toy', '--toy_reg', '0.5'])).startswith(
        'ml100k-Toy-seed1-')
    with pytest.raises(Exception, match='--toy_reg: must be >= 0'):
        config.parse_args(['--model_name', 'Toy', '--toy_reg', '-1'])

    code, whole = _run(tmp_path, tiny_plain, '--model_name', 'Toy', '--topK', '10', tag='whole')
    assert code == 0 and whole['epochs_run'] == 3 and whole['test']['10']['recall'] > 0
    assert (tmp_path / 'whole.best.pt').exists()
    assert _run(tmp_path, tiny_plain, '--model_name', 'Toy', '--num_epoch', '2', '--topK', '10', tag='cut')[0] == 0
    code, resumed = _run(tmp_path, tiny_plain, '--model_name', 'Toy', '--resume', '--topK', '10', tag='cut')
    assert code == 0 and 'resumed from' in capsys.readouterr().out
    assert resumed['test'] == whole['test'] and [h['loss'] for h in resumed['history']] == \
        [h['loss'] for h in whole['history']]

    export = tmp_path / 'top.csv'
    code, _ = _run(tmp_path, tiny_plain, '--model_name', 'Toy', '--num_epoch', '0', '--topK', '5',
                   '--PATH_weight_load', str(tmp_path / 'whole.best.pt'), '--export_topk', str(export), tag='exp')
    assert code == 0
    with open(export) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 * 120 and rows[0]['rank'] == '1'


def test_a_model_name_is_taken_once(toy):
    with pytest.raises(ValueError, match="'Toy' is taken"):
        registry.register(TOY)


def test_bpr_loss_by_hand():
    """2 users, 3 items, d = 2: s(0, 1) = 1·0 + 2·1 = 2, s(0, 0) = 1; s(1, 2) = 0, s(1, 0) = 0."""
    model = BPR(2, 3, dim_latent=2, reg_weight=0.1)
    with torch.no_grad():
        model.embedding_user.copy_(torch.tensor([[1., 2.], [0., -1.]]))
        model.embedding_item.copy_(torch.tensor([[1., 0.], [0., 1.], [3., 0.]]))
    loss, parts = model.loss(torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([0, 0]))
    bpr = -(torch.log(torch.sigmoid(torch.tensor(2. - 1.))) + torch.log(torch.sigmoid(torch.tensor(0. - 0.)))) / 2
    # ½ (‖E_u‖² + ‖E_i⁺‖² + ‖E_i⁻‖²) / B = ½ ((5 + 1) + (1 + 9) + (1 + 1)) / 2 = 4.5
    assert parts['bpr'] == pytest.approx(bpr.item()) and parts['reg'] == pytest.approx(4.5)
    assert loss.item() == pytest.approx(bpr.item() + 0.1 * 4.5)
    z_user, z_item = model()
    assert torch.equal(model.scores(torch.tensor([0])), torch.tensor([[1., 2., 3.]]))
    assert z_user.shape == (2, 2) and z_item.shape == (3, 2)


def test_bpr_through_the_command_line_with_its_defaults(tiny_plain, tmp_path):
    args = config.parse_args(['--model_name', 'BPR'])
    assert (args.l_r, args.weight_decay, args.batch_size, args.dim_latent) == (0.001, 1e-4, 2048, 64)
    assert registry.adam_weight_decay(args) == 0.0                  # λ is the loss's, Adam runs without decay
    code, record = _run(tmp_path, tiny_plain, '--model_name', 'BPR', '--num_epoch', '2', '--batch_size', '256',
                        '--l_r', '0.01')
    assert code == 0 and record['run'].startswith('tiny_plain-BPR-seed1-') and record['best_epoch'] in (1, 2)
    assert set(record['history'][0]['loss_parts']) == {'bpr', 'reg'}


BEFORE_REGISTRY = 'af34245'      # the last commit before the registry and the module split


def test_a_checkpoint_written_before_the_registry_resumes_after_it(tiny_plain, tmp_path):
    """Two epochs by the code before the change, the third by this one: the uninterrupted run's result."""
    try:
        archive = subprocess.run(['git', '-C', ROOT, 'archive', '--format=tar', BEFORE_REGISTRY],
                                 capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f'commit {BEFORE_REGISTRY} is not in this clone (a shallow copy)')
    old = tmp_path / 'old'
    with tempfile.TemporaryFile() as f:
        f.write(archive)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(old, filter='data')
    flags = ['--data_path', tiny_plain, '--model_name', 'SLMRec', '--ssl_task', 'FAC', '--batch_size', '256',
             '--dim_latent', '16', '--topK', '10', '--no-progress', '--checkpoint', str(tmp_path / 'c.last.pt'),
             '--PATH_weight_save', str(tmp_path / 'c.best.pt'), '--save_file', str(tmp_path / 'c.jsonl')]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    subprocess.run([sys.executable, str(old / 'main.py'), *flags, '--num_epoch', '2'], check=True, env=env,
                   capture_output=True, cwd=tmp_path)
    shutil.rmtree(old)
    code, resumed = _run(tmp_path, tiny_plain, *flags[2:10], '--num_epoch', '3', '--resume', tag='c')
    code_whole, whole = _run(tmp_path, tiny_plain, *flags[2:10], '--num_epoch', '3', tag='whole')
    assert code == code_whole == 0 and resumed['epochs_run'] == 3
    assert resumed['test'] == whole['test'] and resumed['val'] == whole['val']
    assert [h['loss'] for h in resumed['history']] == [h['loss'] for h in whole['history']]
    assert json.loads(json.dumps(resumed['args']))['model_name'] == 'SLMRec'


def test_every_model_has_a_tuning_grid_of_at_most_eight_valid_points():
    """bench/tune.py's grids (issue #33): the learning rate and the model's key coefficient, each point a
    valid command line for that model (flags it reads, values it accepts)."""
    import itertools
    for name, entry in registry.entries().items():
        grid = entry.search_grid
        assert grid and 'l_r' in grid, name
        points = list(itertools.product(*grid.values()))
        assert 2 <= len(points) <= 8, name
        for point in points:
            argv = ['--model_name', name] + [x for k, v in zip(grid, point) for x in (f'--{k}', str(v))]
            args = config.parse_args(argv)
            assert all(getattr(args, k) == v for k, v in zip(grid, point)), (name, point)
