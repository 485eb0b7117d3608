package store

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
)

// Migration is one versioned schema change, applied once, in a transaction,
// and recorded in the schema_migrations table.
type Migration struct {
	Version int
	Name    string
	SQL     string
	// CompatibleWith, when not 0, is the oldest binary schema that can
	// still run against a store this migration was applied to: the file
	// declares it with a line
	//
	//	-- m1:compatible-with 4
	//
	// and the store records it (schema_compat) when it applies the
	// migration, so that a binary that predates the migration can read the
	// declaration (see SchemaStatus). Without it only a binary that has
	// this migration can run against the store.
	CompatibleWith int
}

// compatDirective, after "--", declares Migration.CompatibleWith in a
// migration file.
const compatDirective = "m1:compatible-with"

// LoadMigrations reads the migrations in dir of fsys (a backend's embedded
// files), named "<version>_<name>.sql" with version a positive integer
// ("0001_init.sql"), and returns them by version. Versions must be unique.
func LoadMigrations(fsys fs.FS, dir string) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	var out []Migration
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".sql") {
			continue
		}
		num, rest, ok := strings.Cut(strings.TrimSuffix(name, ".sql"), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v < 1 {
			return nil, fmt.Errorf("migration %q: name is not <version>_<name>.sql", name)
		}
		b, err := fs.ReadFile(fsys, path.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("read migration %q: %w", name, err)
		}
		compat, err := parseCompat(string(b), v)
		if err != nil {
			return nil, fmt.Errorf("migration %q: %w", name, err)
		}
		out = append(out, Migration{Version: v, Name: rest, SQL: string(b), CompatibleWith: compat})
	}
	slices.SortFunc(out, func(a, b Migration) int { return a.Version - b.Version })
	for i := 1; i < len(out); i++ {
		if out[i].Version == out[i-1].Version {
			return nil, fmt.Errorf("migrations %q and %q share version %d", out[i-1].Name, out[i].Name, out[i].Version)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no migrations in %q", dir)
	}
	return out, nil
}

// parseCompat returns the version a migration's "-- m1:compatible-with N"
// line declares (0 for none). N must be below the migration's version: a
// migration is always compatible with binaries that have it.
func parseCompat(sql string, version int) (int, error) {
	compat := 0
	for line := range strings.Lines(sql) {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "--" || f[1] != compatDirective {
			continue
		}
		n, err := 0, errors.New("no version")
		if len(f) == 3 {
			n, err = strconv.Atoi(f[2])
		}
		switch {
		case compat != 0:
			return 0, fmt.Errorf("more than one %q line", "-- "+compatDirective)
		case err != nil || n < 1 || n >= version:
			return 0, fmt.Errorf("%q: want -- %s N, N a schema version from 1 to %d", strings.TrimSpace(line), compatDirective, version-1)
		}
		compat = n
	}
	return compat, nil
}
