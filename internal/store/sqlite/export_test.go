package sqlite

import "github.com/m1-agent/m1/internal/store/storetest"

// WithMigrations returns o for a binary whose migrations are this one's
// plus extra (file name under migrations/ → SQL): a newer binary, for the
// schema guard's tests.
func WithMigrations(o Options, extra map[string]string) Options {
	o.migrations = storetest.MigrationsPlus(migrations, extra)
	return o
}
