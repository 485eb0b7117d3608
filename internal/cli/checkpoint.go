package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/m1-agent/m1/internal/checkpoint"
	"github.com/m1-agent/m1/internal/store"
)

const auditCheckpointDescription = `Read the head of every hash chain in the store (--writer: one chain) —
writer, seq and hash of its last event — sign them with --key, an Ed25519
private JWK held outside the store (m1 keys gen --kid checkpoint-1 writes
one; keep it away from the store's operators, and never use an approval
signing key), and write the signed checkpoint to --out:

  DIR   a directory, meant to be write-once object storage (a bucket with
        object lock, a WORM volume): a new file per checkpoint, named by
        time, never over an existing one
  URL   an http(s):// base URL: PUT URL/NAME with If-None-Match: * (S3, GCS,
        Azure Blob and WebDAV refuse to overwrite); a bearer token from
        $M1_AUDIT_CHECKPOINT_TOKEN when set

m1 audit verify --checkpoints DIR then reports a chain that ends before a
head it was signed to hold: its newest events were deleted. m1-authz can
checkpoint its own chain on a schedule (M1_AUDIT_CHECKPOINT_OUT,
docs/AUDIT.md).

Exit status: 0 written, 2 error.`

func runAuditCheckpoint(ctx context.Context, c *cmdIO, args []string) int {
	env := auditEnv()
	env["out"], env["key"] = "M1_AUDIT_CHECKPOINT_OUT", "M1_AUDIT_CHECKPOINT_KEY_FILE"
	fs := newFlagSet("audit checkpoint", "m1 audit checkpoint --out DIR|URL --key KEY.jwk [--db URL] [--writer W]",
		auditCheckpointDescription, env)
	sf := addStoreFlags(fs)
	out := fs.String("out", "", "where to write: a `DIR` or an http(s):// URL (required)")
	keyFile := fs.String("key", "", "the Ed25519 private JWK `file` to sign with (required)")
	writer := fs.String("writer", "", "checkpoint only this `writer`'s chain")
	if code, ok := parse(fs, c, args, 0, 0); !ok {
		return code
	}
	switch {
	case *out == "":
		code, _ := usageError(fs, c, errors.New("--out is required"))
		return code
	case *keyFile == "":
		code, _ := usageError(fs, c, errors.New("--key is required"))
		return code
	}
	key, err := checkpoint.LoadKey(*keyFile)
	if err != nil {
		return fail(c, "audit checkpoint", err)
	}
	token, _ := c.lookupEnv("M1_AUDIT_CHECKPOINT_TOKEN")
	tg, err := checkpoint.Open(*out, token)
	if err != nil {
		return fail(c, "audit checkpoint", err)
	}
	st, err := sf.open(ctx)
	if err != nil {
		return fail(c, "audit checkpoint", err)
	}
	defer st.Close()
	name, cp, err := writeCheckpoint(ctx, st, tg, key, *writer, time.Now())
	if err != nil {
		return fail(c, "audit checkpoint", err)
	}
	for _, h := range cp.Heads {
		fmt.Fprintf(c.stdout, "%s  seq %d  %s\n", h.Writer, h.Seq, h.Hash)
	}
	fmt.Fprintf(c.stdout, "%d chains checkpointed: %s\n", len(cp.Heads), name)
	return exitOK
}

// writeCheckpoint takes, signs and writes one checkpoint; it returns its
// name.
func writeCheckpoint(ctx context.Context, src checkpoint.Source, tg checkpoint.Target, key checkpoint.Key, writer string, now time.Time) (string, checkpoint.Checkpoint, error) {
	cp, err := checkpoint.Take(ctx, src, writer, now)
	if err != nil {
		return "", cp, err
	}
	if writer != "" && len(cp.Heads) == 0 {
		return "", cp, fmt.Errorf("no chain %q in the store", writer)
	}
	signed, err := checkpoint.Sign(cp, key)
	if err != nil {
		return "", cp, err
	}
	name := checkpoint.Name(cp, signed)
	if err := tg.Put(ctx, name, signed); err != nil {
		return "", cp, err
	}
	return name, cp, nil
}

// signedReport is what the checkpoints say of one chain.
type signedReport struct {
	// Verified is whether the checkpoints' signatures were verified
	// (--checkpoint-keys or $M1_AUDIT_CHECKPOINT_KEY_FILE); false: they
	// were read unverified, and prove nothing against someone who can
	// write them.
	Verified bool `json:"verified"`
	// Seq is the highest head the checkpoints hold for the chain, File and
	// Time the checkpoint that holds it.
	Seq  int64     `json:"seq"`
	File string    `json:"file"`
	Time time.Time `json:"time"`
	// Finding is empty when the chain holds every signed head, else
	// cut_short (its newest events were deleted), rewritten (an event at a
	// signed head has another hash) or missing (the whole chain is gone).
	Finding      string `json:"finding,omitempty"`
	FirstMissing int64  `json:"first_missing,omitempty"`
	LastMissing  int64  `json:"last_missing,omitempty"`
	Reason       string `json:"reason,omitempty"`
}

// Findings of signedReport.
const (
	findingCutShort  = "cut_short"
	findingRewritten = "rewritten"
	findingMissing   = "missing"
)

// heads follows what a streamed chain holds at the seqs its signed heads
// name.
type heads struct {
	signed []checkpoint.SignedHead // lowest seq first
	want   map[int64]bool
	got    map[int64]string // seq → hash of the first event streamed at it
	last   int64            // the highest seq streamed
}

func newHeads(signed []checkpoint.SignedHead) *heads {
	h := &heads{signed: signed, want: map[int64]bool{}, got: map[int64]string{}}
	for _, s := range signed {
		h.want[s.Seq] = true
	}
	return h
}

// see takes one streamed event (the prune checkpoint included).
func (h *heads) see(e store.Event) {
	h.last = max(h.last, e.Seq)
	if _, seen := h.got[e.Seq]; h.want[e.Seq] && !seen {
		h.got[e.Seq] = e.Hash
	}
}

// report compares the chain with its signed heads; nil without any.
func (h *heads) report(streamed bool) *signedReport {
	if len(h.signed) == 0 {
		return nil
	}
	top := h.signed[len(h.signed)-1]
	r := &signedReport{Seq: top.Seq, File: top.File, Time: top.Time}
	if !streamed {
		h.last = 0
	}
	if h.last < top.Seq {
		r.Finding, r.FirstMissing, r.LastMissing = findingCutShort, h.last+1, top.Seq
		r.Reason = fmt.Sprintf("the chain ends at seq %d, but checkpoint %s (%s) holds seq %d: the newest events were deleted",
			h.last, top.File, top.Time.UTC().Format(time.RFC3339), top.Seq)
		return r
	}
	for _, s := range h.signed {
		if got, ok := h.got[s.Seq]; ok && got != s.Hash {
			r.Finding = findingRewritten
			r.Reason = fmt.Sprintf("seq %d's hash %.16s… is not the %.16s… that checkpoint %s (%s) holds: the chain was rewritten",
				s.Seq, got, s.Hash, s.File, s.Time.UTC().Format(time.RFC3339))
			return r
		}
	}
	return r
}

// missingChain is the report of a chain the checkpoints hold and the store
// does not.
func missingChain(writer string, signed []checkpoint.SignedHead) chainReport {
	top := signed[len(signed)-1]
	return chainReport{Writer: writer, Signed: &signedReport{
		Seq: top.Seq, File: top.File, Time: top.Time, Finding: findingMissing, FirstMissing: 1, LastMissing: top.Seq,
		Reason: fmt.Sprintf("the store has no such chain, but checkpoint %s (%s) holds seq %d: the whole chain was deleted",
			top.File, top.Time.UTC().Format(time.RFC3339), top.Seq),
	}}
}

// checkpointSet is the checkpoints loadCheckpoints read.
type checkpointSet struct {
	heads    map[string][]checkpoint.SignedHead // by writer, of the good files
	good     int                                // files read (and verified, when verified)
	bad      map[string]error                   // file name → why it was refused
	verified bool                               // the signatures were verified
}

// loadCheckpoints reads the checkpoints in dir and verifies their
// signatures with the keys in keysFile or, without one, with the public
// half of $M1_AUDIT_CHECKPOINT_KEY_FILE (the key m1-authz signs them with);
// with neither, the signatures are not verified (verified is false) and a
// warning on stderr says so.
func loadCheckpoints(c *cmdIO, dir, keysFile string) (checkpointSet, error) {
	if keysFile == "" {
		keysFile, _ = c.lookupEnv("M1_AUDIT_CHECKPOINT_KEY_FILE")
	}
	var keys checkpoint.Keys
	if keysFile != "" {
		var err error
		if keys, err = checkpoint.LoadKeys(keysFile); err != nil {
			return checkpointSet{}, err
		}
	} else {
		fmt.Fprintln(c.stderr, "warning: checkpoint signatures not verified (no --checkpoint-keys, $M1_AUDIT_CHECKPOINT_KEYS or $M1_AUDIT_CHECKPOINT_KEY_FILE): they can show a chain cut short or rewritten, but only signed ones prove it intact against someone who can write the checkpoints too")
	}
	good, bad, err := checkpoint.ReadDir(dir, keys)
	if err != nil {
		return checkpointSet{}, err
	}
	return checkpointSet{heads: checkpoint.ByWriter(good), good: len(good), bad: bad, verified: keysFile != ""}, nil
}
