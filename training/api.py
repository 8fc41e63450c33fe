"""The notebook face of :class:`~inclust_plus.training.model.InClust`: verbs on AnnData/MuData objects.

``get_latent_representation``, ``predict_labels``, ``impute`` and ``generate`` are the runtime's
:class:`~inclust_plus.runtime.Predictor` verbs, run on this model's manifest (built by the
exporter's own code, training/torch_backend.py) with the PyTorch module as the backend. So every
rule about an input (graph choice, features matched by ``var_names``, dense or sparse X,
``layer=``, value checks, the covariate from obs columns, joined keys included, or a name, the
stored preprocessing) and about a result (the layout of :mod:`inclust_plus.results`) is the one
``inclust-run`` and ``Predictor`` follow, errors included; only the numbers come from PyTorch
instead of an exported graph.

Kept apart from :mod:`.model` (construction, training, checkpoint I/O) so both stay short.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from inclust_plus.errors import InclustError

if TYPE_CHECKING:  # pandas is imported on use (inclust_plus/sparse.py says why)
    import pandas as pd


class AnnDataVerbs:
    """Mixed into ``InClust``; needs ``self.module`` and ``self.description``."""

    def predictor(self, batch_size: int = 8192, samples: int = 0, seed: int = 0):
        """The runtime's ``Predictor`` on this model in memory (``samples = K``: decodes average K
        posterior samples, seeded by ``seed``, and return their spread as ``y_std``)."""
        if self.module is None:
            raise InclustError("the model is not trained yet", "call model.train() first")
        from inclust_plus.runtime import Predictor  # on use: the training process does not import pandas/anndata

        from inclust_plus.training.torch_backend import TorchBackend, memory_manifest

        manifest = memory_manifest(self.module, self.description, spread=samples > 0)
        readout = self.description.readout  # the neighbour read-out, blended as the exported graph does
        backend = TorchBackend(self.module, manifest, samples, seed, neighbours=getattr(self, "neighbours", None) if readout else None,
                               neighbours_graph=readout.combination if readout else None)
        return Predictor.from_manifest(manifest, backend, batch_size)

    def get_latent_representation(self, adata, combination=None, layer=None, covariate_key=None, covariate=None,
                                  allow_missing=False, inplace: bool = True, batch_size: int = 8192) -> np.ndarray:
        """The covariate-corrected latent [cells, latent_dim]; also ``adata.obsm["X_inclust"]`` when ``inplace``."""
        return self.predictor(batch_size).get_latent_representation(
            adata, combination=combination, layer=layer, covariate_key=covariate_key, covariate=covariate,
            allow_missing=allow_missing, inplace=inplace)

    def predict_labels(self, adata, combination=None, layer=None, covariate_key=None, covariate=None,
                       allow_missing=False, inplace: bool = True, batch_size: int = 8192) -> pd.DataFrame:
        """Most likely label and its probability per cell; also ``obs["inclust_label"(+"_probability")]``."""
        return self.predictor(batch_size).predict_labels(
            adata, combination=combination, layer=layer, covariate_key=covariate_key, covariate=covariate,
            allow_missing=allow_missing, inplace=inplace)

    def impute(self, adata, combination=None, layer=None, covariate_key=None, covariate=None, target_covariate=None,
               allow_missing=False, output_scale: str = "model", imputed_into: str = "layer", batch_size: int = 8192, samples: int = 0,
               seed: int = 0, _command="impute"):
        """A new AnnData over the combination's output features: measured values kept in X, the
        model's values in ``layers["inclust_imputed"]`` (or X with ``imputed_into="X"``),
        ``var["inclust_imputed"]`` marking features the input lacked; see :mod:`inclust_plus.results`.

        An ensemble also writes its members' spread as ``layers["inclust_std"]``. ``samples=K`` (the
        option for a single network) decodes K draws of the latent from the posterior instead
        (seeded by ``seed``): the values are their mean, the layer their spread."""
        return self.predictor(batch_size, samples, seed).impute(
            adata, combination=combination, layer=layer, covariate_key=covariate_key, covariate=covariate,
            target_covariate=target_covariate, allow_missing=allow_missing, output_scale=output_scale, imputed_into=imputed_into,
            command=_command)

    def generate(self, adata, combination=None, **kwargs):
        """:meth:`impute` for another modality (e.g. RNA -> protein); also one ``obsm["inclust_<modality>"]`` per output modality."""
        return self.impute(adata, combination, _command="generate", **kwargs)
