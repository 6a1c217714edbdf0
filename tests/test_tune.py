"""bench/tune.py (issue #33): a model's grid run by sweep.py on validation, the chosen point written as a
configuration with its provenance, and main.py --config reproducing the chosen trial."""
import argparse
import json
import os
import sys

import pytest

import main
from conftest import ROOT, one_line_error

sys.path.insert(0, os.path.join(ROOT, 'bench'))
import tune  # noqa: E402


def test_tune_writes_a_configuration_that_reproduces_its_trial(tiny_plain, tmp_path, monkeypatch):
    pytest.importorskip('optuna')
    argv = ['--dataset', tiny_plain, '--models', 'BPR', '--grid', 'lr', '--max_epoch', '2', '--patience', '5',
            '--configs', str(tmp_path / 'configs'), '--runs', str(tmp_path / 'runs')]
    assert tune.main_(argv + ['--write_only']) == 0          # nothing run yet: no configuration, no error
    assert not (tmp_path / 'configs').exists()
    assert tune.main_(argv) == 0
    path = tmp_path / 'configs' / 'tiny_plain' / 'BPR.yaml'
    text = path.read_text()
    header = [line for line in text.splitlines() if line.startswith('#')]
    assert "sweep.py study 'tune-tiny_plain-BPR-lr' (2 grid points)" in header[1]
    assert 'l_r: [0.01, 0.001]' in text and '--grid lr --max_epoch 2 --patience 5' in text
    trial, _ = tune.best_trial(argparse.Namespace(runs=str(tmp_path / 'runs')), 'tune-tiny_plain-BPR-lr')
    assert f'validation R@20 {trial.user_attrs["val"]["20"]["recall"]:.4f}' in header[2]
    # the configuration alone gives the chosen trial's numbers
    monkeypatch.chdir(tmp_path)
    assert main.main(['--config', str(path), '--no-progress', '--save_file', 'r.jsonl']) == 0
    with open(tmp_path / 'r.jsonl') as f:
        record = json.loads(f.read().splitlines()[-1])
    assert record['val'] == trial.user_attrs['val'] and record['test'] == trial.user_attrs['test']
    assert record['args']['l_r'] == trial.params['l_r']


@pytest.mark.parametrize('flags, needle', [
    (['--models', 'BPR,NoSuchModel'], "--models: unknown model(s) 'NoSuchModel'; choose from SLMRec"),
    (['--models', 'BPR', '--dataset', 'no_such_dataset'], 'no_such_dataset: dataset folder not found')])
def test_tune_refusals_are_one_line_before_runs_exists(flags, needle, tiny_plain, tmp_path, capsys):
    # found: an unknown model was argparse's usage block after runs/ was made; a missing dataset ran its whole
    # study of refused trials (exit 1), leaving the study's database and trial folders
    with pytest.raises(SystemExit) as stop:
        tune.main_(['--dataset', tiny_plain, '--runs', str(tmp_path / 'runs'), '--configs', str(tmp_path / 'c'),
                    '--max_epoch', '1', *flags])
    assert stop.value.code == 2
    one_line_error(capsys, needle)
    assert not (tmp_path / 'runs').exists() and not (tmp_path / 'c').exists()


def test_tune_takes_a_models_alias_for_its_model(tiny_plain, tmp_path, capsys):
    # found: --models DA-MRS (the spelling main.py --model_name takes) was refused as unknown
    assert tune.main_(['--dataset', tiny_plain, '--runs', str(tmp_path / 'runs'), '--configs', str(tmp_path / 'c'),
                       '--models', 'DA-MRS', '--write_only']) == 0
    assert "DAMRS: study 'tune-" in capsys.readouterr().out


def test_every_shipped_configuration_parses_and_says_where_it_came_from():
    """configs/<dataset>/<Model>.yaml as landed from the sweeps: each file is a valid main.py --config for the
    model it is named after, on the dataset its folder names, with tune.py's provenance at its top."""
    import glob
    import config
    paths = sorted(glob.glob(os.path.join(ROOT, 'configs', '*', '*.yaml')))
    assert paths, 'configs/ holds no tuned configuration'
    for path in paths:
        dataset, model = os.path.basename(os.path.dirname(path)), os.path.basename(path)[:-len('.yaml')]
        args = config.parse_args(['--config', path])
        assert (args.model_name, os.path.basename(args.data_path)) == (model, dataset), path
        with open(path, encoding='utf-8') as f:
            header = [line for line in f.read().splitlines() if line.startswith('#')]
        assert header[0].startswith(f'# {model} on {dataset}, tuned by bench/tune.py'), path
        assert 'Chosen on validation only' in header[1] and header[-1].startswith('# Reproduce: python main.py'), path
