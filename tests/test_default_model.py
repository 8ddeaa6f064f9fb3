"""The committed default model, as an installed package finds and runs it.

The wheel is built from this checkout and unpacked into a temporary folder; a fresh Python
process imports labeler from there, with its working directory elsewhere, so neither the
checkout's ``models/`` nor the current directory can stand in for the packaged model.
Inference is deterministic, so the share checks below are a stable property of the shipped
model, not a matter of luck or speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from labeler.config.settings import Settings
from labeler.core.paths import (
    FLOAT_MODEL_NAME,
    INT8_CPU_FLAGS,
    INT8_MODEL_NAME,
    cpu_flags,
    default_model_dir,
    default_model_name,
)
from labeler.model.artifact import ArtifactError, load_artifact
from labeler.model.classifier import Classifier, calibrate
from labeler.model.features import decode_record
from labeler.photos.decoding import decode_image
from tests.helpers import FULLFRAME, REPO

# Runs inside the installed copy, with an empty cache folder: classify the 200 full-frame sample
# photos with the default model through labeler's own decoding, classifier and decision rule.
# TensorFlow and Keras are blocked: the packaged model must serve from its shipped ONNX model,
# as in a serving install without TensorFlow.
_PROBE = """
import json, sys
for blocked in ("tensorflow", "keras", "tf2onnx"):
    sys.modules[blocked] = None
from pathlib import Path
import labeler
from labeler.core.paths import default_model_dir
from labeler.model.classifier import Classifier
from labeler.decide.decision import decide, resolve_thresholds
from labeler.photos.decoding import decode_image
from labeler.store.schema import LABELLED

photos = Path(sys.argv[1])
model_dir = default_model_dir()
clf = Classifier.load(model_dir)
rule = resolve_thresholds(clf.artifact, None, None)
rows = []
paths = sorted(p for p in photos.glob("*/*") if p.is_file())
for i in range(0, len(paths), 25):
    chunk = paths[i : i + 25]
    preds = clf.classify_images([decode_image(p.read_bytes()) for p in chunk])
    for p, pred in zip(chunk, preds):
        truth = p.parent.name.partition("-")[2]
        auto = decide(pred, rule).status == LABELLED
        rows.append({"auto": auto, "right": pred.label == truth})
# Photos with no dog in them, as scikit-image ships them: a cat, a person, objects.
import skimage.data
no_dog = {}
for name in ("chelsea", "astronaut", "coffee", "rocket"):
    image = getattr(skimage.data, name)()
    pred = clf.classify_images([image])[0]
    decision = decide(pred, rule)
    no_dog[name] = {"status": str(decision.status), "label": pred.label, "reason": decision.reason}
print(json.dumps({"package": labeler.__file__, "model_dir": str(model_dir), "rows": rows,
                  "runtime": clf.runtime.description, "no_dog": no_dog}))
"""


def test_the_default_is_the_int8_model_on_an_x86_cpu_with_avx2_or_vnni(tmp_path: Path) -> None:
    assert default_model_name(frozenset({"sse4_2", "avx2", "avx512_vnni"})) == INT8_MODEL_NAME
    assert default_model_name(frozenset({"avx2", "avx_vnni"})) == INT8_MODEL_NAME
    assert default_model_name(frozenset({"sse4_2", "avx2", "avx512f"})) == INT8_MODEL_NAME
    assert default_model_name(frozenset({"sse4_2", "avx"})) == FLOAT_MODEL_NAME
    assert default_model_name(frozenset({"fp", "asimd", "asimddp"})) == FLOAT_MODEL_NAME  # ARM
    assert default_model_name(frozenset()) == FLOAT_MODEL_NAME  # flags unknown: float
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512_vnni\n\nprocessor\t: 1\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2", "avx512_vnni"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert default_model_dir(FLOAT_MODEL_NAME).name == FLOAT_MODEL_NAME


@pytest.mark.parametrize("name", [INT8_MODEL_NAME, FLOAT_MODEL_NAME])
def test_both_packaged_models_load_and_pass_their_check(name: str) -> None:
    try:
        classifier = Classifier.load(default_model_dir(name))
    except ArtifactError as exc:
        # Only the int8 model, and only where it is not the default (its int8 kernels were
        # never checked there), may be refused: then because its numbers differ.
        assert name == INT8_MODEL_NAME and not cpu_flags() & INT8_CPU_FLAGS, exc
        assert "differs from the one recorded" in str(exc)
        return
    assert "from the artifact" in classifier.runtime.description
    assert len(classifier.artifact.labels) == 121


@pytest.mark.parametrize("name", [INT8_MODEL_NAME, FLOAT_MODEL_NAME])
def test_both_packaged_models_keep_a_record_of_each_photo_for_adapting(name: str) -> None:
    if name == INT8_MODEL_NAME and not cpu_flags() & INT8_CPU_FLAGS:
        pytest.skip("the int8 model is not served on this CPU (see the test above)")
    classifier = Classifier.load(default_model_dir(name))
    space = classifier.feature_space
    assert space is not None and space.space == classifier.artifact.feature_space_id
    assert space.anchor_labels.size >= 120 * 5 and space.dims == 256
    folder = next(p for p in sorted(FULLFRAME.iterdir()) if p.is_dir())
    images = [decode_image(f.read_bytes()) for f in sorted(folder.iterdir())[:3]]
    predictions = classifier.classify_images(images)
    for prediction in predictions:
        record = decode_record(prediction.record)
        assert record is not None and record.space == space.space
        assert record.logp.shape == (121,) and record.projected.shape == (256,)
        # The record's log-probabilities are the network's own: calibrated, they give back
        # the served confidence (float16 aside).
        served = calibrate(np.exp(record.logp)[None], classifier.artifact.temperature)[0]
        assert abs(served.max() - prediction.confidence) < 0.02
        assert len(prediction.record or b"") < 1024


def test_settings_default_to_the_packaged_model() -> None:
    assert Settings.model_fields["model_dir"].default_factory is default_model_dir
    path = default_model_dir()
    assert path.name == default_model_name()
    art = load_artifact(path)
    assert art.kind in ("transfer", "zero_shot")
    # The 120 breeds, and the class for a photo without a dog.
    assert len(art.labels) == 121 and art.labels[-1] == "not_a_dog"
    assert art.model_path.name == "model.onnx"
    # Provenance by name and checksum only: an artifact travels, local paths do not.
    text = (path / "metadata.json").read_text()
    assert "/work/" not in text and "/home/" not in text
    meta = art.metadata
    assert len(meta["backbone"]["weights_sha256"]) == 64
    assert len(meta["data"]["calibration"]["sha256"]) == 64
    assert {"dingo", "dhole", "African_hunting_dog", "not_a_dog"} <= art.reject_labels
    # Photos of one animal count for more than one photo, but less than independent ones.
    assert 0.0 < art.decision.animal_evidence < 1.0
    by_size = art.decision.animal_evidence_by_photos
    assert by_size is not None and len(by_size) == 3 and all(0.0 < e < 1.0 for e in by_size)
    assert "full-frame" in art.quality_note


@pytest.mark.slow
def test_installed_package_labels_full_frames_with_its_default_model(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("labeler-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in (INT8_MODEL_NAME, FLOAT_MODEL_NAME):
        assert (site / "labeler" / "_models" / name / "model.onnx").is_file()
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "XDG_CACHE_HOME": str(tmp_path / "empty-cache"),
    }
    env = {k: v for k, v in env.items() if not k.startswith("LABELER_")}
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, str(FULLFRAME)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert Path(result["package"]).is_relative_to(site)
    assert Path(result["model_dir"]) == site / "labeler" / "_models" / default_model_name()
    assert "from the artifact" in result["runtime"], result["runtime"]
    rows = result["rows"]
    assert len(rows) == 200
    auto = [r for r in rows if r["auto"]]
    assert auto, "the default model auto-labelled none of the full-frame sample"
    right = sum(r["right"] for r in auto)
    assert right / len(auto) >= 0.90, f"{right} of {len(auto)} auto-labels match the folder"
    for name, outcome in result["no_dog"].items():
        assert outcome["status"] != "labelled", (name, outcome)
    cat = result["no_dog"]["chelsea"]
    assert cat["label"] == "not_a_dog" and "no dog found" in cat["reason"], cat
