package admin

import (
	"errors"
	"fmt"
	"log"
	"net/http"
	"strconv"
	"time"

	"github.com/m1-agent/m1/internal/deny"
)

// Limits bound every connection of an M1 HTTP server (DESIGN §7: the admin
// port of m1-authz and the port of m1-orchestrator), so that idle, slow or
// oversized clients cannot hold goroutines, memory or file descriptors.
// Neither server streams a response (no SSE, no long polling); the longest
// answer is an orchestrator approval, which waits for its dispatch.
type Limits struct {
	// ReadHeaderTimeout bounds reading the request line and headers; a
	// client that trickles them is disconnected.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading the whole request, body included.
	ReadTimeout time.Duration
	// WriteTimeout bounds the time from the end of the request headers to
	// the end of the response.
	WriteTimeout time.Duration
	// IdleTimeout bounds how long a keep-alive connection waits for its
	// next request.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds the request line and headers (net/http allows
	// 4 KiB of slack beyond it); larger: 431.
	MaxHeaderBytes int
	// MaxBodyBytes bounds a request body: with a larger Content-Length,
	// or a body that grows past it (chunked), the handler's read fails
	// with an *http.MaxBytesError, which handlers answer 413
	// (BodyTooLarge) once the caller passed the token check (401 first);
	// a larger Content-Length also ends the connection after the answer,
	// its body unread (limitBody).
	MaxBodyBytes int64
}

// DefaultLimits suits the admin port: small JSON requests, quick answers.
func DefaultLimits() Limits {
	return Limits{
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    32 << 10,
		MaxBodyBytes:      64 << 10,
	}
}

// Validate names the first limit that is not positive.
func (l Limits) Validate() error {
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"ReadHeaderTimeout", int64(l.ReadHeaderTimeout)},
		{"ReadTimeout", int64(l.ReadTimeout)},
		{"WriteTimeout", int64(l.WriteTimeout)},
		{"IdleTimeout", int64(l.IdleTimeout)},
		{"MaxHeaderBytes", int64(l.MaxHeaderBytes)},
		{"MaxBodyBytes", l.MaxBodyBytes},
	} {
		if f.v <= 0 {
			return fmt.Errorf("Limits.%s must be positive (0 would mean no bound)", f.name)
		}
	}
	return nil
}

// NewServer returns the http.Server of an M1 HTTP port: h behind
// SecurityHeaders and the body limit, with every timeout of l.
func NewServer(h http.Handler, l Limits, errorLog *log.Logger) *http.Server {
	return &http.Server{
		Handler:           SecurityHeaders(limitBody(l.MaxBodyBytes, h)),
		ReadHeaderTimeout: l.ReadHeaderTimeout,
		ReadTimeout:       l.ReadTimeout,
		WriteTimeout:      l.WriteTimeout,
		IdleTimeout:       l.IdleTimeout,
		MaxHeaderBytes:    l.MaxHeaderBytes,
		ErrorLog:          errorLog,
	}
}

// Security headers of every response of both binaries (DESIGN §8); HTML
// adds its Content-Security-Policy (dashboard.go).
const (
	hstsValue = "max-age=63072000; includeSubDomains" // two years
)

// SecurityHeaders sets, on every response of next, X-Content-Type-Options:
// nosniff, X-Frame-Options: DENY and Referrer-Policy: no-referrer, and on
// a response over TLS Strict-Transport-Security (two years, subdomains
// included). They are set before next runs, so that errors, 401s and 404s
// carry them too.
func SecurityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		if r.TLS != nil {
			h.Set("Strict-Transport-Security", hstsValue)
		}
		next.ServeHTTP(w, r)
	})
}

// limitBody caps the body of every request at max bytes. A request whose
// Content-Length exceeds max gets a body that fails its first read, so
// that the handler still answers a caller without the token 401 (DESIGN
// §7: before any body) and a handler that reads answers 413 through
// BodyTooLarge, neither reading a byte of it; its answer, whatever it is,
// ends the connection (RefuseBody), so that net/http does not read that
// body after it either. Other bodies are read through http.MaxBytesReader.
func limitBody(max int64, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.ContentLength > max:
			RefuseBody(w)
			r.Body = tooLarge{max}
		case r.Body != nil && r.Body != http.NoBody:
			r.Body = http.MaxBytesReader(w, r.Body, max)
		}
		next.ServeHTTP(w, r)
	})
}

// tooLarge is the body of a request that announced more than limit bytes.
type tooLarge struct{ limit int64 }

func (b tooLarge) Read([]byte) (int, error) { return 0, &http.MaxBytesError{Limit: b.limit} }
func (tooLarge) Close() error               { return nil }

// BodyTooLarge answers 413 body_too_large and ends the connection when err
// is a read past the body limit (an *http.MaxBytesError), and reports
// whether it did; handlers answer other read errors themselves.
func BodyTooLarge(w http.ResponseWriter, err error) bool {
	var mb *http.MaxBytesError
	if !errors.As(err, &mb) {
		return false
	}
	writeBodyTooLarge(w, mb.Limit)
	return true
}

// writeBodyTooLarge answers 413 without reading the rest of the body.
func writeBodyTooLarge(w http.ResponseWriter, max int64) {
	RefuseBody(w)
	WriteError(w, http.StatusRequestEntityTooLarge, deny.BodyTooLarge, "request body larger than "+strconv.FormatInt(max, 10)+" bytes")
}

// BodyGrace is how long the unread rest of a refused request body may take
// to arrive once the answer is written (see RefuseBody).
const BodyGrace = time.Second

// RefuseBody makes the response being written the last of its connection
// and bounds what is left of the request body: net/http reads the unread
// body (up to 256 KiB) after the answer, to end the connection cleanly,
// and would wait up to ReadTimeout for a client that trickles it. A
// client that sent its body at once loses nothing; one that trickles it
// is cut BodyGrace after the answer. Call it before writing the header.
func RefuseBody(w http.ResponseWriter) {
	w.Header().Set("Connection", "close")
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(BodyGrace))
}
