# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # inClust+ in a notebook: counts in, imputed genes, a latent space and transferred labels
#
# This tutorial goes from AnnData objects holding raw counts in `layers["counts"]` to a trained
# inClust+ model, its torch-free export, imputation of the genes a spatial panel did not measure,
# a UMAP of the batch-corrected latent (`obsm["X_inclust"]`) and cell-type label transfer.
# It runs as a script (`python docs/tutorial.py`), in Jupyter (jupytext opens percent files as
# notebooks), and in the test suite (`tests/test_tutorial.py`), in about a minute on two cores.
#
# The data is the project's example slice of the Moffitt et al. hypothalamus data
# (`examples/data/`): 6,000 scRNA-seq reference cells with 153 genes and cell types, and 2,000
# MERFISH query cells with the 122 panel genes (their true types and the held-out 31 genes are
# kept aside for scoring). The inClust+ authors published these values scaled to [0, 1] per gene,
# without raw counts; so that the tutorial shows the counts workflow, it turns them into integer
# pseudo-counts (`round(50 * x)`). With your own data, put the raw counts in `layers["counts"]`.

# %%
import os
import tempfile
from pathlib import Path

import anndata as ad
import matplotlib

matplotlib.use("Agg")  # figures go to files; drop this line in Jupyter
import numpy as np
import scanpy as sc

from inclust_plus.export import export_model
from inclust_plus.runtime import Predictor
from inclust_plus.runtime.info import render, summary
from inclust_plus.training.model import InClust

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
DATA = Path(os.environ.get("INCLUST_TUTORIAL_DATA", HERE.parent / "examples" / "data"))
OUT = Path(os.environ.get("INCLUST_TUTORIAL_OUT") or tempfile.mkdtemp(prefix="inclust_tutorial_"))
EPOCHS = int(os.environ.get("INCLUST_TUTORIAL_EPOCHS", "8"))  # a quick look; the paper trains 50, the imputation preset 200 x 6 networks
OUT.mkdir(parents=True, exist_ok=True)
sc.settings.figdir = OUT

# %% [markdown]
# ## 1. AnnData objects with raw counts
# The query keeps only its panel genes; its cell types are set aside (they would otherwise be
# used for training) and only used to score the transferred labels at the end.

# %%
reference = ad.read_h5ad(DATA / "scrna_reference.h5ad")
query = ad.read_h5ad(DATA / "merfish_query.h5ad")
truth = ad.read_h5ad(DATA / "merfish_query_heldout_truth.h5ad")
for adata in (reference, query):
    adata.layers["counts"] = np.round(50 * adata.X)  # pseudo-counts, see above (sparse stays sparse)
true_types = query.obs.pop("cell_type").astype(str).to_numpy()
print(reference, query, sep="\n")

# %% [markdown]
# ## 2. Set up and train
# `InClust.setup` takes the datasets by name. `label_key={"scrna": "cell_type"}` labels only the
# reference; `query="merfish"` encodes every cell from the genes the query measured, so both
# datasets share one latent space; `layer="counts"` and `preprocessing` make the model normalise
# each cell to 10,000 counts, log1p and scale each gene to [0, 1] itself: the recipe is stored with
# the weights, and every later step applies it to raw counts.

# %%
model = InClust.setup(
    {"scrna": reference, "merfish": query},
    label_key={"scrna": "cell_type"},
    query="merfish",
    layer="counts",
    preprocessing={"rna": {"normalize_total": 1e4, "log1p": True, "scale": "max"}},
    name="tutorial",
    epochs=EPOCHS,
    seed=0,
)
model.train(progress=False)
print(model)

# %% [markdown]
# ## 3. Save and export
# The export folder holds one ONNX graph per combination and a manifest; the runtime needs nothing
# else (no torch). `inclust-run info EXPORT` prints the same listing from a shell.

# %%
model.save(OUT / "model.pt")
export = export_model(OUT / "model.pt", OUT / "export", torchscript=False, force=True).parent
print(render(summary(export)))

# %% [markdown]
# ## 4. Impute the genes the panel lacks, in memory
# `Predictor(export)` runs the exported graphs on an AnnData (features matched by name, in any
# order). The result keeps the measured counts in X, puts the model's values for all 153 genes in
# `layers["inclust_imputed"]`, flags the 31 genes the query did not measure in
# `var["inclust_imputed"]`, and says what the numbers are in `uns["inclust"]["scale"]`.
# `output_scale="log1p"` undoes the per-gene scaling (log1p of normalised counts). A network
# trained for a few epochs correlates modestly with the held-out genes; the imputation preset
# (`task="imputation"`: 6 networks, 200 epochs) reaches 0.364 mean Pearson on these genes
# (BENCHMARKS.md).

# %%
predictor = Predictor(export)
imputed = predictor.impute(query, layer="counts", combination="merfish_to_rna", output_scale="log1p")
print(imputed)
print(imputed.uns["inclust"]["scale"])
print(imputed.var["inclust_imputed"].value_counts().to_dict())

held_out = [g for g in truth.var_names if g in set(imputed.var_names)]
pred = imputed[truth.obs_names, held_out].layers["inclust_imputed"]
true = truth[:, held_out].X
true = np.asarray(true.toarray() if hasattr(true, "toarray") else true, dtype=np.float64)
p, t = pred - pred.mean(0), true - true.mean(0)
pearson = (p * t).sum(0) / np.sqrt((p**2).sum(0) * (t**2).sum(0))
print(f"{len(held_out)} held-out genes: mean Pearson {np.nanmean(pearson):.3f}")

# %% [markdown]
# ## 5. Neighbours and UMAP on the inClust+ latent
# `obsm["X_inclust"]` is the covariate-corrected latent; scanpy uses it like any representation.
# Embedding reference and query together shows whether the two technologies mix.

# %%
ref_latent = predictor.get_latent_representation(reference, layer="counts", combination="merfish_embed")
both = ad.concat({"scrna": reference, "merfish": imputed[:, reference.var_names]}, label="dataset", join="outer")
both.obsm["X_inclust"] = np.concatenate([ref_latent, imputed.obsm["X_inclust"]])
sc.pp.neighbors(both, use_rep="X_inclust", n_neighbors=15, random_state=0)
sc.tl.umap(both, random_state=0)
sc.pl.umap(both, color="dataset", show=False, save="_inclust_datasets.png")
print(both)

# %% [markdown]
# ## 6. Label transfer
# The query's cell types come from the classifier trained on the reference labels
# (`obs["inclust_label"]` and its probability); scored here against the types set aside in step 1.

# %%
labels = predictor.predict_labels(query, layer="counts", combination="merfish_embed")
accuracy = float((labels["inclust_label"].astype(str).to_numpy() == true_types).mean())
majority = float(np.mean(true_types == max(set(true_types), key=list(true_types).count)))
print(f"label transfer accuracy {accuracy:.3f} (the most common type alone: {majority:.3f})")

# %% [markdown]
# ## 7. The same verbs without the export
# The trained `InClust` object has the same verbs (`get_latent_representation`, `impute`,
# `generate`, `predict_labels`), run by PyTorch; they agree with the exported graphs.

# %%
direct = model.impute(query, layer="counts", combination="merfish_to_rna", output_scale="log1p")
difference = float(np.abs(direct.layers["inclust_imputed"] - imputed.layers["inclust_imputed"]).max())
print(f"PyTorch vs exported graph: max |difference| {difference:.2e}")
imputed.write_h5ad(OUT / "merfish_imputed.h5ad")
print(f"wrote {OUT}")
