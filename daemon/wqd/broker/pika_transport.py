"""pika's plaintext transport, made to do one system call per frame where it did three.

pika, as shipped, buffers every frame it writes and sends it only when its
I/O loop next reports the socket writable: per ack, a worker turned the
writability watcher on and off (two epoll_ctl calls), waited in epoll_wait on
a socket that was writable all along, and ran pika's write dispatch in Python.
And it reads until a recv fails with EAGAIN, so every delivery cost a second
recv and a Python exception. ``install()`` changes both, as asyncio's
transports behave:

- ``write`` sends at once when nothing is queued before the frame; whatever
  the socket does not take now (a full buffer, an error) goes through pika's
  own buffered path, in order, so a partial send and a broken connection are
  handled exactly as before;
- reading stops at a short read (the socket had no more then); the poller is
  level-triggered, so bytes that arrive later are read at its next turn.

TLS connections keep pika's paths (a TLS write can need a read first, and
TLS buffers records the poller cannot see). The methods replaced use pika
1.x internals; setup.cfg bounds pika to the versions tested.
"""

from pika.adapters.utils import io_services_utils

_Transport = io_services_utils._AsyncPlaintextTransport


def install() -> None:
    """Replace the plaintext transport's write and read loop (once, for every connection of this process)."""
    if getattr(_Transport.write, "wqd_eager", False):
        return
    buffered_write = _Transport.write

    def write(self, data: bytes) -> None:
        if self._state == self._STATE_ACTIVE and not self._tx_buffers:  # nothing queued: this frame is next
            try:
                sent = self._sock.send(data)
            except OSError:  # EAGAIN, or a failure: pika's writer meets it again and acts as it always did
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        buffered_write(self, data)

    write.wqd_eager = True
    _Transport.write = write
    _Transport._consume = _consume_until_short_read


def _consume_until_short_read(self) -> None:
    """pika's _consume (io_services_utils._AsyncTransportBase), returning after
    a recv that got less than it asked for instead of recv-ing again into EAGAIN."""
    bytes_consumed = 0
    while self._state == self._STATE_ACTIVE and bytes_consumed < self._MAX_CONSUME_BYTES:
        data = self._sigint_safe_recv(self._sock, self._MAX_RECV_BYTES)
        if not data:
            io_services_utils._LOGGER.error("Socket EOF; %s", self._sock)
            raise self.RxEndOfFile()
        bytes_consumed += len(data)
        self._protocol.data_received(data)
        if len(data) < self._MAX_RECV_BYTES:
            return
