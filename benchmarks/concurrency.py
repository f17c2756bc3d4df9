"""Concurrency benchmark: does `imdbsent evaluate` keep its pace beside a training run, and what
does that cost a lone process? Writes benchmarks/CONCURRENCY.md.

    python benchmarks/concurrency.py --source ../shared/data/imdb

It prepares the full data into benchmarks/work/ (no word vectors, ~25 s), trains the `default`
recipe for one epoch without vectors (the time of an evaluation does not depend on the epochs;
~70 s) unless that run is already there, then times `imdbsent evaluate RUN` on the test split,
each scenario `--repeats` times (median):

  (a) alone, this checkout's committed code (HEAD, extracted with `git archive` into
      benchmarks/work/, so that edits in progress in the working tree play no part);
  (b) beside a running `imdbsent train --config nbow` on the same data (the train is started,
      the evaluation begins once it is in its first epoch, then the train is killed);
  (c) alone, the code of commit 8591bf0 (before threads.py), extracted the same way;
  (d) once, the old code beside an old `nbow` train, cut off after --old-beside-cap seconds
      (the collapse the fix is for; 0 skips it);
  (e), (f) as (c) and (b) with the old code and OMP_WAIT_POLICY=PASSIVE for every process: the
      fix first proposed, measured for comparison.

Each code base is imported through PYTHONPATH (checked with `imdbsent.__file__`). (a), (c) and
(e) alternate, so a slow drift of the machine hits them alike. Every command runs as
`python -m imdbsent` with OMP_WAIT_POLICY, OMP_NUM_THREADS, GOMP_SPINCOUNT, MKL_NUM_THREADS and
RAYON_NUM_THREADS removed from its environment, so each code base runs with its own defaults.

Numbers need a quiet machine: before each timed run the script waits until no process outside
its own tree runs pytest, imdbsent or a benchmark and other processes used under
--quiet-cores of a core for a few seconds; a run during which other processes used more than
--quiet-cores on average (or showed up as pytest/imdbsent) is discarded and run again.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "work"
OLD_COMMIT = "8591bf0"
CLEAN_ENV = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "MKL_NUM_THREADS",
             "RAYON_NUM_THREADS", "PYTHONPATH")
FOREIGN = re.compile(r"pytest|imdbsent|benchmarks/\w+\.py")
TICK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the processes of this machine -------------------------------------------------------------

def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, CPU ticks used, command line) of every live process."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        found[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), cmd)
    return found


def own_tree(procs: dict[int, tuple[int, int, str]]) -> set[int]:
    """This script and its descendants."""
    mine, changed = {os.getpid()}, True
    while changed:
        changed = False
        for pid, (ppid, _, _) in procs.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                changed = True
    return mine


def busy_ticks() -> int:
    """CPU ticks the whole machine has spent on anything but idling, since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # minus idle and iowait


def own_ticks() -> tuple[float, dict[int, int]]:
    """Ticks used by this script and its reaped children, and by each live descendant."""
    t = os.times()
    procs = processes()
    return ((t.user + t.system + t.children_user + t.children_system) * TICK,
            {pid: procs[pid][1] for pid in own_tree(procs) if pid != os.getpid()})


class Watch:
    """While open: the CPU the machine spent outside this script's tree (all busy ticks minus
    its own), which pytest/imdbsent processes of others ran (sampled once a second), and the
    most threads the pid in `pid` had."""

    def __init__(self) -> None:
        self.foreign_names: set[str] = set()
        self.max_threads = 0
        self.pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._start, self._busy, self._own = time.time(), busy_ticks(), own_ticks()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seconds = time.time() - self._start
        own_then, live_then = self._own
        own_now, live_now = own_ticks()
        own = own_now - own_then + sum(t - live_then.get(pid, 0) for pid, t in live_now.items())
        self.foreign_ticks = max(0.0, busy_ticks() - self._busy - own)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            now = processes()
            mine = own_tree(now)
            for pid, (_, _, cmd) in now.items():
                if pid not in mine and FOREIGN.search(cmd) and "concurrency.py" not in cmd:
                    self.foreign_names.add(cmd[:80])
            if self.pid is not None:
                try:
                    self.max_threads = max(self.max_threads,
                                           len(os.listdir(f"/proc/{self.pid}/task")))
                except OSError:
                    pass

    def foreign_cores(self) -> float:
        """Average cores used by other processes while watched (after the watch is closed)."""
        return self.foreign_ticks / TICK / max(self.seconds, 1e-9)


def wait_quiet(limit: float) -> float:
    """Block until no foreign pytest/imdbsent process runs and other processes used under
    `limit` cores over two consecutive 3-second windows; returns the 1-minute load average."""
    calm, waited = 0, 0.0
    while calm < 2:
        with Watch() as w:
            time.sleep(3)
        if w.foreign_names or w.foreign_cores() >= limit:
            calm = 0
            waited += 3
            if waited % 30 < 3:
                log(f"waiting for a quiet machine: others use {w.foreign_cores():.2f} cores"
                    + (f", running {sorted(w.foreign_names)[:3]}" if w.foreign_names else ""))
        else:
            calm += 1
    return float(Path("/proc/loadavg").read_text().split()[0])


# --- the commands ------------------------------------------------------------------------------

def env_for(src: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    env["PYTHONPATH"] = str(src)
    env["PYTHONWARNINGS"] = "ignore"
    return {**env, **(extra or {})}


def imdbsent(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "imdbsent", *args]


def check_import(src: Path) -> str:
    """The imdbsent module file that PYTHONPATH=src really imports."""
    path = subprocess.run([sys.executable, "-c", "import imdbsent; print(imdbsent.__file__)"],
                          env=env_for(src), capture_output=True, text=True, check=True).stdout.strip()
    if not Path(path).resolve().is_relative_to(src.resolve()):
        sys.exit(f"PYTHONPATH={src} imports {path}, not the code under test")
    return path


def source_of(commit: str) -> Path:
    """The src/ folder of `commit`, extracted once into benchmarks/work/ with git archive."""
    commit = subprocess.run(["git", "rev-parse", "--short", commit], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    folder = WORK / f"code-{commit}"
    if not (folder / "src" / "imdbsent" / "cli.py").exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", commit, "src"], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder / "src"


def setup(source: str, src: Path, data: Path, run: Path) -> None:
    log("prepare (reused when already prepared)")
    subprocess.run(imdbsent(["prepare", "--source", source, "--out", str(data), "--vectors-dim",
                             "0"]), env=env_for(src), cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    if not (run / "best.safetensors").exists():
        log("train the default recipe for 1 epoch")
        shutil.rmtree(run, ignore_errors=True)
        subprocess.run(imdbsent(["train", "--data", str(data), "--epochs", "1", "--vectors", "none",
                                 "--run-dir", str(run)]), env=env_for(src), cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)


def evaluate(env: dict[str, str], run: Path, cap: float) -> tuple[float, dict | None, Watch]:
    """Wall seconds of `imdbsent evaluate RUN --json` (None metrics when cut off at `cap`)."""
    with Watch() as watch:
        start = time.time()
        proc = subprocess.Popen(imdbsent(["evaluate", str(run), "--split", "test", "--json"]),
                                env=env, cwd=ROOT, stdout=subprocess.PIPE)
        watch.pid = proc.pid
        try:
            out, _ = proc.communicate(timeout=cap)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return time.time() - start, None, watch
        seconds = time.time() - start
    if proc.returncode != 0:
        sys.exit(f"evaluate failed with exit code {proc.returncode}")
    return seconds, json.loads(out), watch


class Trainer:
    """A `train --config nbow` on the same data, running in the background until stopped."""

    def __init__(self, env: dict[str, str], data: Path) -> None:
        self.run = WORK / "concurrency-nbow"
        shutil.rmtree(self.run, ignore_errors=True)
        self.proc = subprocess.Popen(
            imdbsent(["train", "--config", "nbow", "--data", str(data), "--epochs", "100",
                      "--run-dir", str(self.run)]),
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def wait_first_epoch(self) -> None:
        """Until the train has printed its parameter count (the line just before epoch 1), then
        2 s more, so that the evaluation starts beside the training loop itself."""
        line = self.proc.stdout.readline()
        if not line.startswith("The model has"):
            sys.exit(f"the nbow train did not start: {line!r}, exit {self.proc.poll()}")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # drain
        time.sleep(2)
        if self.proc.poll() is not None:
            sys.exit("the nbow train ended before the evaluation")

    def stop(self) -> bool:
        """Kill it; whether it was still running (in its epochs) until then."""
        running = self.proc.poll() is None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        shutil.rmtree(self.run, ignore_errors=True)
        return running


def beside(env: dict[str, str], data: Path, run: Path, cap: float):
    trainer = Trainer(env, data)
    try:
        trainer.wait_first_epoch()
        result = evaluate(env, run, cap)
    finally:
        running = trainer.stop()
    if not running:
        sys.exit("the nbow train ended during the evaluation: give it more epochs")
    return result


def measured(what: str, attempt, quiet: float, tries: int = 6):
    """Run `attempt()` (returns seconds, metrics, watch) on a quiet machine, again when other
    processes disturbed it; returns its seconds, metrics and the load average before it."""
    for _ in range(tries):
        load = wait_quiet(quiet)
        seconds, metrics, watch = attempt()
        if watch.foreign_names or watch.foreign_cores() >= quiet:
            log(f"{what}: {seconds:.1f} s discarded, other processes used "
                f"{watch.foreign_cores():.2f} cores {sorted(watch.foreign_names)[:3]}")
            measured.discarded += 1
            continue
        log(f"{what}: {seconds:.1f} s{'' if metrics else ' (cut off)'} (load before {load:.2f})")
        return seconds, metrics, load
    sys.exit(f"{what}: disturbed {tries} times; run it again on a quiet machine")


measured.discarded = 0


# --- the report --------------------------------------------------------------------------------

def machine(src: Path) -> str:
    """The machine as the other benchmarks describe it, with its memory and the intra-op
    threads torch starts with under the environment the timed commands get."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "short"))
    import suite
    threads = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                             env=env_for(src), capture_output=True, text=True,
                             check=True).stdout.strip()
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return f"{suite.machine()}, {mem:.0f} GiB, {threads} intra-op threads by default (GNU OpenMP)"


def explain(median: dict[str, float], new_commit: str, loops_balance: bool) -> str:
    """What the rows show, in words (with this run's figures)."""
    text = ("What the change does: each command calls `threads.configure()`, which measures for "
            "0.1 s how much CPU other processes use on the cores this process may run on and "
            "gives torch's intra-op pool the cores they leave idle (at least 1). Alone that is "
            "every core, with OpenMP's default wait policy (idle workers spin a while), so a lone "
            "run keeps its pace: (a) against (c). Beside the train, evaluate found both cores "
            "busy and computed with 1 thread, which never waits at an OpenMP barrier: (b). "
            "Before, both processes computed with 2 spinning threads each and evaluate "
            "collapsed: (d).")
    if "passive alone" in median:
        text += (" OMP_WAIT_POLICY=PASSIVE, the fix first proposed, avoids the collapse too "
                 f"(f), but makes a lone run {median['passive alone'] / median['old alone'] - 1:.0%} "
                 "slower (e), as every parallel region must wake a sleeping worker; so imdbsent "
                 "leaves the wait policy alone.")
    if not loops_balance:
        text += (f" In this run the train ({new_commit}) did not yet call `threads.balance()` in "
                 "its loop, so it kept the 2 threads it started with throughout.")
    return text


def fmt(values: list[float], cut: list[bool]) -> str:
    return ", ".join(("> " if c else "") + f"{v:.1f}" for v, c in zip(values, cut))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", required=True, help="The IMDB Parquet folder.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--old", default=OLD_COMMIT, help="The commit of the previous behaviour.")
    ap.add_argument("--old-beside-cap", type=float, default=180.0,
                    help="Seconds after which the old code's evaluation beside a train is cut "
                         "off (0: not measured).")
    ap.add_argument("--cap", type=float, default=600.0, help="Longest any other evaluation may take.")
    ap.add_argument("--no-passive", action="store_true", help="Skip (e) and (f).")
    ap.add_argument("--quiet-cores", type=float, default=0.1,
                    help="Most cores other processes may use during a measurement.")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "CONCURRENCY.md")
    args = ap.parse_args()

    WORK.mkdir(parents=True, exist_ok=True)
    new_src, old_src = source_of("HEAD"), source_of(args.old)
    new_commit = new_src.parent.name.removeprefix("code-")
    imports = [check_import(new_src), check_import(old_src)]
    log(f"new code ({new_commit}): {imports[0]}")
    log(f"old code ({args.old}): {imports[1]}")
    data, run = WORK / "concurrency-data", WORK / "concurrency-default"
    setup(args.source, new_src, data, run)

    codes = {"new": env_for(new_src), "old": env_for(old_src),
             "passive": env_for(old_src, {"OMP_WAIT_POLICY": "PASSIVE"})}
    alone_codes = ["new", "old"] + ([] if args.no_passive else ["passive"])
    beside_codes = ["new"] + ([] if args.no_passive else ["passive"])
    times: dict[str, list[float]] = {}
    cut: dict[str, list[bool]] = {}
    loads, accuracy = [], {}

    def record(key: str, result: tuple[float, dict | None, float]) -> None:
        seconds, metrics, load = result
        times.setdefault(key, []).append(seconds)
        cut.setdefault(key, []).append(metrics is None)
        loads.append(load)
        if metrics:
            accuracy[key] = metrics["accuracy"]

    for i in range(args.repeats):
        for code in alone_codes:
            record(f"{code} alone", measured(
                f"{code} alone {i + 1}", lambda env=codes[code]: evaluate(env, run, args.cap),
                args.quiet_cores))
    for code in beside_codes:
        for i in range(args.repeats):
            record(f"{code} beside", measured(
                f"{code} beside train {i + 1}",
                lambda env=codes[code]: beside(env, data, run, args.cap), args.quiet_cores))
    if args.old_beside_cap > 0:
        record("old beside", measured(
            "old beside train", lambda: beside(codes["old"], data, run, args.old_beside_cap),
            args.quiet_cores))
    if len(set(accuracy.values())) != 1:
        sys.exit(f"the code bases disagree on the test accuracy: {accuracy}")

    median = {k: statistics.median(v) for k, v in times.items()}
    loops_balance = any("threads.balance" in f.read_text()
                        for f in (new_src / "imdbsent").glob("*.py") if f.name != "threads.py")
    base = median["new alone"]
    ratio, cost = median["new beside"] / base, base / median["old alone"] - 1
    names = {"new": f"this change ({new_commit})", "old": f"before ({args.old})",
             "passive": f"before ({args.old}) + OMP_WAIT_POLICY=PASSIVE"}
    order = [("new alone", "(a) alone"), ("new beside", "(b) beside a running `train --config nbow`"),
             ("old alone", "(c) alone"), ("old beside", "(d) beside a running `train --config nbow`"),
             ("passive alone", "(e) alone"),
             ("passive beside", "(f) beside a running `train --config nbow`")]
    rows = []
    for key, label in order:
        if key in times:
            some_cut = any(cut[key])
            rows.append(f"| {label} | {names[key.split()[0]]} | {fmt(times[key], cut[key])} | "
                        + ("> " if some_cut else "") + f"{median[key]:.1f} | "
                        + ("> " if some_cut else "") + f"{median[key] / base:.2f} |")
    lines = [
        "# Concurrency: `imdbsent evaluate` alone and beside a training run",
        "",
        f"Written by `python benchmarks/concurrency.py --source {args.source}` on "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        f"Machine: {machine(new_src)}.",
        "",
        "Ran on a quiet machine: before each timed run the script waited until no other pytest, "
        f"imdbsent or benchmark process ran and other processes used under {args.quiet_cores} of "
        "a core; a run during which other processes used more (or a pytest/imdbsent process of "
        f"someone else appeared) was discarded and repeated ({measured.discarded} discarded). "
        f"1-minute load average before the timed runs: {min(loads):.2f} to {max(loads):.2f} "
        "(it includes this script's own previous run).",
        "",
        "Each figure is the wall time of the whole `imdbsent evaluate RUN --split test --json` "
        "command (start-up and model load included): the `default` recipe (bidirectional LSTM) "
        "trained for 1 epoch without word vectors, scored on the 25,000 test reviews of full "
        f"IMDB. Beside a train: `imdbsent train --config nbow` on the same data, started first; "
        "the evaluation starts 2 s into its first epoch and the train is killed after it. "
        f"Median of {args.repeats} ({'(d) once, ' if args.old_beside_cap > 0 else ''}cut off "
        f"after {args.old_beside_cap:.0f} s); the lone runs alternate. Each code base (the "
        f"committed HEAD {new_commit}, and {args.old} from before) was extracted with "
        "`git archive` into benchmarks/work/ and imported through PYTHONPATH, `imdbsent.__file__` "
        f"checked (`{Path(imports[0]).relative_to(ROOT)}`, `{Path(imports[1]).relative_to(ROOT)}`)."
        " Every command ran with OMP_WAIT_POLICY, OMP_NUM_THREADS, GOMP_SPINCOUNT, "
        "MKL_NUM_THREADS and RAYON_NUM_THREADS unset unless the row says otherwise.",
        "",
        "| scenario | code | wall s per run | median s | / (a) |",
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
        explain(median, new_commit, loops_balance),
        "",
        f"Test accuracy, the same in every scenario that finished: "
        f"{next(iter(accuracy.values())):.4%}.",
        "",
        "Targets:",
        "",
        f"- beside a train, evaluate takes at most 3x its time alone: {ratio:.2f}x, "
        + ("met." if ratio <= 3 else "**missed**."),
        f"- a lone run is not more than 5% slower than before: {cost:+.1%}, "
        + ("met." if cost <= 0.05 else "**missed**."),
        "",
    ]
    args.out.write_text("\n".join(lines))
    log(f"wrote {args.out}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
