"""Command line: ``python -m training {train,onnx,sweep,export-onnx,zero-shot} ...``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from training.options import add_config_options, config_values, parse_size

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEFAULT_DATA = SHARED / "data" / "stanford-dogs-train"
DEFAULT_TSV = SHARED / "data" / "breeds.tsv"


def _views(text: str) -> tuple[str, ...]:
    from training.views import VIEWS

    views = tuple(v for v in text.split(",") if v)
    unknown = [v for v in views if v not in VIEWS]
    if unknown or not views:
        raise argparse.ArgumentTypeError(f"views must be a comma list from {VIEWS}")
    return views


def _bool_flag(parser: argparse.ArgumentParser, name: str, default: bool, help: str) -> None:
    parser.add_argument(
        f"--{name}", action=argparse.BooleanOptionalAction, default=default, help=help
    )


def _data_args(p: argparse.ArgumentParser, **defaults: object) -> None:
    from training.train import DATA_OPTIONS, TrainConfig

    cli_defaults = {
        "data_dir": str(DEFAULT_DATA),
        "breeds_tsv": str(DEFAULT_TSV) if DEFAULT_TSV.is_file() else None,
        "run_dir": None,  # None: runs/<name>
    }
    add_config_options(p, TrainConfig, DATA_OPTIONS, {**cli_defaults, **defaults})


def _prep_args(
    p: argparse.ArgumentParser, names: tuple[str, ...] | None = None, **defaults: object
) -> None:
    from training.train import PREPROCESSING_OPTIONS, TrainConfig

    add_config_options(p, TrainConfig, names or PREPROCESSING_OPTIONS, defaults)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one model and write its artifact")
    _data_args(t)
    _prep_args(t)
    t.add_argument("--model", choices=("baseline", "transfer"), default="baseline")
    t.add_argument("--output", default=None, help="artifact directory, e.g. models/baseline-cnn")
    t.add_argument("--name", default=None, help="artifact name (default: output folder name)")
    _bool_flag(t, "augment", True, "rotation/zoom/contrast/flip during training")
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--optimizer", default="adam")
    t.add_argument("--learning-rate", type=float, default=None)
    t.add_argument(
        "--loss",
        choices=("sparse_categorical_crossentropy", "label_smoothing", "focal"),
        default="sparse_categorical_crossentropy",
    )
    t.add_argument("--patience", type=int, default=5, help="early stopping on val loss (0: off)")
    t.add_argument("--time-budget", type=float, default=None, help="seconds per training stage")
    t.add_argument("--filters", default="32,64,64,64")
    t.add_argument("--activation", default="relu")
    t.add_argument("--normalization", choices=("batchnorm", "dropout", "none"), default="batchnorm")
    t.add_argument("--head", choices=("flatten", "gap"), default="flatten")
    t.add_argument("--dropout", type=float, default=0.3)
    t.add_argument("--backbone", default="vgg16")
    t.add_argument(
        "--weights", default="imagenet", help="'imagenet', a local .weights.h5 file, or 'none'"
    )
    t.add_argument("--head-hidden", type=int, default=0)
    t.add_argument("--fine-tune-epochs", type=int, default=0)
    t.add_argument("--fine-tune-fraction", type=float, default=0.2)
    t.add_argument("--fine-tune-learning-rate", type=float, default=1e-5)
    t.add_argument("--fine-tune-max-train", type=int, default=None)
    t.add_argument(
        "--fine-tune-views",
        type=_views,
        default=(),
        help="training.views drawn per photo while fine-tuning, e.g. identity,zoomout",
    )
    t.add_argument("--target-accuracy", type=float, default=0.95)
    t.add_argument(
        "--review-min-rows",
        type=int,
        default=30,
        help="validation rows the target must hold on before a threshold is recommended",
    )
    t.add_argument(
        "--feature-views",
        type=_views,
        default=("identity",),
        help="comma list of training.views whose cached features train the head "
        "(identity,flip,zoomout,zoomin)",
    )
    t.add_argument("--head-dropout", type=float, default=0.2)
    t.add_argument("--head-l2", type=float, default=0.0)
    t.add_argument(
        "--calibration-data",
        default=None,
        help="full-frame photos (one folder per class) to fit temperature, threshold and "
        "margin on by cross-validation; never trained on",
    )
    t.add_argument("--calibration-folds", type=int, default=5)
    t.add_argument("--calibration-target", type=float, default=0.95, help="precision aimed for")
    t.add_argument(
        "--calibration-margins",
        type=lambda text: tuple(float(x) for x in text.split(",")),
        default=(0.0, 0.1, 0.2, 0.3),
    )
    t.add_argument(
        "--reject-classes",
        type=lambda text: tuple(x for x in text.split(",") if x),
        default=(),
        help="class ids (synsets) that are not dog breeds: always sent to review",
    )
    t.add_argument(
        "--tta", type=_views, default=("identity",), help="test-time views: identity[,flip]"
    )
    _bool_flag(t, "plots", True, "write learning curves, confusion matrix, confused pairs")
    _bool_flag(t, "onnx", True, "ship model.onnx in the artifact (needs the onnx extra)")

    s = sub.add_parser("sweep", help="rerun the study's comparisons on a subset")
    _data_args(s, max_classes=10, per_class=60)
    _prep_args(s, ("image_size",), image_size=(48, 48))
    s.add_argument("--epochs", type=int, default=8)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument(
        "--groups",
        default="all",
        help="comma list of: preprocessing,augmentation,optimizer,loss,activation,"
        "regularization,head,filters,backbone (default all)",
    )
    s.add_argument(
        "--backbone-weights",
        action="append",
        default=[],
        help="NAME=WEIGHTS for the backbone group, e.g. mobilenetv2=path.h5",
    )
    s.add_argument("--backbone-image-size", type=parse_size, default=(96, 96))
    s.add_argument("--out", default="runs/sweep")

    e = sub.add_parser(
        "export-onnx", help="ship model.onnx (checked against Keras) inside existing artifacts"
    )
    e.add_argument("artifacts", nargs="+", help="artifact folders, e.g. models/mobilenetv2-dogs")

    o = sub.add_parser(
        "onnx", help="an artifact served by ONNX Runtime from an ONNX backbone (no TensorFlow)"
    )
    from training.onnx_train import add_arguments

    add_arguments(o, SHARED)

    f = sub.add_parser(
        "feature-space",
        help="give an ONNX artifact the feature space labeler adapt refits on (answers unchanged)",
    )
    f.add_argument("artifact", help="artifact folder, e.g. models/efficientnet-lite2-dogs")
    f.add_argument("--data", default=str(SHARED / "data" / "stanford-dogs-train"))
    f.add_argument("--breeds-tsv", default=str(DEFAULT_TSV))
    f.add_argument("--per-class", type=int, default=30)
    f.add_argument("--dims", type=int, default=256)
    f.add_argument("--anchors-per-class", type=int, default=10)

    z = sub.add_parser("zero-shot", help="an ImageNet classifier restricted to the dog classes")
    z.add_argument("--backbone", default="vgg16")
    z.add_argument("--weights", default="imagenet", help="'imagenet' or a full (with top) file")
    z.add_argument("--breeds-tsv", default=str(DEFAULT_TSV))
    z.add_argument("--output", required=True)
    z.add_argument("--image-size", type=parse_size, default=(224, 224))
    z.add_argument("--name", default=None)
    z.add_argument("--evaluate", default=None, help="optional dataset folder to measure on")
    z.add_argument("--per-class", type=int, default=10)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "train":
        return _train(args)
    if args.command == "export-onnx":
        from labeler.model.runtime import ship_onnx

        for directory in args.artifacts:
            section = ship_onnx(directory)
            print(f"{directory}: model.onnx matches Keras within {section['max_difference']:.1g}")
        return 0
    if args.command == "onnx":
        from training.onnx_train import run_onnx

        run_onnx(args)
        return 0
    if args.command == "feature-space":
        from training.feature_space import add_to_artifact

        space = add_to_artifact(
            Path(args.artifact),
            Path(args.data),
            Path(args.breeds_tsv),
            per_class=args.per_class,
            dims=args.dims,
            anchors_per_class=args.anchors_per_class,
        )
        print(f"{args.artifact}: feature space {space.space}, {space.dims} dimensions")
        return 0
    if args.command == "sweep":
        from training.sweep import run_sweep

        run_sweep(args)
        return 0
    from training.zero_shot import run_zero_shot

    run_zero_shot(args)
    return 0


def _train(args: argparse.Namespace) -> int:
    from training.train import DATA_OPTIONS, PREPROCESSING_OPTIONS, TrainConfig, quality_note, run

    name = args.name or (Path(args.output).name if args.output else f"{args.model}-run")
    values = config_values(args, DATA_OPTIONS + PREPROCESSING_OPTIONS)
    values["run_dir"] = values["run_dir"] or f"runs/{name}"
    cfg = TrainConfig(
        **values,
        output=args.output,
        name=name,
        model=args.model,
        augment=args.augment,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        learning_rate=args.learning_rate,
        loss=args.loss,
        patience=args.patience,
        time_budget_s=args.time_budget,
        filters=tuple(int(f) for f in args.filters.split(",")),
        activation=args.activation,
        normalization=args.normalization,
        head=args.head,
        dropout=args.dropout,
        backbone=args.backbone,
        weights=None if args.weights == "none" else args.weights,
        head_hidden=args.head_hidden,
        fine_tune_epochs=args.fine_tune_epochs,
        fine_tune_fraction=args.fine_tune_fraction,
        fine_tune_learning_rate=args.fine_tune_learning_rate,
        fine_tune_max_train=args.fine_tune_max_train,
        fine_tune_views=args.fine_tune_views,
        target_accuracy=args.target_accuracy,
        review_min_rows=args.review_min_rows,
        feature_views=args.feature_views,
        head_dropout=args.head_dropout,
        head_l2=args.head_l2,
        calibration_dir=args.calibration_data,
        calibration_folds=args.calibration_folds,
        calibration_target=args.calibration_target,
        calibration_margins=args.calibration_margins,
        reject_classes=args.reject_classes,
        tta=args.tta,
        plots=args.plots,
        onnx=args.onnx,
    )
    result = run(cfg)
    m = result.metrics
    print(
        f"{name}: top1={m['top1']:.4f} top3={m['top3']:.4f} ece={m['ece']:.4f} "
        f"ece_calibrated={m['ece_calibrated']:.4f} T={m['temperature']:.3f} "
        f"review_threshold={m['review']['threshold']:.3f} "
        f"val_review_share={m['review']['val_review_share']:.3f} "
        f"test_review_share={m['review']['test_review_share']}"
    )
    if "fullframe" in m:
        print(quality_note("transfer", m))
    return 0
