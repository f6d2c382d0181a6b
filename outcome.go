package relay

// Outcomes of an inbox request: refused with an HTTP status, or accepted
// without effect.

import (
	"fmt"
	"strings"
	"time"
)

// inboxError is an inbox outcome with its HTTP status. Every request the
// inbox refuses gets one, so the sender sees why.
type inboxError struct {
	status     int
	msg        string
	retryAfter time.Duration // sent as Retry-After when > 0
}

func (e *inboxError) Error() string { return e.msg }

func refuse(status int, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if !strings.HasPrefix(msg, "relay: ") {
		msg = "relay: " + msg
	}
	return &inboxError{status: status, msg: msg}
}

// refuseRetry is refuse with a Retry-After: for 429 and 503.
func refuseRetry(status int, after time.Duration, format string, args ...any) error {
	err := refuse(status, format, args...).(*inboxError)
	err.retryAfter = after
	return err
}

// accepted is the outcome of a request that was taken (or deliberately
// ignored); the message is only logged.
type accepted string

func (a accepted) Error() string { return string(a) }
