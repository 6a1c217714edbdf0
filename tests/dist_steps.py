"""A few training steps, recorded: the loss, every parameter's gradient, the parameters after each Adam step.

    torchrun --standalone --nproc_per_node 2 tests/dist_steps.py OUT STEPS RUNS_JSON
    python tests/dist_steps.py OUT STEPS RUNS_JSON          # one process, the reference

``RUNS_JSON`` is a JSON list of main.py argument lists.  Used by
tests/test_distributed.py: the steps go through the code main.py runs
(build_model, TrainSampler, distributed.wrap, distributed.global_values), so
N ranks and one process can be compared step by step.  Every rank writes
``OUT.rank<r>`` (the ranks must agree with each other too).
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import distributed  # noqa: E402
import DataLoad  # noqa: E402
import checkpoint  # noqa: E402
import config  # noqa: E402
import registry  # noqa: E402
from DataLoad import TrainSampler, load_dataset  # noqa: E402


def record_steps(runs, steps):
    """For each argv in ``runs``: the first ``steps`` steps of epoch 1 of that run (CPU, one thread),
    and the torch RNG state after them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    distributed.setup(False, 60, 'exact')      # N ranks against one process: the exact mode
    try:
        return [_steps(config.parse_args(argv), steps) for argv in runs]
    finally:
        distributed.cleanup()
        torch.set_num_threads(threads)


def _steps(args, steps):
    sampler_rng = checkpoint.seed_everything(args.seed)
    data = load_dataset(args.data_path)
    data.features = {m: data.features[m] for m in DataLoad.select_modalities(args, data.modalities)}
    model = registry.build_model(args, data)
    decay = args.weight_decay if args.model_name == 'SLMRec' else 0.0
    optimizer = torch.optim.Adam(model.parameters(), lr=args.l_r, weight_decay=decay)
    sampler = TrainSampler(data.train, data.num_item, args.batch_size, sampler_rng)
    trainer = distributed.wrap(model, torch.device('cpu'))
    trainer.train()
    record = []
    for _, batch in zip(range(steps), sampler.batches(model.needs_negatives)):
        loss, parts = trainer.loss(*batch)
        value, parts, _ = distributed.global_values(loss, parts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        adam_input = {n: p.grad + decay * p.detach() for n, p in model.named_parameters()}   # Adam's L2 term
        optimizer.step()
        record.append({'loss': value, 'parts': parts, 'grad': grads, 'adam_input': adam_input,
                       'param': {n: p.detach().clone() for n, p in model.named_parameters()}})
    return {'steps': record, 'rng': torch.get_rng_state()}


if __name__ == '__main__':
    out, steps, runs = sys.argv[1:]
    torch.save(record_steps(json.loads(runs), int(steps)), f'{out}.rank{distributed.rank()}')
