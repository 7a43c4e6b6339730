"""Screenshot TensorBoard's dashboards of a run with headless Chromium (for the README).

    python -m experiments.screenshot_dashboards runs/ablation/<run> --out docs/img

Starts `tensorboard --logdir RUN` on 127.0.0.1, opens the scalar and image dashboards in
headless Chromium (Debian package `chromium`), and writes scalars.png and images.png
(replacing ones already in ``--out`` only with ``--overwrite``).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from segopt.commands.outputs import add_overwrite_flag, refuse_to_overwrite

VIEWS = {
    "scalars": "#scalars&tagFilter=val%2F(mIoU%7Cdice%7Cacc%7Ciou)%7Closs",
    "images": "#images",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logdir")
    parser.add_argument("--out", default="docs/img")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1100)
    add_overwrite_flag(parser)
    args = parser.parse_args(argv)
    refuse_to_overwrite([Path(args.out) / f"{name}.png" for name in VIEWS], args.overwrite)
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        sys.exit("error: no Chromium found; install it (Debian: apt-get install chromium)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    board = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", args.logdir, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(60):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        with tempfile.TemporaryDirectory() as profile:
            for name, view in VIEWS.items():
                subprocess.run(
                    [
                        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--window-size={args.width},{args.height}",
                        "--hide-scrollbars", "--virtual-time-budget=20000", f"--screenshot={out / (name + '.png')}",
                        f"{url}?darkMode=false{view}",
                    ],
                    check=True, capture_output=True, timeout=120,
                )
                print(out / f"{name}.png")
    finally:
        board.terminate()


if __name__ == "__main__":
    main()
