"""A tiny hand-built exported model (ONNX files + manifest.json) and its numpy reference.

The runtime is tested against the file contract of docs/ARCHITECTURE.md, independently of the
exporter: the graphs here are built node by node with ``onnx.helper`` from random weights of a
small inClust+ network, folded the way the exporter folds them (first encoder weight restricted
to the input columns, output layer to the output rows), and :meth:`ToyModel.reference` computes
the reference semantics (full-width zero-filled input, mask, predict, slice) in float64 numpy.
The manifest is built as contract dataclasses and written by the contract's one writer
(:func:`inclust_plus.contract.write_manifest`), so it has exactly the exporter's shape.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RNA = [f"g{i}" for i in range(10)]
PROTEIN = [f"p{i}" for i in range(4)]
PANEL = RNA[:6]
COVARIATES = ["a", "b", "c"]
LABELS = ["T", "B", "NK"]
HIDDEN, LATENT, DEC_HIDDEN = 8, 3, 6

# name, kind, input modalities, output modalities, input features, output features, default target
# (as the exporter writes them: a panel's graph names its real modality, rna)
GRAPHS = [
    ("panel_to_rna", "impute", ["rna"], ["rna"], PANEL, RNA, "a"),
    ("rna_to_protein", "impute", ["rna"], ["protein"], RNA, PROTEIN, None),
    ("rna_embed", "embed", ["rna"], [], RNA, [], None),
    ("panel_embed", "embed", ["rna"], [], PANEL, [], None),
    ("rna_protein_embed", "embed", ["rna", "protein"], [], RNA + PROTEIN, [], None),
]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class ToyModel:
    folder: Path
    weights: dict
    features: list[str] = field(default_factory=lambda: RNA + PROTEIN)
    preprocessing: dict = field(default_factory=dict)
    folded: bool = False

    @property
    def manifest(self) -> Path:
        return self.folder / "manifest.json"

    def graph(self, name: str) -> tuple:
        return next(g for g in GRAPHS if g[0] == name)

    def preprocess(self, name: str, x: np.ndarray) -> np.ndarray:
        """The manifest preprocessing of graph ``name``'s inputs, by hand in float64 (tests/reference.py)."""
        from reference import preprocess_by_hand, recipe_description

        if self.folded:
            return np.asarray(x, np.float64).copy()
        desc = recipe_description({"rna": RNA, "protein": PROTEIN}, self.preprocessing)
        return preprocess_by_hand(x, desc, [self.features.index(f) for f in self.graph(name)[4]])

    def reference(self, name: str, x_raw: np.ndarray, cov: np.ndarray, tgt: np.ndarray | None = None) -> dict:
        """Outputs of graph ``name`` by the reference semantics (float64)."""
        w = self.weights
        _, kind, _, _, fin, fout, _ = self.graph(name)
        x = self.preprocess(name, x_raw)
        full = np.zeros((len(x), len(self.features)))
        idx_in = [self.features.index(f) for f in fin]
        full[:, idx_in] = x
        mask = np.zeros(len(self.features))
        mask[idx_in] = 1
        h = np.maximum(0, (full * mask) @ w["W1"] + w["b1"])
        mu = h @ w["Wm"] + w["bm"]
        zc = mu - w["E"][cov]
        logits = zc @ w["Wc"] + w["bc"]
        e = np.exp(logits - logits.max(1, keepdims=True))
        out = {"latent": zc, "label_probs": e / e.sum(1, keepdims=True)}
        if kind == "impute":
            t = cov if tgt is None else tgt
            d = np.maximum(0, (zc + w["E"][t]) @ w["Wd"] + w["bd"])
            y = 1 / (1 + np.exp(-(d @ w["Wo"] + w["bo"])))
            out["y"] = y[:, [self.features.index(f) for f in fout]]
        return out


def _weights(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n = len(RNA) + len(PROTEIN)
    shapes = {
        "W1": (n, HIDDEN), "b1": (HIDDEN,), "Wm": (HIDDEN, LATENT), "bm": (LATENT,),
        "E": (len(COVARIATES), LATENT), "Wc": (LATENT, len(LABELS)), "bc": (len(LABELS),),
        "Wd": (LATENT, DEC_HIDDEN), "bd": (DEC_HIDDEN,), "Wo": (DEC_HIDDEN, n), "bo": (n,),
    }
    return {k: rng.normal(0, 0.7, s).astype(np.float32).astype(np.float64) for k, s in shapes.items()}


def _onnx_graph(model: ToyModel, name: str):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = model.weights
    _, kind, _, _, fin, fout, _ = model.graph(name)
    idx_in = [model.features.index(f) for f in fin]
    inits = {
        "W1": w["W1"][idx_in], "b1": w["b1"], "Wm": w["Wm"], "bm": w["bm"], "E": w["E"],
        "Wc": w["Wc"], "bc": w["bc"],
    }
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h_pre"]),
        helper.make_node("Relu", ["h_pre"], ["h"]),
        helper.make_node("Gemm", ["h", "Wm", "bm"], ["mu"]),
        helper.make_node("Gather", ["E", "covariate"], ["e_b"], axis=0),
        helper.make_node("Sub", ["mu", "e_b"], ["latent"]),
        helper.make_node("Gemm", ["latent", "Wc", "bc"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["label_probs"], axis=-1),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", len(fin)]),
        helper.make_tensor_value_info("covariate", TensorProto.INT64, ["batch"]),
    ]
    outputs = [
        helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["batch", LATENT]),
        helper.make_tensor_value_info("label_probs", TensorProto.FLOAT, ["batch", len(LABELS)]),
    ]
    if kind == "impute":
        idx_out = [model.features.index(f) for f in fout]
        inits.update(Wd=w["Wd"], bd=w["bd"], Wo=w["Wo"][:, idx_out], bo=w["bo"][idx_out])
        nodes += [
            helper.make_node("Gather", ["E", "target_covariate"], ["e_t"], axis=0),
            helper.make_node("Add", ["latent", "e_t"], ["z_t"]),
            helper.make_node("Gemm", ["z_t", "Wd", "bd"], ["d_pre"]),
            helper.make_node("Relu", ["d_pre"], ["d"]),
            helper.make_node("Gemm", ["d", "Wo", "bo"], ["y_pre"]),
            helper.make_node("Sigmoid", ["y_pre"], ["y"]),
        ]
        inputs.append(helper.make_tensor_value_info("target_covariate", TensorProto.INT64, ["batch"]))
        outputs.insert(0, helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", len(fout)]))
    graph = helper.make_graph(nodes, name, inputs, outputs, [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="runtime-test")
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    return proto, inputs, outputs


def _io(values) -> tuple:
    from onnx import TensorProto

    from inclust_plus.contract import TensorEntry

    out = []
    for v in values:
        t = v.type.tensor_type
        dims = tuple(d.dim_param or d.dim_value for d in t.shape.dim)
        out.append(TensorEntry(v.name, "float32" if t.elem_type == TensorProto.FLOAT else "int64", dims))
    return tuple(out)


def toy_plan(features: list[str], preprocessing: dict):
    """The graph's preprocessing plan, as export writes it: runs of each modality's columns, its steps."""
    from inclust_plus.contract import ModalityPlan, PreprocessPlan

    groups = []
    for mod, names in (("rna", RNA), ("protein", PROTEIN)):
        cols = [i for i, f in enumerate(features) if f in names]
        if not cols:
            continue
        runs = []
        for c in cols:
            if runs and runs[-1][1] == c:
                runs[-1][1] = c + 1
            else:
                runs.append([c, c + 1])
        spec = preprocessing.get(mod) or {}
        scale = spec.get("scale")
        groups.append(ModalityPlan(
            mod, tuple((s, e) for s, e in runs),
            float(spec["normalize_total"]) if spec.get("normalize_total") else None, bool(spec.get("log1p")),
            None if scale is None else tuple(float(scale[names.index(features[c])]) for c in cols),
        ))
    return PreprocessPlan(tuple(groups))


def make_toy_export(folder: str | Path, seed: int = 0, preprocessing: dict | None = None, folded: bool = False,
                    torchscript: bool = False, labels: bool = True) -> ToyModel:
    """Write ``<graph>.onnx`` files and ``manifest.json`` (through the contract's writer) into ``folder``."""
    import onnx

    from inclust_plus.contract import Covariate, GraphEntry, Labels, Manifest, Modality, ModelInfo, write_manifest

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = ToyModel(folder, _weights(seed), preprocessing=dict(preprocessing or {}), folded=folded)
    entries = []
    for name, kind, ins, outs, fin, fout, default in GRAPHS:
        proto, inputs, outputs = _onnx_graph(model, name)
        path = folder / f"{name}.onnx"
        onnx.save(proto, path)
        ts = None
        if torchscript:
            ts = f"{name}.ts"
            _torchscript(model, name, folder / ts)
        entries.append(GraphEntry(
            name=name, kind=kind, file=path.name, sha256=sha256(path), opset=17,
            torchscript_file=ts, torchscript_sha256=sha256(folder / ts) if ts else None,
            folded_preprocessing=folded, preprocessing_plan=toy_plan(fin, model.preprocessing),
            input_modalities=tuple(ins), output_modalities=tuple(outs), input_features=tuple(fin), output_features=tuple(fout),
            default_target_covariate=default, inputs=_io(inputs), outputs=_io(outputs),
        ))
    manifest = Manifest(
        exporter_version="0.1.0",
        model=ModelInfo("toy", "0" * 64, LATENT),
        covariate=Covariate(("dataset",), tuple(COVARIATES)),
        labels=Labels("cell_type", tuple(LABELS)) if labels else Labels(),
        modalities=(Modality("rna", tuple(RNA)), Modality("protein", tuple(PROTEIN))),
        preprocessing=model.preprocessing,
        graphs=tuple(entries),
    )
    write_manifest(manifest, model.manifest)
    return model


def _torchscript(model: ToyModel, name: str, path: Path) -> None:
    """A TorchScript module with the ONNX graph's signature (tests only; needs torch)."""
    import torch

    w = {k: torch.tensor(v, dtype=torch.float32) for k, v in model.weights.items()}
    _, kind, _, _, fin, fout, _ = model.graph(name)
    idx_in = torch.tensor([model.features.index(f) for f in fin])
    idx_out = torch.tensor([model.features.index(f) for f in fout] or [0])

    class Embed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for k, v in w.items():
                self.register_buffer(k, v)
            self.register_buffer("W1f", w["W1"][idx_in])

        def encode(self, x, covariate):
            h = torch.relu(x @ self.W1f + self.b1)
            zc = h @ self.Wm + self.bm - self.E[covariate]
            return zc, torch.softmax(zc @ self.Wc + self.bc, -1)

        def forward(self, x, covariate):
            return self.encode(x, covariate)

    class Decode(Embed):
        def __init__(self):
            super().__init__()
            self.register_buffer("Wof", w["Wo"][:, idx_out])
            self.register_buffer("bof", w["bo"][idx_out])

        def forward(self, x, covariate, target_covariate):
            zc, probs = self.encode(x, covariate)
            d = torch.relu((zc + self.E[target_covariate]) @ self.Wd + self.bd)
            return torch.sigmoid(d @ self.Wof + self.bof), zc, probs

    torch.jit.save(torch.jit.script(Decode() if kind == "impute" else Embed()), str(path))


def make_cells(n: int, features: list[str], seed: int = 1, density: float = 0.5) -> np.ndarray:
    """Non-negative count-like values with many zeros, [n, len(features)] float32."""
    rng = np.random.default_rng(seed)
    x = rng.gamma(1.0, 2.0, size=(n, len(features))) * (rng.random((n, len(features))) < density)
    return x.astype(np.float32)


def write_h5ad(path: str | Path, x: np.ndarray, var_names: list[str], covariate: list[str] | None = None,
               sparse: str | None = "csr", layer: str | None = None, obsm: str | None = None, extra_obs: dict | None = None):
    """An h5ad with ``x`` in X (or a layer / an obsm data frame), obs['dataset'] = ``covariate``."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    n = x.shape[0]
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(n)])
    if covariate is not None:
        obs["dataset"] = pd.Categorical(covariate)
    for k, v in (extra_obs or {}).items():
        obs[k] = v
    mat = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, None: np.asarray}[sparse](x)
    if layer or obsm:
        a = ad.AnnData(X=np.zeros((n, len(var_names)), np.float32) if layer else None, obs=obs, var=pd.DataFrame(index=var_names) if layer else None)
        if layer:
            a.layers[layer] = mat
        else:
            a.obsm[obsm] = pd.DataFrame(np.asarray(x), index=obs.index, columns=var_names)
    else:
        a = ad.AnnData(X=mat, obs=obs, var=pd.DataFrame(index=var_names))
    a.write_h5ad(path)
    return a


def make_toy_workdir(folder: Path, n_cells: int) -> Path:
    """``folder`` with the toy export (``toy/``) and ``in.h5ad`` of ``n_cells`` cells over the three
    covariate categories in turn: the input of the fault and full-disk tests of ``inclust-run``."""
    make_toy_export(folder / "toy")
    write_h5ad(folder / "in.h5ad", make_cells(n_cells, RNA, seed=3), RNA, [COVARIATES[i % 3] for i in range(n_cells)])
    return folder
