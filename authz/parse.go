package authz

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/m1-agent/m1/internal/approval"
)

// Kinds of request, as seen by the policy in input.m1.kind.
const (
	KindToolCall = "tool_call"
	KindMCP      = "mcp"
	KindHTTP     = "http"
)

// maxDepth is the deepest JSON nesting accepted in a parsed body.
const maxDepth = 64

// ParseOptions says where tool calls live and how large a body may be.
type ParseOptions struct {
	MCPPath         string // e.g. "/mcp"
	ToolsPathPrefix string // e.g. "/tools/"
	MaxBodyBytes    int64
}

// Call is what M1 understood of one HTTP request.
type Call struct {
	Kind       string // KindToolCall, KindMCP or KindHTTP
	Tool       string // tool name (KindToolCall)
	Args       []byte // raw JSON object of the arguments as sent (KindToolCall)
	ArgsSHA256 string // hex SHA-256 of the JCS form of Args (KindToolCall)
	MCPMethod  string // JSON-RPC method, "" for a response or the session stream (MCP path only)
	IsMCP      bool   // the request went to the MCP path
	Method     string
	Host       string
	Path       string // percent-decoded path without the query
	RawPath    string // path with the query, as Envoy sent it
	Truncated  bool   // Envoy says the body is partial
}

// RequestError is a request M1 refuses to guess at: it is denied with Status
// and the stable Code.
type RequestError struct {
	Code   string // "body_too_large", "bad_request", "number_not_canonical", "bad_path"
	Status int
	Reason string
}

func (e *RequestError) Error() string { return e.Code + ": " + e.Reason }

// Request error codes of DESIGN §3.
const (
	CodeBodyTooLarge       = "body_too_large"
	CodeBadRequest         = "bad_request"
	CodeNumberNotCanonical = "number_not_canonical"
	CodeBadPath            = "bad_path"
)

func badRequest(reason string) *RequestError {
	return &RequestError{Code: CodeBadRequest, Status: 400, Reason: reason}
}

func badPath(reason string) *RequestError {
	return &RequestError{Code: CodeBadPath, Status: 400, Reason: reason}
}

func tooLarge(reason string) *RequestError {
	return &RequestError{Code: CodeBodyTooLarge, Status: 413, Reason: reason}
}

var (
	errNotCanonical = errors.New("number does not survive a round trip through an IEEE-754 double")
	errTooDeep      = errors.New("JSON nesting deeper than 64")
)

// ParseCall classifies an Envoy HTTP request and, for the MCP path and tool
// paths, parses and strictly validates its body. It never guesses: a request
// it cannot read exactly is a *RequestError. It is safe for concurrent use.
func ParseCall(h *authv3.AttributeContext_HttpRequest, headers Headers, opts ParseOptions) (Call, *RequestError) {
	c := Call{Method: h.GetMethod(), Host: h.GetHost(), RawPath: h.GetPath()}
	if h.GetMethod() == "" {
		return c, badRequest("request has no method")
	}
	path, rerr := cleanPath(h.GetPath())
	if rerr != nil {
		return c, rerr
	}
	c.Path = path
	// Envoy sends "true" or "false"; anything else (another spelling, a
	// repeated header joined as "false,true") is taken as partial.
	if v, ok := headers.Lookup("x-envoy-auth-partial-body"); ok && v != "false" {
		c.Truncated = true
	}

	switch {
	case path == opts.MCPPath && (c.Method == "POST" || c.Method == "GET" || c.Method == "DELETE"):
		c.Kind, c.IsMCP = KindMCP, true
		if c.Method != "POST" {
			return c, nil
		}
		body, rerr := requestBody(h, headers, c.Truncated, opts.MaxBodyBytes)
		if rerr != nil {
			return c, rerr
		}
		return parseMCP(c, body)
	case c.Method == "POST" && opts.ToolsPathPrefix != "" && strings.HasPrefix(path, opts.ToolsPathPrefix):
		name := path[len(opts.ToolsPathPrefix):]
		if !approval.ValidToolName(name) {
			return c, badPath("tool name must match [A-Za-z0-9_.-]{1,128}")
		}
		body, rerr := requestBody(h, headers, c.Truncated, opts.MaxBodyBytes)
		if rerr != nil {
			return c, rerr
		}
		c.Kind, c.Tool = KindToolCall, name
		if len(body) == 0 {
			body = emptyObject
		} else if len(bytes.Trim(body, jsonSpace)) == 0 {
			body = emptyObject // only JSON's white space: as empty
		}
		if rerr := scanArgs(body); rerr != nil {
			return c, rerr
		}
		c.Args = body
		return c, hashArgs(&c)
	default:
		c.Kind = KindHTTP
		return c, nil
	}
}

var emptyObject = []byte("{}")

// jsonSpace is JSON's white space (RFC 8259); bytes.TrimSpace would also
// take Unicode spaces, which are not JSON.
const jsonSpace = " \t\n\r"

// ambiguousKey reports whether key is not one of keys but equals one of
// them ignoring case (Unicode simple folding). M1 reads "method" and
// "arguments" exactly; a server that matches keys regardless of case, as Go's
// encoding/json does, would read "Method" or "Arguments" instead: such a
// message is refused rather than read two ways.
func ambiguousKey(key []byte, keys ...string) bool {
	for _, k := range keys {
		if string(key) != k && strings.EqualFold(string(key), k) {
			return true
		}
	}
	return false
}

// requestBody returns the body Envoy sent and refuses partial or oversized
// ones and inconsistent framing.
func requestBody(h *authv3.AttributeContext_HttpRequest, headers Headers, truncated bool, max int64) ([]byte, *RequestError) {
	if truncated {
		return nil, tooLarge("Envoy sent a partial body")
	}
	body := h.GetRawBody()
	if s := h.GetBody(); s != "" {
		if len(body) > 0 && string(body) != s {
			return nil, badRequest("body and raw_body differ")
		}
		if len(body) == 0 {
			// A read-only view of the string: the body is never written
			// to, and copying up to M1_MAX_BODY_BYTES per check is waste.
			body = unsafe.Slice(unsafe.StringData(s), len(s))
		}
	}
	if max > 0 && int64(len(body)) > max {
		return nil, tooLarge("body larger than " + strconv.FormatInt(max, 10) + " bytes")
	}
	if cl, ok := headers.Lookup("content-length"); ok {
		n, err := strconv.ParseInt(cl, 10, 64)
		if err != nil || n < 0 || cl[0] == '+' {
			return nil, badRequest("content-length is not a number")
		}
		switch {
		case n > int64(len(body)):
			return nil, tooLarge("content-length larger than the body Envoy sent")
		case n < int64(len(body)):
			return nil, badRequest("content-length smaller than the body")
		}
	}
	return body, nil
}

// cleanPath strips the query, percent-decodes the path once, and rejects
// empty, "." and ".." segments anywhere in it.
func cleanPath(raw string) (string, *RequestError) {
	p := raw
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	if p == "" || p[0] != '/' {
		return "", badPath("path must start with /")
	}
	if strings.IndexByte(p, '%') >= 0 {
		d, err := url.PathUnescape(p)
		if err != nil {
			return "", badPath("bad percent-encoding in path")
		}
		p = d
	}
	if p == "/" {
		return p, nil
	}
	for seg := range strings.SplitSeq(p[1:], "/") {
		switch seg {
		case "", ".", "..":
			return "", badPath("path has an empty, . or .. segment")
		}
		if strings.ContainsAny(seg, "\\\x00") {
			return "", badPath("path segment has a backslash or NUL")
		}
	}
	return p, nil
}

// decoders reuses jsontext decoders between requests.
var decoders = sync.Pool{New: func() any { return jsontext.NewDecoder(bytes.NewReader(nil)) }}

type scanner struct {
	dec  *jsontext.Decoder
	rd   bytes.Reader
	body []byte
	unq  []byte // scratch for unescaped strings
}

func newScanner(body []byte) *scanner {
	s := scannerPool.Get().(*scanner)
	s.body = body
	s.rd.Reset(body)
	s.dec.Reset(&s.rd) // defaults: UTF-8 checked, duplicate names rejected
	return s
}

func (s *scanner) release() {
	s.body = nil
	s.rd.Reset(nil)
	scannerPool.Put(s)
}

var scannerPool = sync.Pool{New: func() any {
	return &scanner{dec: decoders.Get().(*jsontext.Decoder)}
}}

// skip reads one whole value, checking depth and numbers on the way.
func (s *scanner) skip() error {
	base := s.dec.StackDepth()
	for {
		switch s.dec.PeekKind() {
		case '{', '[':
			if _, err := s.dec.ReadToken(); err != nil {
				return err
			}
			if s.dec.StackDepth() > maxDepth {
				return errTooDeep
			}
		case '}', ']':
			if _, err := s.dec.ReadToken(); err != nil {
				return err
			}
		case '0':
			v, err := s.dec.ReadValue()
			if err != nil {
				return err
			}
			if !exactNumber(v) {
				return errNotCanonical
			}
		default: // names, strings, literals, and errors
			if _, err := s.dec.ReadValue(); err != nil {
				return err
			}
		}
		if s.dec.StackDepth() == base {
			return nil
		}
	}
}

// end checks that nothing but white space follows the value.
func (s *scanner) end() error {
	if _, err := s.dec.ReadValue(); err == nil {
		return errors.New("data after the JSON value")
	} else if !isEOF(err) {
		return err
	}
	return nil
}

func isEOF(err error) bool { return err == io.EOF }

// offset is the byte offset just past the last token read.
func (s *scanner) offset() int { return int(s.dec.InputOffset()) }

// rawSince returns the body from off to the current offset, without the
// separator and white space before the value.
func (s *scanner) rawSince(off int) []byte {
	return bytes.TrimLeft(s.body[off:s.offset()], " \t\r\n:")
}

func scanError(err error) *RequestError {
	switch {
	case errors.Is(err, errNotCanonical):
		return &RequestError{Code: CodeNumberNotCanonical, Status: 400, Reason: err.Error()}
	case errors.Is(err, errTooDeep):
		return badRequest(err.Error())
	}
	return badRequest("invalid JSON: " + err.Error())
}

// scanArgs validates a REST body: one JSON object, strictly valid.
func scanArgs(body []byte) *RequestError {
	s := newScanner(body)
	defer s.release()
	if s.dec.PeekKind() != '{' {
		if err := s.skip(); err != nil {
			return scanError(err)
		}
		return badRequest("body is not a JSON object")
	}
	if err := s.skip(); err != nil {
		return scanError(err)
	}
	if err := s.end(); err != nil {
		return scanError(err)
	}
	return nil
}

// readString reads a JSON string value and unescapes it into a Go string.
func (s *scanner) readString() (string, error) {
	b, err := s.readBytes()
	if err != nil {
		return "", err
	}
	switch string(b) { // the common methods without an allocation
	case "tools/call":
		return "tools/call", nil
	case "tools/list":
		return "tools/list", nil
	case "initialize":
		return "initialize", nil
	case "ping":
		return "ping", nil
	}
	return string(b), nil
}

// readBytes reads a JSON string (a name or a value) and returns it
// unescaped; the result is valid until the next read.
func (s *scanner) readBytes() ([]byte, error) {
	v, err := s.dec.ReadValue()
	if err != nil {
		return nil, err
	}
	if len(v) < 2 || v[0] != '"' {
		return nil, errors.New("expected a string")
	}
	if bytes.IndexByte(v, '\\') < 0 {
		return v[1 : len(v)-1], nil
	}
	s.unq, err = jsontext.AppendUnquote(s.unq[:0], v)
	return s.unq, err
}

// parseMCP reads a JSON-RPC message posted to the MCP path.
func parseMCP(c Call, body []byte) (Call, *RequestError) {
	s := newScanner(body)
	defer s.release()
	switch s.dec.PeekKind() {
	case '{':
	case '[':
		return c, badRequest("JSON-RPC batches are not accepted")
	default:
		if err := s.skip(); err != nil {
			return c, scanError(err)
		}
		return c, badRequest("JSON-RPC message is not an object")
	}
	if _, err := s.dec.ReadToken(); err != nil {
		return c, scanError(err)
	}
	var (
		hasMethod, hasName, hasArgs bool
		nameKind                    jsontext.Kind
		name                        string
		args                        []byte
	)
	for s.dec.PeekKind() != '}' {
		key, err := s.readBytes()
		if err != nil {
			return c, scanError(err)
		}
		if ambiguousKey(key, "method", "params") {
			return c, badRequest("JSON-RPC key " + strconv.Quote(string(key)) + " differs from a member name only in case")
		}
		switch string(key) {
		case "method":
			if s.dec.PeekKind() != '"' {
				if err := s.skip(); err != nil {
					return c, scanError(err)
				}
				return c, badRequest("JSON-RPC method is not a string")
			}
			if c.MCPMethod, err = s.readString(); err != nil {
				return c, scanError(err)
			}
			hasMethod = true
		case "params":
			if s.dec.PeekKind() != '{' {
				if err := s.skip(); err != nil {
					return c, scanError(err)
				}
				return c, badRequest("JSON-RPC params is not an object")
			}
			if _, err := s.dec.ReadToken(); err != nil {
				return c, scanError(err)
			}
			for s.dec.PeekKind() != '}' {
				pkey, err := s.readBytes()
				if err != nil {
					return c, scanError(err)
				}
				if ambiguousKey(pkey, "name", "arguments") {
					return c, badRequest("params key " + strconv.Quote(string(pkey)) + " differs from a member name only in case")
				}
				switch string(pkey) {
				case "name":
					hasName, nameKind = true, s.dec.PeekKind()
					if nameKind == '"' {
						if name, err = s.readString(); err != nil {
							return c, scanError(err)
						}
						continue
					}
				case "arguments":
					hasArgs = true
					if s.dec.PeekKind() != '{' {
						if err := s.skip(); err != nil {
							return c, scanError(err)
						}
						return c, badRequest("params.arguments is not an object")
					}
					off := s.offset()
					if err := s.skip(); err != nil {
						return c, scanError(err)
					}
					args = s.rawSince(off)
					continue
				}
				if err := s.skip(); err != nil {
					return c, scanError(err)
				}
			}
			if _, err := s.dec.ReadToken(); err != nil {
				return c, scanError(err)
			}
		default:
			if err := s.skip(); err != nil {
				return c, scanError(err)
			}
		}
	}
	if _, err := s.dec.ReadToken(); err != nil {
		return c, scanError(err)
	}
	if err := s.end(); err != nil {
		return c, scanError(err)
	}
	if !hasMethod || c.MCPMethod != "tools/call" {
		if !hasMethod {
			c.MCPMethod = ""
		}
		return c, nil
	}
	if !hasName || nameKind != '"' {
		return c, badRequest("tools/call without a string params.name")
	}
	if !approval.ValidToolName(name) {
		return c, badPath("tool name must match [A-Za-z0-9_.-]{1,128}")
	}
	c.Kind, c.Tool = KindToolCall, name
	if !hasArgs {
		args = emptyObject
	}
	c.Args = args
	return c, hashArgs(&c)
}

// hashArgs sets ArgsSHA256 from the RFC 8785 (JCS) form of c.Args, which the
// caller has already validated.
func hashArgs(c *Call) *RequestError {
	buf := canonPool.Get().(*[]byte)
	defer canonPool.Put(buf)
	v := jsontext.Value(append((*buf)[:0], c.Args...))
	if err := v.Canonicalize(); err != nil {
		return badRequest("arguments cannot be canonicalized: " + err.Error())
	}
	*buf = v
	sum := sha256.Sum256(v)
	c.ArgsSHA256 = hex.EncodeToString(sum[:])
	return nil
}

var canonPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}
