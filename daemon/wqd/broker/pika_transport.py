"""A pika connection made to send a message in one system call where it took
six (a publish: three sends, two epoll_ctl, an epoll_wait), and to read a
frame with one recv where it took two.

pika, as shipped, writes a message's frames (method, header, body) one by
one into a buffer and sends them only when its I/O loop next reports the
socket writable: per ack or publish, the writability watcher went on and off
(two epoll_ctl calls), epoll_wait woke for a socket that was writable all
along, pika's write dispatch ran in Python, and each frame went out in a
send of its own (three TCP segments for one publish). And it reads until a
recv fails with EAGAIN, so every frame that arrived cost a second recv and a
Python exception. ``install(connection)`` changes that one connection, as
asyncio's transports behave:

- a message's frames are joined and written at once;
- ``write`` sends at once when nothing is queued before the data; whatever
  the socket does not take now (a full buffer, an error) goes through pika's
  own buffered path, in order, so a partial send and a broken connection are
  handled exactly as before;
- reading stops at a short read (the socket had no more then); the poller is
  level-triggered, so bytes that arrive later are read at its next turn.

Only the connection given changes (an application's own pika connections,
in the process a Publisher runs in, keep pika's ways). TLS connections keep
pika's writes and reads (a TLS write can need a read first, and TLS buffers
records the poller cannot see), and get the joined frames. The methods
replaced use pika 1.x internals; setup.cfg bounds pika to the versions tested.
"""

import types

import pika
from pika.adapters.utils import io_services_utils

_Plaintext = io_services_utils._AsyncPlaintextTransport


def install(connection: pika.BlockingConnection) -> None:
    """Change ``connection``'s writes and reads as the module says (once per connection)."""
    impl = connection._impl
    impl._output_marshaled_frames = types.MethodType(_output_in_one_write, impl)
    transport = impl._transport
    if type(transport) is _Plaintext:
        transport.write = types.MethodType(_write_now, transport)
        transport._consume = types.MethodType(_consume_until_short_read, transport)


def _output_in_one_write(self, marshaled_frames) -> None:
    """pika's Connection._output_marshaled_frames, with one write for all the frames."""
    data = b"".join(marshaled_frames)
    self.bytes_sent += len(data)
    self.frames_sent += len(marshaled_frames)
    self._adapter_emit_data(data)


def _write_now(self, data: bytes) -> None:
    """pika's write, sending at once when nothing is queued before ``data``."""
    if self._state == self._STATE_ACTIVE and not self._tx_buffers:
        try:
            sent = self._sock.send(data)
        except OSError:  # EAGAIN, or a failure: pika's writer meets it again and acts as it always did
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    _Plaintext.write(self, data)


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
