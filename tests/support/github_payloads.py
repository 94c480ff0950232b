"""GitHub's example webhook bodies, kept in the repository: tests/fixtures/github/ (see its README)."""

from pathlib import Path

PAYLOADS = Path(__file__).resolve().parents[1] / "fixtures" / "github"
