"""The dynamic batcher in-process, with a gated fake encoder: deterministic queue semantics."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from bgem3.serve.scheduler import Batcher, QueueFull, ShuttingDown


class GatedEncoder:
    """`forward_batch` blocks until `gate` is set; records each pass's texts."""

    hidden_size = 4

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.passes: list[list[list[int]]] = []

    def forward_batch(self, batch_ids, d, s, c):
        self.entered.set()
        self.gate.wait(10)
        self.passes.append([list(x) for x in batch_ids])
        dense = np.asarray([[float(x[0]), len(x), 0, 0] for x in batch_ids], np.float32)
        sparse = [{int(x[0]): 1.0} for x in batch_ids] if s else None
        return dense, sparse, None


def _ids(tag: int, n: int, length: int = 3) -> list[list[int]]:
    return [[tag * 100 + i] + [7] * (length - 1) for i in range(n)]


def test_texts_of_concurrent_requests_share_passes_sorted_by_length():
    enc = GatedEncoder()
    b = Batcher(enc, max_batch_tokens=1000, max_batch_size=64)
    b.start()

    async def go():
        first = asyncio.ensure_future(b.submit(_ids(0, 1), dense=True, sparse=False, colbert=False))
        await asyncio.to_thread(enc.entered.wait, 10)  # the worker is busy with `first`
        rest = [asyncio.ensure_future(b.submit(_ids(k, 3, length=2 + k), dense=True, sparse=False, colbert=False))
                for k in range(1, 5)]
        await asyncio.sleep(0.05)
        enc.gate.set()
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(go())
    b.stop()
    assert len(enc.passes) == 2 and len(enc.passes[1]) == 12  # 4 requests x 3 texts in one pass
    lengths = [len(x) for x in enc.passes[1]]
    assert lengths == sorted(lengths, reverse=True)
    for k, res in enumerate(rest, start=1):  # each request got its own rows, in its order
        assert res.dense[:, 0].tolist() == [k * 100 + i for i in range(3)]
        assert res.token_counts.tolist() == [2 + k] * 3


def test_token_budget_cuts_passes():
    enc = GatedEncoder()
    enc.gate.set()
    b = Batcher(enc, max_batch_tokens=20, max_batch_size=64)
    b.start()
    res = asyncio.run(b.submit(_ids(1, 10, length=5), dense=True, sparse=False, colbert=False))
    b.stop()
    assert [len(p) for p in enc.passes] == [4, 4, 2]  # 20 // 5 texts per pass
    assert res.dense[:, 0].tolist() == [100 + i for i in range(10)]


def test_queue_bound_refuses_with_retry_after_and_cancel_drops_queued_texts():
    enc = GatedEncoder()
    b = Batcher(enc, max_queued_texts=5, max_queued_tokens=10_000)
    b.start()

    async def go():
        busy = asyncio.ensure_future(b.submit(_ids(0, 1), dense=True, sparse=False, colbert=False))
        await asyncio.to_thread(enc.entered.wait, 10)
        waiting = asyncio.ensure_future(b.submit(_ids(1, 4), dense=True, sparse=False, colbert=False))
        await asyncio.sleep(0.02)
        assert b.depth()[0] == 4
        with pytest.raises(QueueFull) as info:
            await b.submit(_ids(2, 2), dense=True, sparse=False, colbert=False)
        assert 1 <= info.value.retry_after <= 30
        waiting.cancel()  # the client went away: its texts leave the queue
        await asyncio.sleep(0.02)
        assert b.depth() == (0, 0)
        ok = asyncio.ensure_future(b.submit(_ids(3, 2), dense=True, sparse=False, colbert=False))
        enc.gate.set()
        await busy
        return await ok

    res = asyncio.run(go())
    b.stop()
    assert res.dense[:, 0].tolist() == [300, 301]
    assert b.metrics.rejected == 1 and b.metrics.cancelled == 1
    assert all(x[0] // 100 != 1 for p in enc.passes for x in p)  # the cancelled texts were never computed


def test_close_refuses_new_work_but_finishes_queued():
    enc = GatedEncoder()
    b = Batcher(enc)
    b.start()

    async def go():
        running = asyncio.ensure_future(b.submit(_ids(0, 2), dense=True, sparse=True, colbert=False))
        await asyncio.to_thread(enc.entered.wait, 10)
        queued = asyncio.ensure_future(b.submit(_ids(1, 2), dense=True, sparse=True, colbert=False))
        await asyncio.sleep(0.02)
        b.close()
        with pytest.raises(ShuttingDown):
            await b.submit(_ids(2, 1), dense=True, sparse=False, colbert=False)
        enc.gate.set()
        return await running, await queued

    a, q = asyncio.run(go())
    b.stop(10)
    assert a.sparse == [{0: 1.0}, {1: 1.0}] and q.sparse == [{100: 1.0}, {101: 1.0}]
    assert not b.alive


def test_a_failing_pass_fails_its_requests_and_the_worker_keeps_going():
    class Flaky(GatedEncoder):
        def forward_batch(self, batch_ids, d, s, c):
            if batch_ids[0][0] == 0:
                raise RuntimeError("boom")
            return super().forward_batch(batch_ids, d, s, c)

    enc = Flaky()
    enc.gate.set()
    b = Batcher(enc)
    b.start()

    async def go():
        with pytest.raises(RuntimeError, match="boom"):
            await b.submit(_ids(0, 1), dense=True, sparse=False, colbert=False)
        return await b.submit(_ids(1, 1), dense=True, sparse=False, colbert=False)

    assert asyncio.run(go()).dense[0, 0] == 100
    b.stop()
    assert b.metrics.failed_batches == 1


def test_accepted_connections_get_tcp_nodelay():
    # without proto=IPPROTO_TCP on the listening socket asyncio skips TCP_NODELAY, and every response
    # with a body waits ~40 ms for the client's delayed ACK
    import socket

    from bgem3.serve.cli import listen_socket

    sock, _ = listen_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    seen: list[int] = []

    async def go():
        loop = asyncio.get_running_loop()

        class Proto(asyncio.Protocol):
            def connection_made(self, transport):
                s = transport.get_extra_info("socket")
                seen.append(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await loop.create_server(Proto, sock=sock)
        _, w = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        w.close()
        server.close()
        await server.wait_closed()

    asyncio.run(go())
    assert seen and seen[0] != 0


def test_listen_socket_names_a_busy_port():
    from bgem3.serve.cli import listen_socket

    a, _ = listen_socket("127.0.0.1", 0)
    try:
        import socket as _s

        b = _s.socket()
        b.bind(("127.0.0.1", 0))
        port = b.getsockname()[1]
        b.listen(1)
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            listen_socket("127.0.0.1", port)
        b.close()
    finally:
        a.close()


def test_a_later_request_does_not_overtake_an_earlier_one():
    # a round takes one pass's worth of tokens in arrival order; before, it took 4 passes' worth and
    # sorted them longest first, so a later request of long texts went before an earlier short one
    enc = GatedEncoder()
    b = Batcher(enc, max_batch_tokens=20, max_batch_size=4)
    b.start()
    done: list[int] = []

    async def go():
        busy = asyncio.ensure_future(b.submit(_ids(0, 1), dense=True, sparse=False, colbert=False))
        await asyncio.to_thread(enc.entered.wait, 10)

        async def one(tag, length):
            res = await b.submit(_ids(tag, 4, length=length), dense=True, sparse=False, colbert=False)
            done.append(tag)
            return res

        reqs = [asyncio.ensure_future(one(tag, length)) for tag, length in ((1, 2), (2, 3), (3, 5))]
        await asyncio.sleep(0.05)
        enc.gate.set()
        await busy
        return await asyncio.gather(*reqs)

    results = asyncio.run(go())
    b.stop()
    first_of = {tag: min(i for i, p in enumerate(enc.passes) if any(x[0] // 100 == tag for x in p)) for tag in (1, 2, 3)}
    last_of = {tag: max(i for i, p in enumerate(enc.passes) if any(x[0] // 100 == tag for x in p)) for tag in (1, 2, 3)}
    assert first_of[3] > last_of[1], enc.passes  # request 3 waited for request 1, not the reverse
    assert done.index(1) < done.index(3)
    for tag, res in zip((1, 2, 3), results):
        assert res.dense[:, 0].tolist() == [tag * 100 + i for i in range(4)]
