"""Each paper task on synthetic cells with known truth does what it promises."""

import numpy as np
import pytest

from inclust_plus.training.model import InClust
from inclust_plus.training.assembly.preprocessing import Preprocessing, transform
from evaluation.synthetic import batch_mixing, synthetic_task

EPOCHS = 40


def _train(task, **training):
    st = synthetic_task(task, n_cells=1500, seed=0, overrides={"training": {"epochs": EPOCHS, "batch_size": 100, **training}})
    model, data, _ = InClust.fit(st.config, st.objects, progress=False)
    return st, model, data


def _inputs(model, data, dataset, feature_set):
    a, b = data.cell_ranges[dataset]
    idx = model.feature_set(feature_set)
    return np.asarray(data.x[a:b])[:, idx]


def _truth(model, cells, modality, rows):
    prep = model.description.preprocessing[modality]
    scale = np.asarray(prep.scale, dtype=np.float32) if prep.scale else None
    return transform(cells.counts[modality][rows], Preprocessing(prep.normalize_total, prep.log1p, None), scale)


def _uncorrected(model, data, datasets, feature_set):
    """The posterior mean before the covariate embedding is subtracted: no batch correction."""
    zs = []
    for ds in datasets:
        y, z_c, _ = model.predict(_inputs(model, data, ds, feature_set), feature_set, data.covariate_categories[data.covariate[data.cell_ranges[ds][0]]])
        cov = model.covariate_index(data.covariate_categories[data.covariate[data.cell_ranges[ds][0]]])
        zs.append(z_c + model.module.covariate_embedding.detach().numpy()[cov])
    return np.concatenate(zs)


def test_integration_mixes_batches():
    # The task's own training (training/config.py TASK_DEFAULTS): the per-type penalty compares a type's cells across
    # batches inside one training batch, so it needs batches of 500, and it keeps mixing for all 200 epochs.
    st, model, data = _train("integration", epochs=200, batch_size=500)
    zc, batch, types = [], [], []
    for ds in ("batch0", "batch1"):
        _, z, p = model.predict(_inputs(model, data, ds, "rna_protein"), "rna_protein", ds)
        zc.append(z)
        batch += [ds] * len(z)
        types.append(st.cells.cell_type[st.index[ds]])
    zc, batch, types = np.concatenate(zc), np.array(batch), np.concatenate(types)
    mixed = batch_mixing(zc, batch)
    raw = batch_mixing(_uncorrected(model, data, ["batch0", "batch1"], "rna_protein"), batch)
    x_all = np.concatenate([_inputs(model, data, ds, "rna_protein") for ds in ("batch0", "batch1")])
    from sklearn.decomposition import PCA

    pca = batch_mixing(PCA(20, random_state=0).fit_transform(x_all), batch)
    assert mixed > 0.9, mixed  # 0.915 measured (seeded)
    assert mixed > raw + 0.2 and mixed > pca + 0.2, (mixed, raw, pca)
    # Correction must not blur cell types: kNN type purity stays high.
    assert batch_mixing(zc, types) < 0.3


def test_triple_modality_shares_one_space_and_generates_unmeasured_rna():
    st, model, data = _train("triple")
    z_cite = model.predict(_inputs(model, data, "cite", "rna_protein"), "rna_protein", "cite")[1]
    y_asap, z_asap, _ = model.predict(_inputs(model, data, "asap", "protein_atac"), "protein_atac", "asap")
    z = np.concatenate([z_cite, z_asap])
    batch = np.array(["cite"] * len(z_cite) + ["asap"] * len(z_asap))
    mixed = batch_mixing(z, batch)
    uncorrected = np.concatenate([_uncorrected(model, data, ["cite"], "rna_protein"), _uncorrected(model, data, ["asap"], "protein_atac")])
    raw = batch_mixing(uncorrected, batch)
    assert mixed > raw + 0.2 and mixed > 0.5, (mixed, raw)
    # RNA was never measured in the ASAP-like dataset: generate it (in the CITE covariate) and score.
    y_rna = model.predict(_inputs(model, data, "asap", "protein_atac"), "protein_atac", "asap", "cite")[0][:, model.feature_set("rna")]
    truth = _truth(model, st.cells, "rna", st.index["asap"])
    mean_profile = _truth(model, st.cells, "rna", st.index["cite"]).mean(0)
    mse_ours = ((y_rna - truth) ** 2).mean()
    mse_mean = ((mean_profile[None] - truth) ** 2).mean()
    assert mse_ours < 0.8 * mse_mean, (mse_ours, mse_mean)


def test_generation_predicts_protein_and_transfers_labels():
    st, model, data = _train("generation")
    x_query = _inputs(model, data, "query", "rna")
    y, _, probs = model.predict(x_query, "rna", "query", "cite")
    protein = y[:, model.feature_set("protein")]
    truth = _truth(model, st.cells, "protein", st.index["query"])
    mean_profile = _truth(model, st.cells, "protein", st.index["cite"]).mean(0)
    mse_ours = ((protein - truth) ** 2).mean()
    mse_mean = ((mean_profile[None] - truth) ** 2).mean()
    assert mse_ours < 0.5 * mse_mean, (mse_ours, mse_mean)
    # Per-protein correlation with the truth is high.
    r = [np.corrcoef(protein[:, j], truth[:, j])[0, 1] for j in range(protein.shape[1])]
    assert np.nanmean(r) > 0.85, np.nanmean(r)  # 0.894 measured (seeded)
    labels = np.array(model.description.labels.categories)[probs.argmax(1)]
    accuracy = (labels == st.cells.cell_type[st.index["query"]]).mean()
    chance = 1 / len(model.description.labels.categories)
    assert accuracy > 0.97 and accuracy > 4 * chance, accuracy  # 0.991 measured (seeded)


@pytest.mark.parametrize("task", ["imputation", "integration", "triple", "generation"])
def test_presets_name_their_combinations(task):
    st = synthetic_task(task, n_cells=200, seed=0, overrides={"training": {"epochs": 1}})
    model, _, _ = InClust.fit(st.config, st.objects, progress=False)
    names = [c.name for c in model.description.combinations]
    expected = {"imputation": "merfish_to_rna", "integration": "rna_to_rna_protein", "triple": "protein_atac_to_protein_atac", "generation": "rna_to_rna_protein"}
    assert expected[task] in names and any(n.endswith("_embed") for n in names)
