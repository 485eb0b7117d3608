package store_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/m1-agent/m1/internal/store"
)

func TestLoadMigrationsCompatibleWith(t *testing.T) {
	for _, tc := range []struct {
		name, sql string
		want      int
		err       string
	}{
		{"none", "CREATE TABLE x (id INTEGER);", 0, ""},
		{"declared", "-- m1:compatible-with 3\nCREATE TABLE x (id INTEGER);", 3, ""},
		{"declared later, indented", "-- adds x\n  --   m1:compatible-with   2  \nCREATE TABLE x (id INTEGER);", 2, ""},
		{"another directive", "-- m1:compatible-without 3\n", 0, ""},
		{"its own version", "-- m1:compatible-with 4\n", 0, "from 1 to 3"},
		{"newer", "-- m1:compatible-with 9\n", 0, "from 1 to 3"},
		{"zero", "-- m1:compatible-with 0\n", 0, "from 1 to 3"},
		{"no version", "-- m1:compatible-with\n", 0, "from 1 to 3"},
		{"not a number", "-- m1:compatible-with three\n", 0, "from 1 to 3"},
		{"two", "-- m1:compatible-with 2\n-- m1:compatible-with 3\n", 0, "more than one"},
	} {
		fsys := fstest.MapFS{
			"m/0001_a.sql": {Data: []byte("CREATE TABLE a (id INTEGER);")},
			"m/0004_b.sql": {Data: []byte(tc.sql)},
		}
		ms, err := store.LoadMigrations(fsys, "m")
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "0004_b.sql")):
			t.Errorf("LoadMigrations(%s) = %v, want an error naming 0004_b.sql and %q", tc.name, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("LoadMigrations(%s) = %v", tc.name, err)
		case tc.err == "" && (ms[1].CompatibleWith != tc.want || ms[0].CompatibleWith != 0):
			t.Errorf("LoadMigrations(%s) CompatibleWith = %d, %d; want 0, %d", tc.name, ms[0].CompatibleWith, ms[1].CompatibleWith, tc.want)
		}
	}
}

func TestSchemaStatus(t *testing.T) {
	bin := []store.Migration{{Version: 1}, {Version: 2}, {Version: 3}}
	applied := func(vs ...[2]int) []store.AppliedMigration {
		var out []store.AppliedMigration
		for _, v := range vs {
			out = append(out, store.AppliedMigration{Version: v[0], CompatibleWith: v[1]})
		}
		return out
	}
	for _, tc := range []struct {
		name             string
		applied          []store.AppliedMigration
		store, requires  int
		pending, unknown []int
		ok               bool
		says             string
	}{
		{"empty", nil, 0, 0, []int{1, 2, 3}, nil, true, "empty"},
		{"older", applied([2]int{1, 0}, [2]int{2, 0}), 2, 2, []int{3}, nil, true, "older (this binary applies 3"},
		{"current", applied([2]int{1, 0}, [2]int{2, 0}, [2]int{3, 0}), 3, 3, nil, nil, true, "current"},
		{"newer, undeclared", applied([2]int{1, 0}, [2]int{2, 0}, [2]int{3, 0}, [2]int{4, 0}), 4, 4, nil, []int{4}, false, "INCOMPATIBLE"},
		{"newer, compatible", applied([2]int{1, 0}, [2]int{2, 0}, [2]int{3, 0}, [2]int{4, 3}), 4, 3, nil, []int{4}, true, "compatible"},
		{"newer, compatible twice", applied([2]int{1, 0}, [2]int{2, 0}, [2]int{3, 0}, [2]int{4, 2}, [2]int{5, 3}), 5, 3, nil, []int{4, 5}, true, "compatible"},
		{"newer, compatible with a later binary only", applied([2]int{1, 0}, [2]int{2, 0}, [2]int{3, 0}, [2]int{4, 3}, [2]int{5, 4}), 5, 4, nil, []int{4, 5}, false, "INCOMPATIBLE"},
		{"newer, but lacks one of ours", applied([2]int{1, 0}, [2]int{2, 0}, [2]int{4, 2}), 4, 2, []int{3}, []int{4}, false, "INCOMPATIBLE"},
	} {
		s := store.NewSchemaStatus(bin, tc.applied)
		if s.Binary != 3 || s.Store != tc.store || s.Requires != tc.requires || !slices.Equal(s.Pending, tc.pending) || !slices.Equal(s.Unknown, tc.unknown) {
			t.Errorf("NewSchemaStatus(%s) = %+v, want store %d requires %d pending %v unknown %v", tc.name, s, tc.store, tc.requires, tc.pending, tc.unknown)
		}
		err := s.Err()
		if s.Compatible() != tc.ok || (err == nil) != tc.ok {
			t.Errorf("NewSchemaStatus(%s).Compatible() = %v (%v), want %v", tc.name, s.Compatible(), err, tc.ok)
		}
		if err != nil && !errors.Is(err, store.ErrSchemaTooNew) {
			t.Errorf("NewSchemaStatus(%s).Err() = %v, want it to wrap ErrSchemaTooNew", tc.name, err)
		}
		if !strings.Contains(s.String(), tc.says) {
			t.Errorf("NewSchemaStatus(%s).String() = %q, want it to say %q", tc.name, s.String(), tc.says)
		}
	}
	err := store.NewSchemaStatus(bin, applied([2]int{1, 0}, [2]int{2, 0}, [2]int{3, 0}, [2]int{4, 0})).Err()
	for _, want := range []string{"schema is version 4", "schema is version 3", "schema 4 or later"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Err() = %q, want it to say %q", err, want)
		}
	}
}
