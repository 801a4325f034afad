"""Write the three finding notebooks (``notebooks/*.ipynb``, no outputs) with nbformat.

Each finds the repository from the installed package (``netgeom.__file__``; ``NETGEOM_REPO`` overrides), never
from the working directory; loads the committed full-mode ``results.json`` when there is a clean one, else the
quick one; recomputes the verdicts with the pre-registered rules (``experiments/make_results.py``) and checks
them against the stored ones; shows the plots; and discusses what the data can and cannot say. They only read
JSON, so they run in seconds (``make test`` runs them under nbmake). ``python experiments/make_notebooks.py``.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent

LOAD = '''import os, sys
from pathlib import Path
from IPython.display import Image, display
import netgeom

# the repository is the checkout the package is imported from (or NETGEOM_REPO), not the working directory
root = Path(os.environ.get("NETGEOM_REPO") or Path(netgeom.__file__).resolve().parent.parent)
if not (root / "experiments" / "results").is_dir():
    raise FileNotFoundError(f"no experiments/results under {root} (netgeom from {netgeom.__file__}); "
                            "set NETGEOM_REPO to the netgeom checkout")
sys.path.insert(0, str(root))
from experiments import make_results as M

name = "{name}"
res, mode = M.load(name, "full", root / "experiments" / "results"), "full"
if res is None:
    res, mode = M.load(name, "quick", root / "experiments" / "results"), "quick"
if res is None:
    raise FileNotFoundError(f"no results for {name}: run python experiments/run_all.py --quick")
d = res["description"]
print(f"mode {mode} | commit {d['git_commit'][:10]} | dirty {d['git_dirty']} | schema {d['schema']} | "
      f"seeds {d['seeds']}")
assert M.verdicts_match(name, res), "stored verdicts differ from the pre-registered rules"
v = res["verdicts"]
if mode == "quick":
    print("QUICK MODE: a check of the pipeline on a reduced design, not a result (see PROTOCOL.md).")
out = root / "experiments" / "results" / name / mode
for f in res["plots"]:
    display(Image(filename=str(out / f)))'''

NB1 = [
    "# Finding 1: intrinsic dimension of the data vs prunability (Ankner et al. 2022)\n\n"
    "**Hypothesis** (direction treated as open): at fixed ambient dimension and fixed label difficulty, "
    "lower intrinsic dimension (ID) ⇒ more prunable.\n\n"
    "**Design** (pre-registered in `experiments/PROTOCOL.md`): latent `z ~ N(0, I_d)` in `R^64`; labels from "
    "a teacher on `z₁, z₂` only — the same label function for every `d` at a seed, the other `d − 2` latent "
    "directions carry no label information. Families `linear` and `curved` (nuisance directions through "
    "random Fourier features). IMP with rewinding to ≥ 99.7% sparsity; prunability = sparsity before the "
    "first level below `dense − ε`, `ε = max(1 point, binomial SE)`. Verdict from Spearman(MLE ID, "
    "prunability) with a cluster bootstrap over seeds, after two controls: dense accuracy within 3 points "
    "across `d`, measured ID increasing in `d` and ≥ d/2.",
    None,
    "## Per dimension, controls and verdicts",
    '''for fam, g in [*v["1"]["families"].items(), ("pooled", v["1"]["pooled"])]:
    for b in g["per_d"] if fam != "pooled" else []:
        print(f"{fam:>7} d={b['d']:>2}  MLE={b['mle']:5.1f}  TwoNN={b['twonn']:5.1f}  "
              f"dense acc={b['dense_acc']:.3f}"
              f"  prunability={100 * b['prunability']:.2f}%  censored={b['n_censored']}/{b['n_runs']}")
    print(f"{fam}: D={g['D']} rho={g['rho']} CI={g['ci']} "
          f"dense spread={100 * g['dense_acc_spread']:.1f} pts "
          f"ID tracks d={g['id_tracks_d']} -> {g['verdict']}\\n")''',
    "## What these data can and cannot say\n\n"
    "* **Can**: whether, for *this* label function (a 2-D teacher, identical across `d`) and this MLP, IMP's "
    "prunability moves with the data's measured ID; the difficulty control above says whether dense accuracy "
    "stayed level, so a trend is not a difficulty trend in disguise.\n"
    "* **Cannot**: speak for natural images or for label functions that use more latent directions as `d` "
    "grows (there difficulty and ID move together by construction). The ID estimators are biased low at "
    "large `d` with a few thousand samples; the control only requires the measured ID to rise with `d`.\n"
    "* Prunability is read on IMP's discrete grid (35% per round), so runs tie often and the Spearman "
    "statistic is coarse; the interval resamples seeds (one teacher each), the independent unit.\n"
    "* In quick mode (3 seeds, 3 dimensions, short training) the interval is too wide to decide anything; "
    "only a committed full run is a result.",
]

NB2 = [
    "# Finding 2: sparsity vs linear regions; bound-guided layer densities (Cai et al. 2023)\n\n"
    "**2a**: past a *critical* density, accuracy, the exact region count and the bound fall together. "
    "Tested as locations: per (data, width, seed) the density where accuracy has lost 10% of its margin "
    "above chance, and where the exact count on a 2-D slice and the bound have halved; their log10 "
    "differences must lie within ±0.5 decades. The slice's own bound (n0 = 2) is shown beside the "
    "full-input bound. **2b**: bound-maximising per-layer densities beat uniform ones; pairs where the "
    "allocation equals uniform or the bound rises by ≤ 0.01 in log10 are excluded and counted; cluster "
    "bootstrap over (data, width, seed); ±0.5-point margin.",
    None,
    "## Verdicts per data set",
    '''for key in ("2a", "2b"):
    for ds, g in [*v[key]["datasets"].items(), ("pooled", v[key]["pooled"])]:
        print(key, f"{ds:>10}:", M._measured(key, g), "->", g["verdict"])''',
    "## What these data can and cannot say\n\n"
    "* **Can**: whether the density at which accuracy starts to fall coincides (within half a decade) with "
    "the density at which the slice's region count and the bound fall, for one-shot layerwise magnitude "
    "pruning with fine-tuning of these MLPs; and whether bound-guided allocations help where they actually "
    "change the bound.\n"
    "* **Cannot**: generalise from one 2-D slice per network to the whole input space (the slice count is "
    "exact for the slice only), nor test the bound's tightness: the bound is an upper bound on all of "
    "`R^{n0}`, the count is on a plane, so only the *location* of their fall is compared. For 40- and "
    "64-input nets the full-input bound barely moves until very low density, which is why the grid goes "
    "to 1e-4 (1e-5 on the 784-input split).\n"
    "* Most 2b pairs at moderate density have allocations equal to uniform or a flat bound; the counts above "
    "say how many pairs the verdict rests on. Quick mode (two small data sets, one width, short training) "
    "is a pipeline check, not a result.",
]

NB3 = [
    "# Finding 3: zeroth-order topology under IMP (Balwani & Krzyston 2022)\n\n"
    "**3a**: IMP keeps the dense network's maximum-spanning-forest (MSF) edges more than random pruning — "
    "compared also with the nulls that matter, one-shot global and layerwise magnitude pruning of the dense "
    "weights at IMP's sparsities (large weights are MSF edges by construction). **3b**: pruning to "
    "`1 − 1/η` with the MSF kept preserves every diagram — true by construction, reported as a check with "
    "its accuracy cost. **3c**: topology-preserving IMP keeps IMP's accuracy, compared only at levels where "
    "the masks differ, with a 0.5-point non-inferiority margin; the gap at the highest sparsity is shown.",
    None,
    "## Verdicts per data set",
    '''for key in ("3a", "3b", "3c"):
    for ds, g in [*v[key]["datasets"].items(), ("pooled", v[key]["pooled"])]:
        print(key, f"{ds:>10}:", M._measured(key, g), "->", g["verdict"])
print("neural persistence definition:", res["per_seed"][0]["neural_persistence_definition"])''',
    "## What these data can and cannot say\n\n"
    "* **Can**: whether IMP's retention of the dense MSF exceeds what pruning the dense weights by magnitude "
    "once would keep — the part of the claim that is about IMP rather than about magnitudes — and whether "
    "the topology-preserving variant costs accuracy where it actually changes the masks.\n"
    "* **Cannot**: say anything from 3b beyond the implementation being right (it is a theorem), nor speak "
    "for convolutional networks unless the run included LeNet-5 with max-pooling (opt-in `--lenet5`, "
    "listed above as its own group when present). With 3 seeds "
    "the cluster bootstrap over seeds is coarse (few distinct resamples); the per-seed values are printed "
    "in the JSON. Quick mode (MNIST-1D, 8 rounds, short training) is a pipeline check, not a result.",
]

NOTEBOOKS = {"01_prunability_vs_dimension": ("prunability_vs_dimension", NB1),
             "02_regions_vs_sparsity": ("regions_vs_sparsity", NB2),
             "03_topology_under_imp": ("topology_under_imp", NB3)}


def build(name: str, cells: list) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for i, c in enumerate(cells):
        if c is None:
            nb.cells.append(new_code_cell(LOAD.replace("{name}", name), id=f"c{i}"))
        elif c.startswith("#") or c.startswith("*"):
            nb.cells.append(new_markdown_cell(c, id=f"c{i}"))
        else:
            nb.cells.append(new_code_cell(c, id=f"c{i}"))
    return nb


def main() -> int:
    out = ROOT / "notebooks"
    out.mkdir(exist_ok=True)
    for fname, (name, cells) in NOTEBOOKS.items():
        nbformat.write(build(name, cells), out / f"{fname}.ipynb")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
