package store

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrSchemaTooNew is wrapped by the error of a backend's Open, and of
// SchemaStatus.Err, when the store's schema is newer than this binary's
// and does not declare itself compatible with it: rolling the binary back
// onto that store is refused rather than left to run silently wrong.
var ErrSchemaTooNew = errors.New("store: schema newer than this binary")

// ErrSchemaOlder is wrapped by the error of opening a store read-only whose
// schema is older than this binary's: its migrations must be applied
// before this binary can read it, and read-only they cannot be.
var ErrSchemaOlder = errors.New("store: schema older than this binary")

// AppliedMigration is a migration as a store recorded it.
type AppliedMigration struct {
	Version int    `json:"version"`
	Name    string `json:"name"`
	// CompatibleWith is what the migration declared when it was applied
	// (Migration.CompatibleWith); 0 for none.
	CompatibleWith int `json:"compatible_with,omitempty"`
}

// SchemaStatus is a store's schema against this binary's: what a binary
// checks before it runs against a store (each backend's Open does, before
// it applies a migration) and what `m1 store status` and `m1 preflight`
// report. Build it with NewSchemaStatus; the backends read it with their
// ReadSchema functions (store/backend.Schema for a database URL) without
// changing the store.
type SchemaStatus struct {
	// Store is the store's schema version: the highest migration applied
	// to it, 0 for an empty database.
	Store int `json:"store"`
	// Binary is this binary's schema version: the highest migration it has.
	Binary int `json:"binary"`
	// Requires is the oldest binary schema that can run against the store:
	// the highest, over the store's migrations, of the version each
	// declared compatible with, or of its own version when it declared
	// none.
	Requires int `json:"requires"`
	// Pending are this binary's migrations the store lacks; Open applies
	// them.
	Pending []int `json:"pending,omitempty"`
	// Unknown are the store's migrations this binary does not have: a newer
	// binary applied them.
	Unknown []int `json:"unknown,omitempty"`
}

// NewSchemaStatus compares the migrations a store recorded with the
// binary's.
func NewSchemaStatus(binary []Migration, applied []AppliedMigration) SchemaStatus {
	have := map[int]bool{}
	var s SchemaStatus
	for _, m := range binary {
		have[m.Version] = true
		s.Binary = max(s.Binary, m.Version)
	}
	done := map[int]bool{}
	for _, a := range applied {
		done[a.Version] = true
		s.Store = max(s.Store, a.Version)
		need := a.Version
		if a.CompatibleWith > 0 && a.CompatibleWith < a.Version {
			need = a.CompatibleWith
		}
		s.Requires = max(s.Requires, need)
		if !have[a.Version] {
			s.Unknown = append(s.Unknown, a.Version)
		}
	}
	for _, m := range binary {
		if !done[m.Version] {
			s.Pending = append(s.Pending, m.Version)
		}
	}
	slices.Sort(s.Unknown)
	slices.Sort(s.Pending)
	return s
}

// Compatible reports whether this binary can run against the store: every
// migration of the store it does not have declares itself compatible with
// this binary's schema, and none of its own is missing below one it does
// not have (a store it cannot bring to a schema it knows).
func (s SchemaStatus) Compatible() bool {
	return s.Err() == nil
}

// Err returns nil when the binary can run against the store, and
// otherwise an error naming both schema versions that wraps
// ErrSchemaTooNew.
func (s SchemaStatus) Err() error {
	switch {
	case s.Requires > s.Binary:
		return fmt.Errorf("%w: the store's schema is version %d and needs a binary of schema %d or later; this binary's schema is version %d: run a binary of schema %d or later, or restore a backup taken before the upgrade (docs/STORE.md)",
			ErrSchemaTooNew, s.Store, s.Requires, s.Binary, s.Requires)
	case len(s.Unknown) > 0 && len(s.Pending) > 0:
		return fmt.Errorf("%w: the store's schema is version %d with migrations %s this binary (schema version %d) does not have, but lacks its %s: it was migrated by a different line of binaries",
			ErrSchemaTooNew, s.Store, versions(s.Unknown), s.Binary, versions(s.Pending))
	}
	return nil
}

// String describes the status in one line, e.g. "store 5, binary 4:
// compatible (the store declares binaries of schema 4 or later can run
// against it)".
func (s SchemaStatus) String() string {
	head := fmt.Sprintf("store %d, binary %d", s.Store, s.Binary)
	switch {
	case s.Requires > s.Binary:
		return head + fmt.Sprintf(": INCOMPATIBLE (the store needs a binary of schema %d or later)", s.Requires)
	case s.Err() != nil:
		return head + fmt.Sprintf(": INCOMPATIBLE (the store has %s, which this binary does not, but lacks %s)", versions(s.Unknown), versions(s.Pending))
	case s.Store == 0:
		return head + ": empty (this binary applies every migration)"
	case len(s.Unknown) > 0:
		return head + fmt.Sprintf(": compatible (the store declares binaries of schema %d or later can run against it)", s.Requires)
	case len(s.Pending) > 0:
		return head + fmt.Sprintf(": older (this binary applies %s when it opens the store)", versions(s.Pending))
	}
	return head + ": current"
}

func versions(vs []int) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = fmt.Sprint(v)
	}
	return strings.Join(s, ", ")
}
