package testenv

import "testing"

func TestRedisRestartComesBackEmpty(t *testing.T) {
	r := StartRedis(t, RedisOptions{})
	if err := Ping(r.Addr); err != nil {
		t.Fatal(err)
	}
	r.Stop(t)
	if err := Ping(r.Addr); err == nil {
		t.Fatal("Ping after Stop succeeded")
	}
	r.Start(t)
	if err := Ping(r.Addr); err != nil {
		t.Fatalf("Ping after Start = %v", err)
	}
}

func TestRedisCluster(t *testing.T) {
	c := StartRedisCluster(t, 3)
	if len(c.Addrs()) != 3 {
		t.Fatalf("cluster has %d nodes", len(c.Addrs()))
	}
}
