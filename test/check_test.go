package test

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/protobuf/encoding/protojson"
)

// fixtureDir holds Envoy-shaped CheckRequests in protojson.
const fixtureDir = "../testdata/checkrequests"

// fixture loads testdata/checkrequests/<name>.json, strictly: an unknown
// field is an error, so a typo in a fixture cannot go unnoticed.
func fixture(t *testing.T, name string) *authv3.CheckRequest {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixtureDir, name+".json"))
	if err != nil {
		t.Fatalf("fixture: %v", err)
	}
	req := new(authv3.CheckRequest)
	if err := protojson.Unmarshal(b, req); err != nil {
		t.Fatalf("fixture %s: %v", name, err)
	}
	return req
}

// An edit changes a fixture the way a different client request would have
// reached Envoy.
type edit func(*authv3.AttributeContext_HttpRequest)

// withBody sets the body as Envoy sends it (body, not raw_body) and keeps
// content-length and size consistent with it.
func withBody(body string) edit {
	return func(h *authv3.AttributeContext_HttpRequest) {
		h.Body, h.RawBody = body, nil
		h.Headers["content-length"] = strconv.Itoa(len(body))
		h.Size = int64(len(body))
	}
}

// withRawBody sets the body as Envoy sends it with pack_as_bytes: true.
func withRawBody(body []byte) edit {
	return func(h *authv3.AttributeContext_HttpRequest) {
		h.Body, h.RawBody = "", body
		h.Headers["content-length"] = strconv.Itoa(len(body))
		h.Size = int64(len(body))
	}
}

// withHeader sets a request header (after any body edit, to break framing).
func withHeader(k, v string) edit {
	return func(h *authv3.AttributeContext_HttpRequest) { h.Headers[k] = v }
}

// withHeaderMapEntry appends a header to the header_map Envoy sends with
// encode_raw_headers: true (a repeated header when the name is already
// there).
func withHeaderMapEntry(k, v string) edit {
	return func(h *authv3.AttributeContext_HttpRequest) {
		h.HeaderMap.Headers = append(h.HeaderMap.Headers, &corev3.HeaderValue{Key: k, RawValue: []byte(v)})
	}
}

// sentHeaders returns the request headers of req from either the headers
// map or the header_map, joining repeated values as Envoy does.
func sentHeaders(req *authv3.CheckRequest) map[string]string {
	h := req.GetAttributes().GetRequest().GetHttp()
	if len(h.GetHeaders()) > 0 {
		return h.GetHeaders()
	}
	m := map[string]string{}
	for _, hv := range h.GetHeaderMap().GetHeaders() {
		v := string(hv.GetRawValue())
		if old, ok := m[hv.GetKey()]; ok {
			v = old + "," + v
		}
		m[hv.GetKey()] = v
	}
	return m
}

// withPath sets the path (with query) and the :path pseudo-header.
func withPath(p string) edit {
	return func(h *authv3.AttributeContext_HttpRequest) {
		h.Path = p
		h.Headers[":path"] = p
	}
}

// withMethod sets the method and the :method pseudo-header.
func withMethod(m string) edit {
	return func(h *authv3.AttributeContext_HttpRequest) {
		h.Method = m
		h.Headers[":method"] = m
	}
}

// request loads a fixture and applies edits in order.
func request(t *testing.T, name string, edits ...edit) *authv3.CheckRequest {
	t.Helper()
	req := fixture(t, name)
	for _, e := range edits {
		e(req.GetAttributes().GetRequest().GetHttp())
	}
	return req
}

// want is the expected outcome of one Check.
type want struct {
	allow  bool
	status int    // HTTP status of the deny
	code   string // "error" of the JSON deny body
	reason string // "reason" of the JSON deny body; not compared when ""
}

var allow = want{allow: true}

func deny(status int, code string) want { return want{status: status, code: code} }

func denyReason(status int, code, reason string) want {
	return want{status: status, code: code, reason: reason}
}

func (w want) String() string {
	if w.allow {
		return "allow"
	}
	s := fmt.Sprintf("deny %d %s", w.status, w.code)
	if w.reason != "" {
		s += " (" + w.reason + ")"
	}
	return s
}

// denyDoc is the JSON body of an M1 deny (DESIGN §6).
type denyDoc struct {
	Error      string `json:"error"`
	Reason     string `json:"reason"`
	DecisionID string `json:"decision_id"`
}

// outcome reads a CheckResponse as a want, so that the two compare and
// print alike, and returns the decoded deny body. Inconsistent responses
// (an OK status with a denied response, a deny with no JSON body, …) are
// errors.
func outcome(resp *authv3.CheckResponse, withReason bool) (want, denyDoc, error) {
	var doc denyDoc
	if resp.GetStatus().GetCode() == int32(code.Code_OK) {
		if resp.GetOkResponse() == nil {
			return allow, doc, fmt.Errorf("status OK without an ok_response: %v", resp)
		}
		return allow, doc, nil
	}
	if c := resp.GetStatus().GetCode(); c != int32(code.Code_PERMISSION_DENIED) {
		return want{}, doc, fmt.Errorf("deny with gRPC status %v, want PERMISSION_DENIED", code.Code(c))
	}
	d := resp.GetDeniedResponse()
	if d == nil {
		return want{}, doc, fmt.Errorf("deny without a denied_response: %v", resp)
	}
	w := want{status: int(d.GetStatus().GetCode())}
	dec := json.NewDecoder(strings.NewReader(d.GetBody()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return w, doc, fmt.Errorf("deny body is not the JSON of DESIGN §6 (%v): %q", err, d.GetBody())
	}
	w.code = doc.Error
	if withReason {
		w.reason = doc.Reason
	}
	if doc.DecisionID == "" {
		return w, doc, fmt.Errorf("deny body without decision_id: %s", d.GetBody())
	}
	if got := headerValue(d.GetHeaders(), "content-type"); got != "application/json" {
		return w, doc, fmt.Errorf("deny content-type = %q, want application/json", got)
	}
	return w, doc, nil
}

// expect fails t unless resp has the outcome w; name is the case name for
// the message, e.g. `Check(mcp write_file no token) = allow, want deny 401
// policy_denied`.
func expect(t *testing.T, name string, resp *authv3.CheckResponse, w want) denyDoc {
	t.Helper()
	got, doc, err := outcome(resp, w.reason != "")
	if err != nil {
		t.Errorf("Check(%s): %v", name, err)
		return doc
	}
	if got != w {
		if !got.allow && w.reason == "" {
			got.reason = doc.Reason // more to go on in the message
		}
		t.Errorf("Check(%s) = %v, want %v", name, got, w)
	}
	return doc
}

// headerValue returns the value of the first header named k.
func headerValue(hs []*corev3.HeaderValueOption, k string) string {
	for _, h := range hs {
		if h.GetHeader().GetKey() == k {
			return h.GetHeader().GetValue()
		}
	}
	return ""
}

// nested returns a JSON object nested depth levels deep, {"a":{"a":…{}}}.
func nested(depth int) string {
	return strings.Repeat(`{"a":`, depth-1) + "{}" + strings.Repeat("}", depth-1)
}

// restBodyOfSize is a REST read_file body of exactly n bytes (n >= 11).
func restBodyOfSize(n int) string {
	var b bytes.Buffer
	b.WriteString(`{"path":"`)
	b.WriteString(strings.Repeat("a", n-len(`{"path":""}`)))
	b.WriteString(`"}`)
	return b.String()
}

// gzipped is s compressed with gzip, as a client may send a body.
func gzipped(s string) []byte {
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	_, _ = w.Write([]byte(s))
	_ = w.Close()
	return b.Bytes()
}

// mcpCall is a JSON-RPC tools/call with raw JSON params.
func mcpCall(params string) string {
	return `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":` + params + `}`
}
