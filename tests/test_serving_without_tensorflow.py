"""A serving install without TensorFlow: the default model ships its ONNX model, so `check`,
`run-once` and `status` work with TensorFlow and Keras unimportable (as after
``pip install labeler``, whose base dependencies include ONNX Runtime but not TensorFlow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from tests.helpers import REPO, create_photos, fullframe_photos

# Blocks the imports, then runs the CLI with the arguments given.
_RUN = """
import sys
for blocked in ("tensorflow", "keras", "tf2onnx"):
    sys.modules[blocked] = None
from labeler.service.cli import main
code = main(sys.argv[1:])
print("tensorflow imported:", any(m.startswith("tensorflow") for m in sys.modules
                                   if sys.modules[m] is not None))
sys.exit(code)
"""


@pytest.mark.slow
def test_check_run_once_and_status_without_tensorflow(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shelter.db'}"
    engine = create_engine(url)
    photos = fullframe_photos()[::25]  # 8 photos, one or two per breed folder
    table = create_photos(
        engine,
        "bytes",
        ({"id": i, "photo": p.read_bytes()} for i, p in enumerate(photos)),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELER_")}
    env.update(
        LABELER_DATABASE_URL=url,
        LABELER_SOURCE_TABLE="animals",
        LABELER_SOURCE_IMAGE_COLUMN="photo",
        LABELER_RUNTIME_CACHE_DIR=str(tmp_path / "empty-cache"),
        LABELER_WRITEBACK_BREED_COLUMN="breed",
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", _RUN, *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    for args in (("db", "upgrade"), ("check",), ("run-once",), ("status",)):
        done = cli(*args)
        assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-3000:])
        assert "tensorflow imported: False" in done.stdout, args
        if args == ("check",):
            assert "onnxruntime" in done.stdout + done.stderr
    with engine.connect() as conn:
        labelled = conn.execute(select(table.c.breed)).scalars().all()
    assert len(labelled) == len(photos)
    assert not (tmp_path / "empty-cache").exists()  # served from the artifact's own ONNX model
