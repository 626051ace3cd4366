"""The ``text3d-edu`` command: thin wrappers that parse arguments, call the library and say where results are.

Each sub-command lives in a ``_cmd_*`` function that imports what it needs lazily, so ``text3d-edu --help``
answers instantly without importing torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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


def _cmd_make_exercises(args: argparse.Namespace) -> int:
    from text3d_edu.grading import exercises

    if args.check:
        problems = exercises.stale_exercises(args.solutions, args.out)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(f"regenerate: text3d-edu make-exercises --solutions {args.solutions} --out {args.out}",
                  file=sys.stderr)
            return 1
        print(f"{args.out} is up to date with {args.solutions}")
        return 0
    written = exercises.make_exercises(args.solutions, args.out)
    print(f"{len(written)} student copies written to {args.out}: " + ", ".join(p.name for p in written))
    return 0


def _cmd_grade(args: argparse.Namespace) -> int:
    from text3d_edu.grading import grader, report
    from text3d_edu.grading.sandbox import Limits

    limits = Limits(cell_timeout=args.timeout, notebook_timeout=args.notebook_timeout,
                    memory_mb=args.memory_mb)
    results = grader.grade_notebooks(
        args.notebooks, solutions=args.solutions, limits=limits, jobs=args.jobs,
        on_result=lambda result: print(report.feedback(result), flush=True),
    )
    if args.json:
        report.write_json(results, args.json)
    if args.csv:
        report.write_csv(results, args.csv)
    failed = [r.notebook for r in results if not r.graded]
    print(f"graded {len(results) - len(failed)} of {len(results)} notebooks"
          + (f"; not graded: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


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

    p = sub.add_parser("make-exercises", help="generate the student copies (exercises/) from the masters")
    p.add_argument("--solutions", default="solutions", help="folder of master notebooks")
    p.add_argument("--out", default="exercises", help="the only folder written to")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 naming the out-of-date files")
    p.set_defaults(func=_cmd_make_exercises)

    p = sub.add_parser("grade", help="grade notebooks against their masters (a class's, or your own)")
    p.add_argument("notebooks", nargs="+", type=Path)
    p.add_argument("--solutions", type=Path, help="masters; default: the repository's solutions/")
    p.add_argument("--json", type=Path, help="write every result to this JSON file")
    p.add_argument("--csv", type=Path, help="write a gradebook (one row per notebook) to this CSV file")
    p.add_argument("--jobs", type=int, default=1, help="notebooks graded at once (one kernel each)")
    p.add_argument("--timeout", type=float, default=120, help="seconds per cell")
    p.add_argument("--notebook-timeout", type=float, default=900, help="seconds per notebook")
    p.add_argument("--memory-mb", type=int, default=4096,
                   help="heap limit per notebook (Linux); importing torch alone needs ~1000")
    p.set_defaults(func=_cmd_grade)

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
