"""Write the three finding notebooks (``notebooks/*.ipynb``, no outputs) with nbformat.

Each loads its committed quick ``results.json`` (or runs the quick experiment when it is missing), shows
the plot and the headline numbers, and discusses them. ``python experiments/make_notebooks.py``.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent

LOAD = '''import json, subprocess, sys
from pathlib import Path
from IPython.display import Image, display

root = Path.cwd() if (Path.cwd() / "experiments").exists() else Path.cwd().parent
base = root / "experiments" / "results" / "{name}"
# the full-mode results when they are committed, else the quick ones (as the README's table does)
out = base / "full" if (base / "full" / "results.json").exists() else base / "quick"
if not (out / "results.json").exists():  # run the quick experiment only when no JSON is there
    script = str(root / "experiments" / "{name}.py")
    subprocess.run([sys.executable, script, "--quick"], check=True, cwd=root)
res = json.loads((out / "results.json").read_text())
d = res["description"]
print("commit", d["git_commit"], "| seeds", d["seeds"], "| mode", d["mode"])
for f in res["plots"]:
    display(Image(filename=str(out / f)))'''

NOTEBOOKS = {
    "01_prunability_vs_dimension": ("prunability_vs_dimension", [
        "# Finding 1: data intrinsic dimension vs prunability (Ankner et al. 2022)\n\n"
        "Claim tested: the lower the intrinsic dimension (ID) of the input data, at fixed ambient dimension, "
        "the more a network can be pruned by IMP without losing accuracy. The spec treats the direction as "
        "open (the paper appeared at a workshop on negative results), so we report what the data say.\n\n"
        "Setup: a curved `d`-manifold in `R^64` (`make_curved_manifold`), labels from a fixed teacher on "
        "the latent coordinates; in full mode also MNIST-1D reduced to its top `d` principal components "
        "(`make_reduced`, real labels). An MLP, IMP 30%/round with rewinding to epoch 1, three seeds. "
        "The cell below loads the full-mode results when they are committed, else the quick ones.",
        None,
        "## Numbers per dimension",
        '''for r in res["per_dimension"]:
    print(f"d={r['d']:>3}  MLE={r['mle']:6.2f}  TwoNN={r['twonn']:6.2f}  dense acc={r['dense_acc']:.3f}  "
          f"prunability={r['prunability']:.3f}  censored={r['censored']}")
print(res["headline"])''',
        "## Discussion\n\n"
        "* The estimators recover the nominal `d` well at small `d` and underestimate it from `d = 16` on "
        "(the usual negative bias of kNN estimators in higher dimension); on reduced MNIST-1D the measured "
        "ID saturates near 12 because the trailing principal components carry little variance.\n"
        "* The teacher's task gets harder with `d`: dense accuracy falls, so a *relative* criterion "
        "(accuracy within one standard error of dense) is easier to meet for the weaker dense networks. "
        "This confound pushes towards *higher* prunability at higher ID, against the claimed direction.\n"
        "* Prunability at the last IMP level tested is only a lower bound (marked `censored`).\n"
        "* Read the verdict from the Spearman interval: with a handful of (d, seed) points it is wide; a "
        "non-significant correlation is not evidence for either direction.",
    ]),
    "02_regions_vs_sparsity": ("regions_vs_sparsity", [
        "# Finding 2: sparsity vs linear regions; bound-guided layer densities (Cai et al. 2023)\n\n"
        "Claims: (a) past a critical sparsity, accuracy drops and the number of linear regions (exact count "
        "on the plane through three training points) and the sparse bound drop with it; (b) per-layer "
        "densities that maximise the sparse bound beat the same total density spread uniformly.\n\n"
        "Setup: 2-hidden-layer MLPs (quick: width 100 on digits and MNIST-1D; full: widths 100/200/400 and "
        "also the MNIST test split), one-shot layerwise magnitude pruning of the hidden layers (classifier "
        "dense), fine-tuning, densities 100% → 1% (full: 0.5%). Full-mode results are loaded when committed.",
        None,
        "## Curves (means over seeds)",
        '''for c in res["curves"]:
    print(f"{c['dataset']:>8} w={c['width']} density={c['density']:<5g} acc={c['test_acc']:.3f} "
          f"slice regions={c['slice_regions']:7.0f} patterns={c['patterns']:5.0f} "
          f"log10 bound={c['log10_bound']:.1f}")
print(res["headline"]["a"]["verdict"], res["headline"]["b"])''',
        "## Discussion\n\n"
        "* Accuracy is flat down to ~10% density and then falls; the exact region count on the slice falls "
        "steadily with density, i.e. it starts to drop *before* accuracy does.\n"
        "* The sampled pattern count saturates at the number of samples for the dense and mildly pruned "
        "networks (every sample in its own region), so only the exact slice count resolves the trend.\n"
        "* The log10 sparse bound barely moves until ~2%: with input dimension 40–64 the expected ranks of "
        "the sparse weight matrices stay near full until very low density, so the bound is loose there.\n"
        "* (b) is measured as a win rate and a mean accuracy difference with a bootstrap interval over "
        "(data, width, density, seed); density 100% is excluded (both allocations coincide).",
    ]),
    "03_topology_under_imp": ("topology_under_imp", [
        "# Finding 3: zeroth-order topology under IMP (Balwani & Krzyston 2022)\n\n"
        "Claims: (a) IMP keeps the dense network's maximum-spanning-forest (MSF) edges far more often than "
        "random pruning; (b) pruning to `1 − 1/η` can keep every layer's zeroth-order diagram; "
        "(c) topology-preserving IMP keeps the diagrams and IMP's accuracy.\n\n"
        "Setup: IMP 20% per round (global, rewinding to init), random pruning with the same counts, and IMP "
        "with the MSF protect callback; quick: 40-100-100-10 on MNIST-1D, 6 rounds; full: 784-100-100-10 on "
        "the MNIST test split (8,000/2,000), 19 rounds to 98.6% sparsity. Full results load when committed.",
        None,
        "## Per round (means over seeds)",
        '''for e in res["summary"]["per_level"]:
    print(f"level {e['level']}: " + "  ".join(
        f"{v}: s={e[v]['sparsity']:.3f} acc={e[v]['test_acc']:.3f} MSF kept={e[v]['msf_retention']:.3f}"
        for v in ("imp", "random", "tp_imp")) + f"  expectation={e['imp']['random_expectation']:.3f}")
for k, v in res["headline"].items():
    print(k, v)''',
        "## Discussion\n\n"
        "* (a) IMP keeps almost all dense MSF edges through the first rounds, while random pruning keeps a "
        "fraction close to the density: the MSF edges are the large-magnitude ones, and IMP ranks by "
        "magnitude.\n"
        "* (b) is a theorem (the MSF determines the diagram); the experiment checks the implementation: "
        "after pruning to exactly `1 − 1/η` with the forest protected the diagrams are unchanged. The "
        "accuracy of the MSF-only network after fine-tuning is reported too — keeping the topology does "
        "not keep the function.\n"
        "* (c) At the sparsities of quick mode IMP rarely removes forest edges, so the topology-preserving "
        "variant differs little from IMP. In full mode plain IMP keeps every layer's diagram at only about a "
        "third of its pruning steps, while the topology-preserving variant keeps every diagram (checked at "
        "each pruning step on the previous level's trained weights, old mask vs new mask) at the same "
        "accuracy within a few tenths of a point (see the headline's interval).",
    ]),
}


def build(name: str, cells: list) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for c in cells:
        if c is None:
            nb.cells.append(new_code_cell(LOAD.replace("{name}", name)))
        elif c.startswith("#") or c.startswith("*") or not any(t in c for t in ("print(", "for ")):
            nb.cells.append(new_markdown_cell(c))
        else:
            nb.cells.append(new_code_cell(c))
    return nb


def main() -> int:
    out = ROOT / "notebooks"
    out.mkdir(exist_ok=True)
    for fname, (name, cells) in NOTEBOOKS.items():
        nbformat.write(build(name, cells), out / f"{fname}.ipynb")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
