package sidecar

import (
	"context"
	"sync/atomic"
	"testing"
)

// BenchmarkCheckApprovals measures Check throughput on fresh approvals
// (every Check verifies a new EdDSA token and consumes its jti) for one
// sidecar with in-process state and for two sidecars sharing a real Redis
// (alternating), in the same run. Compare the two ns/op; there is no timed
// assertion.
func BenchmarkCheckApprovals(b *testing.B) {
	for _, tc := range []struct {
		name  string
		redis bool
	}{{"local", false}, {"shared-redis", true}} {
		b.Run(tc.name, func(b *testing.B) {
			p := startPair(b, tc.redis, nil)
			servers := []*Server{p.a}
			if tc.redis {
				servers = append(servers, p.b)
			}
			toks := make([]string, b.N)
			for i := range toks {
				toks[i] = p.mintFor(b, `{"path":"/tmp/shared"}`)
			}
			var next, denied atomic.Int64
			ctx := context.Background()
			b.ReportAllocs()
			b.SetParallelism(8) // 16 checks in flight on 2 cores: Redis round trips overlap, as under Envoy
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := next.Add(1) - 1
					resp, _ := servers[int(i)%len(servers)].Authz().Check(ctx, writeCall(toks[i]))
					if resp.GetStatus().GetCode() != 0 {
						denied.Add(1)
					}
				}
			})
			b.StopTimer()
			if d := denied.Load(); d > 0 {
				b.Fatalf("%d of %d fresh approvals denied", d, b.N)
			}
		})
	}
}
