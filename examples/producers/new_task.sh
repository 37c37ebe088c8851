#!/bin/sh
# A wqd producer in shell (Debian's amqp-tools): new_task.sh QUEUE MESSAGE...
# Broker URL in $AMQP_URL (default amqp://localhost).
#
# amqp-publish (rabbitmq-c 0.11) sends persistent messages but cannot set a
# message id, wait for a publisher confirm or publish mandatory: a message to
# a missing queue is dropped in silence, and one lost on its way is not
# noticed. Use it where that is acceptable; `wqd publish` does all three.
set -eu
queue=${1:?usage: $0 QUEUE MESSAGE...}
shift
for message in "$@"; do
    amqp-publish --url "${AMQP_URL:-amqp://localhost}" --routing-key "$queue" --persistent \
        --content-type text/plain --body "$message"
    echo " [x] Sent '$message'"
done
