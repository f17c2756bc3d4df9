"""Score runs on the short-text suite, per category, as a markdown table.

    python benchmarks/short/score.py runs/default                      # one run
    python benchmarks/short/score.py runs/a runs/b --out short.md      # runs as columns
    python benchmarks/short/score.py runs/a --no-imdb                  # the hand-made suite only

The hand-made suite is benchmarks/short/suite.tsv (regenerate with generate.py); the IMDB-derived
sentences are made from `--source` (the IMDB copy `imdbsent prepare` reads) at every call, from
the validation split, so no IMDB text is stored. See suite.py for the measures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import suite  # this folder: a script's own folder is first on sys.path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = Path("../shared/data/imdb")


def _split_args(run: Path) -> tuple[float, int] | None:
    """The split ratio and seed of the data a run was prepared from, when its manifest is readable."""
    try:
        from imdbsent import runs

        manifest = json.loads((Path(runs.load_config(run).data) / "manifest.json").read_text())
        return float(manifest["args"]["split_ratio"]), int(manifest["args"]["seed"])
    except Exception:  # a run moved off its data: nothing to compare
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories")
    parser.add_argument("--source", default=None,
                        help=f"IMDB as `imdbsent prepare` reads it (default: {DEFAULT_SOURCE}, from the "
                             "repository root)")
    parser.add_argument("--no-imdb", action="store_true", help="skip the IMDB-derived sentences")
    parser.add_argument("--imdb-reviews", type=int, default=suite.IMDB_REVIEWS,
                        help="validation reviews sampled (default %(default)s)")
    parser.add_argument("--split-ratio", type=float, default=suite.SPLIT_RATIO,
                        help="as given to imdbsent prepare (default %(default)s)")
    parser.add_argument("--split-seed", type=int, default=suite.SPLIT_SEED,
                        help="as given to imdbsent prepare --seed (default %(default)s)")
    parser.add_argument("--suite", type=Path, default=suite.SUITE, help="the hand-made suite file")
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    parser.add_argument("--json", type=Path, help="also write the raw results here, as JSON")
    parser.add_argument("--threads", type=int, default=None, help="compute threads (default: all cores)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.imdb_reviews < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--imdb-reviews and --threads must be 1 or more")

    from imdbsent import threads
    from imdbsent.errors import UserError
    from imdbsent.predict import Predictor

    threads.configure(args.threads)
    items = suite.load_suite(args.suite)
    header = [f"machine: {suite.machine()}",
              "command: `python benchmarks/short/score.py " + " ".join(sys.argv[1:] if argv is None
                                                                        else argv) + "`",
              f"hand-made suite: {args.suite.name}, {len(items)} one-line texts in "
              f"{len({it.category for it in items})} categories"]
    if not args.no_imdb:
        source = args.source or str(ROOT / DEFAULT_SOURCE)
        try:
            imdb = suite.imdb_items(source, args.imdb_reviews, split_ratio=args.split_ratio,
                                    split_seed=args.split_seed)
        except UserError as exc:
            print(f"error: {exc} (give --source, or --no-imdb)", file=sys.stderr)
            return 2
        items += imdb
        header.append(f"IMDB-derived: first and last sentence of {len(imdb) // 2} validation reviews "
                      f"(seed {suite.IMDB_SEED}; split {args.split_ratio:g}, seed {args.split_seed}) "
                      f"of {args.source or DEFAULT_SOURCE}, labeled by their review")
    results = []
    for run in args.runs:
        try:
            predictor = Predictor(run, args.device)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        split_args = _split_args(run)
        if not args.no_imdb and split_args not in (None, (args.split_ratio, args.split_seed)):
            print(f"warning: {run} was trained on a split {split_args[0]:g} with seed {split_args[1]}: "
                  "the IMDB-derived sentences may come from its training reviews", file=sys.stderr)
        name = run.name if [r.name for r in args.runs].count(run.name) == 1 else str(run)
        results.append(suite.score(predictor, items, name=name))
    text = suite.markdown(results, header=header)
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
