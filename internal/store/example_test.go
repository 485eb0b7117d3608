package store_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/backend"
)

// A writer chains its events and appends them in batches; `m1 audit verify`
// walks every chain.
func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "m1-example-")
	defer os.RemoveAll(dir)
	st, err := backend.Open(ctx, "", dir) // M1_DATABASE_URL, M1_DATA_DIR
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()

	// The sidecar: one chain per process.
	chainer := store.NewChainer(store.WriterID("m1-authz", time.Now()))
	batch := []store.Event{
		{DecisionID: "d-1", Time: time.Now(), Kind: store.KindDecision, Principal: "agent-a", Tool: "fs.read",
			Decision: "allow", Reason: "ok", Status: 200},
		{DecisionID: "d-2", Time: time.Now(), Kind: store.KindDecision, Principal: "agent-a", Tool: "fs.write",
			Decision: "deny", Reason: "policy_denied", Status: 403},
	}
	chainer.Chain(batch)
	if err := st.AppendEvents(ctx, batch); err != nil {
		log.Fatal(err) // the sidecar spools the batch and replays it later
	}

	// m1 audit verify.
	err = st.Chains(ctx, func(writer string) error {
		var v store.Verifier
		err := st.Chain(ctx, writer, v.Add)
		if err == nil {
			err = v.Close()
		}
		var b *store.Break
		if errors.As(err, &b) {
			fmt.Println("broken:", b)
			return nil
		}
		if err == nil {
			fmt.Println(v.Verified(), "events intact")
		}
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output: 2 events intact
}
