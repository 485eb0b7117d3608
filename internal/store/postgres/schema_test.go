package postgres_test

import (
	"context"
	"testing"

	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/postgres"
	"github.com/m1-agent/m1/internal/store/storetest"
	"github.com/m1-agent/m1/internal/testenv"
)

func TestSchemaGuard(t *testing.T) {
	d := &databases{pg: testenv.StartPostgres(t)}
	storetest.RunSchema(t, storetest.SchemaBackend{
		Backend: storetest.Backend{
			Open:   func(t *testing.T) store.Store { return open(t, d.dsn(t)) },
			Tamper: func(t *testing.T, q string) { exec1(t, d.dsn(t), q) },
		},
		OpenWith: func(t *testing.T, extra map[string]string) (store.Store, error) {
			s, err := postgres.Open(context.Background(), d.dsn(t), postgres.WithMigrations(postgres.DefaultOptions(), extra))
			if err == nil {
				t.Cleanup(func() { s.Close() })
			}
			return s, err
		},
		Schema: func(t *testing.T) (store.SchemaStatus, error) {
			return postgres.ReadSchema(context.Background(), d.dsn(t))
		},
	})
}
