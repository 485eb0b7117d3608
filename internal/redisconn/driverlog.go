package redisconn

import (
	"context"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// RouteDriverLogs sends go-redis's own log lines (dial failures, pool
// events), which it otherwise prints to stderr as plain text, to logger at
// debug level. go-redis keeps one logger per process, so this is a process
// setting: call it once from main, not from libraries or parallel tests.
func RouteDriverLogs(logger *zap.Logger) {
	redis.SetLogger(driverLogger{logger.WithOptions(zap.AddCallerSkip(1)).Named("go-redis")})
}

type driverLogger struct{ l *zap.Logger }

func (d driverLogger) Printf(_ context.Context, format string, v ...any) {
	if ce := d.l.Check(zap.DebugLevel, ""); ce != nil {
		ce.Message = strings.TrimSpace(fmt.Sprintf(format, v...))
		ce.Write()
	}
}
