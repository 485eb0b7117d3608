package sqlite

import (
	"io/fs"
	"testing/fstest"
)

// WithMigrations returns o for a binary whose migrations are this one's
// plus extra (file name under migrations/ → SQL): a newer binary, for the
// schema guard's tests.
func WithMigrations(o Options, extra map[string]string) Options {
	files := fstest.MapFS{}
	ents, _ := fs.ReadDir(migrations, "migrations")
	for _, e := range ents {
		b, _ := fs.ReadFile(migrations, "migrations/"+e.Name())
		files["migrations/"+e.Name()] = &fstest.MapFile{Data: b}
	}
	for name, sql := range extra {
		files["migrations/"+name] = &fstest.MapFile{Data: []byte(sql)}
	}
	o.migrations = files
	return o
}
