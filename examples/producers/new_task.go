// A wqd producer in Go (amqp091-go): go run new_task.go QUEUE MESSAGE...
// Broker URL in $AMQP_URL (default amqp://localhost). Prints each message's
// id once the broker confirmed it; exits 1 on any message it did not confirm.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Everything after connecting ends within this: a confirm never comes from a broker that lost the message.
const timeout = 30 * time.Second

func newID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func publish(url, queue string, messages []string) ([]string, error) {
	conn, err := amqp.Dial(url)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	// Passive: the queue's arguments are the pool's; a missing queue is an error (404).
	if _, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil); err != nil {
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		return nil, err
	}
	// Registered before publishing; buffered so the library never blocks on them.
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, len(messages)))
	returns := ch.NotifyReturn(make(chan amqp.Return, len(messages)))
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ids := make([]string, len(messages))
	for i, text := range messages {
		ids[i] = newID()
		err := ch.PublishWithContext(ctx, "", queue, true, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent, MessageId: ids[i], ContentType: "text/plain", Body: []byte(text),
		})
		if err != nil {
			return nil, err
		}
	}
	for range messages {
		select {
		case confirm, ok := <-confirms:
			if !ok {
				return nil, fmt.Errorf("the channel closed before every confirm came")
			}
			if !confirm.Ack {
				return nil, fmt.Errorf("the broker nacked message %d", confirm.DeliveryTag)
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("no confirm within %s", timeout)
		}
	}
	// A return comes before its message's ack: every return is in by now.
	select {
	case returned := <-returns:
		return nil, fmt.Errorf("no queue took %s: %s", returned.MessageId, returned.ReplyText)
	default:
	}
	return ids, nil
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: new_task QUEUE MESSAGE...")
		os.Exit(2)
	}
	url := os.Getenv("AMQP_URL")
	if url == "" {
		url = "amqp://localhost"
	}
	ids, err := publish(url, os.Args[1], os.Args[2:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "new_task.go: %v\n", err)
		os.Exit(1)
	}
	for i, text := range os.Args[2:] {
		fmt.Printf(" [x] Sent %q as %s\n", text, ids[i])
	}
}
