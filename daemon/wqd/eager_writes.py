"""pika's plaintext transport, made to send a frame at once when nothing waits before it.

pika buffers every frame and sends it only when its I/O loop reports the socket
writable: per ack, a worker turned the writability watcher on and off again
(two epoll_ctl calls), waited in epoll_wait for a socket that was writable all
along, and ran pika's write dispatch in Python: 3 of its 7 system calls per
task, and as much Python as the whole of wqd's own per-task work. ``install()``
makes ``write`` try ``send`` first when the transport's buffer is empty, as
asyncio's transports do; whatever the socket does not take now (a full buffer,
an error) goes through pika's own buffered path, in order, so a partial send
and a broken connection are handled exactly as before. TLS connections keep
pika's path (a TLS write can need a read first).
"""

from pika.adapters.utils import io_services_utils

_Transport = io_services_utils._AsyncPlaintextTransport


def install() -> None:
    """Wrap the plaintext transport's write (once, for every connection of this process)."""
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
