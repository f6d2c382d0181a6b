package pgstore

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// QueueChanged implements store.Notifier: the channel receives a value
// (coalesced) after any process enqueued or rescheduled deliveries in the
// database, and after the listening connection was re-established (a
// notification may have been missed meanwhile).
func (s *Store) QueueChanged() <-chan struct{} { return s.queueWake }

// ValuesChanged implements store.Notifier: the channel receives a value
// (coalesced) after any process put, created or deleted a value, and after
// the listening connection was re-established.
func (s *Store) ValuesChanged() <-chan struct{} { return s.valuesWake }

// signal sends on ch unless a value is already waiting there.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// reapInterval is how often a store deletes expired deduplication marks,
// and reclaims unused payloads when a removal may have left some.
const reapInterval = 5 * time.Minute

// listen holds one connection that LISTENs on the notification channels
// and passes notifications on, reconnecting after a failure, until Close.
// It also reclaims expired marks from time to time.
func (s *Store) listen() {
	defer s.listening.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-s.closed
		cancel()
	}()
	lastReap := time.Time{}
	for ctx.Err() == nil {
		// A failed connection is retried after a pause; the signals sent
		// once listening again cover what was missed meanwhile.
		_ = s.listenOnce(ctx, &lastReap)
		if ctx.Err() != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// listenOnce listens on one connection until it fails or ctx ends.
func (s *Store) listenOnce(ctx context.Context, lastReap *time.Time) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer func(c *pgxpool.Conn) {
		// A connection that was listening must not go back to the pool.
		_ = c.Conn().Close(context.Background())
		c.Release()
	}(conn)
	if _, err := conn.Exec(ctx, "LISTEN "+queueChannel+"; LISTEN "+valuesChannel); err != nil {
		return err
	}
	// Whatever happened while no connection listened: look again.
	signal(s.queueWake)
	signal(s.valuesWake)
	for {
		if time.Since(*lastReap) > reapInterval {
			*lastReap = time.Now()
			if _, err := conn.Exec(ctx, `DELETE FROM fedirelay_marks WHERE until <= now()`); err != nil {
				return err
			}
			if s.sweepDue.Load() && s.sweeping.CompareAndSwap(false, true) {
				s.listening.Add(1) // Close waits for it; ctx ends it
				go func() {
					defer s.listening.Done()
					defer s.sweeping.Store(false)
					s.sweep(ctx)
				}()
			}
		}
		wctx, cancel := context.WithTimeout(ctx, reapInterval)
		n, err := conn.Conn().WaitForNotification(wctx)
		cancel()
		if err != nil {
			if ctx.Err() == nil && wctx.Err() != nil {
				continue // the timeout: time to reap
			}
			return err
		}
		switch n.Channel {
		case queueChannel:
			signal(s.queueWake)
		case valuesChannel:
			signal(s.valuesWake)
		}
	}
}
