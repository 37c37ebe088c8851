"""The largest message the broker at the other end of a connection takes."""

from wqd.broker import amqp

MiB = 1024 * 1024
# RabbitMQ's default max_message_size: 128 MiB up to 3.x, 16 MiB from 4.0;
# it cannot be set above 512 MiB. A broker does not tell a client the value
# it is configured with (frame_max, which it does tell, only cuts a message
# into frames), so a message is checked against its version's default before
# it is sent, and a lower configured limit is read from the error with which
# the broker refuses a message above it.
DEFAULT_MAX_MESSAGE_SIZE_3 = 128 * MiB
DEFAULT_MAX_MESSAGE_SIZE_4 = 16 * MiB
HARD_MAX_MESSAGE_SIZE = 512 * MiB


def max_message_size(connection):
    """(bytes, what the limit is) the broker at the other end of a pika connection takes in one message."""
    return max_message_size_of(*amqp.server_version(connection))


def max_message_size_of(product: str, version: tuple):
    """max_message_size() for a broker that announced ``product`` and ``version``."""
    if product != "RabbitMQ" or not version:
        return HARD_MAX_MESSAGE_SIZE, "the largest message RabbitMQ takes at all"
    default = DEFAULT_MAX_MESSAGE_SIZE_4 if version[0] >= 4 else DEFAULT_MAX_MESSAGE_SIZE_3
    shown = ".".join(str(part) for part in version)
    return default, f"RabbitMQ {shown}'s default max_message_size ({default // MiB} MiB)"
