"""``InClust``: the user-facing model that speaks AnnData/MuData and writes ``model.pt``.

It wraps the tensor-level :class:`~inclust_plus.training.network.module.InClustModule` with the schema,
covariate and label categories, the preprocessing recipe and the export combinations, so that a
saved checkpoint is self-describing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from inclust_plus import __version__
from inclust_plus.contract import Covariate, Modality
from inclust_plus.contract.description import CombinationEntry, DatasetRecord, FeatureSet, ModelDescription, Recipe, TrainedLabels, TrainingRecord
from inclust_plus.contract.description_io import as_description
from inclust_plus.errors import InclustError
from inclust_plus.sparse import is_sparse

from inclust_plus.training.api import AnnDataVerbs
from inclust_plus.training.checkpoint import read_checkpoint, save_checkpoint
from inclust_plus.training.config import Config, config_from_dict, with_settings
from inclust_plus.training.assembly.data import TrainingData, read_training_data
from inclust_plus.training.fitting.device import resolve_device
from inclust_plus.training.network.ensemble import merge_members
from inclust_plus.training.assembly.loading import missing_label_column
from inclust_plus.training.fitting.members import train_members
from inclust_plus.training.network.module import InClustModule, ModuleConfig
from inclust_plus.training.torch_backend import feature_set_graph, memory_manifest
from inclust_plus.training.fitting.trainer import TrainingResult


def _combinations(data: TrainingData) -> list[CombinationEntry]:
    names = data.mask_table.names
    covs_of: dict[tuple[str, str], set] = {}  # (inputs, outputs) -> covariates of the datasets trained on it
    for v in data.views:
        a, b = data.cell_ranges[v.dataset]
        covs_of.setdefault((names[v.input_pattern], names[v.output_pattern]), set()).update(np.unique(data.covariate[a:b]).tolist())
    out = [CombinationEntry(f"{i}_to_{o}", i, o, data.covariate_categories[next(iter(covs))] if len(covs) == 1 else None, _panel_covariate(data, i))
           for (i, o), covs in covs_of.items()]
    for pat in dict.fromkeys(v.input_pattern for v in data.views):
        out.append(CombinationEntry(f"{names[pat]}_embed", names[pat], None, None, _panel_covariate(data, names[pat])))
    return out


def _check_unit_interval(data: TrainingData) -> None:
    """The Bernoulli likelihood is a likelihood only for values in [0, 1]."""
    values = data.x.data if is_sparse(data.x) else data.x
    if values.size and (values.min() < 0 or values.max() > 1):
        raise InclustError(
            f"loss.likelihood 'bernoulli' needs features in [0, 1], but the preprocessed values span [{values.min():.3g}, {values.max():.3g}]",
            "set scale = 'max' in [preprocessing.<modality>] or use the gaussian likelihood",
        )


def _counts_hint(data: TrainingData) -> str | None:
    """What to change when training diverged on raw counts: a modality whose values reach the hundreds
    with neither log1p nor a scale (a Gaussian decoder cannot follow them; the usual first-epoch NaN)."""
    for m in data.modalities:
        recipe = data.preprocessing.get(m) or {}
        block = data.x[:, data.slices[m]]
        top = float(block.max()) if block.shape[1] else 0.0
        if not (recipe.get("log1p") or recipe.get("scale") is not None) and top > 100:
            return (f"the {m} values reach {top:,.0f} with no log1p, like raw counts: set preprocessing "
                    f"{{'{m}': {{'normalize_total': 10000, 'log1p': True}}}} (a [preprocessing.{m}] table), then train again")
    return None


def _panel_covariate(data: TrainingData, set_name: str) -> str | None:
    """Cells given to a graph whose inputs are one dataset's panel most likely come from that dataset:
    its covariate (when it has a single one) is the runtime's default for them."""
    if set_name not in data.cell_ranges:
        return None
    a, b = data.cell_ranges[set_name]
    covs = np.unique(data.covariate[a:b])
    return data.covariate_categories[int(covs[0])] if len(covs) == 1 else None


def describe(data: TrainingData, cfg: Config, module: ModuleConfig, training: TrainingRecord | None = None) -> ModelDescription:
    """The description stored in ``model.pt`` (docs/ARCHITECTURE.md, "Checkpoint")."""
    feature_sets = {}
    for m in data.modalities:
        s = data.slices[m]
        feature_sets[m] = FeatureSet((m,), tuple(range(s.start, s.stop)))
    for name, mask in zip(data.mask_table.names, data.mask_table.masks):
        feature_sets[name] = FeatureSet(tuple(m for m in data.modalities if mask[data.slices[m]].any()), tuple(np.flatnonzero(mask).tolist()))
    return ModelDescription(
        name=cfg.name,
        task=cfg.task,
        package_version=__version__,
        module=module.to_dict(),
        modalities=tuple(Modality(m, tuple(data.features[m])) for m in data.modalities),
        covariate=Covariate(tuple(sorted({k for d in cfg.datasets for k in d.covariate_keys})), tuple(data.covariate_categories)),
        labels=TrainedLabels(next((d.label_key for d in cfg.datasets if d.label_key), None), tuple(data.label_categories), data.label_mode),
        preprocessing={m: Recipe(p["normalize_total"], p["log1p"], None if p["scale"] is None else tuple(p["scale"]))
                       for m, p in data.preprocessing.items()},
        feature_sets=feature_sets,
        combinations=tuple(_combinations(data)),
        datasets=tuple(DatasetRecord(n, b - a, int(data.measured[n].sum())) for n, (a, b) in data.cell_ranges.items()),
        hyperparameters=cfg.record(),
        training=training,
    )


def _label_keys(datasets: dict, label_key: str | dict | None) -> list[str | None]:
    """``InClust.setup``'s label column of each dataset. One column name applies where the column
    exists (a query without labels stays unlabelled); a column no dataset has, or one a
    ``{dataset: column}`` entry names where it is missing, is the error a config file gets."""
    if label_key is None:
        return [None] * len(datasets)
    if isinstance(label_key, dict):
        unknown = [n for n in label_key if n not in datasets]
        if unknown:
            raise InclustError(f"label_key names unknown dataset {unknown[0]!r}", f"datasets are: {', '.join(datasets)}")
        wanted = [label_key.get(n) for n in datasets]
    else:
        has = [label_key in _obs_columns(obj) for obj in datasets.values()]
        wanted = [label_key if h else None for h in has] if any(has) else [label_key] * len(datasets)
    for (ds_name, obj), key in zip(datasets.items(), wanted):
        if key is not None and key not in _obs_columns(obj):
            raise missing_label_column(ds_name, key, _obs_columns(obj))
    return wanted


def _obs_columns(obj) -> list[str]:
    """The obs columns a dataset's labels may come from (a MuData's own and its modalities')."""
    columns = list(map(str, obj.obs.columns))
    for m in getattr(obj, "mod", {}).values():
        columns += [c for c in map(str, m.obs.columns) if c not in columns]
    return columns


class InClust(AnnDataVerbs):
    """An inClust+ model: trained (``module`` + ``description``) or set up and waiting for :meth:`train`.

    ``InClust(module, description)`` wraps trained weights (what :meth:`load` returns);
    ``InClust(config, objects)`` or :meth:`setup` prepares training on in-memory AnnData/MuData
    objects (``objects`` maps dataset names to them). The AnnData verbs live in :mod:`.api`.
    """

    def __init__(self, module: "InClustModule | Config", description: ModelDescription | dict | None = None, objects: dict | None = None,
                 neighbours=None):
        self.config: Config | None = None
        self.neighbours = neighbours  # the read-out's NeighbourTable (training/readout.py), with description.readout
        self.objects = dict(objects or {})
        self.history: dict | None = None
        self.description: ModelDescription | None = None  # a dict given is read by the one reader (contract/description_io.py)
        if isinstance(module, Config):
            self.config, self.module = module, None
        else:
            if description is None:
                raise InclustError("InClust(module) needs the model description", "use InClust.load(path) or InClust(config).train()")
            self.module, self.description = module.eval(), as_description(description)
            if self.description.module != module.config.to_dict():  # the weights decide (as save_checkpoint does)
                self.description = dataclasses.replace(self.description, module=module.config.to_dict())
            if neighbours is None and self.description.readout is not None:  # weights without the table: the decoder alone
                self.description = dataclasses.replace(self.description, readout=None)

    @classmethod
    def setup(cls, datasets, *, modalities=None, label_key: str | dict | None = None, layer: str | None = None, batch_key=None,
              query=None, task: str = "custom", name: str = "inclust_model", preprocessing: dict | None = None,
              preprocessed: bool = False, **settings) -> "InClust":
        """Set a model up on AnnData/MuData objects, scvi-tools style; then call :meth:`train`.

        ``datasets`` maps a dataset name to its AnnData (one modality, ``modalities`` or ``["rna"]``)
        or MuData (its modalities); one AnnData alone is named ``"data"``. ``label_key`` (an obs column,
        or ``{dataset: column}`` so that a query's own labels stay out of training) is used where the
        column exists, ``layer`` (e.g. ``"counts"``) and ``batch_key`` (obs column(s) of the
        batch covariate; default: the dataset's name) apply to every dataset. ``query`` names the
        datasets to impute for (``views.query``). Other keywords set [model]/[loss]/[training]/[views]/[readout]
        fields by name (``epochs=3``, ``ensemble=1``, ``latent_dim=10``, ``neighbours=True``); unknown ones are errors.
        """
        if not isinstance(datasets, dict):
            datasets = {"data": datasets}
        keys = [batch_key] if isinstance(batch_key, str) else list(batch_key or [])
        entries = []
        for ds_name, obj in datasets.items():
            mods = list(obj.mod) if hasattr(obj, "mod") else list(modalities or ["rna"])
            entry = {"name": ds_name, "modalities": mods, "covariate_keys": keys, "preprocessed": preprocessed}
            if layer is not None:
                entry["layer"] = layer
            entries.append(entry)
        for entry, key in zip(entries, _label_keys(datasets, label_key)):
            if key is not None:
                entry["label_key"] = key
        doc = {"task": task, "name": name, "datasets": entries, "preprocessing": dict(preprocessing or {})}
        if query:
            settings["query"] = [query] if isinstance(query, str) else list(query)
        return cls(with_settings(config_from_dict(doc), settings), objects=datasets)

    def train(self, epochs: int | None = None, progress: bool = True, **settings) -> "InClust":
        """Train on the set-up datasets (``epochs`` and other settings override the config); returns self."""
        if self.config is None:
            raise InclustError("this model was not set up for training", "use InClust.setup(...) or InClust(config)")
        if epochs is not None:
            settings["epochs"] = epochs
        self.config = with_settings(self.config, settings)  # checked as a config file's values; refused: config unchanged
        trained, _, result = type(self).fit(self.config, self.objects, progress=progress)
        self.module, self.description, self.history = trained.module, trained.description, result.history
        self.neighbours = trained.neighbours
        return self

    def __repr__(self) -> str:
        if self.module is None:
            c = self.config
            return (f"InClust(untrained {c.name!r}, task {c.task}: datasets {', '.join(d.name for d in c.datasets)}; "
                    f"ensemble {c.model.ensemble}, {c.training.epochs} epochs; call .train())")
        d = self.description
        mods = ", ".join(f"{m.name} {len(m.features)}" for m in d.modalities)
        k = self.module.config.members
        combos = ", ".join(c.name for c in d.combinations)
        epochs = d.training.epochs if d.training is not None else None
        return (f"InClust({d.name!r}, task {d.task}: features {mods}; covariates {list(d.covariate.categories)}; "
                f"{len(d.labels.categories)} labels ({d.labels.mode}); latent {self.module.config.latent_dim}; "
                f"{'an ensemble of ' + str(k) + ' networks' if k > 1 else 'one network'}{f', {epochs} epochs' if epochs is not None else ''}; "
                f"combinations: {combos})")

    # --- construction -----------------------------------------------------------------------------
    @classmethod
    def fit(cls, cfg: Config, objects: dict | None = None, progress: bool = True,
            data: TrainingData | None = None) -> tuple["InClust", TrainingData, TrainingResult]:
        """Load and validate the datasets of ``cfg`` (or the in-memory ``objects`` by dataset name), train.
        ``data``: the datasets already read and assembled (inclust-train reads them in the
        background, training/assembly/background.py)."""
        resolve_device(cfg.training.device)  # a GPU asked for and missing: say so before reading any data
        if data is None:
            data = read_training_data(cfg, objects)
        m = cfg.model
        member = ModuleConfig(n_features=data.n_features, n_covariates=len(data.covariate_categories),
                              n_labels=len(data.label_categories), **m.shape())
        # Member k trains with seed + k and the k-th likelihood of loss.likelihood; member 0 alone is
        # the single-network model.
        if "bernoulli" in cfg.loss.likelihoods()[: m.ensemble]:
            _check_unit_interval(data)
        try:
            members, results, wall = train_members(member, data, cfg, progress=progress)
        except InclustError as err:
            hint = _counts_hint(data) if err.problem.startswith("training diverged") else None
            if hint is None:
                raise
            raise InclustError(err.problem, hint) from None
        module = merge_members(members)
        result = TrainingResult.combined(results, wall=wall if len(results) > 1 else None)
        record = TrainingRecord(
            epochs=result.epochs_run,
            best_epoch=result.best_epoch,
            seconds=round(result.seconds, 3),
            rows_per_second=round(result.rows_per_second, 1),
            history={k: tuple(round(v, 6) for v in vals) for k, vals in result.history.items()},
        )
        model = cls(module, describe(data, cfg, module.config, record))
        if cfg.readout.enabled(cfg.views.query):  # the reference side of the read-out, kept in the model (training/readout.py)
            from inclust_plus.training.readout import build_readout

            table, readout = build_readout(model, data, cfg)
            model = cls(module, dataclasses.replace(model.description, readout=readout), neighbours=table)
        return model, data, result

    @classmethod
    def load(cls, path: str | Path) -> "InClust":
        module, desc, table = read_checkpoint(path)
        return cls(module, desc, neighbours=table)

    def save(self, path: str | Path, force: bool = True) -> Path:
        if self.module is None:
            raise InclustError("the model is not trained yet: there are no weights to save", "call model.train() first")
        return save_checkpoint(path, self.module, self.description, force=force, neighbours=self.neighbours)

    # --- inference --------------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return self.module.config.n_features

    def feature_set(self, name: str) -> np.ndarray:
        return np.asarray(self.description.feature_set(name).features, dtype=np.int64)

    def covariate_index(self, names) -> np.ndarray:
        """Category indices of one covariate name or one per cell: the runtime's lookup, its error included."""
        from inclust_plus.runtime import category_indices  # on use: the runtime imports pandas

        return category_indices(memory_manifest(self.module, self.description), names, "covariate")

    def map_query(self, data, name: str | None = None, covariate_key: str | None = None, **options) -> "InClust":
        """A copy of this model that also knows the new covariate categories of ``data`` (AnnData or
        MuData, no labels needed): one embedding row each, every other weight frozen.
        See :func:`inclust_plus.training.mapping.map_query` for the options."""
        from inclust_plus.training.mapping import map_query  # on use: it reads cells with pandas/scipy, which training itself never imports

        module, description = map_query(self.module, self.description, data, name=name, covariate_key=covariate_key, **options)
        return type(self)(module, description, neighbours=self.neighbours)  # the reference cells' weights are unchanged

    @torch.no_grad()
    def predict(self, x: np.ndarray, inputs: str, covariate, target_covariate=None, batch_size: int = 8192, return_std: bool = False,
                samples: int = 0, seed: int = 0):
        """Run the model with the masks applied on ``x`` (cells x features of set ``inputs``).

        Returns full-width decoded features, the corrected latent and label probabilities.
        ``covariate``/``target_covariate`` are category names (one or one per cell).
        ``return_std`` adds a fourth array: the ensemble members' per-feature spread of the decoded
        features, from the same pass (training/uncertainty.py). ``samples = K``: the decoded
        features are the mean of K posterior-sample decodes (drawn with ``seed``) and the fourth
        array their spread, from the same encoding.

        One path with the AnnData verbs: ``inputs`` becomes a graph entry as a combination naming that
        feature set would (training/torch_backend.py ``feature_set_graph``), run by the runtime's
        ``Predictor`` (``run_arrays``: its covariate lookup, output checks and one-line errors).
        """
        if self.module is None:
            raise InclustError("the model is not trained yet", "call model.train() first")
        graph = feature_set_graph(self.module, self.description, inputs, spread=bool(return_std or samples))
        if not is_sparse(x):
            x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(graph.input_features):
            raise InclustError(f"x has shape {x.shape} but feature set {inputs!r} has {len(graph.input_features)} features",
                               "pass cells x those features in the order of model.feature_set(inputs), or use model.impute(adata) which aligns by name")
        predictor = self.predictor(batch_size, samples, seed)  # the covariate lookup, batching and output checks of every door
        out = predictor.run_arrays(graph, x, covariate, target_covariate)
        return tuple(out[k] for k in ("y", "latent", "label_probs", "y_std")[: 4 if return_std or samples else 3])
