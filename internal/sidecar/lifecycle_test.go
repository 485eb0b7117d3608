package sidecar

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/testenv"
)

// TestServeStopsWhenAListenerDies: a gRPC listener that fails (closed
// under the server here) stops the process with that error, instead of a
// sidecar whose admin port reports healthy while nothing answers Envoy.
func TestServeStopsWhenAListenerDies(t *testing.T) {
	o := testOptions(t)
	o.DrainTimeout = 2 * time.Second
	s, err := New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, nil) }()
	testenv.Eventually(t, 10*time.Second, "the server started", func() bool { return s.started.Load() })

	s.grpcLis.Close()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "gRPC server") {
			t.Fatalf("Serve = %v, want the gRPC server's error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve still running 10s after its gRPC listener died")
	}
	// The admin port was drained and closed with it.
	if c, err := net.DialTimeout("tcp", s.AdminAddr().String(), time.Second); err == nil {
		c.Close()
		t.Error("the admin port still accepts connections after Serve returned")
	}
}

// TestServeEndsCleanlyWithItsContext: the normal way out returns nil.
func TestServeEndsCleanlyWithItsContext(t *testing.T) {
	s, err := New(context.Background(), testOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, nil) }()
	testenv.Eventually(t, 10*time.Second, "the server started", func() bool { return s.started.Load() })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve after its context ended = %v, want nil", err)
	}
}

// TestFailedStartLeavesNothing: a Start that fails (its admin address is
// taken) closes the gRPC listener it had opened, so that a retry can bind
// it, and stops what it started.
func TestFailedStartLeavesNothing(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr := free.Addr().String()
	free.Close()

	o := testOptions(t)
	o.GRPCAddr, o.AdminAddr = grpcAddr, taken.Addr().String()
	s, err := New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "listen admin") {
		t.Fatalf("Start on a taken admin address = %v, want a listen admin error", err)
	}
	again, err := net.Listen("tcp", grpcAddr)
	if err != nil {
		t.Fatalf("the gRPC address is still held after the failed Start: %v", err)
	}
	again.Close()
}
