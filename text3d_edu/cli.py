"""The ``text3d-edu`` command: thin wrappers that parse arguments, call the library and say where results are.

Each sub-command lives in a ``_cmd_*`` function that imports what it needs lazily, so ``text3d-edu --help``
answers instantly without importing torch.
"""

from __future__ import annotations

import argparse
import sys


def _cmd_world(args: argparse.Namespace) -> int:
    from text3d_edu import toyworld

    if args.list:
        print("kinds:   " + ", ".join(toyworld.KINDS))
        print("colours: " + ", ".join(toyworld.COLOURS))
        return 0
    obj = toyworld.parse_caption(args.caption) if args.caption else toyworld.sample_object(args.seed)
    path = toyworld.save_views(obj, args.out, n_views=args.views, resolution=args.resolution, seed=args.seed)
    print(f"{obj.caption!r}: {args.views} posed views written to {path}")
    return 0


def _cmd_nerf(args: argparse.Namespace) -> int:
    from text3d_edu import nerf

    result = nerf.fit_from_caption(
        args.caption, out_dir=args.out, field_kind=args.field, steps=args.steps, seed=args.seed
    )
    print(f"held-out PSNR {result['psnr_heldout']:.2f} dB after {result['steps']} steps "
          f"({result['seconds']:.1f} s); results in {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="text3d-edu", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("world", help="render posed views of a Pocket World object (or list the catalogue)")
    p.add_argument("caption", nargs="?", help='e.g. "a tall brown table"; random object when omitted')
    p.add_argument("--out", default="outputs/world")
    p.add_argument("--views", type=int, default=16)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--list", action="store_true", help="list the known kinds and colours")
    p.set_defaults(func=_cmd_world)

    p = sub.add_parser("nerf", help="fit a NeRF to posed views of a Pocket World object (lecture 01)")
    p.add_argument("caption", help='e.g. "a red mug"')
    p.add_argument("--out", default="outputs/nerf")
    p.add_argument("--field", choices=["grid", "classic"], default="grid")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_nerf)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:  # bad input: say what is wrong and how to fix it, without a traceback
        print(f"text3d-edu {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
