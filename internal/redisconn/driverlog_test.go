package redisconn

import (
	"context"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestRouteDriverLogs(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	driverLogger{zap.New(core)}.Printf(context.Background(), "redis: dial %s failed\n", "x:1")
	if e := logs.All(); len(e) != 1 || e[0].Message != "redis: dial x:1 failed" || e[0].Level != zap.DebugLevel {
		t.Errorf("driver log entries = %+v", e)
	}
}
