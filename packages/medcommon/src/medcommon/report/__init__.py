"""Benchmark results: the ``results.json`` schema, markdown tables and plots.

``results.json``::

    {"package", "version", "preset", "seeds",
     "rows": [{"method", "seed", "metrics": {...}, "train_seconds", ...}],
     "summary": [{"method", "metrics": {name: {"mean", "std", "n"}}}],
     "claims": [{"claim", "method", "baseline", "metric", "value", "baseline_value",
                 "setting", "test", "post_hoc", "difference", "interval", "pairs",
                 "decision", "holds"}],   # see medcommon.report.claims
     "figures": ["headline.png", ...],   # optional: the first is read first
     "extra": {...},                      # optional: timing ratios, notes
     "provenance": {...}}                 # commit, dirty tree, threads, torch, sources

``std`` is the sample standard deviation over seeds (ddof=1), 0.0 for one seed.
Rows may carry a ``"setting"`` (e.g. a bias ratio); summaries then group by
``(setting, method)``.
"""

from medcommon.report.claims import (
    CLAIM_KEYS,
    Claim,
    check_claims,
    claims_table,
    headline_count,
    paired_differences,
)
from medcommon.report.plots import (
    plot_bars,
    plot_differences,
    plot_heatmap,
    plot_image_grid,
    plot_intervals,
    plot_lines,
    plot_tradeoff,
)
from medcommon.report.results import (
    combine_reports,
    load_results,
    make_results,
    markdown_table,
    summarise,
    write_report,
    write_results,
)

__all__ = [
    "CLAIM_KEYS",
    "Claim",
    "check_claims",
    "claims_table",
    "combine_reports",
    "headline_count",
    "load_results",
    "make_results",
    "markdown_table",
    "paired_differences",
    "plot_bars",
    "plot_differences",
    "plot_heatmap",
    "plot_image_grid",
    "plot_intervals",
    "plot_lines",
    "plot_tradeoff",
    "summarise",
    "write_report",
    "write_results",
]
