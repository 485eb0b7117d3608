package demotool

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
)

// restError is the JSON body of a failed REST call.
type restError struct {
	Error   string `json:"error"`
	Message string `json:"message"`
	Tool    string `json:"tool"`
}

// serveREST answers POST /tools/{name}: the body is the arguments object.
func (s *Server) serveREST(w http.ResponseWriter, r *http.Request) {
	tool := r.PathValue("name")
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBodyBytes()))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeJSON(w, http.StatusRequestEntityTooLarge, restError{CodeTooLarge, "request body too large", tool})
			return
		}
		writeJSON(w, http.StatusBadRequest, restError{CodeBadArguments, "read body: " + err.Error(), tool})
		return
	}
	res, err := s.call(tool, body)
	if err != nil {
		ce := new(callError)
		if !errors.As(err, &ce) {
			ce = fail(CodeToolFailed, http.StatusInternalServerError, "%v", err)
		}
		writeJSON(w, ce.status, restError{ce.code, ce.message, tool})
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"tool_failed","message":"encode result"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
