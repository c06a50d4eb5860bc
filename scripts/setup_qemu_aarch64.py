"""Pre-build the emulated aarch64 device (Debian arm64 rootfs + TVM runtime wheels), so tests and CI don't wait.

Usage: python scripts/setup_qemu_aarch64.py [--cache-dir DIR]
Prints the rootfs path. Building takes 0.5-1.5 min once; later calls return at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgec.devices.qemu_aarch64 import default_cache_dir, ensure_device
from edgec.errors import EdgecError


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help=f"where the rootfs lives (default: {default_cache_dir()})")
    a = ap.parse_args(argv)
    try:
        device = ensure_device(a.cache_dir)
    except EdgecError as e:
        print(f"error: {e.message}" + (f"\n  fix: {e.hint}" if e.hint else ""), file=sys.stderr)
        return 2
    print(device.rootfs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
