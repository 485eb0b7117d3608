package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/bojand/ghz/runner"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
)

// checkMethod is the ext_authz method every target is asked, in ghz's form.
const checkMethod = "envoy.service.auth.v3.Authorization.Check"

// requestTimeout bounds one Check; a run therefore ends at most this long
// after its pacer says stop.
const requestTimeout = 5 * time.Second

// protoset returns a serialized FileDescriptorSet of the ext_authz service
// and every file it imports, taken from the Go protos compiled into this
// binary (go-control-plane's), dependencies first. ghz resolves the method
// from it, so no .proto files, network or server reflection are needed.
func protoset() ([]byte, error) {
	var (
		set  descriptorpb.FileDescriptorSet
		seen = map[string]bool{}
		add  func(fd protoreflect.FileDescriptor)
	)
	add = func(fd protoreflect.FileDescriptor) {
		if seen[fd.Path()] {
			return
		}
		seen[fd.Path()] = true
		imports := fd.Imports()
		for i := range imports.Len() {
			add(imports.Get(i).FileDescriptor)
		}
		set.File = append(set.File, protodesc.ToFileDescriptorProto(fd))
	}
	add(authv3.File_envoy_service_auth_v3_external_auth_proto)
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(&set)
	if err != nil {
		return nil, fmt.Errorf("marshal protoset: %w", err)
	}
	return b, nil
}

// checkCodec is the gRPC codec of the load. Marshal sends the bytes the
// feed hands out, marshalled beforehand (one request every time, or a list
// of fresh approvals), rather than marshalling ghz's dynamic copy of the
// request again on every call (which costs more CPU than a cache-hit
// check, and the load generator shares the machine with the servers it
// measures). Unmarshal accepts a response only when it is a CheckResponse
// whose status is OK; any other status (a deny) fails the call, so ghz
// counts it as an error. Responses are checked, not decoded into ghz's
// dynamic message, which nothing reads.
type checkCodec struct {
	feed *feed // read-only requests, shared by concurrent calls
}

func (c checkCodec) Name() string { return grpcproto.Name }

func (c checkCodec) Marshal(any) (mem.BufferSlice, error) { return c.feed.request(), nil }

func (c checkCodec) Unmarshal(data mem.BufferSlice, _ any) error {
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	code, msg, err := checkStatus(buf.ReadOnlyData())
	if err != nil {
		return err
	}
	if code != codes.OK {
		return &deniedError{code: code, msg: msg}
	}
	return nil
}

// deniedError is a CheckResponse that did not allow the request.
type deniedError struct {
	code codes.Code
	msg  string
}

func (e *deniedError) Error() string {
	if e.msg == "" {
		return "check not allowed: " + e.code.String()
	}
	return "check not allowed: " + e.code.String() + " " + e.msg
}

// checkStatus reads status.code and status.message of a serialized
// CheckResponse (field 1, a google.rpc.Status with code = 1 and message = 2)
// with proto's merge semantics: the last value wins. An absent status is OK,
// as it is to Envoy.
func checkStatus(b []byte) (codes.Code, string, error) {
	var (
		code int32
		msg  string
	)
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, "", fmt.Errorf("bad CheckResponse: %w", protowire.ParseError(n))
		}
		b = b[n:]
		if num != 1 || typ != protowire.BytesType {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return 0, "", fmt.Errorf("bad CheckResponse: %w", protowire.ParseError(n))
			}
			b = b[n:]
			continue
		}
		st, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return 0, "", fmt.Errorf("bad CheckResponse status: %w", protowire.ParseError(n))
		}
		b = b[n:]
		for len(st) > 0 {
			snum, styp, m := protowire.ConsumeTag(st)
			if m < 0 {
				return 0, "", fmt.Errorf("bad CheckResponse status: %w", protowire.ParseError(m))
			}
			st = st[m:]
			switch {
			case snum == 1 && styp == protowire.VarintType:
				v, m2 := protowire.ConsumeVarint(st)
				if m2 < 0 {
					return 0, "", fmt.Errorf("bad CheckResponse status code: %w", protowire.ParseError(m2))
				}
				code, m = int32(v), m2
			case snum == 2 && styp == protowire.BytesType:
				v, m2 := protowire.ConsumeBytes(st)
				if m2 < 0 {
					return 0, "", fmt.Errorf("bad CheckResponse status message: %w", protowire.ParseError(m2))
				}
				msg, m = string(v), m2
			default:
				if m = protowire.ConsumeFieldValue(snum, styp, st); m < 0 {
					return 0, "", fmt.Errorf("bad CheckResponse status: %w", protowire.ParseError(m))
				}
			}
			st = st[m:]
		}
	}
	return codes.Code(uint32(code)), msg, nil
}

// pacer lets ghz start calls as fast as the workers go, or at rate calls a
// second, until max calls were started, the time limit passed or done was
// closed, whichever comes first.
type pacer struct {
	done     <-chan struct{} // the run's ctx.Done()
	max      uint64          // 0 = no count limit
	limit    time.Duration
	rate     float64 // calls per second; 0 = no pacing
	timedOut bool    // written by Pace, which ghz calls from one goroutine
}

func (p *pacer) Pace(elapsed time.Duration, hits uint64) (time.Duration, bool) {
	select {
	case <-p.done:
		return 0, true
	default:
	}
	switch {
	case p.max > 0 && hits >= p.max:
		return 0, true
	case elapsed >= p.limit:
		p.timedOut = p.max > 0
		return 0, true
	}
	if p.rate > 0 { // call number hits is due at hits/rate
		if due := time.Duration(float64(hits) / p.rate * float64(time.Second)); due > elapsed {
			return min(due-elapsed, p.limit-elapsed), false
		}
	}
	return 0, false
}

func (p *pacer) Rate(time.Duration) float64 { return p.rate }

// load is one ghz run against one address, or against several at once
// (sidecars sharing Redis), the calls in flight split between them.
type load struct {
	addrs       []string
	protoset    []byte
	template    []byte // a request of the load's shape, for ghz's own message
	feed        *feed  // what is sent
	concurrency int
	connections int
	requests    int           // calls to make; 0 = until the time limit
	limit       time.Duration // time limit of the run
	rate        float64       // calls started per second; 0 = as fast as answered
}

// tally accumulates the runs of one target.
type tally struct {
	calls     uint64
	errors    uint64
	errDist   map[string]int
	elapsed   time.Duration
	latencies []time.Duration // of the calls that were allowed
	timedOut  bool            // a run with a call count hit its time limit
	rates     []float64       // calls per second of each run
	ends      []callEnd       // every call, in measured time (see add)
}

// add counts one ghz report in.
// Its calls are placed in measured time: the runs end to end, each from its
// first call's start, so that the timeline of alternating rounds has no
// gaps where the other target was measured.
func (t *tally) add(rep *runner.Report, timedOut bool) {
	var first time.Time
	for _, d := range rep.Details {
		if s := d.Timestamp.Add(-d.Latency); first.IsZero() || s.Before(first) {
			first = s
		}
	}
	for _, d := range rep.Details {
		t.ends = append(t.ends, callEnd{at: t.elapsed + max(d.Timestamp.Sub(first), 0), latency: d.Latency, failed: d.Error != ""})
		if d.Error == "" {
			t.latencies = append(t.latencies, d.Latency)
		}
	}
	t.calls += rep.Count
	t.elapsed += rep.Total
	if rep.Total > 0 {
		t.rates = append(t.rates, float64(rep.Count)/rep.Total.Seconds())
	}
	t.timedOut = t.timedOut || timedOut
	for msg, n := range rep.ErrorDist {
		if t.errDist == nil {
			t.errDist = map[string]int{}
		}
		t.errDist[msg] += n
		t.errors += uint64(n)
	}
}

// rate is calls per second of measured time.
func (t *tally) rate() float64 {
	if t.elapsed <= 0 {
		return 0
	}
	return float64(t.calls) / t.elapsed.Seconds()
}

// mean is the mean latency of the allowed calls, 0 when there were none.
func (t *tally) mean() time.Duration {
	if len(t.latencies) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range t.latencies {
		sum += d
	}
	return sum / time.Duration(len(t.latencies))
}

// percentile is the nearest-rank p-th percentile (0 < p <= 100) of the
// allowed calls' latencies, or 0 when there were none. It sorts them.
func (t *tally) percentile(p float64) time.Duration { return nearestRank(t.latencies, p) }

// timeline is the calls' throughput over the measured time.
func (t *tally) timeline() []Interval { return timeline(t.ends, t.elapsed) }

// histogram is the allowed calls' latency histogram. It sorts them.
func (t *tally) histogram() []Bucket {
	slices.Sort(t.latencies)
	return Histogram(t.latencies)
}

// run drives the load with ghz, waits for it to finish and adds what it
// measured to t. It ends early, with ctx's error, when ctx ends. With
// several addresses the calls in flight, the connections and the calls are
// split between them, the runs go side by side, and they count as one run
// (its time is the longest of them).
func (l load) run(ctx context.Context, t *tally) error {
	if len(l.addrs) == 1 {
		rep, timedOut, err := l.runOne(ctx, l.addrs[0], l.concurrency, l.connections, l.requests, l.rate)
		if err != nil {
			return err
		}
		t.add(rep, timedOut)
		return nil
	}
	n := len(l.addrs)
	reps := make([]*runner.Report, n)
	timed := make([]bool, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, addr := range l.addrs {
		c := share(l.concurrency, n, i)
		conns := max(1, share(l.connections, n, i))
		req := 0
		if l.requests > 0 {
			req = share(l.requests, n, i)
		}
		wg.Go(func() {
			reps[i], timed[i], errs[i] = l.runOne(ctx, addr, max(c, 1), min(conns, max(c, 1)), req, l.rate/float64(n))
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	merged := &runner.Report{ErrorDist: map[string]int{}}
	timedOut := false
	for i, r := range reps {
		merged.Count += r.Count
		merged.Total = max(merged.Total, r.Total)
		for k, v := range r.ErrorDist {
			merged.ErrorDist[k] += v
		}
		merged.Details = append(merged.Details, r.Details...)
		timedOut = timedOut || timed[i]
	}
	t.add(merged, timedOut)
	return nil
}

// runOne is one ghz run against addr.
func (l load) runOne(ctx context.Context, addr string, concurrency, connections, requests int, rate float64) (*runner.Report, bool, error) {
	// Only the pacer's limits bound the run; ghz's total is the initial
	// capacity of its result buffer.
	total := requests
	if total == 0 {
		total = 100_000
	}
	p := &pacer{done: ctx.Done(), max: uint64(requests), limit: l.limit, rate: rate}
	cfg, err := runner.NewConfig(checkMethod, addr,
		runner.WithProtosetBinary(l.protoset),
		runner.WithBinaryData(l.template),
		runner.WithInsecure(true),
		runner.WithConcurrency(uint(concurrency)),
		runner.WithConnections(uint(connections)),
		runner.WithTotalRequests(uint(total)),
		runner.WithPacer(p),
		runner.WithTimeout(requestTimeout),
		runner.WithDialTimeout(requestTimeout),
		runner.WithDisableTemplateFuncs(true),
		runner.WithDisableTemplateData(true),
		runner.WithDefaultCallOptions([]grpc.CallOption{grpc.ForceCodecV2(checkCodec{feed: l.feed})}),
	)
	if err != nil {
		return nil, false, fmt.Errorf("configure ghz: %w", err)
	}
	req, err := runner.NewRequester(cfg)
	if err != nil {
		return nil, false, fmt.Errorf("prepare ghz: %w", err)
	}
	rep, err := req.Run()
	if err != nil {
		return nil, false, fmt.Errorf("run ghz: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	if rep.Count == 0 {
		return nil, false, errors.New("no calls completed")
	}
	return rep, p.timedOut, nil
}

// topErrors lists the most frequent errors, most frequent first, at most n.
func topErrors(dist map[string]int, n int) []string {
	keys := make([]string, 0, len(dist))
	for k := range dist {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if dist[keys[i]] != dist[keys[j]] {
			return dist[keys[i]] > dist[keys[j]]
		}
		return keys[i] < keys[j]
	})
	if len(keys) > n {
		keys = keys[:n]
	}
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = fmt.Sprintf("%d× %s", dist[k], strings.TrimSpace(k))
	}
	return out
}
