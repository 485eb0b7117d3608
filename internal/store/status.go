package store

import "time"

// Status is a report on a store, as `m1 store status` prints it. The
// backends' Inspect functions read it without changing the store, and
// whatever its schema.
type Status struct {
	// Backend is "sqlite" or "postgres".
	Backend string `json:"backend"`
	// Location is the SQLite file's path, or the PostgreSQL database's
	// host, port and name (never a password).
	Location string `json:"location"`
	// Schema is the store's schema against this binary's.
	Schema SchemaStatus `json:"schema"`
	// Migrations are those the store recorded, by version.
	Migrations []AppliedMigration `json:"migrations"`
	// Bytes is the size on disk: the SQLite file with its write-ahead log,
	// or pg_database_size.
	Bytes int64 `json:"bytes"`
	// Tables are the rows of each table, by name.
	Tables []TableRows `json:"tables"`
	// Chains are the audit chains, by writer.
	Chains []ChainStatus `json:"chains"`
}

// TableRows is one table's row count.
type TableRows struct {
	Name string `json:"name"`
	Rows int64  `json:"rows"`
}

// ChainStatus is one writer's audit chain.
type ChainStatus struct {
	Writer string `json:"writer"`
	// Events is how many events the chain holds now.
	Events int64 `json:"events"`
	// PrunedSeq and PrunedHash are the last event retention pruned (the
	// checkpoint the chain verifies from); 0 and "" when never pruned.
	PrunedSeq  int64  `json:"pruned_seq,omitempty"`
	PrunedHash string `json:"pruned_hash,omitempty"`
	// HeadSeq and HeadHash are the chain's last event (or its checkpoint
	// when every event was pruned).
	HeadSeq  int64  `json:"head_seq"`
	HeadHash string `json:"head_hash"`
	// LastEvent is the time of the chain's last event; zero when it holds
	// none.
	LastEvent time.Time `json:"last_event,omitzero"`
}
