"""Which graphs a checkpoint has: the combinations it names (exported, or run in memory).

Each graph kind's inputs and outputs come from the contract's graph table
(:data:`inclust_plus.contract.graphs.GRAPH_SPECS`), which the ONNX builder, the TorchScript
wrapper, the parity check, the manifest and the runtime all read.
"""

from __future__ import annotations

from dataclasses import dataclass

from inclust_plus.contract.description import ModelDescription
from inclust_plus.contract.description_io import as_description
from inclust_plus.contract.graphs import GraphIO, graph_io
from inclust_plus.contract.manifest import GraphSignature
from inclust_plus.errors import InclustError


@dataclass(frozen=True, kw_only=True)
class Combination(GraphSignature):
    """One graph to export: its signature plus which global features go in and come out (none out
    for embed graphs) and how many networks the model holds."""

    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    members: int = 1  # networks of the ensemble (> 1: decoding graphs add the output y_std)

    @property
    def spec(self) -> GraphIO:
        return self.spec_for("dense")

    def spec_for(self, input_format: str) -> GraphIO:
        """The dense spec (``x``) or the CSR one (``values``, ``indices``, ``rows``); ``y_std`` last for an ensemble's decoding graph."""
        return graph_io(self.kind, input_format, self.members)

    def widths(self, latent_dim: int, n_labels: int) -> dict[str, int]:
        """Concrete sizes for the symbolic widths of the graph table."""
        return {
            "n_inputs": len(self.inputs),
            "n_outputs": len(self.outputs),
            "latent_dim": latent_dim,
            "n_labels": n_labels,
        }


def _modalities(indices: list[int], mods: tuple[str, ...], order: list[str]) -> tuple[str, ...]:
    present = {mods[i] for i in indices}
    return tuple(m for m in order if m in present)


def all_combinations(description: ModelDescription | dict) -> list[Combination]:
    """Every combination the checkpoint names, in its order (its feature sets and indices were
    checked by the description's reader)."""
    d = as_description(description)
    names, mods, order = d.feature_names, d.feature_modalities, [m.name for m in d.modalities]
    out = []
    for entry in d.combinations:
        inputs, outputs = d.set_features(entry.inputs), d.set_features(entry.outputs)
        out.append(
            Combination(
                name=entry.name,
                kind="impute" if outputs else "embed",
                inputs=tuple(inputs),
                outputs=tuple(outputs),
                input_modalities=_modalities(inputs, mods, order),
                output_modalities=_modalities(outputs, mods, order),
                input_features=tuple(names[i] for i in inputs),
                output_features=tuple(names[i] for i in outputs),
                default_target_covariate=entry.default_target_covariate if outputs else None,
                default_covariate=entry.default_covariate,
                members=d.members,
            )
        )
    return out


def select_combinations(description: ModelDescription | dict, wanted: list[str] | tuple[str, ...] | None) -> list[Combination]:
    """The requested combinations (all when ``wanted`` is empty), or a one-line error naming the valid ones."""
    combos = all_combinations(description)
    if not combos:
        raise InclustError("the checkpoint names no modality combinations", "re-run inclust-train")
    if not wanted:
        return combos
    by_name = {c.name: c for c in combos}
    unknown = [w for w in wanted if w not in by_name]
    if unknown:
        raise InclustError(
            f"unknown combination {unknown[0]!r}",
            f"valid names: {', '.join(c.name for c in combos)}",
        )
    return [by_name[w] for w in dict.fromkeys(wanted)]
