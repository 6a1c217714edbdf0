"""The top-K export (``--export_topk FILE.csv``): every user's top K items as CSV ``user,rank,item,score``.

K is the largest ``--topK``; training items are excluded as in evaluation
(SPEC 4).  Users and items are written in the dataset's source ids where it
has ``user_ids.txt`` / ``item_ids.txt`` (prepare_data.py writes them), else
as 0-based indices.  The file is written atomically, ``--eval_batch`` users
at a time.

    python main.py --num_epoch 0 --PATH_weight_load runs/x.best.pt --export_topk top.csv
"""
import os
import sys

import numpy as np
import torch

from errors import InputError
from Full_vt import top_items
from safe_read import read_regular
from safe_write import atomic_file


def read_ids(folder, name, count):
    """The source ids of a prepared dataset (line n = index n), or None without the file."""
    path = os.path.join(folder, name)
    if not os.path.lexists(path):
        return None
    try:
        text = read_regular(path, 1 << 30).decode('utf-8')     # a regular file: a FIFO would hang
    except UnicodeDecodeError as e:
        raise InputError(f'{path}: not UTF-8 text (byte {e.start}: {e.reason})') from None
    lines = text.split('\n')             # prepare_data writes one id per '\n' line; str.splitlines would also
    if lines[-1] == '':                  # break at the separators an id may hold (\u2028, \x85, \x0c, ...)
        lines.pop()
    ids = [line[:-1] if line.endswith('\r') else line for line in lines]
    if len(ids) != count:
        raise InputError(f'{path}: {len(ids)} ids for {count} indices')
    return ids


def _csv_fields(ids):
    """Ids as CSV fields: quoted where they hold a comma, a quote or a line break (a CSV import keeps them)."""
    if ids is None:
        return None
    return [f'"{x.replace(chr(34), chr(34) * 2)}"' if any(c in x for c in ',"\r\n') else x for x in ids]


def export_best_topk(args, model, data, folder, best_path, state, device):
    """--export_topk: reload the best state dict (when training ran) and write every user's top list."""
    if args.num_epoch > 0:
        if state['best_epoch'] is None or not os.path.isfile(best_path):
            print(f'no best model to export; {args.export_topk} not written', file=sys.stderr)
            return
        model.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
    n = export_topk(model, data, folder, max(args.topK), args.eval_batch, args.export_topk)
    print(f'top-{max(args.topK)} lists of {n} users written to {args.export_topk}')


@torch.no_grad()
def export_topk(model, data, folder, k, eval_batch, path):
    """Write CSV user,rank,item,score atomically, ``eval_batch`` users at a time; returns the user count.

    Ids are the dataset's source ids where ``user_ids.txt``/``item_ids.txt``
    exist, else the 0-based indices (items without the user offset).
    """
    user_ids = _csv_fields(read_ids(folder, 'user_ids.txt', data.num_user))
    item_ids = _csv_fields(read_ids(folder, 'item_ids.txt', data.num_item))
    indptr, items = data.train_csr()
    was_training = model.training
    model.eval()
    try:
        z_user, z_item = model()
        with atomic_file(path, 'w') as f:
            f.write('user,rank,item,score\n')
            for users, top, scores in top_items(z_user, z_item, np.arange(data.num_user), indptr, items, k,
                                                eval_batch):
                for user, row, row_scores in zip(users.tolist(), top.tolist(), scores.tolist()):
                    name = user_ids[user] if user_ids else user
                    for rank, (item, score) in enumerate(zip(row, row_scores), start=1):
                        if score == -float('inf'):      # training item or padding: fewer than k candidates
                            break
                        f.write(f'{name},{rank},{item_ids[item] if item_ids else item},{score:.7g}\n')
    finally:
        model.train(was_training)
    return data.num_user

