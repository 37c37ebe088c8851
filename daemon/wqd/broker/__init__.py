"""Talking AMQP: connecting, a pool's queues and their arguments, header
decoding and the dead-letter operations. Used by every process that talks to
the broker (the CLI, the master's children, the workers); imports only config."""
