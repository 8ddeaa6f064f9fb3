"""One training run: data -> split -> preprocessing -> model -> metrics -> artifact.

Everything a run decides (split, config, history, metrics, plots) is written to its run
directory; the artifact written to ``models/<name>/`` holds only what serving needs plus the
metadata that says how it was made. Photos never go into the artifact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np

from labeler.model.artifact import save_artifact
from labeler.model.classifier import calibrate
from labeler.model.preprocessing import (
    PreprocessingConfig,
    ResizeMode,
    Whitening,
    finish_batch,
    fit_whitening,
    flatten_for_whitening,
)
from training import calibration
from training.augment import AugmentConfig, build_augmentation
from training.backbones import load_backbone, weights_id
from training.data import (
    Dataset,
    cached_images,
    discover,
    split_fingerprint,
    stratified_split,
)
from training.data import write_split as write_split_csv
from training.features import cached, extract_features, feature_cache_key
from training.models import (
    build_baseline_cnn,
    build_feature_extractor,
    build_head,
    build_transfer_model,
    preprocess_mode,
    set_fine_tuning,
)
from training.options import cli, parse_size
from training.views import apply_view

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd", "rmsprop", "nadam", "adadelta", "adagrad", "adamax", "ftrl")
LOSSES = ("sparse_categorical_crossentropy", "label_smoothing", "focal")


# The fields with cli() metadata are the options ``python -m training train`` and ``sweep``
# generate (training.options): their defaults are written here and nowhere else.
DATA_OPTIONS = (
    "data_dir",
    "breeds_tsv",
    "max_classes",
    "per_class",
    "val_fraction",
    "test_fraction",
    "seed",
    "run_dir",
    "image_cache_dir",
    "feature_cache_dir",
    "workers",
)
PREPROCESSING_OPTIONS = (
    "image_size",
    "resize_mode",
    "grayscale",
    "equalize",
    "whitening",
    "whitening_epsilon",
    "pca_components",
)


@dataclass
class TrainConfig:
    data_dir: str = field(metadata=cli("one folder per class", flag="data"))
    output: str | None = None  # artifact directory; None trains and evaluates only
    run_dir: str = field(
        default="runs/latest", metadata=cli("where split, history, plots go (runs/...)")
    )
    name: str = "model"
    breeds_tsv: str | None = field(
        default=None, metadata=cli("index/synset/breed TSV naming the classes")
    )
    max_classes: int | None = field(
        default=None, metadata=cli("keep the first N classes", flag="classes")
    )
    per_class: int | None = field(default=None, metadata=cli("keep M photos per class"))
    val_fraction: float = field(default=0.15, metadata=cli())
    test_fraction: float = field(default=0.15, metadata=cli())
    seed: int = field(default=0, metadata=cli())
    model: str = "baseline"  # baseline | transfer
    # preprocessing chain
    image_size: tuple[int, int] = field(
        default=(64, 64), metadata=cli("e.g. 64 or 64x64", parse=parse_size)
    )
    resize_mode: ResizeMode = field(default="stretch", metadata=cli())
    grayscale: bool = field(default=False, metadata=cli("convert to one luma channel"))
    equalize: bool = field(default=False, metadata=cli("histogram-equalize each channel"))
    whitening: Literal["none", "zca", "pca"] = field(default="none", metadata=cli())
    whitening_epsilon: float = field(default=0.1, metadata=cli())
    pca_components: int | None = field(default=None, metadata=cli())
    # augmentation (training only)
    augment: bool = True
    augment_config: AugmentConfig = field(default_factory=AugmentConfig)
    # optimisation
    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "adam"
    learning_rate: float | None = None  # None: the optimizer's Keras default
    loss: str = "sparse_categorical_crossentropy"
    patience: int = 5
    time_budget_s: float | None = None
    # baseline CNN
    filters: tuple[int, ...] = (32, 64, 64, 64)
    activation: str = "relu"
    normalization: str = "batchnorm"
    head: str = "flatten"
    dropout: float = 0.3
    # transfer
    backbone: str = "vgg16"
    weights: str | None = "imagenet"
    head_hidden: int = 0
    feature_cache_dir: str | None = field(
        default="runs/feature-cache", metadata=cli(flag="feature_cache")
    )
    image_cache_dir: str | None = field(
        default="runs/image-cache", metadata=cli(flag="image_cache")
    )
    fine_tune_epochs: int = 0
    fine_tune_fraction: float = 0.2
    fine_tune_learning_rate: float = 1e-5
    fine_tune_max_train: int | None = None
    fine_tune_views: tuple[str, ...] = ()  # training.views drawn per photo while fine-tuning
    # frozen-feature views of every training photo the head learns from (training.views)
    feature_views: tuple[str, ...] = ("identity",)
    head_dropout: float = 0.2
    head_l2: float = 0.0
    # decision
    target_accuracy: float = 0.95
    review_min_rows: int = 30
    # Full-frame calibration: photos like a shelter's, used only to fit temperature,
    # threshold and margin by cross-validation and to choose nothing else. Never trained on.
    calibration_dir: str | None = None
    calibration_folds: int = 5
    calibration_target: float = 0.95  # precision the fitted rule aims for
    calibration_margins: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3)
    reject_classes: tuple[str, ...] = ()  # class ids (synsets) that are not dog breeds
    tta: tuple[str, ...] = ("identity",)
    workers: int = field(default=2, metadata=cli())
    plots: bool = True
    onnx: bool = True  # ship model.onnx in the artifact (labeler.model.runtime.ship_onnx)

    def preprocessing(self, whitening: Whitening | None = None) -> PreprocessingConfig:
        return PreprocessingConfig(
            image_size=(int(self.image_size[0]), int(self.image_size[1])),
            resize_mode=self.resize_mode,
            grayscale=self.grayscale,
            equalize=self.equalize,
            whitening=whitening,
        )


@dataclass
class TrainResult:
    config: TrainConfig
    metrics: dict[str, Any]
    history: dict[str, list[float]]
    model: keras.Model
    preprocessing: PreprocessingConfig
    class_names: tuple[str, ...]
    test_probs: np.ndarray
    test_labels: np.ndarray
    test_indices: np.ndarray
    dataset: Dataset
    artifact_path: Path | None = None


def make_optimizer(name: str, learning_rate: float | None) -> keras.optimizers.Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")
    opt = keras.optimizers.get(name)
    if learning_rate is not None:
        opt.learning_rate = learning_rate
    return opt


def make_loss(name: str, num_classes: int) -> tuple[Any, bool]:
    """The loss and whether it wants one-hot targets."""
    if name == "sparse_categorical_crossentropy":
        return keras.losses.SparseCategoricalCrossentropy(), False
    if name == "label_smoothing":
        return keras.losses.CategoricalCrossentropy(label_smoothing=0.1), True
    if name == "focal":
        return keras.losses.CategoricalFocalCrossentropy(), True
    raise ValueError(f"unknown loss {name!r}; choose from {LOSSES}")


class EpochLog(keras.callbacks.Callback):
    """One log line per epoch with wall time, and a stop once the time budget is spent."""

    def __init__(self, stage: str, budget_s: float | None = None) -> None:
        super().__init__()
        self.stage = stage
        self.budget_s = budget_s
        self.epoch_times: list[float] = []
        self._start = 0.0
        self._t0 = time.perf_counter()

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._t0 = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        took = time.perf_counter() - self._start
        self.epoch_times.append(took)
        shown = " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()))
        log.info("%s epoch %d: %.1fs %s", self.stage, epoch + 1, took, shown)
        if self.budget_s is not None and time.perf_counter() - self._t0 > self.budget_s:
            log.info("%s: time budget of %.0fs spent, stopping", self.stage, self.budget_s)
            self.model.stop_training = True


def _fit(
    model: keras.Model,
    x: np.ndarray | ImageBatches,
    y: np.ndarray | None,
    val: tuple[np.ndarray, np.ndarray] | ImageBatches,
    cfg: TrainConfig,
    stage: str,
    epochs: int,
    budget_s: float | None,
) -> tuple[dict[str, list[float]], list[float]]:
    timer = EpochLog(stage, budget_s)
    callbacks: list[keras.callbacks.Callback] = [timer]
    has_val = len(val) > 0 if isinstance(val, ImageBatches) else len(val[0]) > 0
    if cfg.patience and has_val:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=cfg.patience, restore_best_weights=True
            )
        )
    # Without early stopping, skip per-epoch validation: on a CPU a backbone pass over the
    # validation photos can cost as much as the fine-tuning epoch itself.
    validation = val if has_val and cfg.patience else None
    if isinstance(x, ImageBatches):  # batches and shuffling come from the sequence
        hist = model.fit(
            x, validation_data=validation, epochs=epochs, verbose=0, callbacks=callbacks
        )
    else:
        hist = model.fit(
            x,
            y,
            validation_data=validation,
            epochs=epochs,
            batch_size=cfg.batch_size,
            shuffle=True,
            verbose=0,
            callbacks=callbacks,
        )
    return {k: [float(v) for v in vs] for k, vs in hist.history.items()}, timer.epoch_times


class ImageBatches(keras.utils.PyDataset):
    """Preprocessed batches made on demand from the uint8 image array.

    Fine-tuning needs pixels, not cached features; converting the whole training split to
    float32 up front costs 4x its uint8 size (about 14 GiB RSS for 8,400 photos at 224 px).
    """

    def __init__(
        self,
        images: np.ndarray,
        indices: np.ndarray,
        targets: np.ndarray | None,
        prep: PreprocessingConfig,
        batch_size: int,
        shuffle_seed: int | None = None,
        views: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.images, self.targets, self.prep = images, targets, prep
        self.indices = np.asarray(indices)
        self.batch_size = batch_size
        self.rng = None if shuffle_seed is None else np.random.default_rng(shuffle_seed)
        self.views = views
        self.epoch = 0
        self.on_epoch_end()

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __getitem__(self, i: int) -> Any:
        rows = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        pixels = self.images[self.indices[rows]]
        if self.views:
            # Each photo gets one of the views (training.views), drawn per epoch and batch.
            pick = np.random.default_rng([self.epoch, i]).integers(0, len(self.views), len(rows))
            pixels = pixels.copy()
            for v, view in enumerate(self.views):
                if (pick == v).any():
                    pixels[pick == v] = apply_view(
                        pixels[pick == v], view, seed=self.epoch * 7919 + i
                    )
        x = finish_batch(pixels, self.prep)
        return x if self.targets is None else (x, self.targets[rows])

    def on_epoch_end(self) -> None:
        n = len(self.indices)
        self.epoch += 1
        self.order = np.arange(n) if self.rng is None else self.rng.permutation(n)


def _targets(y: np.ndarray, one_hot: bool, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[y] if one_hot else y


def _with_augmentation(
    serving: keras.Model, cfg: TrainConfig, input_shape: tuple[int, ...], whitened: bool
) -> keras.Model:
    """The training graph: augmentation layers in front of the serving model."""
    if not cfg.augment or not cfg.augment_config.active or len(input_shape) != 3:
        return serving
    aug_cfg = cfg.augment_config
    if whitened:
        # Contrast on whitened values has no fixed range to clip to; geometry still applies.
        aug_cfg = replace(aug_cfg, contrast=0.0)
    inputs = keras.Input(input_shape)
    x = build_augmentation(aug_cfg, seed=cfg.seed)(inputs)
    return keras.Model(inputs, serving(x), name="training_graph")


def prepare(cfg: TrainConfig) -> tuple[Dataset, dict[str, np.ndarray], str, np.ndarray]:
    dataset = discover(cfg.data_dir, cfg.breeds_tsv, cfg.max_classes, cfg.per_class, cfg.seed)
    split = stratified_split(dataset.labels, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    fingerprint = split_fingerprint(dataset, split)
    log.info(
        "dataset %s: %d images, %d classes; split train/val/test %d/%d/%d (fingerprint %s)",
        cfg.data_dir,
        len(dataset),
        len(dataset.class_names),
        len(split["train"]),
        len(split["val"]),
        len(split["test"]),
        fingerprint,
    )
    t0 = time.perf_counter()
    image_cache = Path(cfg.image_cache_dir) if cfg.image_cache_dir else None
    images = cached_images(image_cache, dataset, cfg.preprocessing(), cfg.workers)
    log.info("images loaded and preprocessed in %.1fs", time.perf_counter() - t0)
    return dataset, split, fingerprint, images


def run(cfg: TrainConfig) -> TrainResult:
    keras.utils.set_random_seed(cfg.seed)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dataset, split, fingerprint, images = prepare(cfg)
    write_split_csv(run_dir / "split.csv", dataset, split)
    y = dataset.labels
    num_classes = len(dataset.class_names)
    tr, va, te = split["train"], split["val"], split["test"]
    timings: dict[str, Any] = {}

    whitening = None
    if cfg.whitening != "none":
        if cfg.model != "baseline":
            raise ValueError("whitening is for the baseline CNN; ImageNet backbones expect pixels")
        t0 = time.perf_counter()
        whitening = fit_whitening(
            flatten_for_whitening(images[tr]),
            cfg.whitening,
            cfg.whitening_epsilon,
            cfg.pca_components,
        )
        timings["whitening_fit_s"] = time.perf_counter() - t0
    prep = cfg.preprocessing(whitening)
    input_shape = prep.output_shape()
    loss, one_hot = make_loss(cfg.loss, num_classes)
    extra: dict[str, Any] = {}

    if cfg.model == "baseline":
        x_all = finish_batch(images, prep)
        serving = build_baseline_cnn(
            input_shape,
            num_classes,
            filters=cfg.filters,
            activation=cfg.activation,
            normalization=cfg.normalization,  # type: ignore[arg-type]
            head=cfg.head,  # type: ignore[arg-type]
            dropout=cfg.dropout,
            rescale=whitening is None,
        )
        trainer = _with_augmentation(serving, cfg, input_shape, whitening is not None)
        trainer.compile(
            optimizer=make_optimizer(cfg.optimizer, cfg.learning_rate),
            loss=loss,
            metrics=["accuracy"],
            jit_compile=False,
        )
        history, epoch_times = _fit(
            trainer,
            x_all[tr],
            _targets(y[tr], one_hot, num_classes),
            (x_all[va], _targets(y[va], one_hot, num_classes)),
            cfg,
            "baseline",
            cfg.epochs,
            cfg.time_budget_s,
        )
        timings["epoch_s"] = epoch_times
        val_probs = _predict(serving, x_all[va])
        test_probs = _predict(serving, x_all[te])
        kind = "baseline_cnn"
    elif cfg.model == "transfer":
        if len(input_shape) != 3:
            raise ValueError("transfer learning needs image input")
        img_shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
        mode = preprocess_mode(cfg.backbone)
        backbone = load_backbone(cfg.backbone, cfg.weights, (*img_shape[:2], 3))
        wid = weights_id(cfg.weights)
        extractor = build_feature_extractor(backbone, mode, img_shape)
        files = [dataset.relative(i) for i in range(len(dataset))]
        cache_dir = Path(cfg.feature_cache_dir) if cfg.feature_cache_dir else None
        t0 = time.perf_counter()
        by_view: dict[str, np.ndarray] = {}
        for view in dict.fromkeys(("identity", *cfg.feature_views, *cfg.tta)):
            key = feature_cache_key(cfg.backbone, wid, prep, files, view)
            by_view[view] = cached(
                cache_dir,
                key,
                lambda v=view: extract_features(extractor, images, prep, view=v),  # type: ignore[misc]
            )
        feats = by_view["identity"]
        timings["features_s"] = time.perf_counter() - t0
        head = build_head(
            int(feats.shape[1]),
            num_classes,
            hidden=cfg.head_hidden,
            dropout=cfg.head_dropout,
            l2=cfg.head_l2,
        )
        head.compile(
            optimizer=make_optimizer(cfg.optimizer, cfg.learning_rate),
            loss=loss,
            metrics=["accuracy"],
            jit_compile=False,
        )
        # Every view of a training photo is a training row; validation stays the plain photos.
        history, epoch_times = _fit(
            head,
            np.concatenate([by_view[v][tr] for v in cfg.feature_views]),
            _targets(np.tile(y[tr], len(cfg.feature_views)), one_hot, num_classes),
            (feats[va], _targets(y[va], one_hot, num_classes)),
            cfg,
            "head",
            cfg.epochs,
            cfg.time_budget_s,
        )
        timings["head_epoch_s"] = epoch_times
        serving = build_transfer_model(backbone, head, mode, img_shape)
        head_val = _average([_predict(head, by_view[v][va]) for v in cfg.tta])
        head_test = _average([_predict(head, by_view[v][te]) for v in cfg.tta])
        extra["head_only"] = {
            "val_top1": calibration.top_k_accuracy(head_val, y[va]),
            "test_top1": calibration.top_k_accuracy(head_test, y[te]),
            "test_top3": calibration.top_k_accuracy(head_test, y[te], 3),
        }
        val_probs, test_probs = head_val, head_test
        if cfg.fine_tune_epochs > 0:
            n_trainable = set_fine_tuning(backbone, cfg.fine_tune_fraction)
            ft_train = tr
            if cfg.fine_tune_max_train is not None and cfg.fine_tune_max_train < len(tr):
                rng = np.random.default_rng(cfg.seed)
                ft_train = np.sort(rng.choice(tr, cfg.fine_tune_max_train, replace=False))
            log.info("fine-tuning %d backbone layers on %d images", n_trainable, len(ft_train))
            trainer = _with_augmentation(serving, cfg, img_shape, False)
            trainer.compile(
                optimizer=keras.optimizers.Adam(cfg.fine_tune_learning_rate),
                loss=loss,
                metrics=["accuracy"],
                jit_compile=False,
            )
            ft_history, ft_times = _fit(
                trainer,
                ImageBatches(
                    images,
                    ft_train,
                    _targets(y[ft_train], one_hot, num_classes),
                    prep,
                    cfg.batch_size,
                    shuffle_seed=cfg.seed,
                    views=cfg.fine_tune_views,
                ),
                None,
                ImageBatches(
                    images, va, _targets(y[va], one_hot, num_classes), prep, cfg.batch_size
                ),
                cfg,
                "fine-tune",
                cfg.fine_tune_epochs,
                cfg.time_budget_s,
            )
            timings["fine_tune_epoch_s"] = ft_times
            history = {**history, **{f"ft_{k}": v for k, v in ft_history.items()}}
            val_probs = _predict_views(serving, images, va, prep, cfg.tta)
            test_probs = _predict_views(serving, images, te, prep, cfg.tta)
            extra["fine_tune"] = {
                "trainable_layers": n_trainable,
                "train_images": len(ft_train),
                "test_top1": calibration.top_k_accuracy(test_probs, y[te]),
            }
        extra["backbone"] = {"name": cfg.backbone, "weights": wid, "preprocess_mode": mode}
        kind = "transfer"
    else:
        raise ValueError(f"unknown model kind {cfg.model!r}")

    metrics = _metrics(val_probs, y[va], test_probs, y[te], dataset.class_names, cfg)
    if cfg.calibration_dir:
        t0 = time.perf_counter()
        cal_probs, cal_y, cal_data = _calibration_probs(cfg, dataset, serving, prep)
        timings["calibration_predict_s"] = time.perf_counter() - t0
        # Kept beside the run, so another decision rule can be studied without the network.
        np.savez(run_dir / "calibration_probs.npz", probs=cal_probs, labels=cal_y)
        np.savez(run_dir / "test_probs.npz", probs=test_probs, labels=y[te])
        metrics.update(
            fullframe_metrics(cal_probs, cal_y, test_probs, y[te], dataset, cfg, cal_data)
        )
    metrics["timings"] = timings
    metrics.update(extra)
    (run_dir / "history.json").write_text(json.dumps(history, indent=1))
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, default=float))
    (run_dir / "config.json").write_text(json.dumps(config_dict(cfg), indent=1))
    result = TrainResult(
        cfg, metrics, history, serving, prep, dataset.class_names, test_probs, y[te], te, dataset
    )
    if cfg.output:
        result.artifact_path = write_artifact(result, fingerprint, kind)
    if cfg.plots:
        from training import plots

        plots.run_report(result, run_dir)
    return result


def _predict(model: keras.Model, x: np.ndarray | ImageBatches, batch_size: int = 256) -> np.ndarray:
    if len(x) == 0:
        return np.zeros((0, int(model.output_shape[-1])), dtype=np.float64)
    if isinstance(x, ImageBatches):
        return np.asarray(model.predict(x, verbose=0), dtype=np.float64)
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float64)


def _average(probs: list[np.ndarray]) -> np.ndarray:
    """Test-time augmentation: the mean of the views' probabilities, as serving computes it."""
    return np.mean(np.stack(probs), axis=0)


def _predict_views(
    model: keras.Model,
    images: np.ndarray,
    rows: np.ndarray,
    prep: PreprocessingConfig,
    views: tuple[str, ...],
) -> np.ndarray:
    out = []
    for view in views:
        # training.views' flip of a resized image is serving's flip of the preprocessed batch.
        pixels = images[:, :, ::-1] if view == "flip" else images
        out.append(_predict(model, ImageBatches(pixels, rows, None, prep, 256)))
    return _average(out)


def _calibration_probs(
    cfg: TrainConfig, dataset: Dataset, serving: keras.Model, prep: PreprocessingConfig
) -> tuple[np.ndarray, np.ndarray, Dataset]:
    """The served model's probabilities (with the artifact's TTA) on the calibration photos,
    whose folders must name classes of the training data (by synset)."""
    cal = discover(cfg.calibration_dir or "", cfg.breeds_tsv)
    index = {cid: i for i, cid in enumerate(dataset.class_ids)}
    unknown = sorted(set(cal.class_ids) - set(index))
    if unknown:
        raise ValueError(f"calibration classes {unknown} are not classes of the training data")
    labels = np.array([index[cal.class_ids[int(lab)]] for lab in cal.labels], dtype=np.int64)
    image_cache = Path(cfg.image_cache_dir) if cfg.image_cache_dir else None
    images = cached_images(image_cache, cal, prep, cfg.workers)
    probs = _predict_views(serving, images, np.arange(len(cal)), prep, cfg.tta)
    return probs, labels, cal


def fullframe_metrics(
    cal_probs: np.ndarray,
    cal_y: np.ndarray,
    test_probs: np.ndarray,
    test_y: np.ndarray,
    dataset: Dataset,
    cfg: TrainConfig,
    cal_data: Dataset,
) -> dict[str, Any]:
    """The decision rule fitted on the full-frame calibration photos, its cross-validated
    outcome there, and what the same rule does on the held-out crops."""
    missing = sorted(set(cfg.reject_classes) - set(dataset.class_ids))
    if missing:
        raise ValueError(f"reject classes {missing} are not classes of the training data")
    reject = [dataset.class_ids.index(c) for c in cfg.reject_classes]
    margins = cfg.calibration_margins
    target = cfg.calibration_target
    rule = calibration.fit_decision_rule(
        cal_probs, cal_y, target, reject, margins, cfg.review_min_rows
    )
    oof, fold_rules = calibration.cross_validate_rule(
        cal_probs,
        cal_y,
        target,
        reject,
        margins,
        cfg.calibration_folds,
        cfg.seed,
        cfg.review_min_rows,
    )
    in_sample = calibration.rule_outcome(
        calibrate(cal_probs, rule.temperature), cal_y, rule.threshold, rule.margin, reject
    )

    def summary(probs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        cal = calibrate(probs, rule.temperature)
        return {
            "n": len(y),
            "top1": calibration.top_k_accuracy(probs, y),
            "top3": calibration.top_k_accuracy(probs, y, 3),
            "ece": calibration.expected_calibration_error(probs, y),
            "ece_calibrated": calibration.expected_calibration_error(cal, y),
            "best_coverage_at_95": calibration.best_coverage_at(cal, y, 0.95, reject),
            "best_coverage_at_97": calibration.best_coverage_at(cal, y, 0.97, reject),
        }

    crops = summary(test_probs, test_y)
    crops["shipped_rule"] = calibration.rule_outcome(
        calibrate(test_probs, rule.temperature), test_y, rule.threshold, rule.margin, reject
    ).as_dict()
    full = summary(cal_probs, cal_y)
    full["shipped_rule_cross_validated"] = oof.as_dict()
    full["shipped_rule_in_sample"] = in_sample.as_dict()
    full["folds"] = cfg.calibration_folds
    full["fold_rules"] = [
        {"temperature": r.temperature, "threshold": r.threshold, "margin": r.margin}
        for r in fold_rules
    ]
    full["classes"] = sorted({dataset.class_names[int(c)] for c in np.unique(cal_y)})
    return {
        "decision_rule": {
            "temperature": rule.temperature,
            "threshold": rule.threshold,
            "margin": rule.margin,
            "target_precision": target,
            "margins_tried": list(margins),
            "min_rows": cfg.review_min_rows,
            "fitted_on": Path(cal_data.root).name,
            "reject_labels": [dataset.class_names[i] for i in reject],
            "tta": list(cfg.tta),
        },
        "fullframe": full,
        "crops": crops,
    }


def _metrics(
    val_probs: np.ndarray,
    val_y: np.ndarray,
    test_probs: np.ndarray,
    test_y: np.ndarray,
    names: tuple[str, ...],
    cfg: TrainConfig,
) -> dict[str, Any]:
    temperature = calibration.fit_temperature(val_probs, val_y)
    val_cal = calibrate(val_probs, temperature)
    test_cal = calibrate(test_probs, temperature)
    review = calibration.choose_review_threshold(
        val_cal, val_y, cfg.target_accuracy, cfg.review_min_rows
    )
    test_conf = test_cal.max(axis=1) if len(test_y) else np.zeros(0)
    auto = test_conf >= review.threshold
    test_auto_acc = (
        float(np.mean(test_cal.argmax(axis=1)[auto] == test_y[auto])) if auto.any() else None
    )
    test = calibration.evaluate(test_probs, test_y, names)
    val = calibration.evaluate(val_probs, val_y, names)
    return {
        "split_used": "test",
        "top1": test["top1"],
        "top3": test["top3"],
        "ece": test["ece"],
        "ece_calibrated": calibration.expected_calibration_error(test_cal, test_y),
        "nll": test["nll"],
        "per_breed_accuracy": test["per_class_accuracy"],
        "n_test": test["n"],
        "validation": {k: v for k, v in val.items() if k != "per_class_accuracy"},
        "temperature": temperature,
        "review": {
            "target_accuracy": review.target,
            "min_rows": cfg.review_min_rows,
            "threshold": review.threshold,
            "val_review_share": review.review_share,
            # None, not NaN, when nothing clears the threshold: NaN is not valid JSON.
            "val_auto_accuracy": None if np.isnan(review.auto_accuracy) else review.auto_accuracy,
            "test_review_share": float(1 - auto.mean()) if len(test_y) else None,
            "test_auto_accuracy": test_auto_acc,
        },
    }


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg), default=str))


# Config fields that hold local paths: the artifact keeps only their last component.
_PATH_FIELDS = (
    "data_dir",
    "output",
    "run_dir",
    "breeds_tsv",
    "weights",
    "feature_cache_dir",
    "image_cache_dir",
    "calibration_dir",
)


def portable_config(cfg: TrainConfig) -> dict[str, Any]:
    """The run's config without local absolute paths (an artifact travels; paths do not)."""
    out = config_dict(cfg)
    for key in _PATH_FIELDS:
        value = out.get(key)
        if value and value not in ("imagenet", "none"):
            out[key] = Path(str(value)).name
    return out


def quality_note(kind: str, m: dict[str, Any]) -> str:
    """What the labels are worth, in plain words, with the full-frame numbers first."""
    if "fullframe" not in m:
        return (
            f"{kind} held-out top-1 {m['top1']:.2f}, top-3 {m['top3']:.2f} on crops "
            "like its training photos; not measured on full-frame photos"
        )
    full, crops = m["fullframe"], m["crops"]
    cv = full["shipped_rule_cross_validated"]
    low, high = cv["precision_interval_95"]
    crop_rule = crops["shipped_rule"]
    cl, ch = crop_rule["precision_interval_95"]
    precision = "n/a" if cv["precision"] is None else f"{cv['precision']:.1%}"
    crop_precision = "n/a" if crop_rule["precision"] is None else f"{crop_rule['precision']:.1%}"
    return (
        f"On full-frame photos ({full['n']} photos of {len(full['classes'])} breeds, never "
        f"trained on, {full['folds']}-fold cross-validated) the best guess is right "
        f"{full['top1']:.0%} of the time (top-3 {full['top3']:.0%}); it labels "
        f"{cv['coverage']:.0%} of photos on its own, {precision} of them correctly "
        f"(95% interval {low:.1%}-{high:.1%}), and sends the rest to review. On held-out "
        f"Stanford Dogs crops (optimistic: ImageNet photos the backbone has seen) top-1 is "
        f"{crops['top1']:.0%}, {crop_rule['coverage']:.0%} auto-labelled at {crop_precision} "
        f"({cl:.1%}-{ch:.1%})."
    )


def data_checksum(dataset: Dataset) -> str:
    """sha256 over every file's relative path and content: names the exact photos used."""
    digest = hashlib.sha256()
    for i in range(len(dataset)):
        digest.update(dataset.relative(i).encode() + b"\0")
        digest.update(hashlib.sha256(dataset.paths[i].read_bytes()).digest())
    return digest.hexdigest()


def provenance(result: TrainResult, fingerprint: str) -> dict[str, Any]:
    cfg = result.config
    data: dict[str, Any] = {
        "name": Path(cfg.data_dir).name,
        "split_fingerprint": fingerprint,
        "sha256": data_checksum(result.dataset),
        "n_images": len(result.dataset),
        "class_ids": list(result.dataset.class_ids),
        "split": {
            "val_fraction": cfg.val_fraction,
            "test_fraction": cfg.test_fraction,
            "seed": cfg.seed,
        },
    }
    if cfg.calibration_dir:
        cal = discover(cfg.calibration_dir, cfg.breeds_tsv)
        data["calibration"] = {
            "name": Path(cfg.calibration_dir).name,
            "sha256": data_checksum(cal),
            "n_images": len(cal),
            "use": "temperature, threshold and margin only (cross-validated); never trained on",
        }
    return data


def write_artifact(result: TrainResult, fingerprint: str, kind: str) -> Path:
    cfg = result.config
    m = result.metrics
    out = Path(cfg.output or "")
    rule = m.get("decision_rule")
    if rule is not None:
        temperature = rule["temperature"]
        decision = {
            "review_threshold": rule["threshold"],
            "review_margin": rule["margin"],
            "target_precision": rule["target_precision"],
            "fitted_on": rule["fitted_on"],
        }
        reject = list(rule["reject_labels"])
    else:
        temperature = m["temperature"]
        decision = {"review_threshold": m["review"]["threshold"], "review_margin": 0.0}
        reject = []
    backbone = m.get("backbone")
    if backbone and cfg.weights and Path(cfg.weights).is_file():
        backbone = {
            **backbone,
            "weights_file": Path(cfg.weights).name,
            "weights_sha256": hashlib.sha256(Path(cfg.weights).read_bytes()).hexdigest(),
        }
    save_artifact(
        out,
        result.model,
        list(result.class_names),
        result.preprocessing,
        name=cfg.name,
        kind=kind,
        temperature=temperature,
        reject_labels=reject,
        decision=decision,
        quality_note=quality_note(kind, m),
        tta=cfg.tta,
        extra={
            "metrics": {k: v for k, v in m.items() if k not in ("backbone", "decision_rule")},
            "calibration_details": rule,
            "backbone": backbone,
            "training": portable_config(cfg),
            "data": provenance(result, fingerprint),
        },
    )
    if cfg.onnx:
        ship_onnx_or_warn(out)
    log.info("artifact written to %s", out)
    return out


def ship_onnx_or_warn(out: Path) -> None:
    """The artifact stays usable without its ONNX model (serving converts it once), so a
    missing converter or a failed export is a warning, not a failed training."""
    from labeler.model.runtime import ship_onnx

    try:
        ship_onnx(out)
    except ImportError as exc:
        log.warning("no model.onnx shipped (install labeler[onnx] to ship one): %s", exc)
    except Exception as exc:
        log.warning("no model.onnx shipped: the export failed: %s: %s", type(exc).__name__, exc)
