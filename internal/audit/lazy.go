package audit

import (
	"context"
	"sync"

	"github.com/m1-agent/m1/internal/store"
)

// LazySink opens its store on first use and retries the open on every later
// call until it succeeds, so that a sidecar starts (and spools) while its
// database is still down.
type LazySink struct {
	open func(context.Context) (store.Store, error)
	mu   sync.Mutex
	s    store.Store
}

// NewLazySink returns a sink that opens its store with open.
func NewLazySink(open func(context.Context) (store.Store, error)) *LazySink {
	return &LazySink{open: open}
}

// Store returns the store, opening it if needed.
func (l *LazySink) Store(ctx context.Context) (store.Store, error) { return l.get(ctx) }

func (l *LazySink) get(ctx context.Context) (store.Store, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.s != nil {
		return l.s, nil
	}
	s, err := l.open(ctx)
	if err != nil {
		return nil, err
	}
	l.s = s
	return s, nil
}

// AppendEvents implements Sink.
func (l *LazySink) AppendEvents(ctx context.Context, events []store.Event) error {
	s, err := l.get(ctx)
	if err != nil {
		return err
	}
	return s.AppendEvents(ctx, events)
}

// Ping implements Sink: it opens the store if needed.
func (l *LazySink) Ping(ctx context.Context) error {
	s, err := l.get(ctx)
	if err != nil {
		return err
	}
	return s.Ping(ctx)
}

// Close closes the store if it was opened.
func (l *LazySink) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.s == nil {
		return nil
	}
	return l.s.Close()
}
