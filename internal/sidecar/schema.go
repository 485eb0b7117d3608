package sidecar

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/m1-agent/m1/internal/store"
)

// storePingTimeout bounds the first contact with the store at New.
const storePingTimeout = 5 * time.Second

// checkStore opens the store once, at New, for the schema guard (DESIGN
// §9): a store whose schema is newer than this binary's and not declared
// compatible with it (store.ErrSchemaTooNew) is refused, and m1-authz does
// not start. A store that does not answer is an outage, not a refusal: the
// answer is kept (storePingErr) for the audit trail, which spools, and the
// state, which loads on a retry.
func (s *Server) checkStore(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, storePingTimeout)
	defer cancel()
	s.storePingErr = s.storeSink.Ping(pctx)
	if errors.Is(s.storePingErr, store.ErrSchemaTooNew) {
		_ = s.storeSink.Close()
		return fmt.Errorf("store: %w", s.storePingErr)
	}
	return nil
}
