// Package checkpointtest is the conformance suite every checkpoint.Target
// passes: write-once under concurrency, atomic, names kept to one segment.
package checkpointtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/m1-agent/m1/internal/checkpoint"
)

// Read returns what the target holds under name, and whether it holds it.
type Read func(t *testing.T, name string) ([]byte, bool)

// NewTarget returns an empty target and a way to read it back.
type NewTarget func(t *testing.T) (checkpoint.Target, Read)

// Run runs the suite against the targets newTarget makes.
func Run(t *testing.T, newTarget NewTarget) {
	ctx := context.Background()
	t.Run("put and read back", func(t *testing.T) {
		tg, read := newTarget(t)
		data := []byte("header.payload.signature")
		if err := tg.Put(ctx, "20260301T120000.000000Z-abc.jws", data); err != nil {
			t.Fatalf("Put = %v", err)
		}
		if got, ok := read(t, "20260301T120000.000000Z-abc.jws"); !ok || !bytes.Equal(got, data) {
			t.Fatalf("read back = %q, %v; want %q", got, ok, data)
		}
	})
	t.Run("never overwrites", func(t *testing.T) {
		tg, read := newTarget(t)
		if err := tg.Put(ctx, "a.jws", []byte("first")); err != nil {
			t.Fatal(err)
		}
		err := tg.Put(ctx, "a.jws", []byte("second"))
		if !errors.Is(err, checkpoint.ErrExists) {
			t.Fatalf("Put(existing name) = %v, want ErrExists", err)
		}
		if got, _ := read(t, "a.jws"); string(got) != "first" {
			t.Fatalf("after a refused Put, a.jws = %q, want the first bytes", got)
		}
	})
	t.Run("concurrent puts of one name: exactly one wins", func(t *testing.T) {
		tg, read := newTarget(t)
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range errs {
			wg.Go(func() { errs[i] = tg.Put(ctx, "race.jws", fmt.Appendf(nil, "writer %d", i)) })
		}
		wg.Wait()
		won := -1
		for i, err := range errs {
			switch {
			case err == nil && won >= 0:
				t.Fatalf("Puts %d and %d both succeeded", won, i)
			case err == nil:
				won = i
			case !errors.Is(err, checkpoint.ErrExists):
				t.Fatalf("Put %d = %v, want nil or ErrExists", i, err)
			}
		}
		if got, _ := read(t, "race.jws"); won < 0 || string(got) != fmt.Sprintf("writer %d", won) {
			t.Fatalf("race.jws = %q, winner %d", got, won)
		}
	})
	t.Run("names are one safe segment", func(t *testing.T) {
		tg, _ := newTarget(t)
		for _, name := range []string{"", ".", "..", "../x.jws", "a/b.jws", `a\b.jws`, "a b.jws", "a?x=1.jws", "%2e%2e"} {
			if err := tg.Put(ctx, name, []byte("x")); err == nil {
				t.Errorf("Put(%q) = nil, want an error", name)
			}
		}
	})
	t.Run("many names", func(t *testing.T) {
		tg, read := newTarget(t)
		for i := range 20 {
			if err := tg.Put(ctx, fmt.Sprintf("c-%02d.jws", i), []byte{byte(i)}); err != nil {
				t.Fatal(err)
			}
		}
		for i := range 20 {
			if got, ok := read(t, fmt.Sprintf("c-%02d.jws", i)); !ok || !bytes.Equal(got, []byte{byte(i)}) {
				t.Fatalf("c-%02d.jws = %v, %v", i, got, ok)
			}
		}
	})
}
