"""``edgefold pack`` and ``edgefold unpack``: one checked archive carries an exported folder to a device."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import args as flags


def add_parsers(commands) -> None:
    pack = commands.add_parser("pack", help="one archive for a device: the folder, pinned requirements, edgefold",
                               description="Write a .tar.gz holding the exported folder, a requirements.txt pinned "
                                           "to this machine's onnxruntime, numpy and tokenizers, and a "
                                           "runtime-only edgefold wheel.")
    pack.add_argument("folder")
    pack.add_argument("archive", type=Path)
    pack.add_argument("--overwrite", action="store_true", help="replace ARCHIVE if it exists")
    flags.add_no_verify(pack)
    pack.set_defaults(run=run_pack)

    unpack = commands.add_parser("unpack", help="write an archive's model folder to a new folder, checked",
                                 description="Check every member of an edgefold archive (no absolute paths, no "
                                             "'..', no links or devices), then write its model folder to DEST.")
    unpack.add_argument("archive", type=Path)
    unpack.add_argument("destination", type=Path)
    flags.add_no_verify(unpack)
    unpack.set_defaults(run=run_unpack)


def run_pack(args: argparse.Namespace) -> int:
    from edgefold.runtime.package import pack

    packed = pack(args.folder, args.archive, overwrite=args.overwrite, verify=not args.no_verify)
    print(f"wrote {packed['archive']} ({packed['bytes'] / 1e6:.1f} MB): {packed['model']}/ ({packed['files']} files), "
          f"requirements.txt, wheels/{packed['wheel']}")
    for line in packed["requirements"][1:]:
        print(f"  {line}")
    return 0


def run_unpack(args: argparse.Namespace) -> int:
    from edgefold.runtime.package import unpack

    print(f"wrote {unpack(args.archive, args.destination, verify=not args.no_verify)}")
    return 0
