"""nbval settings for the tutorial notebooks.

Outputs whose content is random or renderer-specific (widget model ids, HTML tables, plotly JSON,
JavaScript, images) are not compared; the numbers a reader should trust are printed as text and are.
"""

from __future__ import annotations

SKIPPED_MIME = (
    "text/html",
    "application/javascript",
    "application/vnd.plotly.v1+json",
    "application/vnd.jupyter.widget-view+json",
    "image/png",
    "image/svg+xml",
    "stderr",
)


def pytest_collectstart(collector) -> None:
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += SKIPPED_MIME
