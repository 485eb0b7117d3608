package postgres

import "github.com/m1-agent/m1/internal/store"

// Migrations returns this binary's PostgreSQL migrations, by version.
func Migrations() ([]store.Migration, error) {
	return store.LoadMigrations(migrations, "migrations")
}
