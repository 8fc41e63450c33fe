"""The in-memory PyTorch model as one more runtime backend, and the graphs' reference semantics.

Every exported graph computes :func:`run_graph`: the graph's input columns placed into a
zero-filled full-width x, the input mask their indicator, ``InClustModule.predict``, and the
graph's output rows of y (docs/ARCHITECTURE.md, "Graphs"). Export checks its ONNX, TorchScript and
torch.export files against this function (export/validate.py ``reference``), and
:class:`TorchBackend` runs it behind the runtime's ``Backend`` protocol, so ``InClust``'s verbs
are the runtime's :class:`~inclust_plus.runtime.Predictor` on a manifest built here by the
exporter's own builders (:func:`memory_manifest`): reading, feature alignment, value checks,
covariates, preprocessing and the result layout are the runtime's, one copy for every door.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from inclust_plus.training.network import correction

from inclust_plus.contract import Manifest, TensorEntry
from inclust_plus.contract.combinations import Combination, all_combinations
from inclust_plus.contract.graphs import Y_STD
from inclust_plus.contract.description import CombinationEntry, FeatureSet, ModelDescription
from inclust_plus.contract.description_io import as_description
from inclust_plus.contract.manifest_builder import build_manifest, graph_entry
from inclust_plus.contract.plan_builder import build_plan
from inclust_plus.errors import InclustError


@torch.no_grad()
def run_graph(module, inputs: Sequence[int], outputs: Sequence[int], x: np.ndarray, covariate: np.ndarray,
              target_covariate: np.ndarray | None, names: Sequence[str], samples: int = 0,
              generator: torch.Generator | None = None) -> dict[str, np.ndarray]:
    """What a graph returns (``names``: its outputs) for ``x`` [batch, len(inputs)] of preprocessed values.

    ``inputs``/``outputs`` are global feature indices; ``covariate``/``target_covariate`` int64
    category indices (None: each cell's own). ``y_std`` is the ensemble members' spread, or with
    ``samples = K`` the spread of K posterior-sample decodes drawn with ``generator`` (whose mean
    then replaces the posterior-mean decode as ``y``).
    """
    n_features = module.config.n_features
    cols = torch.as_tensor(np.asarray(inputs, dtype=np.int64))
    x_full = torch.zeros(x.shape[0], n_features)
    x_full[:, cols] = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    mask = torch.zeros(n_features)
    mask[cols] = 1.0
    cov = torch.from_numpy(np.ascontiguousarray(covariate, dtype=np.int64))
    target = None if target_covariate is None else torch.from_numpy(np.ascontiguousarray(target_covariate, dtype=np.int64))
    y, latent, probs, *std = module.predict(x_full, mask, cov, target, return_std="y_std" in names, samples=samples, generator=generator)
    rows = torch.as_tensor(np.asarray(outputs, dtype=np.int64))
    out = {"latent": latent, "label_probs": probs}
    if "y" in names:
        out["y"] = y[:, rows]
    if std and "y_std" in names:
        out["y_std"] = std[0][:, rows]
    return {name: out[name].numpy() for name in names}


def blend_neighbours(module, table, out: dict[str, np.ndarray], inputs: Sequence[int], outputs: Sequence[int], x: np.ndarray,
                     covariate: np.ndarray) -> dict[str, np.ndarray]:
    """``out`` (:func:`run_graph`'s, with ``y`` and ``latent``) with ``y`` blended with the read-out of
    ``table`` (training/neighbours.py, the one definition), for preprocessed inputs ``x`` (columns: the global
    features ``inputs``) of cells of ``covariate``: the reference semantics of a graph exported with the
    read-out (export/neighbours_graph.py). The input lookup reads the inputs as the encoder does: through the
    module's input correction, where it has one."""
    seen = correction.corrected_rows(module, x, inputs, covariate)
    y = table.impute_columns(out["latent"], out["y"], outputs, seen)
    return {**out, "y": y}


def _unwritten_entry(desc: ModelDescription, combo: Combination, latent_dim: int, n_labels: int):
    """The graph entry ``inclust-export`` would write for ``combo``, with no file behind it (nothing pinned)."""
    return graph_entry(combo, file=None, sha256=None, opset=None, torchscript=None, torchscript_sha256=None, folded_preprocessing=False,
                       latent_dim=latent_dim, n_labels=n_labels, plan=build_plan(desc, combo.inputs))


def _with_spread(entry):
    """A decoding graph entry that also returns ``y_std`` (posterior samples give one network a spread)."""
    if not entry.decodes or entry.has_spread:
        return entry
    y_std = TensorEntry(Y_STD.name, Y_STD.dtype, (Y_STD.axis, len(entry.output_features)))
    return dataclasses.replace(entry, outputs=(*entry.outputs, y_std))


def memory_manifest(module, description: ModelDescription, spread: bool = False) -> Manifest:
    """The manifest ``inclust-export`` would write for this model, built by the same code, with no files.

    Graph ``file``/``sha256`` and the model's sha256 are None: nothing was written, so nothing is
    pinned, and the manifest reader would refuse such an entry (only :class:`TorchBackend` runs
    them; it opens no file). ``spread``: decoding graphs also return ``y_std`` (``samples = K``).
    """
    desc = dataclasses.replace(as_description(description), module=module.config.to_dict())
    graphs = []
    for combo in all_combinations(desc):
        entry = _unwritten_entry(desc, combo, module.config.latent_dim, module.config.n_labels)
        graphs.append(_with_spread(entry) if spread else entry)
    return build_manifest(desc, None, graphs)


def query_graph(description: ModelDescription, inputs: Sequence[int], name: str = "query"):
    """An embed graph entry over the global features ``inputs`` (what mapping reads new cells through),
    built as a checkpoint combination of that feature set would be."""
    d = as_description(description)
    features = tuple(int(i) for i in inputs)
    measured = {d.feature_modalities[i] for i in features}
    present = tuple(m.name for m in d.modalities if m.name in measured)
    desc = dataclasses.replace(d, feature_sets={**d.feature_sets, name: FeatureSet(present, features)},
                               combinations=(CombinationEntry(name, name, None),))
    combo: Combination = all_combinations(desc)[0]
    return _unwritten_entry(desc, combo, 0, 0)


_EVERY = "every feature"  # the outputs of feature_set_graph: a set added in memory only


def feature_set_graph(module, description: ModelDescription, inputs: str, spread: bool = False):
    """The decoding graph from feature set ``inputs`` to every feature (``InClust.predict``), built as a
    checkpoint combination naming that set would be: the set is looked up by the description's one
    ``feature_set`` (an unknown name is its error), the entry by the manifest builder's ``graph_entry``.
    ``spread``: it also returns ``y_std``."""
    d = dataclasses.replace(as_description(description), module=module.config.to_dict())
    d.feature_set(inputs)  # an unknown set: its error, naming the checkpoint's own sets
    every = FeatureSet(tuple(m.name for m in d.modalities), tuple(range(module.config.n_features)))
    desc = dataclasses.replace(d, feature_sets={**d.feature_sets, _EVERY: every}, combinations=(CombinationEntry(f"{inputs}_to_all", inputs, _EVERY),))
    entry = _unwritten_entry(desc, all_combinations(desc)[0], module.config.latent_dim, module.config.n_labels)
    return _with_spread(entry) if spread else entry


class TorchBackend:
    """``InClustModule`` in this process, behind the runtime's ``Backend`` protocol.

    ``samples = K`` decodes K posterior samples per cell (seeded by ``seed``, drawn batch after
    batch in order, so a call's numbers depend on its batch size only through the draw order);
    the graphs it runs must then declare ``y_std`` (:func:`memory_manifest` with ``spread``).
    ``neighbours`` (a NeighbourTable) blends the neighbour read-out into graph ``neighbours_graph``'s
    ``y`` with :func:`blend_neighbours`, as its exported graph does (``y_std`` stays the decoder's).

    It has no ``probe``, so the runtime's covariate probe (runtime/signature.py) skips it: its
    manifest is built from the very module it runs, so the two cannot disagree on the categories.
    """

    def __init__(self, module, manifest: Manifest, samples: int = 0, seed: int = 0, neighbours=None, neighbours_graph: str | None = None):
        if samples < 0:
            raise InclustError(f"samples is {samples}", "pass 0 (the posterior mean) or a number of posterior samples")
        self.module = module.eval()
        self.samples, self.seed = samples, seed
        self.generator = torch.Generator().manual_seed(seed) if samples else None
        self.index = {f: i for i, f in enumerate(f for m in manifest.modalities for f in m.features)}
        self.columns: dict[str, tuple[list[int], list[int]]] = {}
        self.neighbours, self.neighbours_graph = neighbours, neighbours_graph

    def prepare(self, graph) -> None:
        if graph.name not in self.columns:
            self.columns[graph.name] = ([self.index[f] for f in graph.input_features], [self.index[f] for f in graph.output_features])

    def run(self, graph, x, covariate, target_covariate):
        self.prepare(graph)
        inputs, outputs = self.columns[graph.name]
        samples = self.samples if graph.decodes else 0
        table = self.neighbours if graph.name == self.neighbours_graph and graph.decodes else None
        names = graph.output_names if table is None else tuple(dict.fromkeys((*graph.output_names, "latent")))
        out = run_graph(self.module, inputs, outputs, x, covariate, target_covariate, names, samples, self.generator)
        if table is not None:
            out = blend_neighbours(self.module, table, out, inputs, outputs, x, covariate)
        return {name: out[name] for name in graph.output_names}

    def provenance(self) -> dict:
        out = {"backend": "pytorch", "torch_version": str(torch.__version__), "provider": "cpu"}
        if self.samples:
            out.update(samples=self.samples, spread=f"over {self.samples} posterior samples of the latent (seed {self.seed})")
        return out

    def close(self) -> None:
        self.columns.clear()
