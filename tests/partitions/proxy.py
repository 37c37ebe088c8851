"""A TCP proxy that delays every byte by a settable time, each way.

This kernel has no netem, so the delay of a host's link is made here: the
host's workers connect to the proxy (in the host's namespace, on its
loopback), and the proxy connects on to the broker node over the host's
eth0, so the loss that nft makes on eth0 still hits that traffic. Order is
kept; throughput is not limited. A connection closed on one side is closed
on the other once the data before the close has been delivered.
"""

from __future__ import annotations

import asyncio
import threading

from tests.partitions.netns import enter_for_good

CHUNK = 65536


class DelayProxy:
    """Listens on 127.0.0.1:``port`` in namespace ``netns``; forwards to ``target``."""

    def __init__(self, netns: str, port: int, target: tuple[str, int]) -> None:
        self.netns = netns
        self.port = port
        self.target = target
        self.delay = 0.0  # seconds added to each direction; read for every chunk
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writers: set = set()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"proxy {port}", daemon=True)

    def start(self) -> DelayProxy:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None or self._loop is None:
            raise RuntimeError(f"proxy on port {self.port} in {self.netns} did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        """Close the listening socket and every connection; end the thread."""
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._shut_down)
        self._thread.join(10)

    def _shut_down(self) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        self._loop.stop()

    def _run(self) -> None:
        try:
            enter_for_good(self.netns)  # this thread only; its sockets are the namespace's
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        except BaseException as exc:  # noqa: B036 - handed to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        finally:
            self._loop.close()

    async def _serve(self, client_reader, client_writer) -> None:
        try:
            broker_reader, broker_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        self.connections += 1
        self._writers.update((client_writer, broker_writer))
        await asyncio.gather(self._pump(client_reader, broker_writer), self._pump(broker_reader, client_writer),
                             return_exceptions=True)

    async def _pump(self, reader, writer) -> None:
        """Copy reader to writer, each chunk ``delay`` seconds after it came."""
        loop = asyncio.get_running_loop()
        pending: asyncio.Queue = asyncio.Queue()

        async def deliver():
            while True:
                due, data = await pending.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    break
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(CHUNK)
                pending.put_nowait((loop.time() + self.delay, data))
                if not data or sender.done():
                    break
            await sender
        except (OSError, asyncio.IncompleteReadError):
            sender.cancel()
        finally:
            writer.close()
