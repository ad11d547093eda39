"""What :func:`ckdlab.testing.check_backbone` returns: one result per check, readable as text."""
from __future__ import annotations

from dataclasses import dataclass, field

PASSED, FAILED, WARNING, SKIPPED = "passed", "failed", "warning", "skipped"
STATUSES = (PASSED, WARNING, FAILED, SKIPPED)


@dataclass(frozen=True)
class CheckResult:
    """One check: its ``name``, ``status`` (passed / failed / warning / skipped) and why.

    ``details`` holds the measured numbers (score differences, losses) for code;
    ``message`` avoids them when the check passes, so that printed reports are the
    same on every machine.
    """

    name: str
    status: str
    message: str
    details: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    @property
    def failed(self) -> bool:
        return self.status == FAILED

    def __str__(self) -> str:
        return f"{self.status.upper():<8}{self.name}: {self.message}"


class BackboneCheckError(AssertionError):
    """A backbone failed :func:`~ckdlab.testing.check_backbone`; ``report`` has every result."""

    def __init__(self, report: "CheckReport"):
        failed = "\n".join(str(r) for r in report.failures)
        super().__init__(f"{report.backbone} breaks the backbone contract:\n{failed}")
        self.report = report


@dataclass
class CheckReport:
    """The results of every check on one backbone, in the order they ran."""

    backbone: str
    results: list[CheckResult]

    def __iter__(self):
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, key: int | str) -> CheckResult:
        if isinstance(key, str):
            for r in self.results:
                if r.name == key:
                    return r
            raise KeyError(f"no check named {key!r}; ran {[r.name for r in self.results]}")
        return self.results[key]

    def names(self, status: str) -> list[str]:
        """Names of the checks with ``status``."""
        return [r.name for r in self.results if r.status == status]

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == FAILED]

    @property
    def warnings(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == WARNING]

    @property
    def ok(self) -> bool:
        """No check failed (warnings and skipped checks allowed)."""
        return not self.failures

    def raise_on_failure(self) -> "CheckReport":
        """Raise :class:`BackboneCheckError` when a check failed; else return the report."""
        if self.failures:
            raise BackboneCheckError(self)
        return self

    def summary(self) -> str:
        labels = {PASSED: "passed", WARNING: "warnings", FAILED: "failed", SKIPPED: "skipped"}
        counts = ", ".join(f"{len(self.names(s))} {labels[s]}" for s in STATUSES)
        return f"check_backbone({self.backbone}): {counts}"

    def __str__(self) -> str:
        return "\n".join([self.summary(), *(str(r) for r in self.results)])

    __repr__ = __str__
