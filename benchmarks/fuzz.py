"""Corruption fuzzing over every way of coding, on the real-latent fixture of the tests (issue 19).

Every byte of each way's side string and 300 bytes of its y string (seeded), bit 0 and bit 5
flipped one at a time; each corrupted pair of streams must be refused (``BitstreamError``) or
decode to the true symbols, never to a wrong latent. Prints the counts per way and exits 1 if
any corruption decoded to a wrong latent.

    python benchmarks/fuzz.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

WAYS = ("default", "paper", "fallback", "static_backward", "pdf_backward", "ideal", "static")


def main() -> int:
    from real_latents import real_latent, real_model, real_symbols, symbols_of, ways_of_coding

    from encdist.errors import BitstreamError

    options = ways_of_coding()
    codec = real_model().adaptive_codec
    y, truth = real_latent(codec), real_symbols()
    total = {"refused": 0, "same symbols": 0, "wrong": 0}
    for way in WAYS:
        with torch.no_grad():
            enc = codec.compress(y, options[way])
        ys, ps = enc["strings"][0][0], enc["strings"][1][0]
        rng = np.random.default_rng(0)
        jobs = [("pdf", i) for i in range(len(ps))] + [("y", int(i)) for i in rng.choice(len(ys), 300, replace=False)]
        count = dict.fromkeys(total, 0)
        for which, pos in jobs:
            for bit in (0, 5):
                bad = bytearray(ps if which == "pdf" else ys)
                bad[pos] ^= 1 << bit
                strings = [[ys], [bytes(bad)]] if which == "pdf" else [[bytes(bad)], [ps]]
                try:
                    with torch.no_grad():
                        y_hat = codec.decompress(strings, enc["shape"], options[way])["y_hat"]
                except BitstreamError:
                    count["refused"] += 1
                    continue
                count["same symbols" if torch.equal(symbols_of(codec, y_hat), truth) else "wrong"] += 1
        print(f"{way}: y {len(ys)} bytes, side {len(ps)} bytes, {count}", flush=True)
        for k in total:
            total[k] += count[k]
    print(f"total: {total}")
    return 1 if total["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())
