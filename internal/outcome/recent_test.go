package outcome

import (
	"strconv"
	"testing"
	"time"
)

// The memory of recent decisions: a value is found until its TTL has
// passed, taken once, and when more ids arrive than it holds the oldest
// go first.
func TestRecent(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }

	t.Run("ttl", func(t *testing.T) {
		r := newRecent[string](1000, time.Minute, clock)
		r.set("a", "x")
		now = now.Add(59 * time.Second)
		if v, ok, _ := r.get("a", false); !ok || v != "x" {
			t.Fatalf("get before the TTL = %q, %v", v, ok)
		}
		r.set("b", "y") // may rotate a's generation to prev: still found
		now = now.Add(time.Second)
		if _, ok, _ := r.get("a", false); ok {
			t.Fatal("found after its TTL")
		}
		if v, ok, _ := r.get("b", false); !ok || v != "y" {
			t.Fatalf("b = %q, %v; want y", v, ok)
		}
		now = now.Add(3 * time.Minute)
		r.set("c", "z") // two rotations' worth of time: a and b are gone
		if _, ok, _ := r.get("b", false); ok {
			t.Fatal("b found after its TTL")
		}
	})

	t.Run("taken once", func(t *testing.T) {
		r := newRecent[call](1000, time.Minute, clock)
		r.set("d", call{tool: "write_file"})
		if c, ok, taken := r.get("d", true); !ok || taken || c.tool != "write_file" {
			t.Fatalf("first take = %+v, %v, %v", c, ok, taken)
		}
		if _, ok, taken := r.get("d", true); !ok || !taken {
			t.Fatalf("second take = %v, %v; want found and taken", ok, taken)
		}
		if _, ok, taken := r.get("d", false); !ok || !taken {
			t.Fatalf("get after take = %v, %v; want found and taken", ok, taken)
		}
	})

	t.Run("bounded, oldest first", func(t *testing.T) {
		const size = 2 * recentShards * 16 // 16 ids per generation and shard
		r := newRecent[int](size, time.Hour, clock)
		n := 10 * size
		for i := range n {
			r.set(strconv.Itoa(i), i)
		}
		held := 0
		for i := range n {
			if v, ok, _ := r.get(strconv.Itoa(i), false); ok {
				held++
				if v != i {
					t.Fatalf("id %d holds %d", i, v)
				}
			}
		}
		if held > size || held < size/2 {
			t.Fatalf("holds %d of %d ids, want between %d and %d", held, n, size/2, size)
		}
		for i := n - size/16; i < n; i++ { // the newest ids (~2 a shard; a shard keeps its newest 16) stay
			if _, ok, _ := r.get(strconv.Itoa(i), false); !ok {
				t.Fatalf("id %d (among the newest) was dropped", i)
			}
		}
	})
}
