"""``encdist-codec``: compress an image to a file and back with a trained run.

.. code-block:: bash

    encdist-codec encode photo.png -o photo.bin --run encdist_runs/runs/<hash>    # prints bpp
    encdist-codec decode photo.bin -o photo-decoded.png --run encdist_runs/runs/<hash>

The file (:mod:`encdist.codec.bitstream`: magic number, format version, the model's fingerprint,
the image size, every stream, a checksum) is all the decoder needs besides the run's
model; a file of another model or format version is refused with one line. The run's
weights are its last epoch's (:mod:`encdist.training.run_folder`).

``decode`` refuses a file whose (padded) image is over ``--max-pixels``
(:data:`encdist.codec.bitstream.MAX_DECODE_PIXELS` by default, an 8K frame) before
decoding anything: the header could declare any size. Raise it for trusted files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List

from encdist.errors import EncdistError
from encdist.evaluation.files import decode_file, encode_image, file_coding, pack

__all__ = ["main", "encode_image", "decode_file", "pack", "file_coding"]

PROG = "encdist-codec"


def _model(run: str, device: str):
    import torch

    from encdist.cli.eval import load_run
    from encdist.errors import ConfigError

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available here")
    model, conf, _ = load_run(run)
    model = model.to(device).eval()
    model.update()
    return model


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("encode", help="image -> file")
    e.add_argument("image")
    e.add_argument("-o", "--output", required=True, help="the file to write (e.g. photo.bin)")
    e.add_argument("--mode", default="adaptive", help="way of coding (encdist.latent_codecs.CODING_MODES; default: the run's)")
    d = sub.add_parser("decode", help="file -> image")
    d.add_argument("file")
    d.add_argument("-o", "--output", required=True, help="the image to write (PNG)")
    d.add_argument("--max-pixels", type=int, metavar="N",
                   help="largest image to decode, in pixels after padding (default: encdist.codec.bitstream.MAX_DECODE_PIXELS, "
                        "8192x4096); a file can declare any size, raise it only for trusted files")
    for q in (e, d):
        q.add_argument("--run", required=True, help="the run folder (or runner checkpoint) of the model")
        q.add_argument("--device", default="cpu", help="torch device (default cpu)")
    args = p.parse_args(argv)
    try:
        import torch
        import torchvision.transforms.functional as TF
        from PIL import Image

        import encdist  # noqa: F401
        from encdist.datasets import load_image
        from encdist.evaluation.results import write_atomic

        model = _model(args.run, args.device)
        if args.command == "encode":
            img = load_image(args.image)
            data = encode_image(model, TF.to_tensor(img).unsqueeze(0), args.mode)
            write_atomic(args.output, data)
            print(f"{args.output}: {len(data)} bytes, {8 * len(data) / (img.width * img.height):.4f} bpp ({img.width}x{img.height})")
        else:
            try:
                data = Path(args.file).read_bytes()
            except OSError as err:
                raise EncdistError(f"cannot read {args.file}: {err.strerror or err}") from None
            x_hat = decode_file(model, data, max_pixels=args.max_pixels)
            out = Path(args.output)
            out.parent.mkdir(parents=True, exist_ok=True)
            # Rounded to 8 bits (to_pil_image would truncate: a bias of half a level).
            pixels = x_hat[0].mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            Image.fromarray(pixels, "RGB").save(out)
            print(f"{out}: {x_hat.shape[-1]}x{x_hat.shape[-2]}")
    except EncdistError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
