"""Geometry of embeddings: correlations, symmetry of norms about 0, what two principal components
separate, t-SNE, the rows and columns of a matrix's positions and how well they group (silhouette),
and the one row-or-column rule (`better_axis`) that embed.py applies to silhouettes and probe.py to
probe R². numpy and scikit-learn only."""

from __future__ import annotations

import numpy as np

from utils.config import UserError
from utils.floats import finite_or_none


def corr(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation; None where either side is constant."""
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return finite_or_none(float(np.corrcoef(a, b)[0, 1]))


def norm_symmetry(values: np.ndarray, norms: np.ndarray) -> dict:
    """How symmetric norm(v) is about v = 0, over the pairs (v, −v) with v > 0 in the range."""
    keys = np.round(values * 1e6).astype(np.int64)  # exact keys for the decimal grid
    index = {k: i for i, k in enumerate(keys.tolist())}
    pairs = [(i, index[-k]) for i, k in enumerate(keys.tolist()) if k > 0 and -k in index]
    pos, neg = norms[[i for i, _ in pairs]], norms[[j for _, j in pairs]]
    rel = np.abs(pos - neg) / ((pos + neg) / 2) if pairs else np.array([])
    return {
        "num_pairs": len(pairs),
        "norm_symmetry_corr": corr(pos, neg),
        "norm_symmetry_rel_diff": float(rel.mean()) if len(rel) else None,
        "norm_corr_abs_value": corr(norms, np.abs(values)),
    }


def pc_separation(pcs: np.ndarray, values: np.ndarray) -> dict:
    """|corr| of each of the two PCs with |v| (magnitude) and with sign(v)."""
    out = {}
    for k in range(2):
        for key, target in (("magnitude", np.abs(values)), ("sign", np.sign(values))):
            c = corr(pcs[:, k], target)
            out[f"pc{k + 1}_abs_corr_{key}"] = None if c is None else abs(c)
    return out


def fit_pca(x: np.ndarray):
    from sklearn.decomposition import PCA

    return PCA(n_components=2).fit(x)


def value_bins(values: np.ndarray, lo: float, hi: float, num_bins: int) -> tuple[np.ndarray, list]:
    """(bin index of each value, bin labels): equal-width bins over [lo, hi], the last closed."""
    edges = np.linspace(lo, hi, num_bins + 1)
    which = np.digitize(values, edges[1:-1])
    labels = [
        f"[{a:g}, {b:g}{']' if i == num_bins - 1 else ')'}"
        for i, (a, b) in enumerate(zip(edges[:-1], edges[1:]))
    ]
    return which, labels


def tsne_2d(x: np.ndarray, perplexity: float, seed: int) -> tuple[np.ndarray, float]:
    """(t-SNE coordinates [N, 2], the perplexity used: at most N − 1, as sklearn requires)."""
    from sklearn.manifold import TSNE

    if len(x) < 3:
        raise UserError(f"t-SNE needs at least 3 positions, the matrix has {len(x)}")
    used = min(perplexity, len(x) - 1.0)
    # Exact gradients: a matrix has few positions, and Barnes-Hut is slower there.
    tsne = TSNE(n_components=2, perplexity=used, random_state=seed, init="pca", method="exact")
    coords = tsne.fit_transform(x)
    return coords, used


def grid_labels(m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of each row-major position of an m×n matrix, 0-based."""
    pos = np.arange(m * n)
    return pos // n, pos % n


def silhouette(x: np.ndarray, labels: np.ndarray) -> float | None:
    """sklearn's silhouette score (−1..1, higher = tighter groups); None if undefined."""
    from sklearn.metrics import silhouette_score

    if not 2 <= len(set(labels.tolist())) <= len(x) - 1:
        return None
    return float(silhouette_score(x, labels))


def better_axis(row: float | None, column: float | None, margin: float, floor: float) -> str:
    """Which of rows and columns a model's states hold better, by two scores of the same kind
    (a probe's R², a silhouette): `row` or `column` when its score is above `floor` and above
    the other's by `margin`, else `neither` (also when either score is missing)."""
    if row is None or column is None:
        return "neither"
    best, top, low = ("row", row, column) if row >= column else ("column", column, row)
    return best if top > floor and top - low > margin else "neither"


AXIS_MARGIN = 0.05  # how much better one grouping's raw silhouette must be to name it


def cluster_scores(pos: np.ndarray, coords: np.ndarray, m: int, n: int) -> dict:
    """Silhouettes of the positions grouped by column and by row, raw (in the embedding space
    itself) and in t-SNE space, and `groups_by`, the axis the raw ones name: row or column when
    its silhouette is positive and above the other's by AXIS_MARGIN, else neither
    (better_axis; the task is symmetric under transposition, so a model may pick either)."""
    rows, cols = grid_labels(m, n)
    raw_row, raw_col = silhouette(pos, rows), silhouette(pos, cols)
    return {
        "silhouette_column": raw_col,
        "silhouette_row": raw_row,
        "silhouette_column_tsne": silhouette(coords, cols),
        "silhouette_row_tsne": silhouette(coords, rows),
        "groups_by": better_axis(raw_row, raw_col, AXIS_MARGIN, floor=0.0),
    }
