package sqlite

import "github.com/m1-agent/m1/internal/store"

// Migrations returns this binary's SQLite migrations, by version.
func Migrations() ([]store.Migration, error) {
	return store.LoadMigrations(migrations, "migrations")
}
