package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/backend"
)

// A preflight asks whether this binary can run against a store, without
// changing it.
func ExampleSchemaStatus() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "m1-example-")
	defer os.RemoveAll(dir)
	if _, err := backend.Schema(ctx, "", dir); errors.Is(err, os.ErrNotExist) {
		fmt.Println("no store yet: m1-authz creates it")
	}
	st, _ := backend.Open(ctx, "", dir)
	st.Close()
	s, _ := backend.Schema(ctx, "", dir)
	fmt.Println(s.Compatible(), s.Store == s.Binary)

	// A store a newer binary migrated, with one migration of schema 4 that
	// declares nothing, another that declares binaries of schema 3 can run.
	binary := []store.Migration{{Version: 1}, {Version: 2}, {Version: 3}}
	newer := []store.AppliedMigration{{Version: 1}, {Version: 2}, {Version: 3}, {Version: 4}}
	fmt.Println(store.NewSchemaStatus(binary, newer).Err())
	newer[3].CompatibleWith = 3
	fmt.Println(store.NewSchemaStatus(binary, newer))
	// Output:
	// no store yet: m1-authz creates it
	// true true
	// store: schema newer than this binary: the store's schema is version 4 and needs a binary of schema 4 or later; this binary's schema is version 3: run a binary of schema 4 or later, or restore a backup taken before the upgrade (docs/STORE.md)
	// store 4, binary 3: compatible (the store declares binaries of schema 3 or later can run against it)
}
