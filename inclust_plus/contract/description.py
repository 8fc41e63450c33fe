"""The checkpoint's model description (``description_json`` in ``model.pt``) as frozen dataclasses.

Training builds a :class:`ModelDescription` (``training/model.py`` ``describe``, ``training/mapping.py``),
the checkpoint writes it with the one writer and reads it back with the one reader
(:mod:`.description_io`, which checks every field first), and export builds its manifest from it.
Torch-free: it is data, shared by training and export like the manifest is by export and runtime.
The fields are those of docs/ARCHITECTURE.md, "Checkpoint".

``module`` stays the dict of ``training.network.module.ModuleConfig`` (the one definition of the network's
keys); the sizes export needs are read through properties here. ``hyperparameters`` is the record of
the config sections the model was trained with (``training/config.py`` defines them); run options
(device, threads, workers, the fast-step choice) are not part of it.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

from inclust_plus.errors import InclustError

from .manifest import Covariate, Labels, Modality

LABEL_MODES = ("supervised", "semi-supervised", "unsupervised")


@dataclass(frozen=True)
class TrainedLabels(Labels):
    """The label column, its categories (classifier output order) and how they were learned."""

    mode: str = "unsupervised"  # one of LABEL_MODES


@dataclass(frozen=True)
class Recipe:
    """One modality's preprocessing: ``x / sum(x) * normalize_total``, ``log1p``, ``x / scale[j]``.

    ``normalize_total`` is kept as written (an integer stays one: the manifest copies the recipe)."""

    normalize_total: float | None = None
    log1p: bool = False
    scale: tuple[float, ...] | None = None  # per feature of the modality, fitted on the training cells


@dataclass(frozen=True)
class FeatureSet:
    """A named set of global feature indices (a modality, or the panel one dataset measured)."""

    modalities: tuple[str, ...]
    features: tuple[int, ...]


@dataclass(frozen=True)
class CombinationEntry:
    """One graph the model can be exported as: feature set(s) in, feature set(s) out (None: embed only)."""

    name: str
    inputs: str | tuple[str, ...]
    outputs: str | tuple[str, ...] | None = None
    default_target_covariate: str | None = None
    default_covariate: str | None = None  # the covariate of the dataset whose panel the inputs are

    @property
    def decodes(self) -> bool:
        return self.outputs is not None


@dataclass(frozen=True)
class DatasetRecord:
    name: str
    cells: int
    measured_features: int
    mapped: bool = False  # added by a mapping (training/mapping.py), not trained on


@dataclass(frozen=True)
class TrainingRecord:
    """What the training run did (not how to repeat it: that is ``hyperparameters``)."""

    epochs: int
    rows_per_second: float = 0.0
    best_epoch: int | None = None
    seconds: float | None = None
    history: dict[str, tuple[float, ...]] = field(default_factory=dict)  # loss term -> per-epoch value


@dataclass(frozen=True)
class MappingRecord:
    """One ``inclust-map`` / ``InClust.map_query`` run: which covariate rows it learned and how."""

    categories: tuple[str, ...]
    cells: dict[str, int]
    skipped_known_cells: int
    feature_set: str
    steps: int
    learning_rate: float
    seed: int
    seconds: float
    initial_loss: float
    final_loss: float
    source: str | None = None
    date: str | None = None


@dataclass(frozen=True)
class ReadoutRecord:
    """The neighbour read-out a model was trained with (``[readout] neighbours = true``, training/readout.py).

    Graph ``combination`` imputes ``features`` (global indices: its outputs the query lacks) as
    ``weights`` = (decoder, latent neighbours, input neighbours) of the decode and of the measured values
    of the ``k_latent`` / ``k_inputs`` nearest of ``cells`` reference cells (from ``datasets``). The
    cells' arrays are tensors in ``model.pt`` (``neighbours``: latents, inputs, values); this record says
    what they are, so a reader checks their shapes against it."""

    combination: str
    features: tuple[int, ...]
    cells: int
    datasets: tuple[str, ...]
    k_latent: int = 60
    k_inputs: int = 30
    weights: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)


@dataclass(frozen=True)
class ModelDescription:
    """Everything a checkpoint says about its weights: names, categories, recipe, graphs, history."""

    name: str
    module: dict  # training.network.module.ModuleConfig.to_dict()
    modalities: tuple[Modality, ...]  # JSON: schema.modalities; global feature order = their concatenation
    covariate: Covariate
    labels: TrainedLabels = TrainedLabels()
    preprocessing: dict[str, Recipe] = field(default_factory=dict)
    feature_sets: dict[str, FeatureSet] = field(default_factory=dict)
    combinations: tuple[CombinationEntry, ...] = ()
    datasets: tuple[DatasetRecord, ...] = ()
    hyperparameters: dict = field(default_factory=dict)
    training: TrainingRecord | None = None
    mapping: tuple[MappingRecord, ...] = ()
    task: str = "custom"
    package_version: str | None = None
    readout: ReadoutRecord | None = None  # the neighbour read-out's record; None: the decoder alone (every older checkpoint)

    # --- the network's sizes (module) ---------------------------------------------------------------
    @property
    def latent_dim(self) -> int:
        return int(self.module["latent_dim"])

    @property
    def members(self) -> int:
        return int(self.module.get("members", 1))

    # --- features ---------------------------------------------------------------------------------
    @functools.cached_property
    def feature_names(self) -> tuple[str, ...]:
        """Every feature name in the global order."""
        return tuple(f for m in self.modalities for f in m.features)

    @functools.cached_property
    def feature_modalities(self) -> tuple[str, ...]:
        """The modality of each global feature."""
        return tuple(m.name for m in self.modalities for _ in m.features)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def modality_range(self, name: str) -> tuple[int, int]:
        """Global [start, stop) of one modality's features."""
        start = 0
        for m in self.modalities:
            if m.name == name:
                return start, start + len(m.features)
            start += len(m.features)
        raise InclustError(f"unknown modality {name!r}", f"the model's modalities: {', '.join(m.name for m in self.modalities)}")

    def feature_set(self, name: str) -> FeatureSet:
        if name not in self.feature_sets:
            raise InclustError(f"unknown feature set {name!r}", f"known sets: {', '.join(self.feature_sets)}")
        return self.feature_sets[name]

    def set_features(self, sets: str | tuple[str, ...] | None) -> list[int]:
        """Global indices of one feature set or of several (union, first occurrence order); none for None."""
        if sets is None:
            return []
        out: list[int] = []
        seen: set[int] = set()
        for s in (sets,) if isinstance(sets, str) else sets:
            for i in self.feature_set(s).features:
                if i not in seen:
                    seen.add(i)
                    out.append(i)
        return out

    # --- what else training recorded ------------------------------------------------------------------
    def combination(self, name: str) -> CombinationEntry:
        for c in self.combinations:
            if c.name == name:
                return c
        raise InclustError(f"unknown combination {name!r}", f"choose one of: {', '.join(c.name for c in self.combinations)}")

    def loss_weight(self, term: str, default: float = 1.0) -> float:
        """The weight of one loss term the model was trained with (``hyperparameters.loss``)."""
        return float((self.hyperparameters.get("loss") or {}).get(term, default))

    # --- JSON -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The JSON object stored in ``model.pt`` (the one writer, :func:`.description_io.to_json`)."""
        from .description_io import to_json

        return to_json(self)

    def __getstate__(self) -> dict:
        """Copies and pickles carry the fields only, never the caches above."""
        return {k: v for k, v in self.__dict__.items() if k in _FIELDS}


_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelDescription))

