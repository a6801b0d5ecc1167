"""tensorparity's analyzer: pairing, metrics, aggregation, reports. Never imports torch, onnx or onnxruntime."""
from .compare import ALL_METRICS, compare
from .report import SCHEMA_VERSION, Report, read_report

__all__ = ["ALL_METRICS", "compare", "SCHEMA_VERSION", "Report", "read_report"]
