"""A CPU-only torch wheel made from the torch that this interpreter has installed (the project's
.venv), for the runtime image of the kind tier.

Why: PyPI's torch for Linux x86_64 is the CUDA build. It needs 2.7 GB of NVIDIA libraries
(cuBLAS, cuDNN, NCCL, ...) and triton (0.7 GB) beside its own 1.1 GB, although a container here
never has a GPU; PyTorch's CPU index is not reachable from this machine. The CUDA build loads
those libraries at import (they are NEEDED by libtorch_cuda.so and friends), so they cannot just
be left out. This script writes ``torch-<version>+nocuda``, a wheel holding:

- torch, torchgen and functorch exactly as installed (no byte-code);
- the CUDA runtime (libcudart, 1 MB) as it is: on a machine without a GPU driver it answers
  "no device", so ``torch.cuda.is_available()`` is False, as with a CPU build;
- for every other NVIDIA library that torch's libraries name, a stub with the same soname and the
  same exported symbols (and symbol versions), each of which prints which function was called
  and aborts. They are called only for CUDA tensors, never on a CPU;
- torch's metadata without the NVIDIA and triton requirements (and without triton, which only
  ``torch.compile`` for GPUs uses).

The version is the installed one with the local label ``+nocuda`` (so ``torch==2.13.0`` is
satisfied). hack/kind/images.sh proves each image's torch imports, and the e2e scenarios run
TCPStore and gloo collectives on it.

Usage: .venv/bin/python hack/kind/torch_nocuda.py OUT_DIR   (prints the wheel's path)
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

#: Libraries kept as they are (small, and they answer "no device" without a driver).
KEEP = {"libcudart.so.13", "libcudart.so.12"}
#: Requirements left out of the wheel's metadata.
DROP_REQUIRES = re.compile(r"^Requires-Dist: (nvidia-|cuda-|triton)", re.IGNORECASE)
#: Symbols of the C++ runtime by their prefix (std::, operators new and delete, typeinfo of std::).
RUNTIME_PREFIXES = (
    "_ZSt",
    "_ZNSt",
    "_ZNKSt",
    "_ZZNSt",
    "_ZGVNSt",
    "_Znw",
    "_Zna",
    "_Zdl",
    "_Zda",
    "_ZTISt",
    "_ZTSSt",
    "_ZTVSt",
    "_ZTVN10__cxxabiv",
    "_ZTIN10__cxxabiv",
    "__cxa_",
    "__gxx_",
)
#: Symbols the linker defines itself.
LINKER_SYMBOLS = {"_init", "_fini", "_edata", "_end", "__bss_start"}


def needed(path: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def exports(path: Path) -> list[tuple[str, str, int, str | None]]:
    """(name, type, size, version or None) of every symbol ``path`` defines."""
    out = subprocess.run(
        ["readelf", "--dyn-syms", "--wide", str(path)], capture_output=True, text=True, check=True
    ).stdout
    symbols = []
    for line in out.splitlines():
        fields = line.split()
        if fields and re.fullmatch(r"\(\d+\)", fields[-1]):
            fields.pop()  # readelf's version index
        if len(fields) < 8 or not fields[0].rstrip(":").isdigit():
            continue
        # Num: Value Size Type Bind Vis Ndx Name, where Bind may be two words ("<OS specific>: 10",
        # a GNU unique symbol).
        kind, bind, ndx, full = fields[3], " ".join(fields[4:-3]), fields[-2], fields[-1]
        if ndx in ("UND", "ABS") or bind == "LOCAL" or kind in ("SECTION", "FILE"):
            continue  # ABS: a version's own definition symbol
        name, _, version = full.partition("@")
        if version.startswith("@"):
            version = version[1:]
        elif version:
            continue  # a non-default (older) version: nothing here links against those
        if name in LINKER_SYMBOLS:
            continue
        size = int(fields[2], 0) if fields[2].isdigit() else int(fields[2], 16)
        symbols.append((name, kind, size, version or None))
    return symbols


def runtime_symbols() -> set[str]:
    """What the C and C++ runtimes define: some NVIDIA libraries link parts of libstdc++
    statically and export them (operator delete, std::string, ...). A stub must leave those to
    the real runtime, which torch otherwise binds to the stub first."""
    names: set[str] = set()
    for lib in ("libstdc++.so.6", "libgcc_s.so.1", "libc.so.6", "libm.so.6"):
        path = subprocess.run(
            ["gcc", f"-print-file-name={lib}"], capture_output=True, text=True
        ).stdout.strip()
        if os.path.isabs(path) and os.path.exists(path):
            names.update(name for name, *_ in exports(Path(path)))
    if not names:
        sys.exit("torch_nocuda: cannot find libstdc++.so.6 and libc.so.6 (gcc -print-file-name).")
    return names


def build_stub(real: Path, out: Path, workdir: Path, runtime: set[str]) -> None:
    """``out``: a library with ``real``'s soname and exports, every function aborting."""
    symbols = [s for s in exports(real) if s[0] not in runtime and not s[0].startswith(RUNTIME_PREFIXES)]
    soname = real.name
    c = [
        "#include <stdio.h>",
        "#include <stdlib.h>",
        "static void etha_stub(const char *name) {",
        '  fprintf(stderr, "torch+nocuda: %s (' + soname + ") was called, but this torch has no CUDA "
        'libraries (hack/kind/torch_nocuda.py); use a CUDA build of torch for GPUs.\\n", name);',
        "  abort();",
        "}",
    ]
    versions: dict[str, list[str]] = {}
    for i, (name, kind, size, version) in enumerate(symbols):
        label = name.replace("\\", "\\\\").replace('"', '\\"')
        if kind in ("FUNC", "IFUNC", "NOTYPE"):
            c.append(f'void etha_f{i}(void) __asm__("{label}");')
            c.append(f'void etha_f{i}(void) {{ etha_stub("{label}"); }}')
        elif kind == "TLS":
            c.append(f'__thread char etha_t{i}[{max(size, 1)}] __asm__("{label}");')
        else:
            c.append(f'char etha_o{i}[{max(size, 1)}] __asm__("{label}") = {{0}};')
        if version:
            versions.setdefault(version, []).append(name)
    src = workdir / (soname + ".c")
    src.write_text("\n".join(c) + "\n")
    cmd = ["gcc", "-shared", "-fPIC", "-O0", "-o", str(out), f"-Wl,-soname,{soname}", str(src)]
    if versions:
        script = workdir / (soname + ".map")
        nodes = [f"{v} {{ global: {' '.join(n + ';' for n in names)} }};" for v, names in versions.items()]
        unversioned = [n for n, _, _, v in symbols if v is None]
        if unversioned:  # in a versioned library, the rest go with its first version
            first = next(iter(versions))
            nodes[0] = f"{first} {{ global: {' '.join(n + ';' for n in versions[first] + unversioned)} }};"
        script.write_text("\n".join(nodes) + "\n")
        cmd.append(f"-Wl,--version-script={script}")
    subprocess.run(cmd, check=True)
    subprocess.run(["strip", "--strip-unneeded", str(out)], check=True)


def record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def main() -> None:
    out_dir = Path(sys.argv[1])
    dist = importlib.metadata.distribution("torch")
    site = Path(str(dist.locate_file("")))
    version = f"{dist.version.split('+')[0]}+nocuda"
    files = [Path(str(f)) for f in dist.files or []]
    info_dir = next(f.parts[0] for f in files if f.parts[0].endswith(".dist-info"))
    payload = [
        f
        for f in files
        if f.parts[0] in ("torch", "torchgen", "functorch")
        and "__pycache__" not in f.parts
        and f.suffix != ".pyc"
    ]
    # The NVIDIA libraries torch's own libraries name, found where its RPATH looks (site/nvidia).
    by_name = {p.name: p for p in (site / "nvidia").rglob("*.so*") if p.is_file()}
    libs: dict[str, Path] = {}
    for f in payload:
        if ".so" in f.name:
            for name in needed(site / f):
                if name in by_name:
                    libs[name] = by_name[name]
    if not libs:
        sys.exit(f"torch {dist.version} at {site} names no NVIDIA library: it is a CPU build already.")
    wheel_info = (site / info_dir / "WHEEL").read_text()
    tag = re.search(r"^Tag: (.+)$", wheel_info, re.MULTILINE)
    assert tag, wheel_info
    metadata = "\n".join(
        ("Version: " + version if line.startswith("Version: ") else line)
        for line in (site / info_dir / "METADATA").read_text().splitlines()
        if not DROP_REQUIRES.match(line)
    )
    new_info = f"torch-{version}.dist-info"
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"torch-{version}-{tag.group(1)}.whl"
    tmp = wheel.with_suffix(".tmp")
    records = []
    runtime = runtime_symbols()
    with tempfile.TemporaryDirectory() as work, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:

        def add(arcname: str, data: bytes, mode: int = 0o644) -> None:
            zi = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))
            zi.external_attr = (0o100000 | mode) << 16
            z.writestr(zi, data)
            records.append(record_line(arcname, data))

        for f in payload:
            path = site / f
            add(f.as_posix(), path.read_bytes(), os.stat(path).st_mode & 0o777)
        for name, real in sorted(libs.items()):
            arcname = real.relative_to(site).as_posix()
            if name in KEEP:
                add(arcname, real.read_bytes(), 0o755)
                continue
            stub = Path(work) / name
            build_stub(real, stub, Path(work), runtime)
            add(arcname, stub.read_bytes(), 0o755)
        for extra in ("entry_points.txt", "top_level.txt"):
            if (site / info_dir / extra).exists():
                add(f"{new_info}/{extra}", (site / info_dir / extra).read_bytes())
        add(f"{new_info}/METADATA", (metadata + "\n").encode())
        add(f"{new_info}/WHEEL", wheel_info.encode())
        records.append(f"{new_info}/RECORD,,")
        z.writestr(
            zipfile.ZipInfo(f"{new_info}/RECORD", date_time=(2020, 1, 1, 0, 0, 0)), "\n".join(records) + "\n"
        )
    tmp.rename(wheel)
    stubbed = sorted(n for n in libs if n not in KEEP)
    print(f"torch_nocuda: {len(stubbed)} NVIDIA libraries stubbed ({', '.join(stubbed)})", file=sys.stderr)
    print(wheel)


if __name__ == "__main__":
    main()
