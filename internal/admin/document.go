package admin

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"
)

// Document computes one JSON document of the dashboard API for a request
// (GET /api/m1/dashboard/{name}). Its error is answered as a *DocError
// says, or 500 internal.
type Document func(r *http.Request) (any, error)

// DocError is a document's error with its HTTP status and the stable error
// code of the JSON error body.
type DocError struct {
	Status int
	Code   string // e.g. bad_request, store_unavailable
	Reason string
}

func (e *DocError) Error() string { return e.Code + ": " + e.Reason }

// Aliases are the Phase 9 names of dashboard documents: each serves the
// document it names.
var Aliases = map[string]string{
	"cache-stats":    "cache",
	"policy-stats":   "policy",
	"cost-breakdown": "costs",
	"recent-runs":    "runs",
}

// notInSnapshot are documents the snapshot leaves out: the history is
// large and read per tab; one proposal needs its id.
var notInSnapshot = map[string]bool{"history": true, "proposals/{id}": true}

// snapshotTimeout bounds the snapshot: every document is computed at once,
// and one that takes longer is reported as an error.
const snapshotTimeout = 10 * time.Second

func serveDocument(doc Document) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v, err := doc(r)
		if err != nil {
			writeDocError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
}

func writeDocError(w http.ResponseWriter, err error) {
	var de *DocError
	if errors.As(err, &de) {
		WriteError(w, de.Status, de.Code, de.Reason)
		return
	}
	WriteError(w, http.StatusInternalServerError, "internal", err.Error())
}

// snapshot serves GET /api/m1/dashboard: every document but the history,
// computed concurrently, by name; a document that fails is its JSON error
// body in place.
func snapshot(docs map[string]Document) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), snapshotTimeout)
		defer cancel()
		r = r.WithContext(ctx)
		r.URL.RawQuery = "" // every document at its defaults
		out := map[string]any{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for name, doc := range docs {
			if notInSnapshot[name] {
				continue
			}
			wg.Go(func() {
				v, err := doc(r)
				if err != nil {
					var de *DocError
					if !errors.As(err, &de) {
						de = &DocError{Code: "internal", Reason: err.Error()}
					}
					v = map[string]string{"error": de.Code, "reason": de.Reason}
				}
				mu.Lock()
				out[name] = v
				mu.Unlock()
			})
		}
		wg.Wait()
		writeJSON(w, http.StatusOK, out)
	}
}

// documents merges the simple documents of o.API with o.Documents.
func documents(o Options) map[string]Document {
	docs := map[string]Document{}
	for name, fn := range o.API {
		docs[name] = func(*http.Request) (any, error) { return fn(), nil }
	}
	for name, doc := range o.Documents {
		docs[name] = doc
	}
	return docs
}
