"""The training configuration: a TOML file validated key by key.

Unknown keys are errors (a typo must not silently fall back to a default). Paths are resolved
relative to the config file, so an example folder can be moved as a whole.
"""

from __future__ import annotations

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

LIKELIHOODS = ("gaussian", "bernoulli")
TASKS = ("imputation", "integration", "triple", "generation", "custom")

# Defaults a task brings to the [model], [loss] and [training] sections (a config's own values win).
TASK_DEFAULTS: dict[str, dict[str, dict]] = {
    # Tuned on real MERFISH-panel data (benchmarks/results/imputation_accuracy.md): a heavier
    # reconstruction term (at the paper's 5 the KL pulls every cell onto its type mean), a longer,
    # cosine-decayed run (0.219 -> ~0.335 mean Pearson on the standard split for one network), and an
    # ensemble of networks trained with alternating Gaussian and Bernoulli likelihoods, whose errors are
    # less correlated than those of same-likelihood members (4 members: ~0.361, 6: ~0.364, 8: ~0.366).
    "imputation": {
        "model": {"ensemble": 6},
        "loss": {"reconstruction": 1000.0, "likelihood": ["gaussian", "bernoulli"]},
        "training": {"epochs": 200, "lr_schedule": "cosine"},
    },
}


@dataclass
class DatasetConfig:
    """One AnnData/MuData file (or in-memory object) and what it measured."""

    name: str
    path: str | None = None
    modalities: list[str] = field(default_factory=lambda: ["rna"])
    layer: str | None = None
    covariate_keys: list[str] = field(default_factory=list)
    covariate: str | None = None  # a constant covariate for the whole dataset (default: its name)
    label_key: str | None = None
    preprocessed: bool = False  # True: values are already normalised (skip the modality preprocessing)


@dataclass
class ModelConfig:
    encoder_hidden: list[int] = field(default_factory=lambda: [200, 50])
    latent_dim: int = 50
    decoder_hidden: list[int] = field(default_factory=lambda: [200])
    activation: str = "relu"
    output_activation: str = "sigmoid"
    input_normalization: str = "none"  # "none" | "l2" (per-cell unit length of the encoder input)
    n_clusters: int = 10  # used only when no dataset has labels (unsupervised)
    ensemble: int = 1  # >1: train this many networks (seeds seed, seed+1, ...) and merge them into one (mean decode)


@dataclass
class LossConfig:
    reconstruction: float = 5.0
    kl: float = 1.0
    categorical: float = 1.0
    label: float = 50.0
    # "gaussian" (squared error, the paper's) or "bernoulli" (cross-entropy; sigmoid output, features in [0, 1]);
    # a list is cycled through the members of an ensemble (member k uses entry k mod its length).
    likelihood: str | list[str] = "gaussian"

    def likelihoods(self) -> list[str]:
        return [self.likelihood] if isinstance(self.likelihood, str) else list(self.likelihood)


@dataclass
class TrainingConfig:
    epochs: int = 50
    batch_size: int = 500
    learning_rate: float = 1e-3
    seed: int = 0
    validation_fraction: float = 0.0  # >0: hold out rows, keep the best epoch (early stopping)
    patience: int = 0  # epochs without validation improvement before stopping (0: never stop early)
    lr_schedule: str = "constant"  # "constant" | "cosine"
    kl_warmup_epochs: int = 0
    threads: int = 0  # torch threads per training process (0: one on a CPU, see training/members.py)
    workers: int = 0  # processes training ensemble members on a CPU (0: one plus one per idle core for big jobs, 1: all stacked in this one)
    device: str = "auto"  # "auto" (CUDA when torch sees it) | "cpu" | "cuda"  (training/device.py)
    precision: str = "fp32"  # "fp32" | "bf16" | "fp16": autocast of the forward pass


@dataclass
class ViewsConfig:
    """Which (input -> output) rows to train on; see :mod:`inclust_plus.training.views`."""

    query: list[str] = field(default_factory=list)  # datasets to impute/generate for
    translation: bool = True  # add rows from one measured modality to the others measured with it
    joint: bool = True  # add a row from all measured modalities to all of them


@dataclass
class Config:
    task: str = "custom"
    name: str = "inclust_model"
    datasets: list[DatasetConfig] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)  # order of modalities (default: first seen)
    preprocessing: dict[str, dict] = field(default_factory=dict)  # modality -> Preprocessing fields
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTIONS = {"model": ModelConfig, "loss": LossConfig, "training": TrainingConfig, "views": ViewsConfig}
_PREP_KEYS = {"normalize_total", "log1p", "scale"}


def _build(cls, data: dict, where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InclustError(
            f"unknown config key {where}{unknown[0]!r}", f"valid keys in this section: {', '.join(sorted(names))}"
        )
    try:
        return cls(**data)
    except TypeError as err:  # pragma: no cover - missing required keys
        raise InclustError(f"config section {where or 'top level'} is incomplete: {err}", "see the README examples") from None


def config_from_dict(data: dict[str, Any], base_dir: Path | None = None) -> Config:
    """Validate a parsed TOML document into a :class:`Config`."""
    data = dict(data)
    top = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - top)
    if unknown:
        raise InclustError(f"unknown config key {unknown[0]!r}", f"valid top-level keys: {', '.join(sorted(top))}")
    datasets = []
    for i, d in enumerate(data.pop("datasets", [])):
        if "name" not in d:
            raise InclustError(f"datasets[{i}] has no name", "give every [[datasets]] entry a name")
        ds = _build(DatasetConfig, d, f"datasets[{i}].")
        if ds.path is not None and base_dir is not None and not Path(ds.path).is_absolute():
            ds.path = str((base_dir / ds.path).resolve())
        datasets.append(ds)
    task_defaults = TASK_DEFAULTS.get(data.get("task", "custom"), {})
    sections = {k: _build(cls, {**task_defaults.get(k, {}), **data.pop(k, {})}, f"{k}.") for k, cls in _SECTIONS.items()}
    for mod, prep in data.get("preprocessing", {}).items():
        bad = sorted(set(prep) - _PREP_KEYS)
        if bad:
            raise InclustError(f"unknown config key preprocessing.{mod}.{bad[0]}", f"valid keys: {', '.join(sorted(_PREP_KEYS))}")
    cfg = Config(datasets=datasets, **data, **sections)
    if cfg.task not in TASKS:
        raise InclustError(f"unknown task {cfg.task!r}", f"choose one of {', '.join(TASKS)}")
    bad = [v for v in cfg.loss.likelihoods() if v not in LIKELIHOODS]
    if bad or not cfg.loss.likelihoods():
        raise InclustError(f"unknown loss.likelihood {bad[0] if bad else '[]'!r}", f"choose from {', '.join(LIKELIHOODS)} (or a list of them)")
    if "bernoulli" in cfg.loss.likelihoods() and cfg.model.output_activation != "sigmoid":
        raise InclustError("loss.likelihood 'bernoulli' needs model.output_activation = 'sigmoid'",
                           "set the output activation to sigmoid or use the gaussian likelihood")
    if cfg.training.workers < 0:
        raise InclustError(f"training.workers is {cfg.training.workers}", "set 0 (one per core), 1 (sequential) or more")
    for key, allowed in (("device", ("auto", "cpu", "cuda")), ("precision", ("fp32", "bf16", "fp16"))):
        if getattr(cfg.training, key) not in allowed:
            raise InclustError(f"unknown training.{key} {getattr(cfg.training, key)!r}", f"choose one of {', '.join(allowed)}")
    if cfg.model.ensemble < 1:
        raise InclustError(f"model.ensemble is {cfg.model.ensemble}", "set it to 1 (one network) or more (an ensemble)")
    names = [d.name for d in cfg.datasets]
    if len(set(names)) != len(names):
        raise InclustError("two datasets share a name", "give every [[datasets]] entry a unique name")
    for q in cfg.views.query:
        if q not in names:
            raise InclustError(f"views.query names unknown dataset {q!r}", f"datasets are: {', '.join(names)}")
    return cfg


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
