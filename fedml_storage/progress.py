"""Byte-exact tqdm progress bars for transfers."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable

from tqdm import tqdm

UPLOAD_DESC = "Uploading Package to Remote Storage"
DOWNLOAD_DESC = "Downloading from Remote Storage"


@contextmanager
def progress_bar(total: int, show: bool, to_stderr: bool, desc: str, initial: int = 0
                 ) -> Iterator[Callable[[int], None]]:
    """Yield a thread-safe `advance(n)`; shows a tqdm bar in bytes, starting at `initial`, when `show`."""
    if not show:
        yield lambda n: None
        return
    lock = threading.Lock()
    bar = tqdm(
        total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
        file=sys.stderr if to_stderr else sys.stdout, leave=True,
    )

    def advance(n: int) -> None:
        with lock:
            bar.update(n)

    try:
        yield advance
    finally:
        bar.close()
