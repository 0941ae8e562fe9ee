"""Running work in real threads released at the same instant (for race tests)."""

import threading
from collections.abc import Callable

from django.db import connections


def run_at_once(count: int, work: Callable[[int], object]) -> list[object]:
    """Run `work(i)` in `count` threads released together; return results (or exceptions)."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def runner(index: int) -> None:
        try:
            barrier.wait()
            results[index] = work(index)
        except Exception as error:  # the test inspects every outcome
            results[index] = error
        finally:
            connections.close_all()

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results
