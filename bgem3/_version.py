"""The package version, a leaf module (the index manifest and the Qdrant layout record it without importing the package face)."""

__version__ = "0.1.0"  # keep equal to pyproject.toml's version
