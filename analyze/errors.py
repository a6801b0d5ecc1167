"""The analyzer's own user errors (ParityError subclasses: the CLI prints one line and exits 3)."""
from __future__ import annotations

from protocol.errors import ParityError


class ReportError(ParityError):
    """A report file that is missing, malformed, or of an unsupported schema version."""


class ThresholdFileError(ParityError):
    """A thresholds file that is missing, malformed, or of an unsupported version."""


class ClusterError(ParityError):
    """A Dask cluster that cannot do the analysis: an unreachable scheduler, no worker, a worker that does not see
    the dumps or runs another tensorparity version (``--scheduler``; analyze/distributed.py)."""
