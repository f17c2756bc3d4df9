"""Full-data benchmark: prepare IMDB, train every recipe in configs/, evaluate each on the test
split, measure speed and memory, add TF-IDF + logistic regression as the reference line, and
write benchmarks/RESULTS.md.

    python benchmarks/run.py --source ../shared/data/imdb            # every recipe
    python benchmarks/run.py --source ../shared/data/imdb --only nbow,cnn

Needs the `bench` extra (scikit-learn) for the reference line. Each training runs as its own
`imdbsent train` process, so its wall time and peak memory are the command's own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXE = Path(sys.executable).parent / "imdbsent"


def run_measured(cmd: list[str], log: Path) -> tuple[float, float, int]:
    """Run a command, its output to `log`; return wall seconds, peak RSS in MiB, exit status."""
    start = time.time()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    return time.time() - start, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def machine() -> str:
    import torch
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = len(os.sched_getaffinity(0))
    return (f"{threads} cores ({cpu}), {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}, "
            f"CUDA {'available' if torch.cuda.is_available() else 'not used'}")


def throughput(run: Path, source: Path) -> dict:
    """Reviews per second of Predictor.stream, as `imdbsent predict` scores a stream, over the
    raw test texts (model load excluded)."""
    import pyarrow.parquet as pq

    from imdbsent.predict import Predictor
    texts = pq.read_table(source / "test.parquet").column("text").to_pylist()
    predictor = Predictor(run)
    predictor.predict(texts[:512])  # warm-up
    start = time.time()
    for _ in predictor.stream(texts):
        pass
    seconds = time.time() - start
    return {"reviews": len(texts), "seconds": seconds, "per_second": len(texts) / seconds}


def tfidf_reference(source: Path, split_ratio: float, seed: int) -> dict:
    """TF-IDF (words and bigrams) + logistic regression on the same train split, test split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from imdbsent.data import split
    from imdbsent.sources import load_source
    src = load_source(str(source), unsupervised=False)
    train, _valid = split(src.splits["train"], split_ratio, seed)
    test = src.splits["test"]
    start = time.time()
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_df=0.95, sublinear_tf=True)
    clf = LogisticRegression(C=10.0, max_iter=1000)
    clf.fit(vec.fit_transform(train["text"]), train["label"])
    seconds = time.time() - start
    acc = (clf.predict(vec.transform(test["text"])) == test["label"]).mean()
    return {"test_acc": float(acc), "train_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="local IMDB copy")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    parser.add_argument("--only", default="", help="comma-separated recipe names")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    parser.add_argument("--throughput", nargs=2, metavar=("RUN", "SOURCE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.throughput:  # child mode: one predict throughput measurement, JSON on stdout
        print(json.dumps(throughput(Path(args.throughput[0]), Path(args.throughput[1]))))
        return

    from imdbsent import config, runs
    names = args.only.split(",") if args.only else config.recipe_names()
    args.work.mkdir(parents=True, exist_ok=True)
    data_dir = args.work / "data"
    command = " ".join([Path(sys.executable).name, "benchmarks/run.py", *sys.argv[1:]])
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"preparing {args.source}", flush=True)
    seconds, _, code = run_measured([str(EXE), "prepare", "--source", str(args.source),
                                     "--out", str(data_dir)], args.work / "prepare.log")
    if code:
        sys.exit(f"prepare failed: see {args.work / 'prepare.log'}")

    rows = []
    for name in names:
        cfg = config.load(name)
        run = args.work / "runs" / name
        if run.exists():
            import shutil
            shutil.rmtree(run)
        print(f"training {name}", flush=True)
        wall, rss, code = run_measured(
            [str(EXE), "train", "--config", name, "--data", str(data_dir), "--run-dir", str(run)],
            args.work / f"train-{name}.log")
        if code:
            print(f"  {name} failed (exit {code}): see {args.work / f'train-{name}.log'}")
            continue
        test = runs.read_metrics(run)[-1]
        epochs = runs.epoch_records(run)
        single = cfg.model.name != "ensemble"
        out = subprocess.run([sys.executable, __file__, "--source", str(args.source),
                              "--throughput", str(run), str(args.source)],
                             capture_output=True, text=True, check=True)
        tp = json.loads(out.stdout)
        rows.append({
            "recipe": name, "model": cfg.model.name, "test_acc": test["test_acc"],
            "epochs": f"{len(epochs)} ({test['best_epoch']})" if single else "-",
            "train_seconds": sum(e["seconds"] for e in epochs),
            "epoch_seconds": f"{sum(e['seconds'] for e in epochs) / len(epochs):.1f}"
            if single else "-",
            "command_seconds": wall, "peak_rss_mib": rss, "predict_per_second": tp["per_second"],
        })
        print(f"  {name}: test acc {test['test_acc']:.4f}, {wall:.0f} s", flush=True)

    print("TF-IDF + logistic regression", flush=True)
    try:
        ref = tfidf_reference(args.source, 0.7, 1234)
    except ImportError:
        ref = None
    memory = []
    if (args.work / "runs" / "default" / "best.safetensors").exists():
        from predict_memory import measure
        for n in (10_000, 1_000_000):
            print(f"predict memory, {n:,} lines", flush=True)
            memory.append((n, *measure(args.work / "runs" / "default", n)))
    write_results(args.out, rows, ref, memory, machine(), started, command)
    print(f"wrote {args.out}")


def write_results(path: Path, rows: list[dict], ref: dict | None, memory: list[tuple],
                  host: str, started: str, command: str) -> None:
    lines = [
        "# Benchmark results", "",
        f"- machine: {host}",
        f"- date: {started}",
        f"- command: `{command}`",
        "- data: full IMDB, train split 70/30 into train/valid (seed 1234), 25,000 test reviews",
        "", "| recipe | model | test acc | epochs (best) | s/epoch | training s | "
        "whole command s | predict reviews/s | peak RSS MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| `{r['recipe']}` | {r['model']} | {r['test_acc'] * 100:.2f}% | {r['epochs']} "
            f"| {r['epoch_seconds']} | {r['train_seconds']:.0f} | "
            f"{r['command_seconds']:.0f} | {r['predict_per_second']:,.0f} | "
            f"{r['peak_rss_mib']:,.0f} |")
    if ref:
        lines.append(f"| reference: TF-IDF 1-2 grams + logistic regression (scikit-learn) | "
                     f"linear | {ref['test_acc'] * 100:.2f}% | - | - | "
                     f"{ref['train_seconds']:.0f} | - | - | - |")
    if memory:
        lines += ["", "Streaming `imdbsent predict -` with the default recipe's run (short "
                  "review lines, one in five blank):", "",
                  "| lines in | rows out | wall s | lines/s | peak RSS MiB |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {n:,} | {rows_out:,} | {sec:.0f} | {n / sec:,.0f} | {rss:,.0f} |"
                  for n, sec, rss, rows_out in memory]
    if rows:
        best = max(rows, key=lambda r: r["test_acc"])
        lines += ["", f"best: configs/{best['recipe']}.toml", "", "## Targets (issue 3)", ""]
        lines += [f"- {line}" for line in check_targets({r["recipe"]: r for r in rows}, best)]
    notes = path.parent / "notes.md"
    if notes.exists():
        lines += ["", notes.read_text().rstrip()]
    path.write_text("\n".join(lines) + "\n")


def check_targets(by_name: dict[str, dict], best: dict) -> list[str]:
    """Each target of issue 3 against the measured numbers: met, or missed by how much."""
    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    out = []
    if d := by_name.get("default"):
        out.append(f"default: test accuracy >= 89.0% and the whole command <= 600 s: "
                   f"{d['test_acc'] * 100:.2f}%, {d['command_seconds']:.0f} s: "
                   f"{verdict(d['test_acc'] >= 0.89 and d['command_seconds'] <= 600)}")
        out.append(f"default: predict >= 1,000 reviews/s: {d['predict_per_second']:,.0f}: "
                   f"{verdict(d['predict_per_second'] >= 1000)}")
    out.append(f"best ({best['recipe']}): test accuracy >= 92.0%, training <= 1,200 s: "
               f"{best['test_acc'] * 100:.2f}%, {best['train_seconds']:.0f} s: "
               f"{verdict(best['test_acc'] >= 0.92 and best['train_seconds'] <= 1200)}")
    if n := by_name.get("nbow"):
        out.append(f"nbow: test accuracy >= 89.5% within 120 s of training: "
                   f"{n['test_acc'] * 100:.2f}%, {n['train_seconds']:.0f} s: "
                   f"{verdict(n['test_acc'] >= 0.895 and n['train_seconds'] <= 120)}")
        out.append(f"nbow: predict >= 6,000 reviews/s: {n['predict_per_second']:,.0f}: "
                   f"{verdict(n['predict_per_second'] >= 6000)}")
    if b := by_name.get("baseline"):
        out.append(f"baseline: near 50% and <= 60 s an epoch: {b['test_acc'] * 100:.2f}%, "
                   f"{b['epoch_seconds']} s: {verdict(float(b['epoch_seconds']) <= 60)}")
    return out


if __name__ == "__main__":
    main()
