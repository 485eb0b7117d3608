package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/mem"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/toolcall"
)

// Modes of a run: which path of m1-authz the load takes.
const (
	// ModeCache sends one cacheable call without a token (read_file): the
	// decision-cache hit path.
	ModeCache = "cache"
	// ModeApproval sends a write_file call carrying a fresh EdDSA approval
	// on every call, each used once: the uncached verification path
	// (signature, claims, binding, revocation, the durable single-use
	// record, audit). Tokens are minted before each round, not while it
	// is measured.
	ModeApproval = "approval"
	// ModeGrant sends the same write_file call with one grant on every
	// call: the verified-token cache and the grant's use counter.
	ModeGrant = "grant"
)

// Approval tokens the bench mints: the call they approve and their claims.
const (
	writeTool       = "write_file"
	writeArgs       = `{"path":"/tmp/m1-bench.txt","content":"hello"}`
	benchIssuer     = "m1-bench"
	benchSubject    = "agent-bench"
	benchActor      = "m1-bench"
	benchKID        = "m1-bench"
	tokenLifetime   = 4 * time.Minute // within the default M1_APPROVAL_TOKEN_TTL_MINUTES (5)
	DefaultAudience = "m1-bench"
)

// writeCallBody is the MCP tools/call of write_file the approval and grant
// modes send; the default policy requires a token for it.
var writeCallBody = `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"` + writeTool + `","arguments":` + writeArgs + `}}`

// Signer mints the approvals and grants of a run with one key.
type Signer struct {
	key      *approval.SigningKey
	audience string
	argsHash string
}

// NewSigner returns a Signer with a new EdDSA key for audience.
func NewSigner(audience string) (*Signer, error) {
	k, err := approval.GenerateKey(approval.AlgEdDSA, benchKID)
	if err != nil {
		return nil, err
	}
	return newSigner(k, audience)
}

// LoadSigner returns a Signer with the private JWK in path (`m1 keys gen`).
func LoadSigner(path, audience string) (*Signer, error) {
	k, err := approval.LoadSigningKey(path)
	if err != nil {
		return nil, err
	}
	return newSigner(k, audience)
}

func newSigner(k *approval.SigningKey, audience string) (*Signer, error) {
	h, err := toolcall.ArgsSHA256(writeTool, []byte(writeArgs))
	if err != nil {
		return nil, fmt.Errorf("hash the bench call's arguments: %w", err)
	}
	return &Signer{key: k, audience: audience, argsHash: h}, nil
}

// WriteJWKS writes the public JWKS of the signer's key to dir/jwks.json
// (for M1_JWKS_FILE) and returns its path.
func (s *Signer) WriteJWKS(dir string) (string, error) {
	b, err := s.key.PublicJWKS()
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, "jwks.json")
	return p, os.WriteFile(p, b, 0o600)
}

// Approval mints a fresh approval of the bench's write_file call.
func (s *Signer) Approval(now time.Time) (string, error) {
	return approval.Mint(s.key, approval.Claims{
		Issuer: benchIssuer, Subject: benchSubject, Audience: []string{s.audience}, Actor: benchActor,
		IssuedAt: now, NotBefore: now, Expiry: now.Add(tokenLifetime),
		Kind: approval.KindApproval, Tool: writeTool, ArgsSHA256: s.argsHash,
	})
}

// Grant mints a grant of write_file for maxUses calls.
func (s *Signer) Grant(now time.Time, maxUses int) (string, error) {
	return approval.Mint(s.key, approval.Claims{
		Issuer: benchIssuer, Subject: benchSubject, Audience: []string{s.audience}, Actor: benchActor,
		IssuedAt: now, NotBefore: now, Expiry: now.Add(tokenLifetime),
		Kind: approval.KindGrant, Tools: []string{writeTool}, MaxUses: maxUses,
	})
}

// feed hands each call of a load its request bytes: the same bytes every
// time (one request), the next of a list of pre-marshalled requests (fresh
// approvals, each sent once), or, when the list runs out, a request made on
// the spot by more. It is safe for concurrent use.
type feed struct {
	reqs  []mem.SliceBuffer
	cycle bool // reuse reqs round-robin instead of running out
	next  atomic.Uint64
	more  func() ([]byte, error) // makes a request past the end of reqs; nil = cycle
	extra atomic.Uint64          // requests made by more during the load
	err   atomic.Pointer[error]  // the first error of more
	// gen, when set, makes every call's request from its number instead.
	gen func(i uint64) mem.SliceBuffer
}

// fixedFeed sends req on every call.
func fixedFeed(req []byte) *feed {
	return &feed{reqs: []mem.SliceBuffer{req}, cycle: true}
}

// request returns the next call's request.
func (f *feed) request() mem.BufferSlice {
	if f.gen != nil {
		return mem.BufferSlice{f.gen(f.next.Add(1) - 1)}
	}
	if len(f.reqs) == 1 && f.cycle {
		return mem.BufferSlice{f.reqs[0]}
	}
	i := f.next.Add(1) - 1
	if i < uint64(len(f.reqs)) {
		return mem.BufferSlice{f.reqs[i]}
	}
	if f.cycle || f.more == nil {
		return mem.BufferSlice{f.reqs[i%uint64(len(f.reqs))]}
	}
	b, err := f.more()
	if err != nil {
		f.err.CompareAndSwap(nil, &err)
		return mem.BufferSlice{f.reqs[len(f.reqs)-1]} // a replay: denied, counted as an error
	}
	f.extra.Add(1)
	return mem.BufferSlice{mem.SliceBuffer(b)}
}

// sent is how many requests the feed handed out.
func (f *feed) sent() uint64 { return f.next.Load() }

// approvalRequests marshals n CheckRequests of the bench's write_file call,
// each with a fresh approval, minting on every core.
func approvalRequests(s *Signer, n int) ([]mem.SliceBuffer, error) {
	out := make([]mem.SliceBuffer, n)
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		firstErr atomic.Pointer[error]
	)
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || firstErr.Load() != nil {
					return
				}
				b, err := approvalRequest(s)
				if err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				out[i] = b
			}
		})
	}
	wg.Wait()
	if p := firstErr.Load(); p != nil {
		return nil, *p
	}
	return out, nil
}

// approvalRequest is one CheckRequest with a fresh approval.
func approvalRequest(s *Signer) ([]byte, error) {
	tok, err := s.Approval(time.Now())
	if err != nil {
		return nil, fmt.Errorf("mint approval: %w", err)
	}
	return marshalTokenRequest(writeCallBody, tok)
}
