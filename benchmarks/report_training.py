"""BENCHMARKS.md sections of the training benchmarks (rows/s, whole-process wall, CPU vs CUDA)."""

from __future__ import annotations

from pathlib import Path

from report_common import _load, _load_note, _machine_note, notes, table


def training_section(train) -> list[str]:
    if not train:
        return ["## 4. Training throughput", "", "Not measured yet.", ""]
    m = train["machine"]
    lines = [
        "## 4. Training throughput (rows/s), MERFISH reference data",
        "",
        f"Measured {train['date']} on {train['data']}: {train['task']}, batch {train['batch_size']}, "
        f"{train['torch_threads']} torch threads, OMP_WAIT_POLICY={m.get('omp_wait_policy') or 'unset'}; {_load_note(m)}. "
        "rows/s is the training loop's own figure (as the official one); fit wall time includes loading and assembling the data.",
        "",
        "| run | rows | epochs | loop s | fit wall s | rows/s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(train["runs"], 1):
        lines.append(f"| {i} | {r['rows']:,} | {r['epochs']} | {r['train_seconds']:.2f} | {r['fit_wall_seconds']:.2f} | {r['rows_per_s']:,} |")
    lines += ["", f"Best {train['best_rows_per_s']:,} rows/s = **{train['speedup_vs_official']:.2f}x** the official implementation's "
              f"{train['official_rows_per_s']:,} rows/s (target 2x).", ""]
    for extra in train.get("variants", []):
        lines.append(f"- {extra['label']}: {extra['rows_per_s']:,} rows/s")
    if train.get("variants"):
        lines.append("")
    return lines


def training_issue13_section(results: Path) -> list[str]:
    """Issue 13: whole-process training wall time, stacked ensembles, CPU vs CUDA."""
    walls = (("training_wall", "One network, paper defaults"), ("training_wall_lowload", "One network, paper defaults, at lower load"),
             ("training_wall_other_one_thread", "One network, paper defaults, main with one thread"),
             ("training_wall_busy", "One network, paper defaults, the other core kept busy"),
             ("training_wall_preset", "The 6-network imputation preset"),
             ("training_wall_preset_seeds", "The 6-network imputation preset, three training seeds"),
             ("training_wall_bf16", "bf16 autocast against fp32, one network"))
    ens, dev = _load(results, "ensemble_training"), _load(results, "training_device")
    if not any(_load(results, stem) for stem, _ in walls) and not (ens or dev):
        return []
    lines = ["## Training: whole process, stacked ensembles, CPU vs GPU (issue 13)", ""]
    for stem, title in walls:
        w = _load(results, stem)
        if not w:
            continue
        names = list(w["runs"])
        seeded = all("seed" in r for rs in w["runs"].values() for r in rs)  # --vary-seed: accuracy per seed, then its mean
        lines += [f"### {title} (benchmarks/training_wall.py)", "",
                  f"Measured {w['date']} on {_machine_note(w['machine'])}: {w['what']}. Load average 1 min per run in brackets "
                  "(the machine is shared; both contenders ran alternately in the same load).", "",
                  "| contender | " + " | ".join(f"run {i + 1} wall s (loop s) [load]" for i in range(len(w['runs'][names[0]]))) +
                  " | median wall s | " + ("mean Pearson, mean over seeds" if seeded else "mean Pearson") + " |",
                  "|---|" + "---:|" * (len(w["runs"][names[0]]) + 2)]
        for n in names:
            cells = [f"{r['wall_s']} ({r['loop_s']}) [{r['load_average_1']}]" + (f", seed {r['seed']}: {r['mean_pearson']}" if seeded else "")
                     for r in w["runs"][n]]
            pearson = w["summary"][n]["mean_mean_pearson"] if seeded else w["summary"][n]["median_mean_pearson"]
            lines.append(f"| {n} | " + " | ".join(cells) + f" | {w['summary'][n]['median_wall_s']} | {pearson} |")
        ratio = w.get("speedup_vs_other")
        if ratio is not None:
            lines += ["", f"This checkout is **{ratio}x** as fast as {names[1]} (median whole-process wall)."]
        lines += ["", *notes(results, stem)]
    if ens:
        lines += ["### Ensemble members: stacked in one process vs worker processes (benchmarks/ensemble_training.py)", "",
                  f"Measured {ens['date']} on {_machine_note(ens['machine'])}: {ens['members']} members, {ens['epochs']} epochs, "
                  f"standard split, one torch thread per process, load average at the end "
                  f"{ens['machine'].get('load_average_1_5_15')}. Median wall s: " +
                  ", ".join(f"{k} {v}" for k, v in ens["median_wall_s"].items()) + f"; faster: **{ens['faster']}**.", ""]
    if dev:
        lines += ["### CPU vs CUDA (benchmarks/training_device.py)", "",
                  f"Measured {dev['date']} on {_machine_note(dev['machine'])}, {dev['torch_threads']} CPU threads.", "",
                  "| part | device | precision | wall s | rows/s | mean Pearson |", "|---|---|---|---:|---:|---:|"]
        for r in dev["preset"]:
            lines.append(f"| imputation preset ({r['members']} networks, {r['epochs']} epochs) | {r['device']} | {r['precision']} | "
                         f"{r['fit_wall_s']} | {r['member_rows_per_s']:,} | {r['mean_pearson']} |")
        for r in dev["citeseq"]:
            lines.append(f"| CITE-seq-sized ({r['cells']:,} cells x {r['features']:,}) | {r['device']} | {r['precision']} | "
                         f"{r['wall_s']} | {r['rows_per_s']:,} | |")
        lines += [f"Skipped: {'; '.join(dev['skipped'])}." if dev["skipped"] else "", ""]
    else:
        lines += ["### CPU vs CUDA", "", "Not measured: no GPU was lent to this task. `python benchmarks/training_device.py "
                  "--devices cpu cuda` on a GPU machine records the preset's wall time and accuracy and the CITE-seq-sized "
                  "rows/s on both.", ""]
    return lines
