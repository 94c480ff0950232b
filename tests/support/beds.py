"""What every test bed does on `with`: build, and on any failure of the build remove what it made; remove it
all again on exit. A bed says how to build (`_build`) and how to remove (`close`, which copes with a part-built
bed)."""

from __future__ import annotations

from typing import Self


class Bed:
    def _build(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
