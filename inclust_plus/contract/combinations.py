"""Which graphs a checkpoint has: the combinations it names (exported, or run in memory).

Each graph kind's inputs and outputs come from the contract's graph table
(:data:`inclust_plus.contract.graphs.GRAPH_SPECS`), which the ONNX builder, the TorchScript
wrapper, the parity check, the manifest and the runtime all read.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def feature_modalities(description: dict) -> tuple[list[str], list[str]]:
    """Global feature names and the modality of each, in the global order."""
    names, mods = [], []
    for mod in description["schema"]["modalities"]:
        names += list(mod["features"])
        mods += [mod["name"]] * len(mod["features"])
    return names, mods


def _features_of(sets: str | list[str] | None, description: dict, combo: str) -> list[int]:
    """Global indices of one feature set, or of several (union, first occurrence order)."""
    if sets is None:
        return []
    names = [sets] if isinstance(sets, str) else list(sets)
    feature_sets = description["feature_sets"]
    out: list[int] = []
    for s in names:
        if s not in feature_sets:
            raise InclustError(
                f"combination {combo!r} uses feature set {s!r} that the checkpoint does not define",
                f"known sets: {', '.join(sorted(feature_sets))}",
            )
        out += [int(i) for i in feature_sets[s]["features"] if int(i) not in out]
    return out


def _modalities(indices: list[int], mods: list[str], order: list[str]) -> tuple[str, ...]:
    present = {mods[i] for i in indices}
    return tuple(m for m in order if m in present)


def all_combinations(description: dict) -> list[Combination]:
    """Every combination the checkpoint names, in its order."""
    try:
        names, mods = feature_modalities(description)
        order = [m["name"] for m in description["schema"]["modalities"]]
        entries = description["combinations"]
        out = []
        for entry in entries:
            name = entry["name"]
            inputs = _features_of(entry["inputs"], description, name)
            outputs = _features_of(entry.get("outputs"), description, name)
            for i in inputs + outputs:
                if not 0 <= i < len(names):
                    raise InclustError(f"combination {name!r} uses feature index {i} outside 0..{len(names) - 1}", "re-run inclust-train")
            if not inputs:
                raise InclustError(f"combination {name!r} has no input features", "re-run inclust-train")
            out.append(
                Combination(
                    name=name,
                    kind="impute" if outputs else "embed",
                    inputs=tuple(inputs),
                    outputs=tuple(outputs),
                    input_modalities=_modalities(inputs, mods, order),
                    output_modalities=_modalities(outputs, mods, order),
                    input_features=tuple(names[i] for i in inputs),
                    output_features=tuple(names[i] for i in outputs),
                    default_target_covariate=entry.get("default_target_covariate") if outputs else None,
                    default_covariate=entry.get("default_covariate"),
                    members=int((description.get("module") or {}).get("members", 1)),
                )
            )
    except (KeyError, TypeError) as err:
        raise InclustError(f"checkpoint description is incomplete (missing {err})", "re-run inclust-train") from None
    return out


def select_combinations(description: dict, wanted: list[str] | tuple[str, ...] | None) -> list[Combination]:
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
