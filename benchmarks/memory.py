"""Section 5: peak memory the entropy coding adds on top of the transforms, at 4K and 8K.

A latent of a ``W x H`` image (``H/16 x W/16`` positions, ``C`` channels) with symbols of
spread 3 and one stray symbol of magnitude 128 (the worst case for the tables' width) is
coded by the default codec (p̂ + fallback + backward adaptation) of a
``bmshj2018-factorized-pdf`` of that latent size. Each measurement runs in a fresh process:
the peak resident memory (``VmHWM``, reset just before: ``/proc/self/clear_refs``) during
``compress`` (or ``decompress``) minus the resident memory just before it, when the latent
(or the streams) already exist. Target
(issue 13): at most 512 MB added at 7680x4320 with M=320.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict

TARGET_MB = 512.0


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {key}")


def _rss_mb() -> float:
    """Resident memory now; also resets the peak (VmHWM) to it, so that imports and set-up do not count."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


def _peak_mb() -> float:
    return _status_mb("VmHWM")


def _codec(C: int):
    import torch
    from compressai.registry import MODELS

    import encdist  # noqa: F401

    torch.manual_seed(0)
    model = MODELS["bmshj2018-factorized-pdf"](N=8, M=C).eval()  # the transforms' size does not matter here
    model.update()
    return model.adaptive_codec


def worker(what: str, h: int, w: int, C: int, path: str) -> Dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    codec = _codec(C)
    if what == "encode":
        g = torch.Generator().manual_seed(1)
        y = torch.round(torch.randn(1, C, h, w, generator=g) * 3) + codec._medians().view(1, -1, 1, 1)
        y[0, 0, h // 2, w // 2] += 128
        before = _rss_mb()
        t = time.perf_counter()
        with torch.no_grad():
            enc = codec.compress(y)
        dt = time.perf_counter() - t
        peak = _peak_mb()
        Path(path).write_bytes(json.dumps({"shape": enc["shape"], "y": enc["strings"][0][0].hex(), "pdf": enc["strings"][1][0].hex()}).encode())
        return {"added_mb": peak - before, "seconds": dt, "mode_byte": enc["strings"][1][0][0],
                "bytes": len(enc["strings"][0][0]) + len(enc["strings"][1][0])}
    data = json.loads(Path(path).read_bytes())
    strings = [[bytes.fromhex(data["y"])], [bytes.fromhex(data["pdf"])]]
    del data
    before = _rss_mb()
    t = time.perf_counter()
    with torch.no_grad():
        out = codec.decompress(strings, (h, w))
    dt = time.perf_counter() - t
    peak = _peak_mb()
    assert out["y_hat"].shape == (1, C, h, w)
    return {"added_mb": peak - before, "seconds": dt}


def section_memory(args, prof) -> Dict[str, Any]:
    import common as C

    rows = []
    tmp = Path(args.work_dir) / "memory"
    tmp.mkdir(parents=True, exist_ok=True)
    for H, W in prof["memory_sizes"]:
        for ch in prof["memory_channels"]:
            h, w = H // 16, W // 16
            f = tmp / f"{W}x{H}-{ch}.json"
            row = {"image": f"{W}x{H}", "latent": f"{ch}x{h}x{w}", "channels": ch}
            for what in ("encode", "decode"):
                C.log(f"memory: {what} {W}x{H}, C={ch} (fresh process)")
                proc = subprocess.run([sys.executable, __file__, what, str(h), str(w), str(ch), str(f)],
                                      capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
                if proc.returncode != 0:
                    row[what] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
                else:
                    row[what] = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            f.unlink(missing_ok=True)
    res: Dict[str, Any] = {"rows": rows, "method": __doc__.split("\n\n")[1].replace("\n", " ")}
    big = [r for r in rows if r["image"] == "7680x4320" and r["channels"] == 320]
    if big and all("added_mb" in big[0][k] for k in ("encode", "decode")):
        v = max(big[0]["encode"]["added_mb"], big[0]["decode"]["added_mb"])
        res["target"] = {"target": f"<= {TARGET_MB:g} MB added at 7680x4320, M=320 (encoder and decoder)", "value": v, "met": v <= TARGET_MB}
    return res


if __name__ == "__main__":
    what, h, w, ch, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    print(json.dumps(worker(what, h, w, ch, path)))
