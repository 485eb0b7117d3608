package testenv

import (
	"net"
	"strconv"
	"testing"
)

func TestPostgresStopStart(t *testing.T) {
	p := StartPostgres(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p.Port))
	dial := func() error {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(); err != nil {
		t.Fatal(err)
	}
	dsn := p.NewDatabase(t)
	if dsn == p.DSN() {
		t.Fatalf("NewDatabase = %s, the default database", dsn)
	}
	p.Stop(t)
	if err := dial(); err == nil {
		t.Fatal("dial after Stop succeeded")
	}
	p.Start(t)
	if err := dial(); err != nil {
		t.Fatalf("dial after Start = %v", err)
	}
}
