"""Skip-and-count for malformed raw rows, with a bounded sample kept for the quarantine file."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from flip_dist.errors import FlipDataError


@dataclass
class BadRows:
    """Malformed rows seen while parsing: counts per file and reason, first `keep` rows verbatim."""

    keep: int = 20
    counts: Counter = field(default_factory=Counter)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, path: str, line: int, reason: str, raw: str) -> None:
        self.counts[(str(path), reason)] += 1
        if len(self.samples) < self.keep:
            self.samples.append({"file": str(path), "line": line, "reason": reason, "raw": raw[:500]})

    def merge(self, other: BadRows) -> None:
        self.counts.update(other.counts)
        room = self.keep - len(self.samples)
        if room > 0:
            self.samples.extend(other.samples[:room])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def check(self, good: int, max_fraction: float) -> None:
        """Fail loudly when bad rows are not a few strays but a sign of the wrong file or format."""
        seen = good + self.total
        if self.total and seen and self.total / seen > max_fraction:
            first = self.samples[0]
            raise FlipDataError(
                f"{self.total} of {seen} rows are malformed (more than max_bad_fraction="
                f"{max_fraction}); first: {first['reason']}: {first['raw']!r}",
                path=first["file"], row=first["line"])

    def raise_first(self) -> None:
        """For side files (users, items), where a bad record is not one lost row but a hole in
        every row that joins it: the first one is an error naming its file and line."""
        if self.samples:
            first = self.samples[0]
            raise FlipDataError(f"{first['reason']}: {first['raw'][:200]!r}", path=first["file"], row=first["line"])
        if self.total:
            (path, reason), _ = next(iter(self.counts.items()))
            raise FlipDataError(reason, path=path)

    def summary(self) -> dict[str, Any]:
        by_file: dict[str, dict[str, int]] = {}
        for (path, reason), n in sorted(self.counts.items()):
            by_file.setdefault(path, {})[reason] = n
        return {"total": self.total, "by_file": by_file}
