"""The cases of the fault campaign (benchmarks/faults.py has what each class does and how it is judged).

A `Lab` holds the work folder, the reference runs and the random choices. Every case runs lmlab in
subprocesses (`python -m lmlab`, this checkout's src/ first on PYTHONPATH, one thread each) and
returns one result row: class, family, case, survived, why (when not), steps_lost, steps_redone,
max_dloss.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
STEPS, SAVE = 40, 8
FAMILIES = ["gpt2", "transfo-xl", "bert", "finetune"]
STAGES = ["weights", "optimizer", "state", "manifest", "committed"]
WORDS = "the cat sat on a mat and dog ran to big red house with small blue car".split()


class CaseFailed(Exception):
    """A case that did not survive: the message says what went wrong."""


@dataclass
class Reference:
    rows: dict  # ("train" | "val", step) -> the logged row
    weights: dict[str, torch.Tensor]
    span: float  # seconds from the first logged step to the last


def strict_rows(run: Path) -> list[dict]:
    """metrics.jsonl, every line strict JSON (no bare NaN/Infinity)."""
    def refuse(name):
        raise CaseFailed(f"bare {name} in metrics.jsonl")

    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line, parse_constant=refuse) for line in lines]


def logged_steps(run: Path) -> list[int]:
    """Steps with a training row so far, read while a run may be writing (a torn line is skipped)."""
    steps = []
    try:
        text = (run / "metrics.jsonl").read_text(errors="replace")
    except OSError:
        return steps
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "loss" in row:
            steps.append(row["step"])
    return steps


def valid_checkpoints(run: Path) -> list[int]:
    from lmlab.checkpoints.atomic import read_manifest
    from lmlab.errors import CheckpointError

    found = []
    for path in sorted((run / "checkpoints").glob("step-*")):
        if path.name.removeprefix("step-").isdigit():
            try:
                read_manifest(path)
                found.append(int(path.name.removeprefix("step-")))
            except CheckpointError:
                pass
    return sorted(found)


def leftovers(run: Path) -> list[str]:
    return [str(p) for p in run.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


def one_line(stderr: str, *expected: str) -> None:
    lines = stderr.strip().splitlines()
    if len(lines) != 1 or "Traceback" in stderr or not all(e in lines[0] for e in expected):
        raise CaseFailed(f"expected one line with {expected}, got: {stderr.strip()[-400:]!r}")


def shown(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return "/".join(map(shown, value)) if isinstance(value, list) else str(value)


def refused(done: subprocess.CompletedProcess) -> None:
    if done.returncode != 2:
        raise CaseFailed(f"expected a refusal (exit 2), got {done.returncode}: {done.stderr.strip()[-300:]}")
    one_line(done.stderr)


class Lab:
    def __init__(self, work: Path, rng: random.Random):
        self.work, self.rng = work, rng
        path = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
        self.env = {**os.environ, "PYTHONPATH": path, "LMLAB_CACHE": str(work / "cache"),
                    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        self.refs: dict[str, Reference] = {}
        self.bases: dict[str, Path] = {}
        self.mounts: list[Path] = []
        self.counter = 0
        self.lock = threading.Lock()

    # ------------------------------------------------------------ running lmlab

    def spawn(self, args, env: dict | None = None, **kw) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "lmlab", *map(str, args)],
                                env={**self.env, **(env or {})}, stdout=kw.pop("stdout", subprocess.PIPE),
                                stderr=subprocess.PIPE, text=True, **kw)

    def lmlab(self, args, env: dict | None = None, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
        proc = self.spawn(args, env, **kw)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            command = " ".join(map(str, args[:3]))
            raise CaseFailed(f"hung for more than {timeout:.0f} s: lmlab {command}") from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def argv(self, family: str, out: Path, resume: bool = False) -> list:
        common = ["--out", out, "--steps", STEPS, "--batch-size", 4, "--save-every", SAVE, "--eval-every", 20,
                  "--log-every", 1, "--device", "cpu", "--no-progress", *(["--resume"] if resume else [])]
        if family == "finetune":
            return ["finetune", self.work / "backbone", "--task", "classify", "--train",
                    self.work / "train.jsonl", "--dev", self.work / "dev.jsonl", *common]
        tokenizer = (["--tokenizer", "wordpiece", "--vocab-size", 64] if family == "bert"
                     else ["--tokenizer", "chars"])
        seq = ["--seq-len", 32] if family == "gpt2" else []
        return ["pretrain", "--model", family, "--data", self.work / "corpus.txt", *tokenizer, *seq,
                "--warmup", 4, "--set", "dropout=0.1", *common]

    def case_dir(self, name: str) -> Path:
        with self.lock:
            self.counter += 1
            path = self.work / "cases" / f"{self.counter:03d}-{name}"
        path.mkdir(parents=True)
        return path

    def wait_training(self, run: Path, proc: subprocess.Popen, resuming: bool = False,
                      timeout: float = 300) -> None:
        """Until the run has logged a step (a resumed one: a step after the checkpoint it resumed from,
        in the log it rewrote at its start), or has ended."""
        deadline = time.monotonic() + timeout
        log = run / "metrics.jsonl"
        old = log.stat().st_ino if resuming and log.exists() else None
        after = max(valid_checkpoints(run), default=0) if resuming else 0
        while proc.poll() is None:
            try:
                fresh = log.stat().st_ino != old
            except FileNotFoundError:
                fresh = False
            if fresh and max(logged_steps(run), default=0) > after:
                return
            if time.monotonic() > deadline:
                proc.kill()
                raise CaseFailed("the run logged nothing")
            time.sleep(0.02)

    # ------------------------------------------------------------ preparation

    def prepare(self) -> None:
        rng = random.Random(0)  # the data is the same for every seed
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) for _ in range(300)]
        (self.work / "corpus.txt").write_text("\n".join(lines) + "\n")
        for name, n in (("train.jsonl", 64), ("dev.jsonl", 16)):
            texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 8))) for _ in range(n)]
            (self.work / name).write_text("".join(json.dumps({"text": t, "label": "a" if "cat" in t else "b"})
                                                  + "\n" for t in texts))
        self._models(lines)
        for family in FAMILIES:
            self.refs[family] = self._reference(family)
        for family in ("gpt2", "transfo-xl"):  # stopped at step 24 with checkpoints 16 and 24
            base = self.work / "bases" / family
            done = self.lmlab(self.argv(family, base), env={"LMLAB_TEST_SIGNAL_AT": "24"})
            if done.returncode != 143 or valid_checkpoints(base) != [16, 24]:
                raise RuntimeError(f"could not prepare the {family} base run: {done.stderr[-2000:]}")
            self.bases[family] = base

    def _models(self, lines: list[str]) -> None:
        """The fine-tune's backbone and the Hugging Face folders the hostile-input cases spoil."""
        import lmlab
        from lmlab.checkpoints.convert import to_hf
        from lmlab.tokenizers.byte_bpe import ByteBPETokenizer
        from lmlab.tokenizers.wordpiece import WordPieceTokenizer

        torch.set_num_threads(1)
        torch.manual_seed(0)
        wordpiece = WordPieceTokenizer.train(lines, vocab_size=64)
        bert = lmlab.build("bert", "tiny", vocab_size=wordpiece.vocab_size)
        lmlab.save(bert, wordpiece, self.work / "backbone")
        to_hf(bert, wordpiece, self.work / "hf-bert")
        bpe = ByteBPETokenizer.train(lines, vocab_size=300)
        to_hf(lmlab.build("gpt2", "tiny", vocab_size=bpe.vocab_size), bpe, self.work / "hf-gpt2")
        (self.work / "secret.txt").write_text("SECRET-NOT-TO-BE-COPIED\n")

    def _reference(self, family: str) -> Reference:
        out = self.work / "refs" / family
        proc = self.spawn(self.argv(family, out))
        self.wait_training(out, proc)
        t0 = time.monotonic()
        while proc.poll() is None and max(logged_steps(out), default=0) < STEPS:
            time.sleep(0.02)
        span = time.monotonic() - t0  # the training loop, not the final save and plot after it
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"the {family} reference run failed: {err[-2000:]}")
        return Reference(self.history(out), load_file(str(out / "model.safetensors")), span)

    def history(self, run: Path) -> dict:
        """(kind, step) -> the logged row (tokens/s left out); a step logged twice is a mixed history."""
        rows = {}
        for row in strict_rows(run):
            key = ("train" if "loss" in row else "val", row["step"])
            if key in rows:
                raise CaseFailed(f"step {row['step']} is logged twice: two histories in one metrics.jsonl")
            rows[key] = {k: v for k, v in row.items() if k != "tokens_per_s"}
        return rows

    # ------------------------------------------------------------ judging

    def judge(self, run: Path, family: str) -> dict:
        """steps_lost and max_dloss of a run against its reference; CaseFailed if it is not the same run."""
        from lmlab.checkpoints.atomic import read_manifest

        ref, rows = self.refs[family], self.history(run)
        lost = sum(rows.get(key) != row for key, row in ref.rows.items()) + len(set(rows) - set(ref.rows))
        both = [abs(rows[k]["loss"] - r["loss"]) for k, r in ref.rows.items()
                if k[0] == "train" and k in rows and isinstance(rows[k].get("loss"), float)]
        max_dloss = max(both, default=None)
        if lost:
            raise CaseFailed(f"{lost} logged steps differ from the reference (max |dloss| {max_dloss})")
        weights = load_file(str(run / "model.safetensors"))
        if weights.keys() != ref.weights.keys() or not all(torch.equal(w, ref.weights[k])
                                                            for k, w in weights.items()):
            raise CaseFailed("the final weights differ from the reference")
        if leftovers(run):
            raise CaseFailed(f"temp files left: {leftovers(run)[:3]}")
        read_manifest(run)
        return {"steps_lost": 0, "max_dloss": max_dloss}

    def resume(self, family: str, run: Path) -> dict:
        done = self.lmlab(self.argv(family, run, resume=True))
        if done.returncode != 0 or "Traceback" in done.stderr:
            raise CaseFailed(f"resume failed ({done.returncode}): {done.stderr.strip()[-400:]}")
        return self.judge(run, family)

    def redone(self, run: Path) -> int:
        return max(logged_steps(run), default=0) - max(valid_checkpoints(run), default=0)

    # ------------------------------------------------------------ the plan

    def plan(self, quick: bool = False) -> tuple[list[tuple], dict[str, str]]:
        rng, reps = self.rng, 1 if quick else 3
        planned, skipped = [], {}
        for family in FAMILIES:
            for _ in range(reps):
                delays = [rng.random() for _ in range(rng.choice([1, 1, 2]))]  # a third: killed twice
                planned.append(("kill", family, {"delays": delays}))
            for _ in range(1 if quick else 2):
                planned.append(("kill-in-checkpoint", family, {"stage": rng.choice(STAGES),
                                                               "step": SAVE * rng.randint(1, STEPS // SAVE)}))
                planned.append(("sigterm", family, {"signal": rng.choice(["SIGTERM", "SIGTERM", "SIGINT"]),
                                                    "delay": rng.random()}))
            for _ in range(1 if quick else 2):  # from a third of a checkpoint to about three
                planned.append(("full-disk", family, {"fraction": rng.uniform(0.1, 1.1)}))
        disk = self.can_mount()
        if disk is not True:
            skipped["full-disk"] = disk
            planned = [p for p in planned if p[0] != "full-disk"]
        for family in ("gpt2", "transfo-xl"):
            for _ in range(reps):
                planned.append(("corrupt-checkpoint", family, {"mode": rng.choice(CORRUPTIONS), "both": False,
                                                               "seed": rng.randrange(1 << 30)}))
        planned.append(("corrupt-checkpoint", "gpt2", {"mode": "flip", "both": True,
                                                       "seed": rng.randrange(1 << 30)}))
        planned += [("concurrent", family, {"what": what}) for family, what in
                    (("gpt2", "new"), ("finetune", "new"), ("gpt2", "resume"), ("transfo-xl", "resume"))]
        planned += [("hostile-input", None, {"what": w}) for w in HOSTILE_INPUTS]
        planned += [("hostile-output", None, {"what": w}) for w in HOSTILE_OUTPUTS]
        return planned, skipped

    def run(self, planned: tuple) -> dict:
        kind, family, params = planned
        case = ", ".join(f"{k}={shown(v)}" for k, v in params.items() if k != "seed")
        row = {"class": kind, "family": family, "case": case, "params": params}
        t0 = time.monotonic()
        try:
            row.update(getattr(self, "case_" + kind.replace("-", "_"))(family, **params))
            row["survived"] = True
        except Exception as e:  # noqa: BLE001 - a case that breaks is a failed case, with its reason
            row.update(survived=False, why=f"{type(e).__name__}: {e}")
        row["wall_s"] = round(time.monotonic() - t0, 1)
        return row

    def cleanup(self) -> None:
        for mount in self.mounts:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)

    # ------------------------------------------------------------ the cases: training

    def case_kill(self, family: str, delays: list[float]) -> dict:
        run, redone = self.case_dir("kill") / "run", 0
        for i, fraction in enumerate(delays):
            proc = self.spawn(self.argv(family, run, resume=i > 0), stdout=subprocess.DEVNULL)
            self.wait_training(run, proc, resuming=i > 0)
            time.sleep(fraction * self.refs[family].span * 0.9)
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            redone += self.redone(run) if proc.returncode == -signal.SIGKILL else 0
        return {**self.resume(family, run), "steps_redone": redone}

    def case_kill_in_checkpoint(self, family: str, stage: str, step: int) -> dict:
        run = self.case_dir("ckpt") / "run"
        done = self.lmlab(self.argv(family, run), env={"LMLAB_TEST_CRASH_AT": f"{stage}@{step}"})
        if done.returncode != 137:
            raise CaseFailed(f"expected the crash hook's exit 137, got {done.returncode}: "
                             f"{done.stderr[-300:]}")
        redone = self.redone(run)
        return {**self.resume(family, run), "steps_redone": redone}

    def case_sigterm(self, family: str, signal: str, delay: float) -> dict:  # noqa: A002
        import signal as signals

        run = self.case_dir("term") / "run"
        sig = signals.Signals[signal]
        proc = self.spawn(self.argv(family, run), stdout=subprocess.DEVNULL)
        self.wait_training(run, proc)
        time.sleep(delay * self.refs[family].span * 0.9)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
        if "stopped by" in err:
            one_line(err, f"stopped by {signal} after step", "written; run the same command with --resume")
            if proc.returncode != 128 + sig or self.redone(run):
                raise CaseFailed(f"exit {proc.returncode}, {self.redone(run)} logged steps after the "
                                 f"checkpoint")
        elif proc.returncode not in (0, -sig, 130) or "Traceback" in err:  # came after the training loop
            raise CaseFailed(f"exit {proc.returncode} after {signal}: {err.strip()[-400:]}")
        redone = self.redone(run)
        return {**self.resume(family, run), "steps_redone": redone,
                "outcome": "stopped" if "stopped by" in err else "after the training loop"}

    def case_full_disk(self, family: str, fraction: float) -> dict:
        mount = self.case_dir("disk") / "disk"
        mount.mkdir()
        ref_ckpt = sum(f.stat().st_size for f in (self.work / "refs" / family / "checkpoints").rglob("*")
                       if f.is_file()) // 2
        self.mount(mount, max(64 << 10, int(ref_ckpt * fraction * 3)))  # 3 checkpoints' worth at 1.0
        run = mount / "run"
        try:
            done = self.lmlab(self.argv(family, run))
            if done.returncode != 0:
                one_line(done.stderr, "No space left on device", str(mount))  # naming the file
                if leftovers(run):
                    raise CaseFailed(f"temp files left after the full disk: {leftovers(run)[:3]}")
            written = [int(p.name.removeprefix("step-")) for p in (run / "checkpoints").glob("step-*")]
            if sorted(written) != valid_checkpoints(run):
                raise CaseFailed(f"checkpoints {sorted(written)}, of which valid {valid_checkpoints(run)}")
            redone = self.redone(run) if run.exists() else 0
            subprocess.run(["mount", "-o", "remount,size=512m", str(mount)], check=True, capture_output=True)
            result = self.resume(family, run)
        finally:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        outcome = done.stderr.strip()[-200:] if done.returncode else "the run fit"
        return {**result, "steps_redone": redone, "outcome": outcome}

    def can_mount(self) -> bool | str:
        if os.geteuid() != 0:
            return "needs root to mount a small tmpfs"
        probe = self.work / "mount-probe"
        probe.mkdir(exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)],
                              capture_output=True, text=True)
        if done.returncode:
            return f"mount -t tmpfs failed: {done.stderr.strip()[:120]}"
        subprocess.run(["umount", str(probe)], capture_output=True)
        return True

    def mount(self, path: Path, size: int) -> None:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                       capture_output=True)
        with self.lock:
            self.mounts.append(path)

    def case_corrupt_checkpoint(self, family: str, mode: str, both: bool, seed: int) -> dict:
        run = self.case_dir("corrupt") / "run"
        shutil.copytree(self.bases[family], run)
        rng = random.Random(seed)
        steps = [16, 24] if both else [24]
        spoiled = [spoil(run / "checkpoints" / f"step-{step}", mode, rng) for step in steps]
        before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
        done = self.lmlab(self.argv(family, run, resume=True))
        if both:
            refused(done)
            if "cannot resume from" not in done.stderr:
                raise CaseFailed(f"refused for another reason: {done.stderr.strip()}")
            if sorted(str(p.relative_to(run)) for p in run.rglob("*")) != before:
                raise CaseFailed("a refused resume changed the run dir")
            return {"steps_lost": 0, "max_dloss": None, "steps_redone": 0, "spoiled": spoiled}
        if done.returncode != 0 or "Traceback" in done.stderr:
            raise CaseFailed(f"resume failed ({done.returncode}): {done.stderr.strip()[-400:]}")
        return {**self.judge(run, family), "steps_redone": 24 - 16, "spoiled": spoiled}

    def case_concurrent(self, family: str, what: str) -> dict:
        run = self.case_dir("conc") / "run"
        if what == "resume":
            shutil.copytree(self.bases[family], run)
        n = 3 if what == "new" else 2
        procs = [self.spawn(self.argv(family, run, resume=what == "resume"), stdout=subprocess.DEVNULL)
                 for _ in range(n)]
        codes, errs = [], []
        for proc in procs:
            _, err = proc.communicate(timeout=600)
            codes.append(proc.returncode)
            errs.append(err)
        if codes.count(0) < 1 or (what == "new" and codes.count(0) != 1):
            raise CaseFailed(f"exit codes {codes}: {[e.strip()[-200:] for e in errs]}")
        for code, err in zip(codes, errs, strict=True):
            if code == 2:
                one_line(err)
                if "in use by another lmlab process" not in err and "already holds a run" not in err:
                    raise CaseFailed(f"refused for another reason: {err.strip()}")
            elif code != 0:
                raise CaseFailed(f"exit {code}: {err.strip()[-300:]}")
        return {**self.judge(run, family), "steps_redone": 0, "exit_codes": codes}

    # ------------------------------------------------------------ the cases: hostile paths

    def case_hostile_input(self, family, what: str) -> dict:
        base = self.case_dir("hostile")
        hf = base / "hf"
        shutil.copytree(self.work / ("hf-bert" if what.startswith("bert") else "hf-gpt2"), hf, symlinks=True)
        HOSTILE_INPUTS[what](hf, self.work)
        out = base / "out"
        t0 = time.monotonic()
        done = self.lmlab(["convert", "--from-hf", hf, "--out", out], timeout=120)
        refused(done)
        copied = any(b"SECRET" in p.read_bytes() for p in out.rglob("*") if p.is_file())
        if (out / "MANIFEST.json").exists() or copied:
            raise CaseFailed("a refused conversion left a model or copied the outside file")
        return {"message": done.stderr.strip(), "seconds": round(time.monotonic() - t0, 1)}

    def case_hostile_output(self, family, what: str) -> dict:
        base = self.case_dir("output")
        model = self.work / "refs" / "gpt2"
        text = base / "in.txt"
        text.write_text("the cat sat on the mat\n")
        fifo = base / "fifo"
        os.mkfifo(fifo)
        afile = base / "afile"
        afile.write_text("keep")
        gen = ["generate", model, "--prompt", "the cat", "--max-new-tokens", 20, "--greedy",
               "--device", "cpu"]
        if what == "closed pipe":
            proc = self.spawn(gen)
            proc.stdout.close()  # `| head -c 0`
            err = proc.stderr.read()
            if proc.wait(timeout=120) != 141 or err:
                raise CaseFailed(f"a closed pipe: exit {proc.returncode}, {err.strip()[-300:]!r}")
            return {"message": "(quiet, exit 141)"}
        if what == "full stdout":
            with open("/dev/full", "w") as full:
                done = self.lmlab(gen, stdout=full, timeout=120)
        else:
            out = {"/dev/null": "/dev/null" if os.geteuid() == 0 else fifo, "fifo": fifo,
                   "under /proc": "/proc/lmlab-faults.safetensors",
                   "under a file": afile / "x.safetensors"}[what]
            done = self.lmlab(["embed", model, "--input", text, "--out", out], timeout=120)
        refused(done)
        untouched = (stat.S_ISFIFO(os.lstat(fifo).st_mode) and stat.S_ISCHR(os.stat("/dev/null").st_mode)
                     and afile.read_text() == "keep")
        if not untouched:
            raise CaseFailed("an output that was refused was changed")
        return {"message": done.stderr.strip()}


# ---------------------------------------------------------------- corruptions and hostile folders

CORRUPTIONS = ["flip", "truncate", "remove", "manifest-garbage", "no-manifest"]


def spoil(checkpoint: Path, mode: str, rng: random.Random) -> str:
    """Spoil one checkpoint as `mode` says; returns what was done."""
    files = sorted(p for p in checkpoint.iterdir() if p.is_file() and p.name != "MANIFEST.json")
    target = rng.choice(files)
    if mode == "flip":
        data = bytearray(target.read_bytes())
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(data))
        return f"{checkpoint.name}/{target.name}: bit flipped at byte {i}"
    if mode == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
        return f"{checkpoint.name}/{target.name}: cut to half"
    if mode == "remove":
        target.unlink()
        return f"{checkpoint.name}/{target.name}: removed"
    if mode == "manifest-garbage":
        (checkpoint / "MANIFEST.json").write_text('{"files": ')
        return f"{checkpoint.name}/MANIFEST.json: cut short"
    (checkpoint / "MANIFEST.json").unlink()
    return f"{checkpoint.name}/MANIFEST.json: removed"


def _config(hf: Path, **fields) -> None:
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, **fields}))


def _replace(path: Path, make) -> None:
    path.unlink()
    make(path)


def _link(name: str, target):
    """A change of a folder: `name` replaced by a link to `target` (a path, or a function of the work dir)."""
    return lambda hf, work: _replace(hf / name,
                                     lambda p: p.symlink_to(target(work) if callable(target) else target))


def _write(name: str, data: bytes):
    return lambda hf, work: (hf / name).write_bytes(data)


HOSTILE_INPUTS = {
    "vocab.json linked outside": _link("vocab.json", lambda work: work / "secret.txt"),
    "bert vocab.txt linked outside": _link("vocab.txt", lambda work: work / "secret.txt"),
    "config.json a FIFO": lambda hf, work: _replace(hf / "config.json", os.mkfifo),
    "config.json -> /dev/zero": _link("config.json", "/dev/zero"),
    "merges.txt -> /dev/urandom": _link("merges.txt", "/dev/urandom"),
    "config.json a loop of links": lambda hf, work: _replace(hf / "config.json", lambda p: p.symlink_to(p)),
    "config.json a folder": lambda hf, work: _replace(hf / "config.json", lambda p: p.mkdir()),
    "huge n_embd": lambda hf, work: _config(hf, n_embd=1 << 30),
    "huge n_layer": lambda hf, work: _config(hf, n_layer=10 ** 9),
    "5000-digit integer": _write("config.json", b'{"n_embd": ' + b"9" * 5000 + b"}"),
    "nested 100000 deep": _write("config.json", b"[" * 100_000 + b"]" * 100_000),
    "config.json not UTF-8": _write("config.json", b'{"n_embd": "\xff\xfe"}'),
    "weights truncated": lambda hf, work: (hf / "model.safetensors").write_bytes(
        (hf / "model.safetensors").read_bytes()[:1000]),
}
HOSTILE_OUTPUTS = ["/dev/null", "fifo", "under /proc", "under a file", "closed pipe", "full stdout"]
