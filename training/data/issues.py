"""Bad-data bookkeeping: every problem found in a dataset is logged with its file name and counted.

Why a shared log instead of exceptions everywhere: a 4,000-image industrial set nearly always has a few broken
files, and the operator must choose between "stop now, tell me which file" (``fail``) and "train on the rest,
tell me afterwards what was left out" (``skip``). Both go through :meth:`DataIssueLog.report`.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger("training.data")

BadDataPolicy = Literal["skip", "fail"]

#: Issue kinds. ``box_clipped`` is repaired in place and never fatal; the others remove data.
ISSUE_KINDS = (
    "unreadable_image",
    "missing_image",
    "missing_template",
    "template_mismatch",
    "malformed_annotation",
    "unknown_class",
    "box_dropped",
    "box_clipped",
)


class BadDataError(ValueError):
    """Raised under the ``fail`` policy; the message names the file and what is wrong with it."""


@dataclass(frozen=True)
class DataIssue:
    kind: str
    path: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}: {self.detail}"


class DataIssueLog:
    """Collects :class:`DataIssue` records and applies the bad-data policy.

    ``report`` logs a warning and counts the issue; under ``fail`` any issue except a repaired one (a clipped
    box) raises :class:`BadDataError` naming the file.
    """

    def __init__(self, policy: BadDataPolicy = "skip") -> None:
        if policy not in ("skip", "fail"):
            raise ValueError(f"bad_data policy must be 'skip' or 'fail', got {policy!r}")
        self.policy: BadDataPolicy = policy
        self.issues: list[DataIssue] = []
        self._seen: set[DataIssue] = set()

    def report(self, kind: str, path: str, detail: str, repaired: bool = False) -> None:
        if kind not in ISSUE_KINDS:
            raise ValueError(f"unknown data issue kind {kind!r}")
        issue = DataIssue(kind, str(path), detail)
        if self.policy == "fail" and not repaired:
            self.issues.append(issue)
            raise BadDataError(str(issue))
        if issue in self._seen:  # the same file seen again next epoch: count it once
            return
        self._seen.add(issue)
        self.issues.append(issue)
        (logger.info if repaired else logger.warning)("data issue: %s", issue)

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(i.kind for i in self.issues))

    def summary(self) -> str:
        if not self.issues:
            return "no data issues"
        return ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
