package toolcall

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"mime"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"
	"unsafe"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/go-json-experiment/json/jsontext"
	"golang.org/x/text/cases"

	"github.com/m1-agent/m1/internal/deny"
)

// Kinds of request, as seen by the policy in input.m1.kind.
const (
	KindToolCall = "tool_call"
	KindMCP      = "mcp"
	KindHTTP     = "http"
)

// maxDepth is the deepest nesting accepted in the arguments, counted from
// the arguments object (level 1), so that MCP and REST accept the same
// arguments: the JSON-RPC envelope's two levels (message, params) come on top.
const maxDepth = 64

// mcpEnvelopeDepth is the depth of the arguments object's parent in a
// JSON-RPC tools/call (message, then params).
const mcpEnvelopeDepth = 2

// The default places of tool calls (DESIGN §3: M1_MCP_PATH,
// M1_TOOLS_PATH_PREFIX); every binary and command defaults to these.
const (
	DefaultMCPPath         = "/mcp"
	DefaultToolsPathPrefix = "/tools/"
)

// Options says where tool calls live and how large a body may be.
type Options struct {
	MCPPath         string // e.g. DefaultMCPPath
	ToolsPathPrefix string // e.g. DefaultToolsPathPrefix
	MaxBodyBytes    int64
}

// Call is what M1 understood of one HTTP request.
type Call struct {
	Kind       string // KindToolCall, KindMCP or KindHTTP
	Tool       string // tool name (KindToolCall)
	Args       []byte // raw JSON object of the arguments as sent (KindToolCall)
	ArgsSHA256 string // hex SHA-256 of the JCS form of Args (KindToolCall)
	// ID is the JSON-RPC id of a message posted to the MCP path, exactly
	// as sent (any JSON value, checked as strictly as the rest of the
	// body), nil when the message has none: the id an answer that M1
	// writes in the tool's place must carry.
	ID        []byte
	MCPMethod string // JSON-RPC method, "" for a response or the session stream (MCP path only)
	IsMCP     bool   // the request went to the MCP path
	Method    string
	Host      string
	Path      string // percent-decoded path without the query
	RawPath   string // path with the query, as Envoy sent it
	Truncated bool   // the body is partial: Envoy says so or, on an http request, content-length exceeds what it sent (as opa-envoy-plugin reads it)
}

// Error is a request M1 refuses to guess at: it is denied with the stable
// Code (one of internal/deny's) and its status.
type Error struct {
	Code   string
	Reason string
}

// Status is the HTTP status of the deny (internal/deny's table).
func (e *Error) Status() int { return deny.Status(e.Code) }

func (e *Error) Error() string { return e.Code + ": " + e.Reason }

// MCP routing headers (MCP 2026-07-28 Streamable HTTP): a server or gateway
// may route on them instead of the body, so they must say what the body says.
const (
	headerMCPMethod = "mcp-method"
	headerMCPName   = "mcp-name"
)

func badRequest(reason string) *Error {
	return &Error{Code: deny.BadRequest, Reason: reason}
}

func badPath(reason string) *Error {
	return &Error{Code: deny.BadPath, Reason: reason}
}

func tooLarge(reason string) *Error {
	return &Error{Code: deny.BodyTooLarge, Reason: reason}
}

var (
	errNotCanonical = errors.New("number does not survive a round trip through an IEEE-754 double")
	errTooDeep      = errors.New("arguments nested deeper than 64 levels")
	errFoldedDup    = errors.New("an object has two member names that differ only in case")
	errNULName      = errors.New("a member name holds a NUL character")
)

// Parse classifies an Envoy HTTP request and, for the MCP path and tool
// paths, parses and strictly validates its body. It never guesses: a request
// it cannot read exactly is a *Error. It is safe for concurrent use.
func Parse(h *authv3.AttributeContext_HttpRequest, headers Headers, opts Options) (Call, *Error) {
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
			return c, noRoutingHeaders(headers)
		}
		if rerr := jsonMediaType(headers); rerr != nil {
			return c, rerr
		}
		body, rerr := requestBody(h, headers, c.Truncated, opts.MaxBodyBytes)
		if rerr != nil {
			return c, rerr
		}
		if c, rerr = parseMCP(c, body); rerr != nil {
			return c, rerr
		}
		return c, routingHeaders(c, headers)
	case c.Method == "POST" && opts.ToolsPathPrefix != "" && strings.HasPrefix(path, opts.ToolsPathPrefix):
		name := path[len(opts.ToolsPathPrefix):]
		if !ValidName(name) {
			return c, badPath("tool name must match [A-Za-z0-9_.-]{1,128}")
		}
		if strings.ContainsAny(c.RawPath, "?#") {
			return c, badPath("a tool path takes no query string: the approval covers the body only")
		}
		if rerr := jsonMediaType(headers); rerr != nil {
			return c, rerr
		}
		body, rerr := requestBody(h, headers, c.Truncated, opts.MaxBodyBytes)
		if rerr != nil {
			return c, rerr
		}
		c.Kind, c.Tool = KindToolCall, name
		if len(body) == 0 {
			body = emptyObject // white space alone is not JSON: refused below
		}
		if rerr := scanArgs(body, 0); rerr != nil {
			return c, rerr
		}
		c.Args = body
		return c, hashArgs(&c)
	default:
		c.Kind = KindHTTP
		if !c.Truncated {
			c.Truncated = longerThanSent(h, headers)
		}
		return c, nil
	}
}

// longerThanSent reports whether an http request's content-length promises
// more than the body Envoy sent: a body the policy sees only in part
// (input.truncated_body, as opa-envoy-plugin sets it). A content-length that
// is not a number says nothing here: the body of an http request is not
// parsed.
func longerThanSent(h *authv3.AttributeContext_HttpRequest, headers Headers) bool {
	n, ok, valid := contentLength(headers)
	return ok && valid && n > int64(max(len(h.GetRawBody()), len(h.GetBody())))
}

// contentLength reads the content-length header: ok when present, valid
// when it is a decimal number of bytes (no sign).
func contentLength(headers Headers) (n int64, ok, valid bool) {
	cl, ok := headers.Lookup("content-length")
	if !ok {
		return 0, false, false
	}
	n, err := strconv.ParseInt(cl, 10, 64)
	return n, true, err == nil && n >= 0 && cl[0] != '+'
}

var emptyObject = []byte("{}")

// jsonMediaType refuses a body that a tool choosing its parser by media type
// would not read as JSON (a form, multipart): the approval and the policy saw
// it as JSON. An absent content-type is JSON; so are application/json and
// application/*+json, with parameters, in UTF-8.
func jsonMediaType(headers Headers) *Error {
	v, ok := headers.Lookup("content-type")
	if !ok || v == "application/json" || v == "application/json; charset=utf-8" {
		return nil // the common cases, without parsing
	}
	mt, params, err := mime.ParseMediaType(v)
	if err == nil && (mt == "application/json" || (strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"))) {
		if cs, ok := params["charset"]; !ok || strings.EqualFold(cs, "utf-8") {
			return nil
		}
	}
	return &Error{Code: deny.UnsupportedMediaType, Reason: "content-type " + strconv.Quote(v) + " is not JSON in UTF-8 (application/json or application/*+json)"}
}

// routingHeaders refuses MCP routing headers that disagree with the body:
// mcp-method with the JSON-RPC method and, on tools/call, mcp-name with
// params.name, compared exactly (a repeated header, joined with ",", never
// matches). Absent headers are not required (earlier MCP revisions).
func routingHeaders(c Call, headers Headers) *Error {
	if m, ok := headers.Lookup(headerMCPMethod); ok && m != c.MCPMethod {
		return &Error{Code: deny.HeaderMismatch, Reason: "mcp-method header " + strconv.Quote(m) + " differs from the JSON-RPC method " + strconv.Quote(c.MCPMethod)}
	}
	if n, ok := headers.Lookup(headerMCPName); ok && c.Kind == KindToolCall && n != c.Tool {
		return &Error{Code: deny.HeaderMismatch, Reason: "mcp-name header " + strconv.Quote(n) + " differs from params.name " + strconv.Quote(c.Tool)}
	}
	return nil
}

// noRoutingHeaders refuses MCP routing headers on a GET or DELETE of the
// MCP path (the session stream, the session's end): there is no message
// for them to agree with, and a gateway routing on them would take the
// request for the call they name.
func noRoutingHeaders(headers Headers) *Error {
	for _, h := range []string{headerMCPMethod, headerMCPName} {
		if v, ok := headers.Lookup(h); ok {
			return &Error{Code: deny.HeaderMismatch, Reason: h + " header " + strconv.Quote(v) + " on a request that carries no JSON-RPC message"}
		}
	}
	return nil
}

// ambiguousKey reports whether key is not one of keys but equals one of
// them ignoring case (as foldName folds). M1 reads "method" and
// "arguments" exactly; a server that matches keys regardless of case, as Go's
// encoding/json does, would read "Method" or "Arguments" instead: such a
// message is refused rather than read two ways.
func ambiguousKey(key []byte, keys ...string) bool {
	var folded []byte
	for _, k := range keys {
		switch {
		case string(key) == k:
		case isASCII(key): // the keys are ASCII too: folding is only case, as EqualFold compares
			if strings.EqualFold(string(key), k) {
				return true
			}
		default:
			if folded == nil {
				folded = foldName(nil, key)
			}
			if string(folded) == string(foldName(nil, []byte(k))) {
				return true
			}
		}
	}
	return false
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// requestBody returns the body Envoy sent and refuses partial or oversized
// ones and inconsistent framing.
func requestBody(h *authv3.AttributeContext_HttpRequest, headers Headers, truncated bool, max int64) ([]byte, *Error) {
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
	if n, ok, valid := contentLength(headers); ok {
		if !valid {
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
func cleanPath(raw string) (string, *Error) {
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
	dec      *jsontext.Decoder
	rd       bytes.Reader
	body     []byte
	unq      []byte // scratch for unescaped strings
	maxDepth int    // deepest stack depth accepted

	// The member names of the open objects, folded (see foldName), to
	// refuse two names that differ only in case.
	folded []byte // folded names, back to back
	names  []span // one per name, into folded
	frames []nameFrame
}

type span struct{ off, end int }

// nameFrame is one open object: its names are names[start:].
type nameFrame struct {
	start int
	set   map[string]struct{} // all its folded names, once it has many
}

// linearNames is how many names an object may have before its duplicate
// check switches from comparing with each to a set.
const linearNames = 16

func newScanner(body []byte, envelope int) *scanner {
	s := scannerPool.Get().(*scanner)
	s.body = body
	s.rd.Reset(body)
	s.dec.Reset(&s.rd) // defaults: UTF-8 checked, duplicate names rejected
	s.maxDepth = envelope + maxDepth
	s.folded, s.names, s.frames = s.folded[:0], s.names[:0], s.frames[:0]
	return s
}

func (s *scanner) release() {
	s.body = nil
	s.rd.Reset(nil)
	clear(s.frames[:cap(s.frames)]) // drop the sets
	scannerPool.Put(s)
}

var scannerPool = sync.Pool{New: func() any {
	return &scanner{dec: decoders.Get().(*jsontext.Decoder)}
}}

// openObject reads a '{' and starts tracking its member names.
func (s *scanner) openObject() error {
	if _, err := s.dec.ReadToken(); err != nil {
		return err
	}
	if s.dec.StackDepth() > s.maxDepth {
		return errTooDeep
	}
	s.frames = append(s.frames, nameFrame{start: len(s.names)})
	return nil
}

// closeObject reads a '}' and forgets the object's names.
func (s *scanner) closeObject() error {
	if _, err := s.dec.ReadToken(); err != nil {
		return err
	}
	f := s.frames[len(s.frames)-1]
	s.frames[len(s.frames)-1].set = nil
	s.frames = s.frames[:len(s.frames)-1]
	if f.start < len(s.names) {
		s.folded = s.folded[:s.names[f.start].off]
		s.names = s.names[:f.start]
	}
	return nil
}

// addName records an unescaped member name of the innermost open object and
// refuses it when it equals an earlier one under Unicode case folding
// ("path" and "PATH", "s" and "ſ", "ss" and "ß"): Go's encoding/json and other
// case-insensitive readers would take one for the other. A name holding
// NUL ("method\u0000") is refused too: a reader in C that ends strings at
// NUL would take it for another ("method").
func (s *scanner) addName(name []byte) error {
	if bytes.IndexByte(name, 0) >= 0 {
		return errNULName
	}
	off := len(s.folded)
	s.folded = foldName(s.folded, name)
	n := span{off, len(s.folded)}
	key := s.folded[off:]
	f := &s.frames[len(s.frames)-1]
	count := len(s.names) - f.start
	switch {
	case f.set != nil:
		if _, dup := f.set[string(key)]; dup {
			return errFoldedDup
		}
		f.set[string(key)] = struct{}{}
	case count < linearNames:
		for _, o := range s.names[f.start:] {
			if bytes.Equal(s.folded[o.off:o.end], key) {
				return errFoldedDup
			}
		}
	default:
		f.set = make(map[string]struct{}, 2*count)
		for _, o := range s.names[f.start:] {
			f.set[string(s.folded[o.off:o.end])] = struct{}{}
		}
		if _, dup := f.set[string(key)]; dup {
			return errFoldedDup
		}
		f.set[string(key)] = struct{}{}
	}
	s.names = append(s.names, n)
	return nil
}

// foldName appends name folded so that two names fold alike exactly when
// they are equal under Unicode full case folding ("ß" and "ss", "ﬁ" and
// "fi"; Python's str.casefold, JavaScript's toUpperCase comparisons) or
// under simple case folding, the equivalence strings.EqualFold uses ("s"
// and "ſ"): the full folding (x/text/cases), then every rune replaced by
// the least rune of its simple folding orbit. An ASCII name skips the
// first step, which would only lower its case.
func foldName(dst, name []byte) []byte {
	if !isASCII(name) {
		name = cases.Fold().Bytes(name) // a Caser is not safe for concurrent use
	}
	for i := 0; i < len(name); {
		c := name[i]
		if c < utf8.RuneSelf {
			if 'a' <= c && c <= 'z' {
				c -= 'a' - 'A' // the least of {A, a}; K and S have non-ASCII kin, all larger
			}
			dst = append(dst, c)
			i++
			continue
		}
		r, size := utf8.DecodeRune(name[i:])
		least := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			least = min(least, f)
		}
		dst = utf8.AppendRune(dst, least)
		i += size
	}
	return dst
}

// atName reports whether the next token is a member name.
func (s *scanner) atName() bool {
	k, n := s.dec.StackIndex(s.dec.StackDepth())
	return k == '{' && n%2 == 0
}

// skip reads one whole value, checking depth, numbers and member names on
// the way.
func (s *scanner) skip() error {
	base := s.dec.StackDepth()
	for {
		switch s.dec.PeekKind() {
		case '{':
			if err := s.openObject(); err != nil {
				return err
			}
		case '[':
			if _, err := s.dec.ReadToken(); err != nil {
				return err
			}
			if s.dec.StackDepth() > s.maxDepth {
				return errTooDeep
			}
		case '}':
			if err := s.closeObject(); err != nil {
				return err
			}
		case ']':
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
		case '"':
			if s.atName() {
				name, err := s.readBytes()
				if err != nil {
					return err
				}
				if err := s.addName(name); err != nil {
					return err
				}
				break
			}
			if _, err := s.dec.ReadValue(); err != nil {
				return err
			}
		default: // literals, and errors
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

func scanError(err error) *Error {
	switch {
	case errors.Is(err, errNotCanonical):
		return &Error{Code: deny.NumberNotCanonical, Reason: err.Error()}
	case errors.Is(err, errTooDeep), errors.Is(err, errFoldedDup), errors.Is(err, errNULName):
		return badRequest(err.Error())
	}
	return badRequest("invalid JSON: " + err.Error())
}

// scanArgs validates a REST body: one JSON object, strictly valid; envelope
// is the depth of the arguments object's parent.
func scanArgs(body []byte, envelope int) *Error {
	s := newScanner(body, envelope)
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
func parseMCP(c Call, body []byte) (Call, *Error) {
	s := newScanner(body, mcpEnvelopeDepth)
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
	if err := s.openObject(); err != nil {
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
		if err == nil {
			err = s.addName(key)
		}
		if err != nil {
			return c, scanError(err)
		}
		if ambiguousKey(key, "method", "params") {
			return c, badRequest("JSON-RPC key " + strconv.Quote(string(key)) + " differs from a member name only in case")
		}
		switch string(key) {
		case "id":
			off := s.offset()
			if err := s.skip(); err != nil {
				return c, scanError(err)
			}
			c.ID = s.rawSince(off)
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
			if strings.IndexByte(c.MCPMethod, 0) >= 0 { // a C reader would end it there: "tools/call\u0000"
				return c, badRequest("JSON-RPC method holds a NUL character")
			}
			hasMethod = true
		case "params":
			if s.dec.PeekKind() != '{' {
				if err := s.skip(); err != nil {
					return c, scanError(err)
				}
				return c, badRequest("JSON-RPC params is not an object")
			}
			if err := s.openObject(); err != nil {
				return c, scanError(err)
			}
			for s.dec.PeekKind() != '}' {
				pkey, err := s.readBytes()
				if err == nil {
					err = s.addName(pkey)
				}
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
			if err := s.closeObject(); err != nil {
				return c, scanError(err)
			}
		default:
			if err := s.skip(); err != nil {
				return c, scanError(err)
			}
		}
	}
	if err := s.closeObject(); err != nil {
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
	if !ValidName(name) {
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
func hashArgs(c *Call) *Error {
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
