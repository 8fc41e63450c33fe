"""The training configuration: a TOML file validated key by key.

Unknown keys are errors (a typo must not silently fall back to a default), and every key has a
type, range or choice (declared with :func:`~inclust_plus.training.schema.key` beside its default:
one line per key), checked before anything is read or written. Paths are resolved relative to the
config file, so an example folder can be moved as a whole.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from inclust_plus.errors import InclustError

from inclust_plus.training.network import activations
from inclust_plus.training.schema import Bool, BoolOr, Choice, Float, Int, ListOf, OneOrList, Optional, Str, Table, check_dataclass, key

LIKELIHOODS = ("gaussian", "bernoulli")
MIXING_KERNELS = ("median", "per_type")  # training/network/mixing.py
TASKS = ("imputation", "integration", "triple", "generation", "custom")
ACTIVATIONS = activations.NAMES  # one table: training/network/activations.py
INPUT_NORMALIZATIONS = ("none", "l2")
INPUT_CORRECTIONS = ("none", "moments")

# Defaults a task brings to the [model], [loss] and [training] sections (a config's own values win).
TASK_DEFAULTS: dict[str, dict[str, dict]] = {
    # Tuned on real MERFISH-panel data (benchmarks/results/imputation_accuracy.md): a heavier
    # reconstruction term (at the paper's 5 the KL pulls every cell onto its type mean), a longer,
    # cosine-decayed run (0.219 -> ~0.335 mean Pearson on the standard split for one network), and an
    # ensemble of networks trained with alternating Gaussian and Bernoulli likelihoods, whose errors are
    # less correlated than those of same-likelihood members (4 members: ~0.361, 6: ~0.364, 8: ~0.366).
    # Issue 24 (benchmarks/results/imputation_splits_summary.md, five held-back splits, each plain and with a simulated
    # technology shift): the genes a reference cell's input hides weighted 16x (loss.unseen), each covariate's inputs
    # matched to the reference's per-gene log moments (model.input_correction) and the neighbour read-out (readout,
    # with a query: views.query) take the imputation from 0.97-1.02x to 1.05-1.09x a tuned cosine kNN on all ten.
    "imputation": {
        "model": {"ensemble": 6, "input_correction": "moments"},
        "loss": {"reconstruction": 1000.0, "likelihood": ["gaussian", "bernoulli"], "unseen": 16.0},
        "training": {"epochs": 200, "lr_schedule": "cosine"},
        "readout": {"neighbours": "with_query"},
    },
    # Issue 24 (benchmarks/results/integration_contenders.md, three seeds each on the real MERFISH split as two
    # datasets, with and without a simulated technology shift, and on make_hard_cells): a KL weight of 2 (the per-type
    # prior gathers each type; at 0.05 real types that overlap blurred, ARI 0.94 -> 0.39), the mixing penalty at 5 with
    # kernel widths from each type's own spread (training/network/mixing.py: the median-distance kernel alone missed
    # within-type batch shifts; mixing 7 and above split the largest real type), each covariate's inputs matched to
    # the reference's per-gene log moments, and 200 epochs in batches of 500 (the penalty compares a type's cells
    # across batches inside one training batch; 100 cells are too few) at a learning rate of 3e-3, cosine-decayed
    # (at a constant 1e-3 the types stayed looser than the paper's loss in batches of 100: label ASW 0.938 vs 0.957).
    "integration": {
        "model": {"input_correction": "moments"},
        "loss": {"kl": 2.0, "mixing": 5.0, "mixing_kernel": "per_type"},
        "training": {"epochs": 200, "batch_size": 500, "learning_rate": 3e-3, "lr_schedule": "cosine"},
    },
}


@dataclass
class DatasetConfig:
    """One AnnData/MuData file (or in-memory object) and what it measured."""

    name: str = key(rule=Str())
    path: str | None = key(None, Optional(Str()))
    modalities: list[str] = key(rule=ListOf(Str(), non_empty=True), factory=lambda: ["rna"])
    layer: str | None = key(None, Optional(Str()))
    covariate_keys: list[str] = key(rule=ListOf(Str()), factory=list)
    covariate: str | None = key(None, Optional(Str()))  # a constant covariate for the whole dataset (default: its name)
    label_key: str | None = key(None, Optional(Str()))
    preprocessed: bool = key(False, Bool())  # True: values are already normalised (skip the modality preprocessing)


@dataclass(kw_only=True)
class NetworkShape:
    """The network's architecture: the one definition of these keys, for the ``[model]`` section
    (:class:`ModelConfig`) and the torch module's config (``training.network.module.ModuleConfig``), which
    both extend it; :meth:`shape` hands them from the one to the other."""

    encoder_hidden: list[int] = key(rule=ListOf(Int(min=1), non_empty=True), factory=lambda: [200, 50])
    latent_dim: int = key(50, Int(min=1))
    decoder_hidden: list[int] = key(rule=ListOf(Int(min=1)), factory=lambda: [200])
    activation: str = key("relu", Choice(*ACTIVATIONS))
    output_activation: str = key("sigmoid", Choice(*ACTIVATIONS))
    input_normalization: str = key("none", Choice(*INPUT_NORMALIZATIONS))  # "l2": per-cell unit length of the encoder input
    # "moments": a per-covariate, per-feature gain and power in front of the encoder, fitted on the training data so
    # that each covariate's non-zero values of a feature have the reference's log mean and spread
    # (training/network/correction.py): it undoes a technology's per-gene gain and bend before the encoder sees them.
    input_correction: str = key("none", Choice(*INPUT_CORRECTIONS))
    covariate_init_std: float = key(0.1, Float(min=0))  # spread of the initial covariate embedding rows e_b (a far-apart start lets the decoder tell batches apart)

    def shape(self) -> dict:
        """The architecture keys and their values (lists copied), e.g. ``ModuleConfig(n_features=..., **cfg.shape())``."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(NetworkShape)}


@dataclass(kw_only=True)
class ModelConfig(NetworkShape):
    """The ``[model]`` section: the architecture plus what only training decides."""

    n_clusters: int = key(10, Int(min=1))  # used only when no dataset has labels (unsupervised)
    ensemble: int = key(1, Int(min=1))  # >1: train this many networks (seeds seed, seed+1, ...) and merge them into one (mean decode)


@dataclass
class LossConfig:
    """The ``[loss]`` section, and the weights ``InClustModule.loss`` takes (one likelihood per member there)."""

    reconstruction: float = key(5.0, Float(min=0))
    kl: float = key(1.0, Float(min=0))
    categorical: float = key(1.0, Float(min=0))
    label: float = key(50.0, Float(min=0))
    mixing: float = key(0.0, Float(min=0))  # >0: per-type batch-mixing penalty on z - e_b (training/network/mixing.py)
    # the penalty's kernel widths: "median" (fractions of the batch's median distance) or "per_type" (also fractions
    # of each type's own spread, which still sees the batches apart within compact types at kl >= 1)
    mixing_kernel: str = key("median", Choice(*MIXING_KERNELS))
    # the reconstruction weight of the features a training row must predict without seeing them (its output
    # mask minus its input mask: the genes to impute, the modality to generate), relative to those it sees;
    # 1: the paper's loss (the default outside the imputation task). 16 lifts imputation on same-technology splits
    # (decoder 1.02-1.06x the cosine kNN against 0.98-1.02x); under a technology shift it needs model.input_correction
    # (benchmarks/results/imputation_splits_summary.md).
    unseen: float = key(1.0, Float(gt=0))
    # "gaussian" (squared error, the paper's) or "bernoulli" (cross-entropy; sigmoid output, features in [0, 1]);
    # a list is cycled through the members of an ensemble (member k uses entry k mod its length).
    likelihood: str | list[str] = key("gaussian", OneOrList(Choice(*LIKELIHOODS)))

    def likelihoods(self) -> list[str]:
        return [self.likelihood] if isinstance(self.likelihood, str) else list(self.likelihood)


@dataclass
class TrainingConfig:
    epochs: int = key(50, Int(min=1))
    batch_size: int = key(500, Int(min=1))
    learning_rate: float = key(1e-3, Float(gt=0))
    seed: int = key(0, Int(min=0, max=2**32 - 1))
    validation_fraction: float = key(0.0, Float(min=0, lt=1))  # >0: hold out rows, keep the best epoch (early stopping)
    patience: int = key(0, Int(min=0))  # epochs without validation improvement before stopping (0: never stop early)
    lr_schedule: str = key("constant", Choice("constant", "cosine"))
    kl_warmup_epochs: int = key(0, Int(min=0))
    threads: int = key(0, Int(min=0), run=True)  # torch threads per training process (0: one on a CPU, see training/fitting/members.py)
    workers: int = key(0, Int(min=0), run=True)  # processes training ensemble members on a CPU (0: one plus one per idle core for big jobs, 1: all stacked in this one)
    device: str = key("auto", Choice("auto", "cpu", "cuda"), run=True)  # auto: CUDA when torch sees it (training/fitting/device.py)
    precision: str = key("fp32", Choice("fp32", "bf16", "fp16"))  # autocast of the forward pass
    fast_step: str = key("auto", Choice("auto", "on", "off"), run=True)  # the hand-written step (training/fast_step/manual_step.py): auto = where it is verified, on = an error elsewhere, off = autograd
    compile: str = key("auto", Choice("auto", "on", "off"), run=True)  # torch.compile of the loss (training/fitting/compiled.py): auto = where measured to pay (CPU, 3+ stacked members, long runs)


@dataclass
class ViewsConfig:
    """Which (input -> output) rows to train on; see :mod:`inclust_plus.training.assembly.views`."""

    query: list[str] = key(rule=ListOf(Str()), factory=list)  # datasets to impute/generate for
    translation: bool = key(True, Bool())  # add rows from one measured modality to the others measured with it
    joint: bool = key(True, Bool())  # add a row from all measured modalities to all of them


@dataclass
class ReadoutConfig:
    """The ``[readout]`` section: how the query's missing features are read out (training/readout.py).

    ``neighbours = true`` keeps a table of the reference cells in the model, and the query combination's
    imputation becomes 1/3 decoder + 1/3 the distance-weighted mean of the measured values of the
    ``k_latent`` cosine-nearest reference cells in the corrected latent + 1/3 the same over the
    ``k_inputs`` nearest on the shared input features (training/neighbours.py). ``"with_query"``: on when
    ``views.query`` names the datasets to impute for, however it came to be set (a config file, ``InClust.setup(query=...)``,
    a later override), off without one: the imputation task's default (TASK_DEFAULTS). Off elsewhere: it costs
    graph size and inference speed (README, "Neighbour read-out"). The equal weights are not a setting.
    """

    neighbours: bool | str = key(False, BoolOr("with_query"))
    k_latent: int = key(60, Int(min=1))
    k_inputs: int = key(30, Int(min=1))

    def enabled(self, query: list[str]) -> bool:
        """Whether training builds the read-out's table, given ``views.query``."""
        return self.neighbours is True or (self.neighbours == "with_query" and bool(query))


PREPROCESSING = Table({  # [preprocessing.<modality>]
    "normalize_total": Optional(Float(gt=0)),
    "log1p": Bool(),
    "scale": Optional(Choice("max")),
})


@dataclass
class Config:
    task: str = key("custom", Choice(*TASKS))
    name: str = key("inclust_model", Str())
    datasets: list[DatasetConfig] = key(factory=list)
    modalities: list[str] = key(rule=ListOf(Str()), factory=list)  # order of modalities (default: first seen)
    preprocessing: dict[str, dict] = key(rule=PREPROCESSING, factory=dict)  # modality -> Preprocessing fields
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    readout: ReadoutConfig = field(default_factory=ReadoutConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def record(self) -> dict:
        """What the checkpoint keeps as ``hyperparameters``: the task and the [model], [loss], [training]
        and [views] sections, without run options (``key(..., run=True)``: device, threads, ...)."""
        out: dict = {"task": self.task}
        for section in _SECTIONS:
            if section == "readout":  # recorded by the description's ReadoutRecord when on; off, the record is as before it existed
                continue
            obj = getattr(self, section)
            out[section] = {f.name: copy.deepcopy(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.metadata.get("run")}
        return out


_SECTIONS = {"model": ModelConfig, "loss": LossConfig, "training": TrainingConfig, "views": ViewsConfig, "readout": ReadoutConfig}
# a setting by name (InClust.setup/train keywords, inclust-train flags) -> its section; names are unique across sections
SECTION_OF = {f.name: section for section, cls in _SECTIONS.items() for f in dataclasses.fields(cls)}


# Keys that once existed: a config that still has one gets told what became of it (not "unknown key").
REMOVED_KEYS = {
    "training.native": ("config key training.native is gone with the C++ training step (the Python step trains the same model)",
                        'delete the line (training.fast_step = "auto", "on" or "off" chooses the hand-written step)'),
}


def _build(cls, data: dict, where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    for k in sorted(set(data) - names):
        if f"{where}{k}" in REMOVED_KEYS:
            raise InclustError(*REMOVED_KEYS[f"{where}{k}"])
    unknown = sorted(set(data) - names)
    if unknown:
        raise InclustError(
            f"unknown config key {where}{unknown[0]!r}", f"valid keys in this section: {', '.join(sorted(names))}"
        )
    try:
        return cls(**data)
    except TypeError as err:  # pragma: no cover - missing required keys
        raise InclustError(f"config section {where or 'top level'} is incomplete: {err}", "see the README examples") from None


def _table(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise InclustError(f"config key {where} must be a table, not {type(value).__name__}", f"write it as [{where}] with key = value lines")
    return value


def config_from_dict(data: dict[str, Any], base_dir: Path | None = None) -> Config:
    """Validate a parsed TOML document into a :class:`Config` (types, ranges, choices: :mod:`.schema`)."""
    data = dict(data)
    top = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - top)
    if unknown:
        raise InclustError(f"unknown config key {unknown[0]!r}", f"valid top-level keys: {', '.join(sorted(top))}")
    entries = data.pop("datasets", [])
    if not isinstance(entries, list):
        raise InclustError("config key datasets must be a list of [[datasets]] tables", "write each dataset as a [[datasets]] table")
    datasets = []
    for i, d in enumerate(entries):
        _table(d, f"datasets[{i}]")
        if "name" not in d:
            raise InclustError(f"datasets[{i}] has no name", "give every [[datasets]] entry a name")
        ds = _build(DatasetConfig, d, f"datasets[{i}].")
        check_dataclass(ds, f"datasets[{i}].")  # before the path is resolved
        if ds.path is not None and base_dir is not None and not Path(ds.path).is_absolute():
            ds.path = str((base_dir / ds.path).resolve())
        datasets.append(ds)
    task = data.get("task", "custom")
    task_defaults = TASK_DEFAULTS.get(task, {}) if isinstance(task, str) else {}
    sections = {k: _build(cls, {**task_defaults.get(k, {}), **_table(data.pop(k, {}), k)}, f"{k}.") for k, cls in _SECTIONS.items()}
    _table(data.get("preprocessing", {}), "preprocessing")
    cfg = Config(datasets=datasets, **data, **sections)
    check_config(cfg)
    return cfg


def check_config(cfg: Config) -> None:
    """Every key's type, range and choice (:mod:`.schema`), then the rules that relate keys.

    Called again by :func:`with_settings` on every override (``inclust-train``'s flags, before anything
    is written; ``InClust.setup``/``train`` keywords).
    """
    check_dataclass(cfg, "")
    if "bernoulli" in cfg.loss.likelihoods() and cfg.model.output_activation != "sigmoid":
        raise InclustError("loss.likelihood 'bernoulli' needs model.output_activation = 'sigmoid'",
                           "set the output activation to sigmoid or use the gaussian likelihood")
    names = [d.name for d in cfg.datasets]
    if len(set(names)) != len(names):
        raise InclustError("two datasets share a name", "give every [[datasets]] entry a unique name")
    for q in cfg.views.query:
        if q not in names:
            raise InclustError(f"views.query names unknown dataset {q!r}", f"datasets are: {', '.join(names)}")
    if cfg.training.compile == "on" and cfg.training.fast_step == "on":
        raise InclustError('training.compile = "on" and training.fast_step = "on" choose two different training steps',
                           'set one of them to "auto" or "off"')
    if cfg.readout.neighbours is True and not cfg.views.query:
        raise InclustError("readout.neighbours = true needs the query datasets whose missing features it imputes",
                           "name them in views.query (InClust.setup(query=...)) or set readout.neighbours = false")
    _check_modality_names(cfg)


def _check_modality_names(cfg: Config) -> None:
    """Every modality named in ``modalities`` or a ``[preprocessing.<modality>]`` table is one the
    datasets measure: a misspelt one (``RNA`` for ``rna``) would otherwise be dropped silently and
    the model trained without that preprocessing or order."""
    known = list(dict.fromkeys(m for d in cfg.datasets for m in d.modalities))
    named = [(m, "key modalities") for m in cfg.modalities] + [(m, f"table [preprocessing.{m}]") for m in cfg.preprocessing]
    for m, where in named:
        if m not in known:
            raise InclustError(f"config {where} names modality {m!r}, which no dataset measures",
                               f"the datasets' modalities are: {', '.join(known) or 'none'} (names are case-sensitive)")


def choices_of(cls, name: str) -> str:
    """``[a|b|c]``: the values a Choice key accepts, for a command-line flag's help."""
    rule = next(f for f in dataclasses.fields(cls) if f.name == name).metadata["rule"]
    return "[" + "|".join(rule.values) + "]"


def with_settings(cfg: Config, settings: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with ``settings`` (field name -> value, any section) applied, checked by
    :func:`check_config` like a config file's values: the one door for ``inclust-train``'s flags,
    ``InClust.setup(**settings)`` and ``InClust.train(**settings)``. ``cfg`` itself is unchanged, so
    a refused setting leaves the model as it was."""
    out = copy.deepcopy(cfg)
    for name, value in settings.items():
        if name not in SECTION_OF:
            raise InclustError(f"unknown setting {name!r}", f"settings are fields of [model], [loss], [training], [views] or [readout]: {', '.join(sorted(SECTION_OF))}")
        setattr(getattr(out, SECTION_OF[name]), name, value)
    check_config(out)
    return out


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file."""
    p = Path(path)
    if not p.is_file():
        raise InclustError(f"config file {p} does not exist", "pass the path of a .toml config (see examples/)")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise InclustError(f"config file {p} is not valid TOML ({err})", "fix the syntax") from None
    cfg = config_from_dict(data, base_dir=p.parent.resolve())
    if "name" not in data:
        cfg.name = p.stem
    return cfg
