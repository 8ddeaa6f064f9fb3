"""Where the packaged default model lives, wherever labeler is installed."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_NAME = "efficientnet-lite2-dogs"


def default_model_dir(name: str = DEFAULT_MODEL_NAME) -> Path:
    """The packaged model's folder.

    A wheel carries ``models/`` as ``labeler/_models/`` (pyproject's force-include); a
    checkout has it beside the package. When neither exists the checkout path is returned,
    so the start-up error names the place where the model was expected.
    """
    package = Path(__file__).resolve().parents[1]
    installed = package / "_models" / name
    if installed.is_dir():
        return installed
    return package.parent / "models" / name
