"""gatebench: evaluation and diagnostics for layout-grounded (GLIGEN-style) diffusion adapters."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gatebench")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
