"""``python -m training onnx``: an artifact served by ONNX Runtime from any ONNX backbone.

The run, in order: features and ImageNet logits of the calibration photos (ONNX Runtime, no
TensorFlow; cached), the head (the backbone's own ImageNet classifier restricted to the
breeds, or a softmax layer trained on Stanford Dogs features), the photo rule (temperature,
threshold) fitted and cross-validated on the full-frame calibration photos, the animal rule
(``training.animal_rule``) bounded on the same photos, then one composed ONNX graph
(``training.onnx_backbone``) written as the artifact's ``model.onnx`` with a check file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from labeler.core.domain import NOT_A_DOG
from labeler.model.artifact import save_artifact
from labeler.model.classifier import calibrate
from labeler.model.features import FEATURE_SPACE_FILE, FeatureSpace, file_sha256
from labeler.model.preprocessing import PreprocessingConfig
from labeler.model.runtime import CHECK_FILE, ONNX_FILE, OnnxRuntime, check_images
from training import animal_rule, feature_space, quantize
from training import calibration as cal_metrics
from training.data import Dataset, discover, load_images, read_breeds_tsv
from training.features import cached
from training.onnx_backbone import (
    KNOWN_BACKBONES,
    BackboneSpec,
    Head,
    OnnxBackbone,
    breed_probabilities,
    compose_serving_model,
)
from training.views import apply_view
from training.zero_shot import imagenet_indices

log = logging.getLogger(__name__)

WILD_DOGS = ("n02115641", "n02115913", "n02116738")  # dingo, dhole, African hunting dog
ANIMAL_VIEWS = ("identity", "flip", "zoomin", "zoomout")
# float32 graph against the float64 numpy reference of the same arithmetic.
GRAPH_TOLERANCE = 1e-4


def add_arguments(p: argparse.ArgumentParser, shared: Path) -> None:
    weights = shared / "weights" / "efficientnet-lite"
    data = shared / "data"
    p.add_argument("--backbone", choices=sorted(KNOWN_BACKBONES), default="efficientnet-lite2")
    p.add_argument("--weights-dir", default=str(weights), help="folder with the backbone .onnx")
    p.add_argument(
        "--head",
        choices=("imagenet", "trained"),
        default="imagenet",
        help="imagenet: the backbone's ImageNet classifier restricted to the breeds; trained: "
        "a softmax layer trained on --data features",
    )
    p.add_argument("--data", default=str(data / "stanford-dogs-train"))
    p.add_argument("--breeds-tsv", default=str(data / "breeds.tsv"))
    p.add_argument("--calibration-data", default=str(data / "fullframe-calibration"))
    p.add_argument("--calibration-target", type=float, default=0.96)
    p.add_argument(
        "--animal-target",
        type=float,
        default=0.95,
        help="precision the animal rule must keep in both bounds (the one promised to staff; "
        "the photo rule aims higher because a fitted threshold falls short on new photos)",
    )
    p.add_argument("--calibration-folds", type=int, default=5)
    p.add_argument(
        "--dog-gate",
        type=float,
        default=0.3,
        help="ImageNet dog probability under "
        "which a photo is 'not a dog'; 0 disables the not_a_dog class",
    )
    p.add_argument(
        "--quantize",
        choices=("none", "int8"),
        default="none",
        help="int8: statically quantize the backbone (ONNX Runtime, QDQ, per-channel weights) "
        "with activation ranges from --quantize-data photos, then fit every rule on the "
        "quantized network's outputs",
    )
    p.add_argument(
        "--quantize-data",
        default=None,
        help="photos whose activations calibrate the quantization (default: --data, the "
        "Stanford Dogs training crops); never the full-frame calibration photos",
    )
    p.add_argument("--quantize-images", type=int, default=300)
    p.add_argument("--quantize-method", choices=quantize.METHODS, default="minmax")
    p.add_argument("--quantize-per-channel", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--quantize-activations", choices=quantize.ACTIVATION_TYPES, default="uint8")
    p.add_argument(
        "--quantize-symmetric-activations", action=argparse.BooleanOptionalAction, default=False
    )
    p.add_argument(
        "--quantize-reduce-range",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="7-bit weights, so that x86 CPUs without VNNI add u8s8 products without "
        "saturating and serve the same numbers as VNNI ones (default)",
    )
    p.add_argument(
        "--quantize-exclude",
        type=lambda text: tuple(x for x in text.split(",") if x),
        default=(quantize.CLASSIFIER,),
        help="comma list of nodes kept in float: node names, 'first-conv', 'classifier' "
        "(default: classifier; an empty string quantizes everything)",
    )
    p.add_argument("--feature-cache-dir", default="runs/feature-cache")
    p.add_argument("--output", required=True)
    p.add_argument("--name", default=None)
    p.add_argument(
        "--feature-space-per-class",
        type=int,
        default=30,
        help="--data photos per breed whose features give the feature space labeler adapt "
        "refits on (labeler.model.features); 0: no feature space",
    )
    p.add_argument("--feature-space-dims", type=int, default=feature_space.DEFAULT_DIMS)
    p.add_argument("--anchors-per-class", type=int, default=feature_space.DEFAULT_ANCHORS_PER_CLASS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)


def _data_checksum(dataset: Dataset) -> str:
    from training.train import data_checksum

    return data_checksum(dataset)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dataset_outputs(
    backbone: OnnxBackbone,
    dataset: Dataset,
    cache_dir: Path | None,
    digest: str,
    view: str = "identity",
    workers: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """(features, logits) of every photo of ``dataset`` under ``view``, cached on disk."""
    spec = backbone.spec
    prep = PreprocessingConfig(image_size=(spec.size, spec.size), resize_mode="center_crop")
    key = hashlib.sha256(
        json.dumps(
            {
                "backbone": spec.name,
                "weights": digest,
                "files": [dataset.relative(i) for i in range(len(dataset))],
                "preprocessing": prep.cache_key(),
                "view": view,
            }
        ).encode()
    ).hexdigest()[:20]

    def run() -> np.ndarray:
        images = load_images(list(dataset.paths), prep, workers)
        chunks = [apply_view(images[i : i + 64], view, seed=i) for i in range(0, len(images), 64)]
        features, logits = backbone.run(np.concatenate(chunks) if chunks else images)
        if logits is None:
            raise ValueError(f"{spec.name} has no ImageNet logits output")
        return np.concatenate([features, logits], axis=1)

    both = cached(cache_dir, key, run)
    # ImageNet-1k: the last 1000 columns are the logits.
    return both[:, :-1000], both[:, -1000:]


def labels_for(dataset: Dataset, synsets: list[str]) -> np.ndarray:
    index = {s: i for i, s in enumerate(synsets)}
    unknown = sorted(set(dataset.class_ids) - set(index))
    if unknown:
        raise ValueError(f"{dataset.root}: classes {unknown} are not breeds of the breeds file")
    return np.array([index[dataset.class_ids[int(i)]] for i in dataset.labels], dtype=np.int64)


def fit_head(
    features: np.ndarray, y: np.ndarray, classes: int, seed: int
) -> tuple[Head, dict[str, Any]]:
    """A softmax layer on frozen ``features`` (70 % to fit, 15 % to stop early, 15 % to
    measure), and its top-1 and top-3 on the measured part."""
    import keras

    from training.data import stratified_split
    from training.models import build_head

    split = stratified_split(y, 0.15, 0.15, seed)
    keras.utils.set_random_seed(seed)
    head = build_head(features.shape[1], classes, dropout=0.2, l2=1e-4)
    head.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    head.fit(
        features[split["train"]],
        y[split["train"]],
        validation_data=(features[split["val"]], y[split["val"]]),
        epochs=40,
        batch_size=64,
        verbose=0,
        callbacks=[keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)],
    )
    kernel, bias = (np.asarray(w) for w in head.get_layer("probs").get_weights())
    test = np.asarray(head.predict(features[split["test"]], verbose=0))
    held_out: dict[str, Any] = {
        "n": len(split["test"]),
        "top1": cal_metrics.top_k_accuracy(test, y[split["test"]]),
        "top3": cal_metrics.top_k_accuracy(test, y[split["test"]], 3),
    }
    return Head(kernel=kernel, bias=bias), held_out


def _trained_head(
    backbone: OnnxBackbone, args: argparse.Namespace, synsets: list[str], digest: str
) -> tuple[Head, dict[str, Any]]:
    data = discover(args.data, args.breeds_tsv)
    y = labels_for(data, synsets)
    features, _ = dataset_outputs(
        backbone, data, Path(args.feature_cache_dir), digest, workers=args.workers
    )
    head, crops = fit_head(features, y, len(synsets), args.seed)
    crops["training_data"] = {"name": Path(args.data).name, "sha256": _data_checksum(data)}
    return head, crops


def _feature_space(
    backbone: OnnxBackbone,
    args: argparse.Namespace,
    synsets: list[str],
    digest: str,
    head: Head,
    gate: float | None,
    graph: bytes,
    cache_dir: Path | None,
) -> FeatureSpace:
    """The feature space of the served graph, from --data photos (training photos only)."""
    data = discover(args.data, args.breeds_tsv, per_class=args.feature_space_per_class)
    labels = labels_for(data, synsets)
    features, logits = dataset_outputs(backbone, data, cache_dir, digest, workers=args.workers)
    return feature_space.build_feature_space(
        features,
        breed_probabilities(features, logits, head, gate),
        labels,
        graph,
        dims=args.feature_space_dims,
        anchors_per_class=args.anchors_per_class,
        seed=args.seed,
    )


def run_onnx(args: argparse.Namespace) -> Path:
    started = time.perf_counter()
    spec: BackboneSpec = KNOWN_BACKBONES[args.backbone]
    float_path = Path(args.weights_dir) / spec.file
    if not float_path.is_file():
        raise FileNotFoundError(f"backbone weights {float_path} do not exist")
    float_digest = _sha256(float_path)
    cache_dir = Path(args.feature_cache_dir) if args.feature_cache_dir else None
    weights_path, digest = float_path, float_digest
    quantization: dict[str, Any] | None = None
    if getattr(args, "quantize", "none") == "int8":
        weights_path, quantization = _quantized_backbone(
            float_path, float_digest, spec, args, cache_dir
        )
        # Features, logits and every rule below come from the quantized network.
        digest = _sha256(weights_path)
    backbone = OnnxBackbone(weights_path, spec, threads=0)
    names_by_synset = read_breeds_tsv(Path(args.breeds_tsv))
    synsets = sorted(names_by_synset)
    breeds = [names_by_synset[s] for s in synsets]

    extra: dict[str, Any] = {}
    if args.head == "imagenet":
        head = Head(imagenet_classes=tuple(imagenet_indices(synsets)))
        kind = "zero_shot"
    else:
        head, extra["crops"] = _trained_head(backbone, args, synsets, digest)
        extra["training_data"] = extra["crops"].pop("training_data")
        kind = "transfer"
    gate = args.dog_gate if args.dog_gate > 0 else None
    labels = [*breeds, NOT_A_DOG] if gate is not None else breeds
    reject = [synsets.index(s) for s in WILD_DOGS] + ([len(breeds)] if gate is not None else [])

    calibration = discover(args.calibration_data, args.breeds_tsv)
    y = labels_for(calibration, synsets)
    by_view = {
        view: dataset_outputs(backbone, calibration, cache_dir, digest, view, args.workers)
        for view in ANIMAL_VIEWS
    }
    probs = {v: breed_probabilities(f, lg, head, gate) for v, (f, lg) in by_view.items()}
    photo = probs["identity"]
    target = args.calibration_target
    rule = cal_metrics.fit_decision_rule(photo, y, target, reject)
    oof, fold_rules = cal_metrics.cross_validate_rule(
        photo, y, target, reject, folds=args.calibration_folds, seed=args.seed
    )
    in_sample = cal_metrics.rule_outcome(
        calibrate(photo, rule.temperature), y, rule.threshold, 0.0, reject
    )

    def logp(p: np.ndarray) -> np.ndarray:
        return np.log(np.clip(calibrate(p, rule.temperature), 1e-12, 1.0))

    photo_logp = logp(photo)
    view_logp = np.stack([logp(probs[v]) for v in ANIMAL_VIEWS])
    evidence = animal_rule.fit_evidence(
        photo_logp, view_logp, y, rule.threshold, args.animal_target, reject, seed=args.seed
    )
    by_size = animal_rule.fit_evidence_by_size(
        photo_logp, view_logp, y, rule.threshold, args.animal_target, reject, seed=args.seed
    )
    animals = {
        f"evidence_{value:g}": [
            o.as_dict()
            for o in animal_rule.outcomes(
                photo_logp, view_logp, y, value, rule.threshold, reject, seed=args.seed
            )
        ]
        for value in sorted({1.0, evidence, 0.0})
    }
    animals["evidence_by_photos"] = [
        o.as_dict()
        for o in animal_rule.outcomes_by_size(
            photo_logp, view_logp, y, by_size, rule.threshold, reject, seed=args.seed
        )
    ]

    out = Path(args.output)
    name = args.name or out.name
    scratch = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    graph = compose_serving_model(weights_path, spec, head, gate)
    (scratch / ONNX_FILE).write_bytes(graph)
    features_section: dict[str, Any] = {}
    if args.feature_space_per_class > 0:
        space = _feature_space(backbone, args, synsets, digest, head, gate, graph, cache_dir)
        space.save(scratch / FEATURE_SPACE_FILE)
        features_section = {
            "file": FEATURE_SPACE_FILE,
            "sha256": file_sha256(scratch / FEATURE_SPACE_FILE),
            "space": space.space,
            "dims": space.dims,
            "source_dims": space.source_dims,
            "anchors": len(space.anchor_labels),
            "fitted_on": Path(args.data).name,
            "photos_per_breed": args.feature_space_per_class,
        }
    prep = PreprocessingConfig(image_size=(spec.size, spec.size), resize_mode="center_crop")
    sample = list(calibration.paths[:: max(1, len(calibration) // 16)][:16])
    graph_difference = _check_graph(
        scratch / ONNX_FILE,
        load_images(sample, prep, args.workers),
        photo[:: max(1, len(calibration) // 16)][:16],
    )
    check = check_images(prep)
    served = OnnxRuntime(scratch / ONNX_FILE, threads=1)
    expected = served.predict(check.astype(np.float32))
    recorded = {"images": check, "expected": expected}
    reference = served.predict_reference(check.astype(np.float32))
    if reference is not None:
        recorded["reference"] = reference
    np.savez_compressed(scratch / CHECK_FILE, **recorded)  # type: ignore[arg-type]

    full = {
        "n": len(y),
        "top1": cal_metrics.top_k_accuracy(photo, y),
        "top3": cal_metrics.top_k_accuracy(photo, y, 3),
        "ece_calibrated": cal_metrics.expected_calibration_error(
            calibrate(photo, rule.temperature), y
        ),
        "shipped_rule_cross_validated": oof.as_dict(),
        "shipped_rule_in_sample": in_sample.as_dict(),
        "folds": args.calibration_folds,
        "fold_rules": [
            {"temperature": r.temperature, "threshold": r.threshold} for r in fold_rules
        ],
        "no_dog_share": float(np.mean(photo.argmax(axis=1) == len(breeds))) if gate else 0.0,
        "classes": sorted({breeds[int(c)] for c in np.unique(y)}),
    }
    cv = oof.as_dict()
    low, high = cv["precision_interval_95"]  # type: ignore[misc]
    note = (
        f"On full-frame photos (the {len(y)} calibration photos of {len(full['classes'])} breeds, "
        f"{args.calibration_folds}-fold cross-validated) the best guess is right "
        f"{full['top1']:.0%} of the time; it labels {oof.coverage:.0%} of photos on its own, "
        f"{oof.precision:.1%} of them correctly (95% interval {low:.1%}-{high:.1%}), and sends "
        "the rest to review; a photo without a dog goes to review as 'not_a_dog'."
    )
    training_data = extra.pop("training_data", None)
    quantization_data = quantization.pop("calibration_data", None) if quantization else None
    metadata_extra: dict[str, Any] = {
        **({"features": features_section} if features_section else {}),
        "backbone": {
            "name": spec.name,
            "weights_file": spec.file,
            "weights_sha256": float_digest,
            "head": args.head,
            "dog_gate": gate,
            **({"quantization": quantization} if quantization else {}),
        },
        "metrics": {
            "fullframe": full,
            "animals": animals,
            **extra,
            "timings": {"run_s": time.perf_counter() - started},
        },
        "onnx": {
            "file": ONNX_FILE,
            "check_file": CHECK_FILE,
            "tolerance": 1e-5,
            "reference": "onnxruntime at training time",
            "max_difference_to_reference_on_photos": graph_difference,
        },
        "data": {
            "calibration": {
                "name": Path(args.calibration_data).name,
                "sha256": _data_checksum(calibration),
                "photos": len(calibration),
            },
            **({"training": training_data} if training_data else {}),
            **({"quantization": quantization_data} if quantization_data else {}),
        },
        "training": {
            "command": "python -m training onnx",
            "backbone": spec.name,
            "head": args.head,
            "calibration_target": target,
            "animal_target": args.animal_target,
            "dog_gate": gate,
            "seed": args.seed,
            "calibration_data": Path(args.calibration_data).name,
            **(_quantize_switches(args) if quantization else {}),
        },
    }
    save_artifact(
        scratch,
        graph,
        labels,
        prep,
        name=name,
        kind=kind,
        temperature=rule.temperature,
        reject_labels=[labels[i] for i in reject],
        decision={
            "review_threshold": rule.threshold,
            "review_margin": 0.0,
            "target_precision": target,
            "fitted_on": Path(args.calibration_data).name,
            "animal_evidence": evidence,
            "animal_evidence_by_photos": by_size,
        },
        quality_note=note,
        extra=metadata_extra,
    )
    if out.exists():
        shutil.rmtree(out)
    scratch.rename(out)
    log.info("wrote %s in %.0f s", out, time.perf_counter() - started)
    print(note)
    print(f"animal rule: evidence {by_size} for 2, 3, 4 or more photos")
    for row in animals["evidence_by_photos"]:
        print(f"  {row}")
    return out


def _quantize_options(args: argparse.Namespace) -> quantize.QuantizeOptions:
    return quantize.QuantizeOptions(
        images=args.quantize_images,
        method=args.quantize_method,
        per_channel=args.quantize_per_channel,
        activations=args.quantize_activations,
        symmetric_activations=args.quantize_symmetric_activations,
        reduce_range=args.quantize_reduce_range,
        exclude=tuple(args.quantize_exclude),
        seed=args.seed,
    )


def _quantize_switches(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--quantize*`` switches as ``metadata.json``'s ``training`` section records them."""
    options = _quantize_options(args)
    return {
        "quantize": "int8",
        "quantize_data": Path(args.quantize_data or args.data).name,
        "quantize_images": options.images,
        "quantize_method": options.method,
        "quantize_per_channel": options.per_channel,
        "quantize_activations": options.activations,
        "quantize_symmetric_activations": options.symmetric_activations,
        "quantize_reduce_range": options.reduce_range,
        "quantize_exclude": list(options.exclude),
    }


def _quantized_backbone(
    float_path: Path,
    float_digest: str,
    spec: BackboneSpec,
    args: argparse.Namespace,
    cache_dir: Path | None,
) -> tuple[Path, dict[str, Any]]:
    """The int8 backbone (cached beside the features) and what metadata records about it.

    Its activation ranges come from a seeded, class-stratified sample of ``--quantize-data``
    (the training crops by default); the full-frame calibration photos stay unseen by it."""
    import onnxruntime

    options = _quantize_options(args)
    source = Path(args.quantize_data or args.data)
    if source.resolve() == Path(args.calibration_data).resolve():
        raise ValueError(
            f"--quantize-data {source} is the calibration set: the quantization must not see "
            "the photos its rules are fitted and measured on"
        )
    photos = discover(source, args.breeds_tsv)
    chosen = quantize.calibration_sample(photos.labels, options.images, seed=options.seed)
    files = [photos.relative(int(i)) for i in chosen]
    key = hashlib.sha256(
        json.dumps(
            {
                "weights": float_digest,
                "options": options.as_dict(),
                "files": files,
                "onnxruntime": onnxruntime.__version__,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]
    folder = cache_dir if cache_dir is not None else Path(args.output).parent / ".quantized"
    path = folder / f"{spec.name}-int8-{key}.onnx"
    info_path = path.with_suffix(".json")
    if path.is_file() and info_path.is_file():
        info = json.loads(info_path.read_text())
        log.info("quantized backbone from the cache: %s", path)
    else:
        prep = PreprocessingConfig(image_size=(spec.size, spec.size), resize_mode="center_crop")
        images = load_images([photos.paths[int(i)] for i in chosen], prep, args.workers)
        scratch = path.with_name(f".{path.name}.tmp")
        info = quantize.quantize_backbone(float_path, spec, images, scratch, options)
        info["onnxruntime"] = onnxruntime.__version__
        info["calibration_data"] = {
            "name": source.name,
            "photos": len(files),
            "files_sha256": hashlib.sha256("\n".join(files).encode()).hexdigest(),
        }
        scratch.replace(path)
        info_path.write_text(json.dumps(info, indent=2) + "\n")
    info["quantized_sha256"] = _sha256(path)
    info.pop("seconds", None)
    return path, info


def _check_graph(path: Path, images: np.ndarray, reference: np.ndarray) -> float:
    """The composed graph must compute what the rules were fitted on: run on real photos and
    compared with the numpy reference computed from the same photos' cached backbone outputs."""
    got = OnnxRuntime(path, threads=1).predict(images.astype(np.float32))
    difference = float(np.max(np.abs(got.astype(np.float64) - reference)))
    if got.shape != reference.shape or difference > GRAPH_TOLERANCE:
        raise ValueError(
            f"the composed graph differs from its reference by {difference:.2g} on "
            f"calibration photos (tolerance {GRAPH_TOLERANCE:g})"
        )
    return difference
