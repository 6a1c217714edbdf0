"""Shared fixtures: tiny datasets written by the tests themselves."""
import os
import signal
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Ctrl-C as in a terminal, for this process and the runs the tests start: a shell starts a background job with
# SIGINT ignored, a disposition its children inherit, and Python then installs no KeyboardInterrupt handler
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, ROOT)

import prepare_data  # noqa: E402


@pytest.fixture
def tiny_tiktok(tmp_path):
    """A 60-user, 80-item Tiktok-shaped dataset (dense v, a and word-id t)."""
    return prepare_data.synthetic('tiny_tiktok', like='tiktok', num_user=60, num_item=80, inter_per_user=12,
                                  seed=3, vocab=50, root=str(tmp_path))


@pytest.fixture
def tiny_plain(tmp_path):
    """A 120-user, 150-item dataset with three dense modalities, big enough to learn from."""
    return prepare_data.synthetic('tiny_plain', like='none', num_user=120, num_item=150, inter_per_user=15,
                                  seed=5, root=str(tmp_path))


def one_line_error(capsys, *needles):
    """The captured stderr is one ``error: ...`` line holding every needle; returns it."""
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and '\n' not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def write_split(path, rows):
    arr = np.empty(len(rows), dtype=object)
    for n, r in enumerate(rows):
        arr[n] = list(r)
    np.save(path, arr, allow_pickle=True)


@pytest.fixture
def hand_folder(tmp_path):
    """2 users, 3 items, one dense modality; no meta.json (sizes inferred), returns a writer for edits."""
    folder = tmp_path / 'hand'
    folder.mkdir()
    np.save(folder / 'train.npy', np.array([[0, 2], [0, 3], [1, 3], [1, 4]]))
    write_split(folder / 'val_full.npy', [[0, 4], [1, 2]])
    write_split(folder / 'test_full.npy', [[0, 4], [1]])
    np.save(folder / 'user_item_dict.npy', np.array({0: {2, 3}, 1: {3, 4}}, dtype=object), allow_pickle=True)
    np.save(folder / 'feat_v.npy', np.eye(3, 4, dtype=np.float32))
    import json
    (folder / 'meta.json').write_text(json.dumps({'modalities': [{'name': 'v', 'file': 'feat_v.npy'}]}))
    return folder
