"""--config YAML files (every flag by its dest name, the command line wins, bad keys and values are one-line
errors) and the scripts/ run files (each main.py line parses)."""
import json
import os
import stat
import subprocess
import sys

import pytest

import main
import config
import errors
import registry
from conftest import ROOT


def _write(tmp_path, text, name='c.yaml'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_config_sets_flags_by_dest_and_the_command_line_wins(tmp_path):
    path = _write(tmp_path, 'model_name: MMGCN\nl_r: 1e-3\ntopK: [20, 10]\nno_cuda: true\nconcat: true\n'
                            'progress: false\ndata_path: 100\nmodalities: v,t\n')
    args = config.parse_args(['--config', path])
    assert (args.model_name, args.l_r, args.topK, args.no_cuda, args.concat, args.progress) == \
        ('MMGCN', 1e-3, [20, 10], True, True, False)
    assert (args.data_path, args.modalities) == ('100', 'v,t')
    assert args.weight_decay == 0.1                    # per-model defaults still fill what the file leaves out
    over = config.parse_args(['--l_r', '0.5', f'--config={path}', '--topK', '5', '--concat', 'False'])
    assert (over.l_r, over.topK, over.concat, over.model_name) == (0.5, [5], False, 'MMGCN')
    assert config.parse_args(['--config', _write(tmp_path, 'topK: 7\nl_r: null\n', 'd.yaml')]).topK == [7]


@pytest.mark.parametrize('text, message', [
    ('l_rr: 0.1\n', "unknown key 'l_rr' (did you mean 'l_r'?)"),
    ('help: true\n', "unknown key 'help'"),
    ('batch_size: 3.5\n', "batch_size: invalid int value '3.5'"),
    ('l_r: fast\n', "l_r: invalid float value 'fast'"),
    ('batch_size: true\n', "batch_size: invalid int value 'True'"),
    ('concat: maybe\n', "concat: expected True or False, got 'maybe'"),
    ('ssl_task: XYZ\n', 'ssl_task: invalid choice'),
    ('topK: [10, x]\n', "topK: invalid int value 'x'"),
    ('seed: [1, 2]\n', 'seed: expected one value'),
    ('no_cuda: 1\n', 'no_cuda: expected true or false'),
    ('seed: null\n', 'seed: a value is required'),
    ('- 1\n- 2\n', 'expected a mapping'),
    ('[1, 2\n', 'not valid YAML'),
    ('batch_size: -4\n', None),                        # parse_args' own checks still apply
])
def test_bad_config_is_one_line_error(tmp_path, capsys, text, message):
    path = _write(tmp_path, text)
    assert main.main(['--config', path, '--data_path', str(tmp_path / 'absent')]) == errors.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    if message is None:
        assert err.startswith('error: --batch_size: must be positive')
    else:
        assert err.startswith(f'error: {path}: ') and message in err


def test_model_name_against_the_configs_model_is_refused(tmp_path, capsys):
    """A tuned file's l_r and weight_decay (Adam's decay for SLMRec, a loss coefficient for MMGCN) are its model's:
    --model_name naming another would run them, unnoticed, with that one.  The same model (an alias), or a file
    that names none, is fine."""
    path = _write(tmp_path, 'model_name: MMGCN\nl_r: 0.0005\nweight_decay: 0.1\n')
    assert main.main(['--config', path, '--model_name', 'SLMRec', '--data_path', str(tmp_path / 'absent')]) == 2
    assert capsys.readouterr().err.strip() == (f'error: --model_name: SLMRec on the command line, but {path} is a '
                                               f'configuration of MMGCN; leave --model_name out, or give a '
                                               f'configuration of SLMRec')
    assert config.parse_args(['--config', path, '--model_name', 'MMGCN']).weight_decay == 0.1
    alias = _write(tmp_path, 'model_name: DAMRS\n', 'd.yaml')
    assert config.parse_args(['--config', alias, '--model_name', 'DA-MRS']).model_name == 'DAMRS'
    plain = _write(tmp_path, 'l_r: 0.002\n', 'p.yaml')
    assert config.parse_args(['--config', plain, '--model_name', 'BPR']).l_r == 0.002


def test_missing_config_file(tmp_path, capsys):
    path = str(tmp_path / 'none.yaml')
    assert main.main(['--config', path]) == errors.EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip() == f'error: {path}: cannot read the config file (No such file or directory)'


def _script_calls(tmp_path, script):
    """Run scripts/<script> with a stub `python` first on PATH that logs its argv instead of running."""
    stub_dir = tmp_path / 'bin'
    stub_dir.mkdir()
    log = tmp_path / 'calls.jsonl'
    stub = stub_dir / 'python'
    stub.write_text(f'#!/bin/sh\nexec "{sys.executable}" -c "import json, sys; print(json.dumps(sys.argv[1:]))" '
                    f'"$@" >> "{log}"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f'{stub_dir}{os.pathsep}{os.environ["PATH"]}')
    subprocess.run(['bash', os.path.join(ROOT, 'scripts', script), '--seed', '4'], check=True, env=env, cwd=tmp_path)
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.parametrize('script, data', [('ml100k.sh', 'ml100k'), ('ml1m.sh', 'ml1m'),
                                          ('tiktok_small.sh', 'tiktok_small')])
def test_each_run_script_line_parses(tmp_path, script, data):
    calls = [c for c in _script_calls(tmp_path, script) if c[0] == 'main.py']
    runs = [config.parse_args(c[1:]) for c in calls]
    slmrec = sorted(a.ssl_task for a in runs if a.model_name == 'SLMRec')
    assert slmrec == sorted(['FAC', 'FD', 'FM', 'FD+FM', 'none'])
    assert [a.model_name for a in runs].count('MMGCN') == 1       # baselines join once main.py has them
    for a in runs:
        assert a.data_path == data and a.seed == 4 and a.topK == [10, 20]      # the script's extra flags win
        assert a.save_file == f'results_{data}.jsonl'
        expected = registry.entry(a.model_name).defaults
        assert {k: getattr(a, k) for k in expected if k != 'num_epoch'} == \
            {k: v for k, v in expected.items() if k != 'num_epoch'}
    mmgcn = next(a for a in runs if a.model_name == 'MMGCN')
    assert (mmgcn.aggr_mode, mmgcn.concat, mmgcn.num_epoch) == ('mean', False, 1000)
