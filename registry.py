"""The models, and the contract every model keeps (SPEC 5).

The rest of the package (the command line and ``--help``, argument
validation, run names, training, evaluation, checkpoints, the sweep, the
results table, torchrun) knows models only through this module.  A model is
one file ``model_<Name>.py`` that ends with

    MODEL = ModelEntry(name='BPR', build=build, defaults=dict(l_r=0.001, ...), ...)

and one line in ``MODEL_FILES`` below.  Its class derives from
``Recommender`` and implements the interface written there: the loss of a
batch with its named parts, the representations whose dot products are the
full-ranking scores, and, where it needs one, a per-epoch hook.

    import registry
    model = registry.build_model(args, data)        # args from config.parse_args
    registry.entry('SLMRec').defaults['l_r']         # 0.01
"""
import functools
import importlib
import math
import os
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from errors import InputError

# Every model of the package, in the order --help and the results table show them.
MODEL_FILES = (
    'model_SSL', 'model_MMGCN', 'model_BPR', 'model_LightGCN', 'model_VBPR', 'model_GRCN', 'model_LATTICE',
    'model_FREEDOM', 'model_BM3', 'model_MGCN', 'model_LGMRec', 'model_PGL', 'model_MENTOR', 'model_SMORE',
    'model_DAMRS', 'model_DRAGON', 'model_MMSSL', 'model_DiffMM',
)


def finite(x):
    """A number that is neither NaN nor infinite (None is not): for the flags' checks."""
    return x is not None and math.isfinite(x)


def at_least(name, low=0.0, strict=False):
    """``Flag`` keywords of a float flag ``--<name>`` that must be a finite number >= low (> low when strict)."""
    def check(args):
        value = getattr(args, name)
        return finite(value) and (value > low if strict else value >= low)
    return dict(type=float, check=check, problem=f'must be a finite number {">" if strict else ">="} {low:g}')


def rate(name):
    """``Flag`` keywords of a float flag ``--<name>`` in [0, 1)."""
    return dict(type=float, check=lambda args: finite(getattr(args, name)) and 0 <= getattr(args, name) < 1,
                problem='must be in [0, 1)')


@dataclass(frozen=True)
class Flag:
    """A command-line flag a model adds: ``--<name>`` (its ``dest``).

    ``default`` None with a value in the entries' ``defaults`` makes it a per-model flag. ``check`` takes the
    parsed arguments and says whether the value is valid; ``problem`` completes ``--<name>: <problem>, got x``.
    """
    name: str
    default: object
    help: str
    type: object = None
    choices: tuple = None
    check: object = None
    problem: str = ''


@dataclass(frozen=True)
class ModelEntry:
    """What a model file declares about its model.

    name: the ``--model_name`` value.
    aliases: other spellings ``--model_name`` accepts for it (DA-MRS for DAMRS); runs and tables use ``name``.
    build: ``(args, data) -> Recommender``; raises ``InputError`` (or ``ValueError``) for a dataset or
        flags it cannot work with.
    defaults: the published value of each per-model flag (``l_r``, ``weight_decay``, ``batch_size``,
        ``num_layer``, ``num_epoch``; ``dropout_rate`` and the like where the model reads them).
    flags: the flags this model adds (a flag another model added already is listed in ``reads``).
    reads: the other models' flags this one reads (for ``--help``).
    adam_weight_decay: True when ``--weight_decay`` is Adam's decay (SLMRec); False when it is the model's
        loss coefficient λ and Adam runs without decay (all the BPR models).
    run_tag: ``args -> str`` added to the run name after the model (SLMRec: ``-<ssl task>``).
    official_weights: ``(detect, convert)`` for state dicts saved by the authors' code:
        ``detect(state) -> bool``, ``convert(model, state) -> our state dict`` (SPEC 3.5).
    rows: the results table's rows of this model: key -> (label, extra flags); default one row, its name.
    lr_grid: the learning rates the results table tries (validation picks one).
    tuning_grid: row key -> the wider grid ``sweep.py`` runs for that row.
    optimizer: ``(args, params) -> torch optimiser`` for the main loss's parameters (MMSSL: AdamW); default
        Adam at ``--l_r`` with ``adam_weight_decay``.  A model's other optimisers come from its
        ``Recommender.extra_optimizers``.
    exact_split: False for a model whose loss cannot be cut into the ranks' shares of a batch (a batch norm or
        an in-batch contrast over the whole batch): ``--dist_mode exact`` is refused for it (SPEC 7).
    search_grid: the tuned configurations' grid (``bench/tune.py``, ``configs/<dataset>/<name>.yaml``): the
        learning rate and the model's one key coefficient from its authors' search grid, at most 8 points.
    item_features: False for an ID-only model (MF-BPR, LightGCN): ``--modalities`` and ``--has_*`` are refused
        for it, as every flag a model does not read.
    """
    name: str
    build: object
    defaults: dict
    aliases: tuple = ()
    flags: tuple = ()
    reads: tuple = ()
    adam_weight_decay: bool = False
    run_tag: object = None
    official_weights: tuple = None
    rows: dict = None
    lr_grid: tuple = (0.01, 0.001)
    tuning_grid: dict = field(default_factory=dict)
    search_grid: dict = None
    summary: str = ''
    optimizer: object = None
    exact_split: bool = True
    item_features: bool = True

    def table_rows(self):
        return self.rows if self.rows is not None else {self.name: (self.name, [])}


class Recommender(nn.Module):
    """The interface every model implements (SPEC 5).

    - ``needs_negatives``: True when a batch is ``(users, positives, negatives)`` with one uniformly
      sampled negative per pair (BPR models), False for ``(users, positives)`` (in-batch models).
    - ``loss(*batch) -> (loss tensor, {part name: float})``: the training loss of a batch and its
      named parts (shown on the progress bar, logged per epoch).
    - ``forward() -> (z_user [U, d], z_item [I, d])``: a pure forward of the whole graph in the current
      mode; ``s(u, i) = z_u · z_i`` is the full-ranking score the evaluator blocks over.
    - ``scores(users)``: those scores for a block of users, the plain formula.
    - ``on_epoch_start()``: called before each epoch's first batch (FREEDOM draws its pruned graph).

    A model with more than one optimiser (MMSSL's discriminator, DiffMM's denoisers) also has:

    - ``extra_optimizers(args) -> {name: optimiser}`` over the parameters its main loss does not train (the
      main optimiser, ``registry.optimizers``, takes every other parameter);
    - ``epoch_steps()`` and ``batch_steps(*batch)``: generators of ``(optimiser name, loss, {part: float})``,
      the steps of those optimisers at an epoch's start (after ``on_epoch_start``) and before each batch's
      main loss.  The trainer takes each step (zero_grad, backward, under torchrun the gradients averaged over
      the ranks for a batch step, step) before it asks for the next, so a step sees what the previous one
      left; the checkpoint keeps every optimiser's state, and every draw goes through torch's seeded RNG.
      Epoch steps must be the same on every rank (they see no batch): under torchrun each rank takes them all.
    - ``resizable_buffers``: names of persistent buffers whose size changes in training (a learned graph's
      edges); loading a state dict gives them the saved size.

    Multimodal models keep their item features with ``register_item_features`` and read modality m's
    item input with ``item_input(m)``.
    """

    needs_negatives = True

    def loss(self, *batch):
        raise NotImplementedError

    def forward(self):
        raise NotImplementedError

    def scores(self, users):
        """``z_u · z_i`` for the users ``users`` and every item, [len(users), I]."""
        z_user, z_item = self()
        return z_user[users] @ z_item.t()

    def on_epoch_start(self):
        pass

    resizable_buffers = ()

    def extra_optimizers(self, args):
        return {}

    def epoch_steps(self):
        return iter(())

    def batch_steps(self, *batch):
        return iter(())

    def _load_from_state_dict(self, state_dict, prefix, *rest):
        for name in self.resizable_buffers:             # a learned graph saved with another number of edges
            saved = state_dict.get(prefix + name)
            if isinstance(saved, torch.Tensor) and saved.shape != getattr(self, name).shape:
                setattr(self, name, getattr(self, name).new_empty(saved.shape))
        super()._load_from_state_dict(state_dict, prefix, *rest)

    def register_item_features(self, features, normalize=False, trainable=False):
        """Keep the item features: a word-id modality as a trainable word mean (``word_means[m]``), a dense
        one as the buffer ``feat_<m>`` (rows L2-normalised when ``normalize``) or, when ``trainable``,
        as the parameter ``feature_tables[m]``.  Returns ``{m: width of its item input}``."""
        from BaseModel import item_feature_modules
        self.word_means, dense = item_feature_modules(features, self.num_item)
        if trainable:
            self.feature_tables = nn.ParameterDict({m: nn.Parameter(f.clone()) for m, f in dense.items()})
        else:
            for m, feat in dense.items():
                self.register_buffer(f'feat_{m}', F.normalize(feat, dim=1) if normalize else feat, persistent=False)
        return {m: self.word_means[m].weight.shape[1] if m in self.word_means else dense[m].shape[1]
                for m in features}

    def item_input(self, m):
        """Modality m's item features [I, width]: the mean of its words' embeddings (SPEC 1.2) or its table."""
        if m in self.word_means:
            return self.word_means[m]()
        return self.feature_tables[m] if 'feature_tables' in self._modules else getattr(self, f'feat_{m}')


@functools.cache
def entries():
    """``{name: ModelEntry}`` of every model in ``MODEL_FILES``, in that order."""
    found = {}
    for module in MODEL_FILES:
        model = importlib.import_module(module).MODEL
        if model.name in found:
            raise RuntimeError(f'{module}: model name {model.name!r} is taken')
        found[model.name] = model
    spellings = [name for model in found.values() for name in (model.name, *model.aliases)]
    if len(set(spellings)) != len(spellings):
        raise RuntimeError(f'a model name or alias is used twice: {sorted(spellings)}')
    return found


def entry(name):
    """The entry of a model name or one of its aliases."""
    known = entries()
    if name in known:
        return known[name]
    return next(model for model in known.values() if name in model.aliases)


def names_and_aliases():
    """Every value ``--model_name`` accepts."""
    return tuple(entries()) + tuple(alias for model in entries().values() for alias in model.aliases)


def register(model):
    """Add a model defined outside ``MODEL_FILES`` (a notebook, a test, a fork trying an idea before it gets
    its own file); the command line knows it from the next ``config.parse_args`` on."""
    known = entries()
    if model.name in known:
        raise ValueError(f'model name {model.name!r} is taken')
    known[model.name] = model


def unregister(name):
    entries().pop(name, None)


def model_flags():
    """Every model flag once, as ``[(Flag, [names of the models that read it])]``, in declaration order."""
    flags, readers = {}, {}
    for model in entries().values():
        for flag in model.flags:
            if flag.name in flags:
                raise RuntimeError(f'--{flag.name} is declared by two models; the second one lists it in reads')
            flags[flag.name], readers[flag.name] = flag, [model.name]
    for model in entries().values():
        for name in model.reads:
            if name in readers:
                readers[name].append(model.name)
    return [(flag, readers[name]) for name, flag in flags.items()]


def flag_readers():
    """``{flag: [models that read it]}`` for every flag that not every model reads: each model's own flags (with the
    models that list them in ``reads``), the shared per-model flags that only some models have a default for
    (``--dropout_rate``, ``--num_layer``), and the modality selection (not for an ID-only model).  A flag given to a model that does not read it is refused (``config.parse_args``): it
    would change nothing but the run name."""
    models = entries()
    readers = {flag.name: names for flag, names in model_flags()}
    for key in dict.fromkeys(k for e in models.values() for k in e.defaults):
        having = [m for m, e in models.items() if key in e.defaults]
        if key not in readers and len(having) < len(models):
            readers[key] = having
    featured = [m for m, e in models.items() if e.item_features]
    if len(featured) < len(models):
        for key in ('modalities', 'has_v', 'has_a', 'has_t'):
            readers.setdefault(key, featured)
    return readers


def needs_modality(name, data):
    """The one-line error for a model that needs item features on a dataset (or selection) without any: the
    dataset's own lack is not a --modalities problem."""
    if not data.features:
        if not getattr(data, 'available', None):
            raise InputError(f'{data.path}: {name} needs item features, and this dataset has none (no modality)')
        raise InputError(f'{name} needs at least one modality (see --modalities)')


def needs_item_graph(name, args, data):
    """``needs_modality``, and the one-line error for ``--knn_k`` above the item count (a kNN graph model)."""
    needs_modality(name, data)
    if args.knn_k > data.num_item:
        raise InputError(f'--knn_k {args.knn_k} exceeds the number of items ({data.num_item})')


def check_memory(args, data):
    """Refuse what cannot fit in this machine's memory, before the graph or the model is built: sizes in
    meta.json are checked only against the ids, so a typo (or a hostile file) could allocate the machine away
    (2**31 items: 512 GiB for the item table alone).  Counted: the float32 embedding tables with their
    gradients and Adam's two moments, and one evaluation chunk (scores and their buffer, --eval_batch users)."""
    tables = (data.num_user + data.num_item) * args.dim_latent * 4 * 4
    chunk = min(args.eval_batch, data.num_user) * data.num_item * 4 * 2
    try:
        have = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (ValueError, OSError, AttributeError):                        # not a POSIX system: no bound
        return
    if tables + chunk > have:
        raise InputError(f'{data.path}: {data.num_user} users and {data.num_item} items need '
                         f'{(tables + chunk) / 2 ** 30:.0f} GiB ({tables / 2 ** 30:.0f} GiB of embeddings at '
                         f'--dim_latent {args.dim_latent}, {chunk / 2 ** 30:.0f} GiB to score --eval_batch '
                         f'{args.eval_batch} users); this machine has {have / 2 ** 30:.0f} GiB')


def build_model(args, data):
    """The model ``--model_name`` names, built for ``data`` (``check_memory`` first)."""
    try:
        return entry(args.model_name).build(args, data)
    except ValueError as e:
        if not getattr(data, 'available', True) and 'modalit' in str(e):     # not a --modalities problem
            raise InputError(f'{data.path}: this dataset has no item features (no modality), and {e}') from None
        raise InputError(str(e)) from None


def adam_weight_decay(args):
    """Adam's weight decay: ``--weight_decay`` for a model that means it so, else 0 (it is λ; SPEC 2, 6)."""
    return args.weight_decay if entry(args.model_name).adam_weight_decay else 0.0


def optimizers(args, model):
    """``(main, {name: optimiser})``: the main loss's optimiser over every parameter that no other optimiser of
    the model (``Recommender.extra_optimizers``) takes, by default Adam (SPEC 3.4, 6), and the others."""
    extra = model.extra_optimizers(args) if isinstance(model, Recommender) else {}
    taken = {id(p) for opt in extra.values() for group in opt.param_groups for p in group['params']}
    params = [p for p in model.parameters() if id(p) not in taken]
    build = entry(args.model_name).optimizer
    if build is not None:
        return build(args, params), extra
    return torch.optim.Adam(params, lr=args.l_r, weight_decay=adam_weight_decay(args)), extra


def optimizer(args, model):
    """The main loss's optimiser (``optimizers``)."""
    return optimizers(args, model)[0]
