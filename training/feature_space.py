"""The feature space an ONNX artifact ships (``labeler.model.features``): the principal
directions of the backbone's features on training photos, and anchor records of those photos.

``labeler adapt`` refits the head on records of this space: each photo's raw
log-probabilities and its features projected onto the first ``dims`` directions, scaled to
unit variance (so one L2 penalty treats every direction alike). The anchors are a few
training photos per breed, so a refit on one shelter's decisions is fitted together with
the breeds it has not decided yet. Only Stanford Dogs training photos are used: never the
full-frame calibration photos, which stay the honest measure.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from labeler.model.features import (
    FEATURE_SPACE_FILE,
    FEATURES_OUTPUT,
    FeatureSpace,
    file_sha256,
    space_id,
)

DEFAULT_DIMS = 256
DEFAULT_ANCHORS_PER_CLASS = 10


def build_feature_space(
    features: np.ndarray,
    probabilities: np.ndarray,
    labels: np.ndarray,
    network: bytes,
    dims: int = DEFAULT_DIMS,
    anchors_per_class: int = DEFAULT_ANCHORS_PER_CLASS,
    seed: int = 0,
) -> FeatureSpace:
    """The space from training photos' features (n, D), the served graph's probabilities
    for them (n, K) and their label indices; ``network`` is the served graph's bytes."""
    features = np.asarray(features, np.float64)
    n, source_dims = features.shape
    if probabilities.shape[0] != n or labels.shape != (n,):
        raise ValueError("features, probabilities and labels must describe the same photos")
    dims = min(dims, source_dims, n - 1)
    if dims < 1:
        raise ValueError("a feature space needs at least two training photos")
    mean = features.mean(axis=0)
    _, singular, directions = np.linalg.svd(features - mean, full_matrices=False)
    std = singular[:dims] / np.sqrt(n - 1)
    projection = directions[:dims] / np.maximum(std, 1e-12)[:, None]
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = min(anchors_per_class, len(members))
        chosen.extend(sorted(rng.choice(members, size=take, replace=False).tolist()))
    rows = np.asarray(chosen, dtype=np.int64)
    projected = (features[rows] - mean) @ projection.T
    logp = np.log(np.clip(np.asarray(probabilities, np.float64)[rows], 1e-12, 1.0))
    return FeatureSpace(
        space=space_id(network, projection, mean),
        mean=mean,
        projection=projection,
        anchor_logp=logp,
        anchor_projected=projected,
        anchor_labels=np.asarray(labels, np.int64)[rows],
    )


def add_to_artifact(
    directory: Path,
    data: Path,
    breeds_tsv: Path,
    per_class: int = 30,
    dims: int = DEFAULT_DIMS,
    anchors_per_class: int = DEFAULT_ANCHORS_PER_CLASS,
    seed: int = 0,
    workers: int = 2,
) -> FeatureSpace:
    """Give an ONNX artifact composed by ``python -m training onnx`` a feature space, without
    changing what it answers: its graph gains the ``features`` output, the space is fitted on
    ``data`` (training photos) through the served graph itself, and the check still passes."""
    import onnx
    from onnx import TensorProto, helper

    from labeler.model.artifact import METADATA_FILE, load_artifact
    from labeler.model.classifier import Classifier
    from labeler.model.runtime import ONNX_FILE, OnnxRuntime
    from training.data import discover, load_images, read_breeds_tsv

    artifact = load_artifact(directory)
    graph_path = directory / ONNX_FILE
    model = onnx.load(str(graph_path))
    produced = {name for node in model.graph.node for name in node.output}
    if FEATURES_OUTPUT not in produced:
        raise ValueError(f"{graph_path} has no {FEATURES_OUTPUT!r} tensor to keep")
    if FEATURES_OUTPUT not in {o.name for o in model.graph.output}:
        model.graph.output.append(
            helper.make_tensor_value_info(FEATURES_OUTPUT, TensorProto.FLOAT, ["n", "features"])
        )
    network = model.SerializeToString()
    names_by_synset = read_breeds_tsv(breeds_tsv)
    index = {name: i for i, name in enumerate(artifact.labels)}
    photos = discover(data, breeds_tsv, per_class=per_class)
    labels = np.array(
        [index[names_by_synset[photos.class_ids[int(c)]]] for c in photos.labels], np.int64
    )
    served = OnnxRuntime(network)
    images = load_images(list(photos.paths), artifact.preprocessing, workers).astype(np.float32)
    outputs = [served.predict_with_features(images[i : i + 32]) for i in range(0, len(images), 32)]
    probabilities = np.concatenate([p for p, _ in outputs])
    features = np.concatenate([f for _, f in outputs if f is not None])
    space = build_feature_space(
        features, probabilities, labels, network, dims, anchors_per_class, seed
    )
    graph_path.write_bytes(network)
    space.save(directory / FEATURE_SPACE_FILE)
    meta = json.loads((directory / METADATA_FILE).read_text())
    meta["features"] = {
        "file": FEATURE_SPACE_FILE,
        "sha256": file_sha256(directory / FEATURE_SPACE_FILE),
        "space": space.space,
        "dims": space.dims,
        "source_dims": space.source_dims,
        "anchors": len(space.anchor_labels),
        "fitted_on": data.name,
        "photos_per_breed": per_class,
    }
    (directory / METADATA_FILE).write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n")
    Classifier.load(directory, runtime="onnx")  # its check must still pass
    return space
