"""One worker process: its life (main.py), the AMQP session that consumes and
runs the handler (consumer.py), and what it does with a handler's result
(routing.py: ack, retry copy, dead letter)."""
