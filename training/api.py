"""The notebook face of :class:`~inclust_plus.training.model.InClust`: verbs on AnnData/MuData objects.

``get_latent_representation``, ``predict_labels``, ``impute`` and ``generate`` take an AnnData (or
a MuData) as it comes: features are matched by ``var_names`` (any order, extra features ignored,
missing ones a one-line error), X may be dense or sparse, ``layer=`` reads a layer, and the
covariate comes from an obs column (``covariate_key=``), one name (``covariate=``) or the model's
default, exactly as ``inclust-run`` chooses it. The stored preprocessing is applied, so raw counts
go in as they do for the runtime. Decoded results use the layout of :mod:`inclust_plus.results`.

Kept apart from :mod:`.model` (construction, training, checkpoint I/O) so both stay short.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas is imported on use (inclust_plus/sparse.py says why)
    import pandas as pd

from inclust_plus import __version__
from inclust_plus import results as R
from inclust_plus.errors import InclustError, names_shown
from inclust_plus.sparse import is_sparse

from .preprocessing import Preprocessing, transform

class AnnDataVerbs:
    """Mixed into ``InClust``; needs ``self.description`` and ``self.predict``."""

    # --- what the model holds -------------------------------------------------------------------
    def _schema(self) -> list[dict]:
        return self.description["schema"]["modalities"]

    def _all_features(self) -> list[str]:
        return [f for m in self._schema() for f in m["features"]]

    def _set_features(self, set_name: str) -> list[str]:
        names = self._all_features()
        return [names[i] for i in self.feature_set(set_name)]

    def _set_modalities(self, set_name: str) -> list[str]:
        return list(self.description["feature_sets"][set_name]["modalities"])

    def _combination(self, adata, decode: bool, combination: str | None) -> dict:
        combos = [c for c in self.description["combinations"] if (c.get("outputs") is not None) == decode]
        kind = "impute/generate" if decode else "embed/annotate"
        if combination is not None:
            for c in self.description["combinations"]:
                if c["name"] == combination:
                    if (c.get("outputs") is not None) != decode:
                        raise InclustError(f"combination {combination!r} cannot {kind}", f"choose one of: {names_shown(c['name'] for c in combos)}")
                    return c
            raise InclustError(f"unknown combination {combination!r}", f"choose one of: {names_shown(c['name'] for c in combos)}")
        if not combos:
            raise InclustError(f"the model has no {kind} combination", "use the verbs its combinations allow (see repr(model))")
        have = {str(v) for v in _var_names(adata)}
        covered = [c for c in combos if set(self._set_features(c["inputs"])) <= have]
        if not covered:
            best = max(combos, key=lambda c: len(set(self._set_features(c["inputs"])) & have))
            missing = [f for f in self._set_features(best["inputs"]) if f not in have]
            raise InclustError(f"the AnnData lacks {len(missing)} of the {len(self._set_features(best['inputs']))} features combination "
                               f"{best['name']!r} needs: {names_shown(missing)}", "pass allow_missing=True with combination=NAME, or check var_names")
        return max(covered, key=lambda c: (len(self.feature_set(c["inputs"])), len(self.feature_set(c["outputs"])) if c.get("outputs") else 0))

    # --- reading an AnnData ---------------------------------------------------------------------
    def _views(self, adata, set_name: str):
        if not hasattr(adata, "mod"):
            return [(adata, "the AnnData")]
        use = [m for m in self._set_modalities(set_name) if m in adata.mod]
        if not use:
            raise InclustError(f"the MuData has modalities {names_shown(adata.mod)} but {set_name!r} reads {names_shown(self._set_modalities(set_name))}",
                               "rename the modality or choose another combination")
        return [(adata.mod[m], f"modality {m!r}") for m in use]

    def _inputs(self, adata, combo: dict, layer: str | None, allow_missing: bool):
        """Raw aligned input [cells, set features], then its preprocessed copy; checks on the way."""
        import pandas as pd  # on use: the training process does not import it (inclust_plus/sparse.py)

        wanted = self._set_features(combo["inputs"])
        aligned, presents, sources = [], [], []
        for view, label in self._views(adata, combo["inputs"]):
            matrix = R.element(view, layer, label)
            names = [str(v) for v in view.var_names]
            index = pd.Index(names)
            dups = sorted(set(index[index.duplicated()]) & set(wanted))
            if dups:
                raise InclustError(f"{label} has duplicate var names among the model's features: {names_shown(dups)}",
                                   "make var names unique (anndata var_names_make_unique) or drop the duplicates")
            a, present = R.align_columns(matrix, names, wanted)
            aligned.append(a), presents.append(present), sources.append((matrix, names, view.var, dict(view.layers)))
        present = np.logical_or.reduce(presents)
        if not present.all() and not allow_missing:
            missing = [f for f, p in zip(wanted, present) if not p]
            raise InclustError(f"the input lacks {len(missing)} of the {len(wanted)} features combination {combo['name']!r} needs: {names_shown(missing)}",
                               "pass allow_missing=True to fill them with zeros, or choose another combination")
        raw = R._combine(aligned, presents)
        raw = raw.toarray() if is_sparse(raw) else np.asarray(raw, dtype=np.float32)
        raw = raw.astype(np.float32, copy=False)
        if not np.isfinite(raw).all():
            raise InclustError("the input holds NaN or infinite values", "clean or impute them before running the model")
        if (raw < 0).any():
            raise InclustError("the input holds negative values but the model expects non-negative input",
                               "pass raw counts or the non-negative values the model was trained on")
        return raw, self._preprocess(raw, combo["inputs"]), sources, [f for f, p in zip(wanted, present) if not p]

    def _preprocess(self, raw: np.ndarray, set_name: str) -> np.ndarray:
        x = raw.copy()
        wanted = self._set_features(set_name)
        for m in self._schema():
            spec = (self.description.get("preprocessing") or {}).get(m["name"]) or {}
            pos = {f: i for i, f in enumerate(m["features"])}
            cols = [j for j, f in enumerate(wanted) if f in pos]
            if not cols or not (spec.get("normalize_total") or spec.get("log1p") or spec.get("scale") is not None):
                continue
            if spec.get("normalize_total") or spec.get("log1p"):
                text = R.non_integer_warning(raw[:1000, cols], m["name"])
                if text:
                    warnings.warn(text, UserWarning, stacklevel=4)
            scale = None
            if spec.get("scale") is not None:
                s = np.asarray(spec["scale"], np.float32)[[pos[wanted[j]] for j in cols]]
                scale = np.where(s == 0, 1, s).astype(np.float32)
            x[:, cols] = transform(raw[:, cols], Preprocessing(spec.get("normalize_total"), bool(spec.get("log1p"))), scale)
        return x

    def _covariates(self, obs: pd.DataFrame, combo: dict, covariate_key, covariate) -> tuple[np.ndarray, str]:
        """Category names per cell, chosen like the runtime: key, name, model key column, only category, panel default."""
        cats = self.description["covariate"]["categories"]
        keys = self.description["covariate"].get("keys") or []
        if covariate_key and covariate:
            raise InclustError("covariate_key and covariate are exclusive", "pass one of them")
        if covariate:
            self.covariate_index(covariate)
            return np.full(len(obs), str(covariate), dtype=object), str(covariate)
        if not covariate_key:
            if len(keys) == 1 and keys[0] in obs.columns:
                covariate_key = keys[0]
            elif len(cats) == 1:
                return np.full(len(obs), cats[0], dtype=object), cats[0]
            elif combo.get("default_covariate") in cats:
                return np.full(len(obs), combo["default_covariate"], dtype=object), combo["default_covariate"]
            else:
                raise InclustError("the model was trained with several covariate categories and the input does not say which one its cells belong to",
                                   f"pass covariate_key=COL or covariate=NAME (known: {names_shown(cats)})")
        if covariate_key not in obs.columns:
            raise InclustError(f"obs has no column {covariate_key!r}", f"columns: {names_shown(map(str, obs.columns)) or 'none'}; or pass covariate=NAME")
        col = obs[covariate_key]
        if col.isna().any():
            raise InclustError(f"obs column {covariate_key!r} is empty for {int(col.isna().sum())} cells", "fill it or pass covariate=NAME")
        values = col.astype(str).to_numpy(dtype=object)
        unknown = sorted(set(values) - set(cats))
        if unknown:
            raise InclustError(f"obs column {covariate_key!r} holds covariate categories the model does not know: {names_shown(unknown)}",
                               f"known: {names_shown(cats)}; or pass covariate=NAME")
        return values, f"obs[{covariate_key!r}]"

    def _obs(self, adata, combo) -> pd.DataFrame:
        return R.cells_obs(adata, self._views(adata, combo["inputs"])[0][0].obs)

    def _run(self, adata, decode, combination, layer, covariate_key, covariate, target_covariate, allow_missing, batch_size,
             samples: int = 0, seed: int = 0):
        if self.module is None:
            raise InclustError("the model is not trained yet", "call model.train() first")
        combo = self._combination(adata, decode, combination)
        raw, x, sources, missing = self._inputs(adata, combo, layer, allow_missing)
        obs = self._obs(adata, combo)
        cov, cov_desc = self._covariates(obs, combo, covariate_key, covariate)
        tgt_name = target_covariate or combo.get("default_target_covariate")
        if not decode and target_covariate:
            raise InclustError("target_covariate only applies to impute/generate", "drop it for the latent and labels")
        samples = samples if decode else 0
        # the spread, from the same pass: K posterior samples' (their mean decode replaces the posterior
        # mean's), else an ensemble's members'
        with_spread = decode and (self.module.config.members > 1 or samples > 0)
        y, latent, probs, *rest = self.predict(x, combo["inputs"], cov, tgt_name if decode else None, batch_size=batch_size,
                                               return_std=with_spread, samples=samples, seed=seed)
        spread = rest[0] if with_spread else None
        prov = {"graph": combo["name"], "model_name": self.description.get("name"), "package_version": __version__, "backend": "pytorch",
                "input_element": f"layers/{layer}" if layer else "X", "covariate": cov_desc,
                "target_covariate": (tgt_name or "same as covariate") if decode else "none", "missing_features": missing,
                "input_modalities": self._set_modalities(combo["inputs"]),
                "output_modalities": self._set_modalities(combo["outputs"]) if decode else [],
                "label_key": (self.description.get("labels") or {}).get("key")}
        return combo, raw, y, latent, probs, sources, obs, prov, spread

    # --- verbs ----------------------------------------------------------------------------------
    def get_latent_representation(self, adata, combination=None, layer=None, covariate_key=None, covariate=None,
                                  allow_missing=False, inplace: bool = True, batch_size: int = 8192) -> np.ndarray:
        """The covariate-corrected latent [cells, latent_dim]; also ``adata.obsm["X_inclust"]`` when ``inplace``."""
        _, _, _, latent, _, _, _, _, _ = self._run(adata, False, combination, layer, covariate_key, covariate, None, allow_missing, batch_size)
        if inplace:
            adata.obsm[R.LATENT_KEY] = latent
        return latent

    def predict_labels(self, adata, combination=None, layer=None, covariate_key=None, covariate=None,
                       allow_missing=False, inplace: bool = True, batch_size: int = 8192) -> pd.DataFrame:
        """Most likely label and its probability per cell; also ``obs["inclust_label"(+"_probability")]``."""
        cats = (self.description.get("labels") or {}).get("categories") or []
        if not cats:
            raise InclustError("the model has no label categories to annotate with", "use get_latent_representation for the latent only")
        _, _, _, _, probs, _, obs, _, _ = self._run(adata, False, combination, layer, covariate_key, covariate, None, allow_missing, batch_size)
        table = R.label_table(probs, cats, obs.index)
        if inplace:
            adata.obs[R.LABEL_COLUMN] = table[R.LABEL_COLUMN].to_numpy()
            adata.obs[R.PROBABILITY_COLUMN] = table[R.PROBABILITY_COLUMN].to_numpy()
        return table

    def impute(self, adata, combination=None, layer=None, covariate_key=None, covariate=None, target_covariate=None,
               allow_missing=False, output_scale: str = "model", imputed_into: str = "layer", batch_size: int = 8192, samples: int = 0,
               seed: int = 0, _command="impute"):
        """A new AnnData over the combination's output features: measured values kept in X, the
        model's values in ``layers["inclust_imputed"]`` (or X with ``imputed_into="X"``),
        ``var["inclust_imputed"]`` marking features the input lacked; see :mod:`inclust_plus.results`.

        An ensemble also writes its members' spread as ``layers["inclust_std"]``. ``samples=K`` (the
        option for a single network) decodes K draws of the latent from the posterior instead
        (seeded by ``seed``): the values are their mean, the layer their spread."""
        R.check_choice(imputed_into)
        combo = self._combination(adata, True, combination) if self.module is not None else None
        if combo is None:
            raise InclustError("the model is not trained yet", "call model.train() first")
        out_features = self._set_features(combo["outputs"])
        converter = R.ScaleConverter(out_features, self._schema(), self.description.get("preprocessing") or {}, output_scale,
                                     self._set_modalities(combo["inputs"]))
        combo, raw, y, latent, probs, sources, obs, prov, spread = self._run(adata, True, combo["name"], layer, covariate_key, covariate,
                                                                              target_covariate, allow_missing, batch_size, samples, seed)
        out_idx = self.feature_set(combo["outputs"])
        library = R.library_sizes(raw, R.modality_columns(self._set_features(combo["inputs"]), self._schema()), converter.needs_library)
        values = converter.convert(np.ascontiguousarray(y[:, out_idx]), library)
        prov.update(command=_command, output_scale=output_scale, scale=converter.description(), **R.spread_provenance(converter, spread is not None))
        if samples and "std" in prov:
            prov.update(std=f"per-feature standard deviation over {samples} posterior samples of the latent (seed {seed}), {converter.scale} scale",
                        samples=samples)
        if spread is not None and converter.spread_reason is not None:
            warnings.warn(f"layers['{R.STD_LAYER}'] is not written: {converter.spread_reason}", UserWarning, stacklevel=2)
            spread = None
        elif spread is not None:
            spread = converter.convert_spread(np.ascontiguousarray(spread[:, out_idx]), library)
        labels = (self.description.get("labels") or {}).get("categories") or []
        return R.decoded_anndata(obs, sources, out_features, converter.modality_of, values, latent, probs, labels,
                                 imputed_into, prov, per_modality=_command == "generate", spread=spread)

    def generate(self, adata, combination=None, **kwargs):
        """:meth:`impute` for another modality (e.g. RNA -> protein); also one ``obsm["inclust_<modality>"]`` per output modality."""
        return self.impute(adata, combination, _command="generate", **kwargs)


def _var_names(adata):
    if hasattr(adata, "mod"):
        return [v for m in adata.mod.values() for v in m.var_names]
    return list(adata.var_names)
