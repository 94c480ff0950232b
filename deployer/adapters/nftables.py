"""nftables in process, through libnftables (`libnftables.so.1`) bound with ctypes.

One context lives as long as the adapter: a transaction is one `nft_run_cmd_from_buffer` call on it, with no
process to spawn and no netlink socket to close after a commit (closing one after a deleting commit waits
13 to 20 ms here, see docs/benchmarks.md). ctypes rather than Debian's python3-nftables: that module lives in
Debian's dist-packages, which a venv does not see, and it is itself a thin ctypes wrapper over the same
functions.
"""

from __future__ import annotations

import ctypes
import threading

from deployer.errors import RulesError

LIBRARY = "libnftables.so.1"
OUTPUT_HANDLE = 1 << 3  # NFT_CTX_OUTPUT_HANDLE


class Nftables:
    def __init__(self, *, library: str = LIBRARY, handles: bool = False) -> None:
        self.library = library
        self.handles = handles  # listings print each rule's handle, as `nft -a` does
        self._lib: ctypes.CDLL | None = None
        self._ctx: int | None = None
        self._guard = threading.Lock()  # one context, one command at a time

    def run(self, text: str) -> str:
        """Run `text` (one or more nft commands) as one transaction: all of it, or nothing. Its output."""
        lib, ctx = self._context()
        with self._guard:
            code = lib.nft_run_cmd_from_buffer(ctx, text.encode())
            output = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode("utf-8", "replace")
            error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode("utf-8", "replace")
        if code != 0:
            excerpt = "\n".join(text.splitlines()[:12])
            raise RulesError(
                f"nft refused the transaction: {' '.join(error.split())[:500] or f'code {code}'}", rules=excerpt
            )
        return output

    def close(self) -> None:
        if self._ctx is not None and self._lib is not None:
            self._lib.nft_ctx_free(self._ctx)
        self._ctx = None

    def _context(self) -> tuple[ctypes.CDLL, int]:
        if self._ctx is None:
            try:
                lib = ctypes.CDLL(self.library)
            except OSError:
                raise RulesError(f"{self.library} is not installed (Debian: apt-get install libnftables1)") from None
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
            for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
                getattr(lib, name).argtypes = [ctypes.c_void_p]
                getattr(lib, name).restype = ctypes.c_int
            for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
                getattr(lib, name).argtypes = [ctypes.c_void_p]
                getattr(lib, name).restype = ctypes.c_char_p
            ctx = lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
            if not ctx:
                raise RulesError("libnftables could not make a context")
            if self.handles:
                lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
                lib.nft_ctx_output_set_flags(ctx, OUTPUT_HANDLE)
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            self._lib, self._ctx = lib, ctx
        assert self._lib is not None
        return self._lib, self._ctx
