"""labeler: labels the dog breed of every photo in an animal-protection association's database."""

from importlib.metadata import PackageNotFoundError, version

# pyproject.toml is the only place the number is written; the installed metadata carries it.
try:
    __version__ = version("labeler")
except PackageNotFoundError:  # a source tree that was never installed (pip install -e .)
    __version__ = "0+unknown"
