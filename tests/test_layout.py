"""The package layout: every module imports on its own, and the layers hold.

Importing each module first, in a fresh interpreter state for labeler, catches import cycles
that an import order elsewhere would hide, and modules that fail at import time.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import labeler

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(labeler.__path__, "labeler.")
    if m.name != "labeler.__main__"
)
PACKAGES = sorted(m.name for m in pkgutil.iter_modules(labeler.__path__, "labeler.") if m.ispkg)


def test_every_module_imports_on_its_own() -> None:
    script = textwrap.dedent(
        """
        import importlib, sys, traceback
        failed = []
        for name in sys.argv[1:]:
            for loaded in [m for m in sys.modules if m == "labeler" or m.startswith("labeler.")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except Exception:
                failed.append(name + ": " + traceback.format_exc(limit=3))
        print("\\n".join(failed))
        sys.exit(1 if failed else 0)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script, *MODULES], capture_output=True, text=True, cwd=ROOT
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(MODULES) > 40


def test_each_package_says_what_lives_there_and_what_it_may_import() -> None:
    assert len(PACKAGES) == 10
    for name in PACKAGES:
        doc = importlib.import_module(name)
        assert doc.__doc__ and "import" in doc.__doc__, f"{name} has no layer docstring"


def test_layers_contract_names_every_package() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    contract = text[text.index("[[tool.importlinter.contracts]]") :]
    for name in PACKAGES:
        assert f'"{name}"' in contract, f"{name} is missing from the layers contract"


def test_store_contract_names_every_store_module() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    store = next(c for c in contracts["contracts"] if c.get("containers") == ["labeler.store"])
    named = {m.strip() for layer in store["layers"] for m in layer.split("|")}
    modules = {p.stem for p in (ROOT / "labeler" / "store").glob("*.py")} - {"__init__"}
    assert named == modules, f"not in the store contract: {sorted(modules - named)}"


def test_layers_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(lint)], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def test_readme_documents_every_setting() -> None:
    from labeler.config.settings import Settings

    readme = (ROOT / "README.md").read_text()
    missing = [n for n in Settings.model_fields if f"LABELER_{n.upper()}" not in readme]
    assert missing == [], f"settings missing from the README: {missing}"


def test_photos_contract_names_every_photos_module() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    photos = next(c for c in contracts["contracts"] if c.get("containers") == ["labeler.photos"])
    named = {m.strip() for layer in photos["layers"] for m in layer.split("|")}
    modules = {p.stem for p in (ROOT / "labeler" / "photos").glob("*.py")} - {"__init__"}
    assert named == modules, f"not in the photos contract: {sorted(modules - named)}"
