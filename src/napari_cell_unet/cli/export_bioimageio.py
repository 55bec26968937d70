"""Write a model as a bioimage.io package (folder or .zip) for deepImageJ, ilastik, QuPath and bioimageio.core.

The package holds the weights (PyTorch state dict and TorchScript), the percentile normalisation and sigmoid as
pre/post-processing, a test input cut from a real image with the output this package computes for it, the model
card and the training data's citations. `load_model` / `--model` read such a package back. Exit status 0 when
written (and, with --test, when bioimageio.core's test passes), 1 when that test fails, 2 for a bad argument.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help='model .safetensors file, or "default" for the bundled model')
    parser.add_argument("--output", "-o", type=Path, required=True,
                        help="package to write: a folder, or a file ending in .zip")
    parser.add_argument("--image", type=Path,
                        help="real 2-D image whose centre 256x256 crop becomes the test input "
                             "(default: the bundled DSB 2018 nuclei sample)")
    parser.add_argument("--no-torchscript", action="store_true",
                        help="state dict weights only (the TorchScript copy is what tools without Python use)")
    parser.add_argument("--test", action="store_true",
                        help="then run bioimageio.core's own test of the package (CPU; exit 1 if it fails)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


def run(args: argparse.Namespace) -> int:
    from ..errors import OutputExistsError
    from ..model import export_bioimageio, load_model

    output: Path = args.output
    if output.exists() and not args.overwrite:
        raise OutputExistsError(f"{output}: already exists (add --overwrite to replace it)")
    image = None
    if args.image is not None:
        from ..io.images import read_image

        image = read_image(args.image)
    model = load_model(None if args.model == "default" else args.model)
    export_bioimageio(model, output, image=image, torchscript=not args.no_torchscript, overwrite=args.overwrite)
    print(f"bioimage.io package written to {output}")
    if not args.test:
        return 0
    from ..model.bioimageio import run_bioimageio_test

    summary = run_bioimageio_test(output)
    print(f"bioimageio.core test: {summary.status}")
    if summary.status != "passed":
        for detail in summary.details:
            for error in detail.errors:
                print(f"  {detail.name}: {error.msg.splitlines()[0] if error.msg else ''}", file=sys.stderr)
        return 1
    return 0
