"""Run files: the per-step records of a training run, written by one job and read by any process meanwhile.

`RunWriter` appends (one SQLite database in WAL mode; see `schema` for the layout and why), `RunFile` reads,
`RunEvent` and `ReplayRecord` are the plain records beside the metrics. The recorder that fills a run file
from a training loop is `workbench.training.RunRecorder`.
"""

from .reader import RunFile
from .records import ReplayRecord, RunEvent
from .schema import FORMAT, VERSION
from .writer import Retention, RunWriter

__all__ = ["FORMAT", "VERSION", "ReplayRecord", "Retention", "RunEvent", "RunFile", "RunWriter"]
