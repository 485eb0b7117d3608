package orchestratord

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/testenv"
)

// TestServeStopsWhenItsListenerDies: an HTTP listener that fails (closed
// under the server here) stops the orchestrator with that error instead of
// leaving a process that answers nothing.
func TestServeStopsWhenItsListenerDies(t *testing.T) {
	_, jwks := operatorKey(t, "ops-1")
	o := testOptions(t, jwks)
	o.DispatchTimeout = time.Second
	s, err := New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	testenv.Eventually(t, 10*time.Second, "the server started", func() bool { return s.started.Load() })

	s.lis.Close()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "HTTP server") {
			t.Fatalf("Serve = %v, want the HTTP server's error", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Serve still running 15s after its listener died")
	}
	// Stopped: the store is closed.
	if err := s.st.Ping(context.Background()); err == nil {
		t.Error("the store still answers after Serve returned")
	}
}

// TestServeEndsCleanlyWithItsContext: the normal way out returns nil.
func TestServeEndsCleanlyWithItsContext(t *testing.T) {
	_, jwks := operatorKey(t, "ops-1")
	s, err := New(context.Background(), testOptions(t, jwks))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	testenv.Eventually(t, 10*time.Second, "the server started", func() bool { return s.started.Load() })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve after its context ended = %v, want nil", err)
	}
}
