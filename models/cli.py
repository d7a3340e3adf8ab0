"""``triage-model``: train, export, calibrate and evaluate classifiers.

Heavy imports (torch, onnx, matplotlib) happen inside the sub-commands.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from models.extras import MissingExtra, missing_extra_line

__all__ = ["BACKBONE_NAMES", "HelpFormatter", "main"]

#: The keys of :data:`models.backbones.BACKBONES` (which needs torch; help must not).
BACKBONE_NAMES: tuple[str, ...] = (
    "resnet10t",
    "resnet18",
    "mobilenetv3_small",
    "mobilenetv3_large",
    "regnetx_004",
    "efficientnet_b0",
    "default",
    "plaincnn8",
    "gated_plaincnn8",
    "medimageinsight",
    "medimageinsight_tiny",
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show an option's default in its help, except for required options and defaults
    that say nothing (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def _cmd_train(args: argparse.Namespace) -> int:
    from models.sources import resolve_sources
    from models.train import TrainConfig, train

    if args.init:
        return _train_from(args)
    if args.backbone.startswith("medimageinsight"):
        return _train_mii(args)
    sources = resolve_sources(args.data, args.labels, args.images_root)
    cfg = TrainConfig(
        labels=sources[0].labels,
        images_root=sources[0].images_root,
        sources=[s.to_dict() for s in sources] if len(sources) > 1 else [],
        balance_view=args.balance_view,
        epoch_size=args.epoch_size,
        histeq_p=args.histeq_p,
        load_side=args.load_side,
        init_from=args.init_from,
        distill_weight=args.distill_weight,
        out_dir=args.out,
        backbone=args.backbone,
        input_size=args.input_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        seed=args.seed,
        threads=args.threads,
        workers=args.workers,
        max_minutes=args.max_minutes,
        max_train_images=args.max_train_images,
        augment=not args.no_augment,
        ema_decay=None if args.ema_decay <= 0 else args.ema_decay,
    )
    summary = train(cfg, resume=args.resume)
    print(
        json.dumps(
            {
                k: summary[k]
                for k in (
                    "best_val_auc",
                    "best_epoch",
                    "epochs_run",
                    "train_seconds",
                    "stop_reason",
                )
            },
            indent=2,
        )
    )
    return 0


def _train_from(args: argparse.Namespace) -> int:
    """``--init MODEL``: start from a model (:mod:`models.finetune`)."""
    from models.finetune import FinetuneConfig, finetune
    from models.sources import resolve_sources

    sources = resolve_sources(args.data, args.labels, args.images_root)
    if len(sources) != 1:
        raise ValueError("--init trains on one labels file (--labels/--images-root or one --data)")
    summary = finetune(
        FinetuneConfig(
            init=args.init,
            labels=sources[0].labels,
            images_root=sources[0].images_root,
            out_dir=args.out,
            name=args.name,
            version=args.version,
            epochs=args.epochs if args.epochs != 40 else 5,
            threads=args.threads,
            seed=args.seed,
        )
    )
    print(json.dumps(summary, indent=2))
    return 0


def _train_mii(args: argparse.Namespace) -> int:
    """MedImageInsight: the finetune/probe recipe of :mod:`models.mii_train`.

    Its learning rate, batch and input size are the recipe's; ``triage-model mii``
    exposes every option.
    """
    from models.mii_train import mii_main

    if not args.mii_checkpoint:
        raise ValueError(f"--backbone {args.backbone} needs --mii-checkpoint (a .safetensors file)")
    argv = [args.mii_mode, "--labels", args.labels, "--images-root", args.images_root]
    argv += ["--out", args.out, "--checkpoint", args.mii_checkpoint, "--threads", str(args.threads)]
    argv += ["--variant", "tiny" if args.backbone.endswith("_tiny") else "full"]
    argv += ["--seed", str(args.seed)]
    if args.max_train_images:
        argv += ["--max-train-images", str(args.max_train_images)]
    if args.mii_mode == "finetune":
        argv += ["--epochs", str(args.epochs)]
    return mii_main(argv)


def _cmd_export(args: argparse.Namespace) -> int:
    from models.export import export_checkpoint
    from models.mii_train import export_run, is_mii_run

    if is_mii_run(args.checkpoint):
        results = export_run(
            args.checkpoint,
            args.out,
            fp16=args.fp16,
            name=args.name if args.name != "cxr-triage-default" else "cxr-triage-mii",
            version=args.version,
            opset=args.opset,
            atol=args.atol,
        )
        print(json.dumps(results, indent=2))
        return 0
    if args.fp16:
        raise ValueError("--fp16 is available for MedImageInsight runs only")
    result = export_checkpoint(
        args.checkpoint,
        args.out,
        opset=args.opset,
        atol=args.atol,
        name=args.name,
        version=args.version,
    )
    print(f"ONNX written to {result['path']}")
    print(
        f"ONNX checker: ok; parity max abs difference: logits {result['max_abs_diff_logits']:.3e}, "
        f"embedding {result['max_abs_diff_embedding']:.3e} (limit {args.atol:g})"
    )
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from models.evaluate import calibrate_model
    from models.multisource import calibrate_sources
    from models.sources import resolve_sources

    if args.data:
        card = calibrate_sources(
            args.model,
            resolve_sources(args.data, args.labels, args.images_root),
            split=args.split,
            target_sensitivity=args.target_sensitivity,
        )
        print(
            json.dumps(
                {
                    "calibration": card.calibration,
                    "operating_points": card.operating_points,
                    "population_operating_points": card.population_operating_points,
                },
                indent=2,
            )
        )
        return 0
    if not (args.labels and args.images_root):
        raise ValueError("give --data LABELS:ROOT (repeatable) or --labels and --images-root")
    card = calibrate_model(
        args.model,
        labels=args.labels,
        images_root=args.images_root,
        split=args.split,
        target_sensitivity=args.target_sensitivity,
    )
    print(
        json.dumps(
            {"calibration": card.calibration, "operating_points": card.operating_points}, indent=2
        )
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from models.evaluate import evaluate_model
    from models.multisource import evaluate_sources
    from models.sources import resolve_sources

    if args.data:
        summary = evaluate_sources(
            args.model,
            resolve_sources(args.data, args.labels, args.images_root),
            out_dir=args.out,
            split=args.split or "test",
            variants=[v.strip() for v in args.variants.split(",") if v.strip()],
            n_boot=args.n_boot,
            update_card=args.update_card,
            checkpoint=args.checkpoint,
            title=args.title,
        )
        for name, e in summary["sources"].items():
            base = e.get("histogram_baseline", {}).get("roc_auc", {}).get("value", float("nan"))
            print(
                f"{name}: n={e['n']} ROC-AUC {e['roc_auc']['value']:.4f} "
                f"[{e['roc_auc']['ci_low']:.4f}, {e['roc_auc']['ci_high']:.4f}] "
                f"histogram baseline {base:.4f}"
            )
        print(f"report in {args.out}")
        return 0
    if not (args.labels and args.images_root):
        raise ValueError("give --data LABELS:ROOT (repeatable) or --labels and --images-root")
    metrics = evaluate_model(
        args.model,
        labels=args.labels,
        images_root=args.images_root,
        out_dir=args.out,
        split=args.split,
        variants=args.variants,
        n_boot=args.n_boot,
        update_card=args.update_card,
        title=args.title,
    )
    main_m = metrics["variants"][next(iter(metrics["variants"]))]["overall"]
    print(
        f"n={metrics['n']} ROC-AUC {main_m['roc_auc']['value']:.4f} "
        f"[{main_m['roc_auc']['ci_low']:.4f}, {main_m['roc_auc']['ci_high']:.4f}] "
        f"Brier {main_m['brier']['value']:.4f}; report in {args.out}"
    )
    return 0


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", default=None, help="labels.csv (image,label,...,split)")
    p.add_argument("--images-root", default=None, help="folder the image paths are relative to")
    p.add_argument(
        "--data",
        action="append",
        default=None,
        metavar="LABELS:ROOT[:WEIGHT[:POPULATION]]",
        help=(
            "a labelled source (repeatable): labels.csv, its images folder, its sampling "
            "weight (default 1) and the population of its rows without an age "
            "(adult/pediatric, default adult)"
        ),
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``triage-model``."""
    p = argparse.ArgumentParser(
        prog="triage-model", description=__doc__, formatter_class=HelpFormatter
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train",
        help="train a classifier from scratch on the train split",
        description="Train a Normal/Abnormal classifier on the rows of split 'train' of one"
        " labels.csv or several (--data), select the epoch on split 'val' (never 'test'),"
        " write checkpoints and"
        " summary.json to --out. Needs the 'train' extra.",
    )
    _add_data_args(t)
    t.add_argument("--out", required=True, help="run directory (checkpoints, summary.json)")
    t.add_argument(
        "--backbone",
        default="resnet10t",
        choices=BACKBONE_NAMES,
        metavar="BACKBONE",
        help="network; choices: %(choices)s (medimageinsight* need --mii-checkpoint)",
    )
    t.add_argument("--input-size", type=int, default=128, help="square input size in pixels")
    t.add_argument("--epochs", type=int, default=40, help="most epochs")
    t.add_argument("--batch-size", type=int, default=64, help="images per step")
    t.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW)")
    t.add_argument(
        "--patience", type=int, default=8, help="stop after this many epochs without a better val"
    )
    t.add_argument("--seed", type=int, default=20261123, help="random seed")
    t.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (1 + one augmentation worker suits 2 shared cores)",
    )
    t.add_argument("--workers", type=int, default=1, help="data-loading worker processes")
    t.add_argument(
        "--max-minutes", type=float, default=None, help="stop after this wall time (default: none)"
    )
    t.add_argument(
        "--max-train-images",
        type=int,
        default=None,
        help="use at most this many training images (default: all)",
    )
    t.add_argument("--no-augment", action="store_true", help="no data augmentation")
    t.add_argument("--ema-decay", type=float, default=0.995, help="weight EMA decay (0 disables)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.add_argument(
        "--balance-view",
        action="store_true",
        help="draw every view equally often within each source and label (view confound)",
    )
    t.add_argument("--epoch-size", type=int, default=None, help="draws per epoch")
    t.add_argument(
        "--histeq-p",
        type=float,
        default=0.0,
        help="probability of histogram equalisation / random percentile window augmentation",
    )
    t.add_argument("--load-side", type=int, default=256, help="longest side kept in memory")
    t.add_argument(
        "--init-from", default=None, help="ONNX model of the same backbone to start from"
    )
    t.add_argument(
        "--distill-weight",
        type=float,
        default=0.0,
        help="keep the --init-from model's outputs on pediatric training images (loss weight)",
    )
    t.add_argument(
        "--mii-checkpoint",
        default=None,
        help="MedImageInsight .safetensors (medimageinsight backbones)",
    )
    t.add_argument(
        "--mii-mode",
        choices=("finetune", "probe"),
        default="finetune",
        help="MedImageInsight: fine-tune the encoder or fit probes on frozen embeddings",
    )
    t.add_argument(
        "--init",
        default=None,
        help="start from this model: an ONNX file (a new head on its embedding) or a torch run "
        "directory/checkpoint (fine-tune every weight), on one labels file such as a node's "
        "dataset export; see models/finetune.py (--init-from is the multi-source recipe's)",
    )
    t.add_argument("--name", default="cxr-triage-site", help="the new model's name")
    t.add_argument("--version", default="0.1.0", help="version of the new model (--init)")
    t.set_defaults(func=_cmd_train)

    sub.add_parser(
        "mii", help="MedImageInsight: finetune, probe, export (all options: triage-model mii -h)"
    )

    e = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX with checker and parity check",
        description="Export a trained checkpoint (or a MedImageInsight run folder) to ONNX,"
        " embed the model card, run the ONNX checker and a parity check against the source"
        " model. Needs the 'train' extra.",
    )
    e.add_argument("checkpoint", help="best.pt of a run, or a MedImageInsight run folder")
    e.add_argument("--out", required=True, help="output .onnx path")
    e.add_argument("--name", default="cxr-triage-default", help="model name in the card")
    e.add_argument("--version", default="0.1.0", help="model version in the card")
    e.add_argument("--opset", type=int, default=17, help="ONNX opset")
    e.add_argument("--atol", type=float, default=1e-4, help="parity limit (max abs difference)")
    e.add_argument(
        "--fp16", action="store_true", help="MedImageInsight runs: also write <out>.fp16.onnx"
    )
    e.set_defaults(func=_cmd_export)

    c = sub.add_parser(
        "calibrate",
        help="fit temperature and operating points on a split (val)",
        description="Fit the temperature and the operating points of an ONNX model on one"
        " split (validation, never test) and store them in its card.",
    )
    c.add_argument("model", help="the .onnx file")
    _add_data_args(c)
    c.add_argument("--split", default="val", help="rows of this split")
    c.add_argument(
        "--target-sensitivity",
        type=float,
        default=0.98,
        help="sensitivity of the high_sensitivity operating point",
    )
    c.set_defaults(func=_cmd_calibrate)

    v = sub.add_parser(
        "evaluate",
        help="evaluate an ONNX model on a labels file",
        description="Score an ONNX model on a labels.csv: ROC-AUC, Brier, calibration,"
        " operating points and subgroups with bootstrap intervals; writes metrics.json,"
        " predictions.csv and report.md, then the plots (matplotlib, 'train' extra).",
    )
    v.add_argument("model", help="the .onnx file")
    _add_data_args(v)
    v.add_argument(
        "--checkpoint",
        default=None,
        help="with --data: the model's best.pt, to draw class-activation maps of adult positives",
    )
    v.add_argument("--out", required=True, help="output folder")
    v.add_argument("--split", default=None, help="only rows of this split (default: all rows)")
    v.add_argument(
        "--variants",
        default="original",
        help="comma list of: original, histeq, jpeg30_96px, jpeg15, mono1_dicom, "
        "j2k_mono1_dicom, lowres64",
    )
    v.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    v.add_argument(
        "--update-card",
        action="store_true",
        help="store the metrics in the model card (ONNX metadata and sidecar)",
    )
    v.add_argument("--title", default=None, help="report title (default: the file names)")
    v.set_defaults(func=_cmd_evaluate)
    for action in p._actions:  # noqa: SLF001 - argparse has no public walk
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for child in action.choices.values():
                child.formatter_class = HelpFormatter
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``triage-model`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["mii"]:
        try:
            from models.mii_train import mii_main
        except ModuleNotFoundError as exc:
            line = missing_extra_line(exc, "triage-model mii")
            if line is None:
                raise
            print(line, file=sys.stderr)
            return 2
        return mii_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except MissingExtra as exc:
        print(f"triage-model {args.command}: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        line = missing_extra_line(exc, f"triage-model {args.command}")
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"triage-model {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
