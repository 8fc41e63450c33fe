"""Score imputed genes against held-out measurements: per-gene Pearson, and a figure.

    python examples/score_imputation.py IMPUTED.h5ad TRUTH.h5ad [--plot out.png]

Only numpy, anndata and matplotlib (optional) are needed, so it runs next to the torch-free runtime.
"""

import argparse

import anndata
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("imputed")
    ap.add_argument("truth")
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    imp, truth = anndata.read_h5ad(args.imputed), anndata.read_h5ad(args.truth)
    genes = [g for g in truth.var_names if g in set(imp.var_names)]
    pred = np.asarray(imp[truth.obs_names, genes].layers["inclust_imputed"], dtype=np.float64)
    true = truth[:, genes].X
    true = np.asarray(true.toarray() if hasattr(true, "toarray") else true, dtype=np.float64)
    p, t = pred - pred.mean(0), true - true.mean(0)
    r = (p * t).sum(0) / np.sqrt((p**2).sum(0) * (t**2).sum(0))
    print(f"{len(genes)} held-out genes imputed for {truth.n_obs} cells: mean Pearson {np.nanmean(r):.3f}, median {np.nanmedian(r):.3f}")
    print(f"label column obs['inclust_label']: {imp.obs['inclust_label'].value_counts().head(3).to_dict()}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        order = np.argsort(r)
        fig, axes = plt.subplots(1, 3, figsize=(10, 3.3))
        for ax, j, what in zip(axes, [order[-1], order[len(order) // 2], order[0]], ["best", "median", "worst"]):
            ax.scatter(true[:, j], pred[:, j], s=3, alpha=0.4)
            ax.set_title(f"{what}: {genes[j]} (r={r[j]:.2f})", fontsize=9)
            ax.set_xlabel("measured")
            ax.set_ylabel("imputed")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
