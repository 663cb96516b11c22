"""Text compression from many threads at once (several stores written by a Pool's threads).

Regression: one module-level zstd compressor was shared by every store in a process; two
threads writing two stores crashed the process (segfault) or produced wrong bytes. It runs in
a subprocess so that a crash fails this test instead of killing the test run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from engramdb.encoders import HashingEncoder
from engramdb.pool import Pool

_SCRIPT = textwrap.dedent("""
    import threading
    from engramdb.content import compress_text, decompress_text

    bad = []

    def work(k):
        for i in range(6000):
            text = f"thread {k} text {i} " * (1 + i % 40)
            try:
                if decompress_text(compress_text(text)) != text:
                    bad.append((k, i))
            except Exception:  # a shared zstd context raises or garbles under contention
                bad.append((k, i))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("bad", len(bad))
""")


def test_compress_and_decompress_from_many_threads() -> None:
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "bad 0"


def test_pool_threads_write_their_own_texts(tmp_path: Path) -> None:
    """Six users written at once by six threads: every stored text reads back exactly."""
    enc = HashingEncoder(dim=16)
    errors: list[BaseException] = []
    written: dict[int, list[tuple[str, str]]] = {}
    with Pool(tmp_path, encoder=enc, max_open=8) as pool:
        def user(u: int) -> None:
            texts = [f"user {u} says thing {i} " * (1 + i % 9) for i in range(300)]
            try:
                with pool.session(f"u{u}") as mem:
                    res = mem.ingest_many(texts)
                written[u] = [(r.id, t.strip()) for r, t in zip(res, texts, strict=True)]
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=user, args=(u,)) for u in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        for u in range(6):
            with pool.session(f"u{u}") as mem:
                assert all(mem.get(i).text == text for i, text in written[u])
                assert mem.verify().ok
