"""What both fuzzers share: byte mutations, the mutate-check loop's bookkeeping, crash files and the
memory cap.

A finding is any exception other than HmdfError, counted once per (exception type, innermost
hmdf_deploy file:line), so one bug is one finding however many inputs reach it.
"""

from __future__ import annotations

import hashlib
import random
import resource
import sys
import traceback
from pathlib import Path
from typing import Callable

Edit = Callable[[bytearray, random.Random], bytearray]


def byte_mutation(data: bytes, other: bytes, rng: random.Random, special: tuple[Edit, ...]) -> bytes:
    """One random edit of `data`: flipped bits, a truncation, a splice with `other`, or one of the
    format's own `special` edits."""
    b = bytearray(data)
    op = rng.randrange(3 + len(special))
    if op == 0:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == 1:
        del b[rng.randrange(len(b)):]
    elif op == 2:
        i, j = rng.randrange(len(b)), rng.randrange(len(other))
        b = b[:i] + other[j:]
    else:
        b = special[op - 3](b, rng)
    return bytes(b)


def where(exc: BaseException) -> str:
    """file:line of the innermost hmdf_deploy frame (else the innermost frame)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "hmdf_deploy" in f.filename]
    f = frames[-1] if frames else traceback.extract_tb(exc.__traceback__)[-1]
    return f"{Path(f.filename).name}:{f.lineno}"


def run_atheris(one: Callable, seconds: float) -> int:
    """Run `one(atheris.FuzzedDataProvider)` under atheris (coverage-guided) for `seconds`; 2 if
    atheris is not installed."""
    try:
        import atheris
    except ImportError:
        print("atheris is not installed (pip install atheris); use the plain loop", file=sys.stderr)
        return 2
    atheris.Setup([sys.argv[0], f"-max_total_time={int(seconds)}"], lambda data: one(atheris.FuzzedDataProvider(data)))
    atheris.Fuzz()
    return 0


def cap_memory(gb: float) -> None:
    """Cap the address space so an absurd allocation raises instead of waking the OOM killer."""
    if gb > 0:
        limit = int(gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class Campaign:
    """Outcome counts and findings of one fuzzing run; crashing inputs go to `crashes`."""

    def __init__(self, crashes: Path, prefix: str, suffix: str, normalise: Callable[[str], str]) -> None:
        self.crashes, self.prefix, self.suffix, self.normalise = crashes, prefix, suffix, normalise
        self.outcomes: dict[str, int] = {}
        self.findings: dict[str, Path] = {}
        self.iterations = 0

    def run(self, data: bytes, target: Path, check: Callable[[Path], str]) -> None:
        """Check one written case: count its outcome, or save it as a finding."""
        try:
            outcome = check(target)
        except Exception as e:  # noqa: BLE001 - anything but HmdfError is a finding
            key = f"{type(e).__name__} at {where(e)}"
            if key not in self.findings:
                self.findings[key] = self._save(data, e)
                print(f"FINDING #{len(self.findings)} at iteration {self.iterations}: {key}: "
                      f"{self.normalise(str(e))} -> {self.findings[key]}", flush=True)
            return
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def _save(self, data: bytes, exc: BaseException) -> Path:
        self.crashes.mkdir(parents=True, exist_ok=True)
        name = f"{self.prefix}-{hashlib.sha256(data).hexdigest()[:16]}"
        path = self.crashes / f"{name}{self.suffix}"
        path.write_bytes(data)
        (self.crashes / f"{name}.txt").write_text("".join(traceback.format_exception(exc)))
        return path

    def report(self, headline: str, top: int = 20) -> int:
        """Print the summary; exit code 1 if anything was found."""
        print(f"\n{headline}, {len(self.findings)} distinct findings")
        for msg, n in sorted(self.outcomes.items(), key=lambda kv: -kv[1])[:top]:
            print(f"  {n:7d}  {msg}")
        for key, p in self.findings.items():
            print(f"  FINDING  {key}\n           {p}")
        return 1 if self.findings else 0
