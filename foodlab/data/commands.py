"""``foodlab data synth`` and ``foodlab data info``. Heavy imports stay inside the handlers."""
from __future__ import annotations

import argparse


def add_commands(sub) -> None:
    data = sub.add_parser("data", help="synthetic data and dataset inspection")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    p = dsub.add_parser("synth", help="write N procedural food image/mask pairs")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, required=True, help="number of pairs")
    p.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", type=int, default=8, help="food classes (mask ids 1..C, 0 = background)")
    p.add_argument("--layout", choices=("pairs", "foodseg103"), default="pairs")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.set_defaults(func=_synth)

    p = dsub.add_parser("info", help="layout, counts and skipped files of a dataset folder")
    p.add_argument("root")
    p.add_argument("--layout", default="auto", help="auto | pairs | foodseg103 | uecfoodpix")
    p.add_argument("--split", default=None)
    p.add_argument("--index", default="manifest", choices=("decode", "stat", "manifest"))
    p.add_argument("--rescan", action="store_true", help="ignore an existing manifest")
    p.add_argument("--verify", action="store_true",
                   help="check every file's content now (format from its magic bytes, JPEG/PNG structure, a decode "
                        "for other formats; manifest index; by default a file is checked when first loaded) and "
                        "remember the bad ones, so later opens skip them")
    p.set_defaults(func=_info)


def _synth(args: argparse.Namespace) -> int:
    import time

    from foodlab.data.synth import generate_synthetic

    start = time.perf_counter()
    out = generate_synthetic(args.out, args.n, size=args.size, seed=args.seed, classes=args.classes,
                             layout=args.layout, workers=args.workers)
    secs = time.perf_counter() - start
    print(f"wrote {args.n} pairs ({args.layout}, {args.size}px, seed {args.seed}) to {out} "
          f"in {secs:.1f} s ({1000 * secs / args.n:.2f} ms/image)")
    return 0


def _info(args: argparse.Namespace) -> int:
    import collections
    import time

    from foodlab.data.index import build_index
    from foodlab.data.layouts import resolve_layout
    from foodlab.data.validity import check_bad_fraction

    layout = resolve_layout(args.root, args.layout, args.split)   # errors: one line from cli.main
    start = time.perf_counter()
    index = build_index(layout, args.index, rescan=args.rescan, check_bad=False, verify=args.verify)
    secs = time.perf_counter() - start
    print(f"root:     {layout.root}")
    print(f"layout:   {layout.name}" + (" (mask class id in the red channel)" if layout.mask_channel else ""))
    for fp in layout.folders:
        print(f"folders:  {fp.image_dir}  +  {fp.mask_dir}")
    print(f"index:    {index.strategy} ({index.source}, {secs:.3f} s)"
          + (f", manifest {index.manifest_path}" if index.manifest_path else ""))
    print(f"samples:  {len(index.samples)} kept of {index.n_found} images found")
    if index.strategy == "manifest":
        n_checked = int(index.checked[index.samples.rows].sum()) if len(index.samples) else 0
        print(f"checked:  {n_checked} of {len(index.samples)} pairs had their content checked at index time"
              + ("" if n_checked == len(index.samples) else
                 "; the rest are checked when loaded (run with --verify to check them all now)"))
    print(f"skipped:  {len(index.skipped)}")
    for reason, n in collections.Counter(r for _, r in index.skipped).most_common():
        print(f"  {n:6d} x {reason}")
    for path, reason in index.skipped[:50]:
        print(f"  {path}: {reason}")
    if len(index.skipped) > 50:
        print(f"  ... and {len(index.skipped) - 50} more")
    check_bad_fraction(index, layout.root)   # mostly bad: DatasetError, exit 1 with the reasons
    return 0
