"""Pictures of a screening: the top hits drawn by RDKit, and histograms of
the hits' similarity to the training set.

A chemist reads a hit list faster as structures than as SMILES. Each
screening draws one grid (:data:`PICTURE_MOLS` molecules, best first) with
the score, the nearest-neighbour similarity to the training set (when the
hits carry an ``nn_similarity`` column), an ensemble's spread (``±0.031``,
the members' standard deviation) and the structural alerts under each
molecule:

- ``hits.png``: the best distinct molecules of the whole hit list, each
  with the assay it scores best in;
- with ``--assays``, ``hits-<assay>.png`` per assay instead: that assay's
  top hits in rank order (characters other than letters, digits, ``.``,
  ``_`` and ``-`` in the assay name become ``_``).

A screening with no hits draws no picture.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from featurize.standardize import standardize_smiles

PICTURE_MOLS = 20
MOLS_PER_ROW = 5
CELL_PIXELS = (300, 300)
SIMILARITY_COLUMN = "nn_similarity"
SPREAD_COLUMN = "spread"  # an ensemble's hits: the members' standard deviation
ALERT_CHARACTERS = 34  # legend width of the first alert


def picture_name(assay: str | None) -> str:
    """``hits.png`` for the whole screen, ``hits-<assay>.png`` for one assay."""
    if assay is None:
        return "hits.png"
    return f"hits-{re.sub(r'[^A-Za-z0-9._-]', '_', assay)}.png"


def draw_hit_pictures(hits: pa.Table, out_dir: Path, per_assay: Sequence[str] = ()) -> list[Path]:
    """Draw ``hits.png`` into ``out_dir`` or, given ``per_assay``, one
    picture per assay; return the files written (none without hits)."""
    frame = hits.to_pandas()
    if per_assay:
        pictures = {picture_name(assay): (frame[frame["assay"] == assay].sort_values("rank"), False)
                    for assay in per_assay}
    else:
        pictures = {picture_name(None): (best_distinct_hits(frame), True)}
    written = []
    for name, (selected, show_assay) in pictures.items():
        if len(selected):
            written.append(draw_hits_grid(selected.head(PICTURE_MOLS), out_dir / name,
                                          show_assay=show_assay))
    return written


def best_distinct_hits(hits: pd.DataFrame) -> pd.DataFrame:
    """One row per molecule (its best-scoring assay), best score first, ties
    by source row: the screen's strongest hits whatever the assay."""
    ordered = hits.sort_values(["score", "row"], ascending=[False, True], kind="stable")
    return ordered.drop_duplicates("row")


def draw_hits_grid(hits: pd.DataFrame, path: Path, *, show_assay: bool) -> Path:
    """Draw ``hits`` (rows of a hit table) as a grid PNG at ``path``."""
    from rdkit import Chem
    from rdkit.Chem import Draw

    options = Draw.MolDrawOptions()
    options.legendFraction = 0.25  # three legend lines stay readable
    options.legendFontSize = 14
    options.fixedBondLength = 30  # small molecules are not blown up to the cell
    records = hits.to_dict("records")
    mols = [standardize_smiles(record["smiles"], canonical=False).mol or Chem.Mol()
            for record in records]
    png = Draw.MolsToGridImage(
        mols, molsPerRow=min(MOLS_PER_ROW, len(mols)), subImgSize=CELL_PIXELS,
        legends=[hit_legend(record, show_assay=show_assay) for record in records],
        drawOptions=options, returnPNG=True)
    path.write_bytes(png)
    return path


def hit_legend(hit: Mapping[str, Any], *, show_assay: bool) -> str:
    """Three lines: who (rank and id), how it scored (and its similarity to
    the training set when known), and its alerts."""
    name = hit.get("mol_id") or f"row {hit['row']}"
    who = f"{name} ({hit['assay']})" if show_assay else f"#{hit['rank']} {name}"
    how = f"score {hit['score']:.3f}"
    if SIMILARITY_COLUMN in hit:
        similarity = hit[SIMILARITY_COLUMN]
        how += "  sim " + ("n/a" if similarity is None or np.isnan(similarity) else f"{similarity:.2f}")
    if SPREAD_COLUMN in hit:
        how += f"  ±{hit[SPREAD_COLUMN]:.3f}"
    alerts = list(hit["alerts"])
    if not alerts:
        flags = "no alerts"
    else:
        first = alerts[0] if len(alerts[0]) <= ALERT_CHARACTERS else alerts[0][:ALERT_CHARACTERS - 1] + "~"
        flags = first + (f" +{len(alerts) - 1}" if len(alerts) > 1 else "")
    return "\n".join([who, how, flags])


def _similarity_counts(values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(counts, bin edges over [0, 1], missing values); NaN counts as
    missing, anything else outside [0, 1] is refused."""
    values = np.asarray(values, dtype=np.float64).ravel()
    missing = np.isnan(values)
    present = values[~missing]
    outside = present[(present < 0.0) | (present > 1.0)]
    if len(outside):
        raise ValueError(f"similarities are Tanimoto values in [0, 1]; got {len(outside)} outside, "
                         f"e.g. {outside[0]!r}")
    counts, edges = np.histogram(present, bins=bins, range=(0.0, 1.0))
    return counts, edges, int(missing.sum())


def similarity_histogram_text(values: np.ndarray, *, bins: int = 10, width: int = 40,
                              title: str = "similarity to the training set") -> str:
    """A text histogram of Tanimoto similarities for the screening summary:
    one line per bin (``0.3-0.4 |#####     | 12``); the last bin holds 1.0."""
    counts, edges, missing = _similarity_counts(values, bins)
    peak = max(int(counts.max()), 1)
    count_width = len(str(peak))
    header = f"{title} (n={int(counts.sum())}" + (f", {missing} missing)" if missing else ")")
    lines = [header]
    for low, high, count in zip(edges[:-1], edges[1:], counts):
        bar = "#" * int(round(width * count / peak))
        lines.append(f"{low:.1f}-{high:.1f} |{bar:<{width}}| {count:>{count_width}}")
    return "\n".join(lines)


def similarity_histogram_png(values: np.ndarray, path: Path, *, bins: int = 10,
                             title: str = "similarity of hits to the training set") -> Path:
    """The same histogram as a PNG (matplotlib's Agg canvas: no display,
    no process-wide pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts, edges, missing = _similarity_counts(values, bins)
    figure = Figure(figsize=(6.0, 3.6), dpi=110, layout="tight")
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    axis.bar(edges[:-1], counts, width=np.diff(edges), align="edge", edgecolor="white")
    axis.set_xlim(0.0, 1.0)
    axis.set_xlabel("max Tanimoto similarity to the training set")
    axis.set_ylabel("molecules")
    axis.set_title(title + (f" ({missing} missing)" if missing else ""))
    figure.savefig(path, format="png")
    return path
