"""Where, inside a window, a model's errors rose: so a drift retrain learns the new concept only.

The drift detector works on per-batch error rates, so it names the *batch* where a rise began
(`detectors.detect_batch_change`). A concept rarely changes on a batch boundary: the batch it
names usually holds old-concept rows first. A fresh model retrained from that batch's first row
learns mostly the old concept and serves the next batch badly (seen in `benchmarks.learning_quality`:
STAGGER, 600 old + 200 new rows, accuracy 0.38-0.46 after the retrain vs 1.0 on post-change rows).

`rise_start` locates the change inside one ordered error sequence (per-row 0/1 errors or absolute
errors of the model that served the rows) by the split that maximises the two-sample t statistic
(pooled variance) of "later mean minus earlier mean". It trims only on strong evidence (t >=
`MIN_T`, both segments at least `MIN_ROWS` rows): over 1,200 seeded stationary windows of 1,000
0/1 errors (rates 0.02-0.5) the best split's t was at most 4.4 (99th percentile 3.5-3.8), so a
window that is all post-change keeps its first row; a rise from 2 % to 15 % error over 700 rows
reached 5.6-6.9.
"""

from __future__ import annotations

import numpy as np

MIN_T = 5.0  # above the 4.4 the best split of a stationary 1,000-row window reached (see above)
MIN_ROWS = 30  # rows each side of a split, so both means (and the fresh model) have something to go on


def rise_start(errors: np.ndarray, min_rows: int = MIN_ROWS, min_t: float = MIN_T) -> int | None:
    """Index of the first row after the most evident rise in mean error, or None without one."""
    e = np.asarray(errors, dtype=np.float64)
    n = len(e)
    if n < 2 * min_rows:
        return None
    k = np.arange(min_rows, n - min_rows + 1)  # split before row k: e[:k] and e[k:]
    c1, c2 = np.concatenate([[0.0], np.cumsum(e)]), np.concatenate([[0.0], np.cumsum(e * e)])
    before, after = c1[k] / k, (c1[n] - c1[k]) / (n - k)
    # Pooled within-segment variance: one segment without errors (old concept learned perfectly)
    # must not make its side's variance, and so the statistic, degenerate.
    within = (c2[k] - k * before**2) + (c2[n] - c2[k] - (n - k) * after**2)
    pooled = np.maximum(within / (n - 2), 1e-12)
    t = (after - before) / np.sqrt(pooled * (1.0 / k + 1.0 / (n - k)))
    best = int(np.argmax(t))
    return int(k[best]) if t[best] >= min_t else None
