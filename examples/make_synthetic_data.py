"""Write the synthetic multimodal files used by the task (b)-(d) example configs.

    python examples/make_synthetic_data.py      # -> examples/data/synthetic_*.h5mu / .h5ad

Cells come from evaluation.synthetic (paired RNA + protein + ATAC with batch effects and
known cell types); each task keeps only the modalities its datasets would have measured.
"""

import sys
from pathlib import Path

from inclust_plus.training.presets import PRESETS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # evaluation/ is in the repository, not installed
from evaluation.synthetic import synthetic_task  # noqa: E402

out = Path(__file__).parent / "data"
out.mkdir(exist_ok=True)
for task in ("integration", "triple", "generation"):
    st = synthetic_task(task, n_cells=3000, seed=0)
    for ds in PRESETS[task]["datasets"]:
        obj = st.objects[ds["name"]]
        path = out / f"synthetic_{task}_{ds['name']}.{'h5mu' if hasattr(obj, 'mod') else 'h5ad'}"
        obj.write(path) if hasattr(obj, "mod") else obj.write_h5ad(path)
        print("wrote", path)
