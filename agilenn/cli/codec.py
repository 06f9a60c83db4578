"""``agilenn codec``: retune a trained model's feature codec without retraining.

Sets the zstd level and layout and, with ``--dictionary-size``, trains a zstd
dictionary on the payloads of the first ``--samples`` training images. With
``--layout rans`` it fits a rans prior (``--prior context``, or ``order0``: one
table per channel) on those payloads instead. The codec settings are part of
the model hash, so the result is a new model as far as the wire is concerned:
servers and devices must both load it.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from ..checkpoint import Checkpoint
from ..codec import LAYOUTS, fit_rans, train_dictionary
from ..entropy import PRIORS
from ..data import DATASET_HELP, dataset_spec, load_dataset
from ..errors import AgileNNError
from ..evaluate import device_symbols
from ..pretrained import DEFAULT_MODEL, load_checkpoint
from .common import fail, print_json, write_atomically


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agilenn codec", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layout", choices=sorted(LAYOUTS))
    parser.add_argument("--level", type=int, help="zstd level (1-22); layout rans has none")
    parser.add_argument("--dictionary-size", type=int, default=0, help="bytes; 0 = no dictionary")
    parser.add_argument("--prior", choices=sorted(PRIORS), default="context",
                        help="layout rans: the prior fitted on the training payloads")
    parser.add_argument("--dataset", type=dataset_spec, default="mnist", help=DATASET_HELP)
    parser.add_argument("--data-dir", help="training data for a dictionary or prior (default: $AGILENN_DATA)")
    parser.add_argument("--samples", type=int, default=10_000)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        checkpoint = load_checkpoint(args.model)
        layout = args.layout or checkpoint.codec.layout
        rans = layout == "rans"
        if rans and args.dictionary_size > 0:
            raise ValueError("layout rans takes no zstd dictionary")
        # Plain settings first: a dictionary or a prior is fitted anew below.
        settings = dataclasses.replace(checkpoint.codec, layout="bytes" if rans else layout, dictionary=b"",
                                       prior=b"", **({} if args.level is None else {"level": args.level}))
        if rans or args.dictionary_size > 0:
            train = load_dataset(args.dataset, "train", args.data_dir).head(args.samples)
            symbols = device_symbols(checkpoint.build_model(), train)
            settings = (fit_rans(settings, symbols, args.prior) if rans
                        else train_dictionary(settings, symbols, args.dictionary_size))
    except (AgileNNError, OSError, ValueError) as exc:
        return fail(str(exc))
    retuned = Checkpoint(checkpoint.config, settings, checkpoint.state_dict,
                         {**checkpoint.metadata, "codec_retuned_from": checkpoint.model_hash})
    write_atomically(args.out, retuned.to_bytes())
    print_json({"out": str(args.out), "model_hash": retuned.model_hash,
                "previous_model_hash": checkpoint.model_hash, "layout": settings.layout,
                "level": settings.level, "dictionary_bytes": len(settings.dictionary),
                "prior_bytes": len(settings.prior)})
    return 0
