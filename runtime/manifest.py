"""The runtime's side of ``manifest.json``: pick the graph a command needs, load its files checked.

The manifest itself (dataclasses, the one reader and its schema) is the contract in
:mod:`inclust_plus.contract`; this module re-exports what runtime code names
(:func:`load_manifest` is :func:`inclust_plus.contract.read_manifest`) and adds what only the
runtime needs: :func:`select_graph`. The sha256-checked file reads are :mod:`inclust_plus.contract.files`
(re-exported here; Triton's repository writer uses them too).
"""

from __future__ import annotations

from inclust_plus.contract import GraphEntry, Manifest, read_manifest
from inclust_plus.contract.files import read_verified, verify_file  # the sha256-checked reads (shared with Triton)
from inclust_plus.errors import InclustError

load_manifest = read_manifest

__all__ = ["GraphEntry", "Manifest", "load_manifest", "read_verified", "select_graph", "verify_file"]


def _split(values: tuple[str, ...] | None) -> tuple[str, ...]:
    """``--from a --from b`` or ``--from a,b`` or ``--from a+b`` all mean the set {a, b}."""
    out: list[str] = []
    for v in values or ():
        out += [p.strip() for p in v.replace("+", ",").split(",") if p.strip()]
    return tuple(out)


def select_graph(
    manifest: Manifest,
    decode: bool,
    combination: str | None = None,
    source: tuple[str, ...] | None = None,
    target: tuple[str, ...] | None = None,
) -> GraphEntry:
    """The graph for a command: by name, or by input/output modalities, or the only candidate.

    ``decode`` is True for impute/generate (graphs that return features), False for embed/annotate
    (embed graphs). Anything ambiguous is an error that lists the choices, never a silent guess.
    """
    kind = "impute/generate" if decode else "embed/annotate"
    candidates = [g for g in manifest.graphs if g.decodes == decode]
    if combination:
        g = manifest.graph(combination)
        if g.decodes != decode:
            names = ", ".join(c.name for c in candidates) or "none"
            raise InclustError(f"combination {combination!r} is {'a decoding' if g.decodes else 'an embed'} graph, not usable for {kind}", f"choose one of: {names}")
        return g
    src, dst = _split(source), _split(target)
    known = manifest.modality_names
    for m in (*src, *dst):
        if m not in known:
            raise InclustError(f"modality {m!r} is not in the model", f"known modalities: {', '.join(known)}")
    if dst and not decode:
        raise InclustError("--to is only for impute/generate", "embed/annotate return the latent and labels; drop --to")
    if src:
        candidates = [g for g in candidates if set(g.input_modalities) == set(src)]
    if dst:
        candidates = [g for g in candidates if set(g.output_modalities) == set(dst)]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        pool = [g for g in manifest.graphs if g.decodes == decode]
        wanted = f" from {'+'.join(src) or 'any'} to {'+'.join(dst) or 'any'}" if (src or dst) else ""
        listing = "; ".join(g.describe() for g in pool) or "none"
        raise InclustError(f"the model has no {kind} graph{wanted}", f"available: {listing}")
    listing = "; ".join(g.describe() for g in candidates)
    raise InclustError(f"several {kind} graphs match", f"pick one with --combination NAME or --from/--to: {listing}")
