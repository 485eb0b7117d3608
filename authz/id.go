package authz

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"sync/atomic"
	"time"
)

// idGen makes decision ids: 48 bits of Unix milliseconds, then a 64-bit
// counter that starts at a random value per process, as 28 hex digits. Ids
// sort by time, never repeat within a process, and collide across processes
// only by chance of 2^-64 per millisecond.
type idGen struct {
	n atomic.Uint64
}

func (g *idGen) seed() {
	var seed [8]byte
	_, _ = rand.Read(seed[:]) // crypto/rand.Read never fails on Linux
	g.n.Store(binary.BigEndian.Uint64(seed[:]))
}

func (g *idGen) next(now time.Time) string {
	var raw [14]byte
	ms := uint64(now.UnixMilli())
	raw[0], raw[1], raw[2], raw[3], raw[4], raw[5] = byte(ms>>40), byte(ms>>32), byte(ms>>24), byte(ms>>16), byte(ms>>8), byte(ms)
	binary.BigEndian.PutUint64(raw[6:], g.n.Add(1))
	var out [28]byte
	hex.Encode(out[:], raw[:])
	return string(out[:])
}
