package authz

import (
	"bytes"
	"net/url"
	"strings"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/toolcall"
)

// buildInput makes the policy input: the opa-envoy-plugin document
// (attributes, parsed_path, parsed_query, parsed_body, truncated_body,
// version) plus input.m1, building only the parts the policy reads.
func buildInput(req *authv3.CheckRequest, c *toolcall.Call, headers toolcall.Headers, principal string, claims *approval.Claims, needs policy.Needs) (ast.Value, error) {
	in := ast.NewObjectWithCapacity(7)
	if needs.All || needs.M1 {
		m1, err := m1Input(c, principal, claims)
		if err != nil {
			return nil, err
		}
		in.Insert(ast.InternedTerm("m1"), ast.NewTerm(m1))
	}
	if needs.All || needs.Attributes {
		b, err := protojson.Marshal(req.GetAttributes())
		if err != nil {
			return nil, err
		}
		v, err := ast.ValueFromReader(bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		in.Insert(ast.InternedTerm("attributes"), ast.NewTerm(v))
	}
	if needs.All || needs.ParsedPath {
		p := c.RawPath
		if i := strings.IndexAny(p, "?#"); i >= 0 {
			p = p[:i]
		}
		segs := strings.Split(strings.TrimLeft(p, "/"), "/")
		arr := make([]*ast.Term, 0, len(segs))
		for _, s := range segs {
			if u, err := url.PathUnescape(s); err == nil {
				s = u
			}
			arr = append(arr, ast.StringTerm(s))
		}
		in.Insert(ast.InternedTerm("parsed_path"), ast.ArrayTerm(arr...))
	}
	if needs.All || needs.ParsedQuery {
		q := ast.NewObject()
		if i := strings.IndexByte(c.RawPath, '?'); i >= 0 {
			vals, _ := url.ParseQuery(c.RawPath[i+1:])
			for k, vs := range vals {
				arr := make([]*ast.Term, 0, len(vs))
				for _, v := range vs {
					arr = append(arr, ast.StringTerm(v))
				}
				q.Insert(ast.StringTerm(k), ast.ArrayTerm(arr...))
			}
		}
		in.Insert(ast.InternedTerm("parsed_query"), ast.NewTerm(q))
	}
	if needs.All || needs.ParsedBody {
		body := ast.NullTerm() // a partial body is not parsed, as in opa-envoy-plugin
		if !c.Truncated {
			body = parsedBody(req.GetAttributes().GetRequest().GetHttp(), headers)
		}
		in.Insert(ast.InternedTerm("parsed_body"), body)
	}
	if needs.All || needs.TruncatedBody {
		in.Insert(ast.InternedTerm("truncated_body"), ast.BooleanTerm(c.Truncated))
	}
	if needs.All || needs.Version {
		in.Insert(ast.InternedTerm("version"), ast.ObjectTerm(
			ast.Item(ast.StringTerm("encoding"), ast.StringTerm("protojson")),
			ast.Item(ast.StringTerm("ext_authz"), ast.StringTerm("v3")),
		))
	}
	return in, nil
}

// m1Input is input.m1 (DESIGN §5).
func m1Input(c *toolcall.Call, principal string, claims *approval.Claims) (ast.Value, error) {
	m1 := ast.NewObjectWithCapacity(8)
	m1.Insert(ast.InternedTerm("kind"), ast.StringTerm(c.Kind))
	if c.Kind == toolcall.KindToolCall {
		// The policy sees the canonical (JCS) arguments, so that everything
		// it can observe of them is fixed by args_sha256, the cache key:
		// {"n":1.0} and {"n":1} must not decide differently.
		canon := jsontext.Value(bytes.Clone(c.Args))
		if err := canon.Canonicalize(); err != nil {
			return nil, err
		}
		args, err := ast.ValueFromReader(bytes.NewReader(canon))
		if err != nil {
			return nil, err
		}
		m1.Insert(ast.InternedTerm("tool"), ast.StringTerm(c.Tool))
		m1.Insert(ast.InternedTerm("args"), ast.NewTerm(args))
		m1.Insert(ast.InternedTerm("args_sha256"), ast.StringTerm(c.ArgsSHA256))
	}
	if c.IsMCP {
		m1.Insert(ast.InternedTerm("mcp_method"), ast.StringTerm(c.MCPMethod))
	}
	m1.Insert(ast.InternedTerm("principal"), ast.StringTerm(principal))
	token := ast.NullTerm()
	if claims != nil {
		v, err := ast.ValueFromReader(bytes.NewReader(claims.Raw))
		if err != nil {
			return nil, err
		}
		token = ast.NewTerm(v)
	}
	m1.Insert(ast.InternedTerm("token"), token)
	m1.Insert(ast.InternedTerm("request"), ast.ObjectTerm(
		ast.Item(ast.InternedTerm("method"), ast.StringTerm(c.Method)),
		ast.Item(ast.InternedTerm("host"), ast.StringTerm(c.Host)),
		ast.Item(ast.InternedTerm("path"), ast.StringTerm(c.Path)),
	))
	return m1, nil
}

// parsedBody is the JSON body for a JSON content type, as opa-envoy-plugin
// gives it, else null.
func parsedBody(h *authv3.AttributeContext_HttpRequest, headers toolcall.Headers) *ast.Term {
	if !strings.Contains(headers.Get("content-type"), "json") {
		return ast.NullTerm()
	}
	body := h.GetRawBody()
	if len(body) == 0 {
		body = []byte(h.GetBody())
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return ast.NullTerm()
	}
	v, err := ast.ValueFromReader(bytes.NewReader(body))
	if err != nil {
		return ast.NullTerm()
	}
	return ast.NewTerm(v)
}
