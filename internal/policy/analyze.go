package policy

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
)

// Needs tells which top-level input keys a policy reads, so the caller builds
// only those. A field is true when some reference input.<key> appears in the
// compiled policy.
type Needs struct {
	// All is true when the policy uses input in a way that cannot be
	// narrowed to top-level keys (a bare input, input[x] with a variable
	// key, walk(input), with input as ...): build the whole input.
	All bool `json:"all"`
	// Attributes is input.attributes (the protojson CheckRequest
	// attributes, the most expensive part to build).
	Attributes bool `json:"attributes"`
	// ParsedPath is input.parsed_path.
	ParsedPath bool `json:"parsed_path"`
	// ParsedQuery is input.parsed_query.
	ParsedQuery bool `json:"parsed_query"`
	// ParsedBody is input.parsed_body.
	ParsedBody bool `json:"parsed_body"`
	// TruncatedBody is input.truncated_body.
	TruncatedBody bool `json:"truncated_body"`
	// Version is input.version.
	Version bool `json:"version"`
	// M1 is input.m1.
	M1 bool `json:"m1"`
	// M1Paths are the constant paths below input.m1 that the policy reads,
	// each cut at its first non-constant key: input.m1.token.m1.kind gives
	// ["token","m1","kind"], input.m1.token[k] gives ["token"]. A path that
	// is a prefix of another subsumes it. Nil when the policy reads all of
	// input.m1 (input.m1 itself, or All); a cacheable decision depends on
	// input.m1 only through these paths, so they may key the cache.
	M1Paths [][]string `json:"m1_paths"`
}

// inputKeys maps the top-level input keys M1 builds to their Needs field.
var inputKeys = map[string]func(*Needs) *bool{
	"attributes":     func(n *Needs) *bool { return &n.Attributes },
	"parsed_path":    func(n *Needs) *bool { return &n.ParsedPath },
	"parsed_query":   func(n *Needs) *bool { return &n.ParsedQuery },
	"parsed_body":    func(n *Needs) *bool { return &n.ParsedBody },
	"truncated_body": func(n *Needs) *bool { return &n.TruncatedBody },
	"version":        func(n *Needs) *bool { return &n.Version },
	"m1":             func(n *Needs) *bool { return &n.M1 },
}

// nondeterministicPrefixes are built-in families whose results may change
// between two evaluations of the same input (DESIGN §5). The list is
// deliberately broad: net.cidr_contains is deterministic, but it costs
// nothing to be wrong in this direction.
var nondeterministicPrefixes = []string{"time.", "rand.", "uuid.", "net."}

// nondeterministicBuiltins are further built-ins whose results depend on the
// outside world: the network, the process, the clock.
var nondeterministicBuiltins = map[string]bool{
	"http.send":   true,
	"opa.runtime": true,
	// Certificate verification checks validity against the current time.
	"crypto.x509.parse_and_verify_certificates":              true,
	"crypto.x509.parse_and_verify_certificates_with_options": true,
}

func isNondeterministic(name string) bool {
	if nondeterministicBuiltins[name] {
		return true
	}
	for _, p := range nondeterministicPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	b, ok := ast.BuiltinMap[name]
	return ok && b.Nondeterministic
}

// analysis is the result of inspecting a compiled policy.
type analysis struct {
	needs  Needs
	reason string // first reason caching is unsound; "" when cacheable
}

// analyzer walks compiled modules. It visits every rule (heads, bodies, else
// branches, function bodies) and every nested body (comprehensions, every,
// not), looking at each term.
type analyzer struct {
	analysis
	m1Paths   [][]string
	m1Whole   bool
	vis       *ast.GenericVisitor
	rewritten map[ast.Var]ast.Var // compiler-generated locals -> source names
	rule      *ast.Rule           // rule being walked, for locations
	expr      *ast.Expr           // expression being walked, for locations
}

// analyze inspects every rule of the compiled modules in file order. It
// works on the compiler's output, after imports and local variables have
// been resolved and rewritten, so `import input.attributes as a; a.x` is
// seen as input.attributes.x and `x := input; x.attributes` as a bare input
// assigned to a local.
func analyze(c *ast.Compiler) analysis {
	a := &analyzer{rewritten: c.RewrittenVars}
	a.vis = ast.NewGenericVisitor(a.visit)
	for _, name := range slices.Sorted(maps.Keys(c.Modules)) {
		// Imports and the package clause are resolved into the rules; an
		// unused `import input` reads nothing.
		for _, r := range c.Modules[name].Rules {
			a.vis.Walk(r)
		}
	}
	if !a.needs.All && !a.m1Whole {
		a.needs.M1Paths = minimalPaths(a.m1Paths)
	}
	return a.analysis
}

// minimalPaths sorts and dedupes paths, dropping any path that has another
// as a prefix.
func minimalPaths(paths [][]string) [][]string {
	slices.SortFunc(paths, func(a, b []string) int { return slices.Compare(a, b) })
	var out [][]string
	for _, p := range paths {
		if n := len(out); n > 0 && len(out[n-1]) <= len(p) && slices.Equal(out[n-1], p[:len(out[n-1])]) {
			continue // the previous (shorter or equal) path covers p
		}
		out = append(out, p)
	}
	if out == nil {
		out = [][]string{}
	}
	return out
}

func (a *analyzer) visit(x any) bool {
	switch x := x.(type) {
	case *ast.Rule:
		a.rule, a.expr = x, nil
	case *ast.Head:
		// The generic walk skips Head.Reference, whose non-leading terms
		// may hold expressions (p[input.m1.kind] := ...).
		if len(x.Reference) > 1 {
			for _, t := range x.Reference[1:] {
				a.vis.Walk(t)
			}
		}
		if x.Args != nil {
			a.vis.Walk(x.Args)
		}
		if x.Key != nil {
			a.vis.Walk(x.Key)
		}
		if x.Value != nil {
			a.vis.Walk(x.Value)
		}
		return true
	case *ast.Expr:
		a.expr = x
		if x.IsCall() {
			a.call(x.Operator(), x.Location)
		}
		for _, w := range x.With {
			if isInputRooted(w.Target) {
				a.unnarrowable("policy replaces input with `with "+w.Target.String()+" as ...`", w.Location)
			}
		}
	case *ast.Term:
		switch v := x.Value.(type) {
		case ast.Var:
			if v.Equal(ast.InputRootDocument.Value) {
				a.unnarrowable("policy uses the whole input", x.Location)
			}
		case ast.Ref:
			if isInputRooted(x) {
				a.inputRef(v, x.Location)
				// Keys may themselves be expressions that read input.
				for _, t := range v[1:] {
					a.vis.Walk(t)
				}
				return true
			}
		case ast.Call:
			if len(v) > 0 {
				if op, ok := v[0].Value.(ast.Ref); ok {
					a.call(op, x.Location)
				}
			}
		}
	}
	return false
}

func isInputRooted(t *ast.Term) bool {
	switch v := t.Value.(type) {
	case ast.Var:
		return v.Equal(ast.InputRootDocument.Value)
	case ast.Ref:
		return len(v) > 0 && v[0].Equal(ast.InputRootDocument)
	}
	return false
}

// inputRef records a reference input.<...>.
func (a *analyzer) inputRef(ref ast.Ref, loc *ast.Location) {
	if len(ref) < 2 {
		a.unnarrowable("policy uses the whole input", loc)
		return
	}
	key, ok := ref[1].Value.(ast.String)
	if !ok {
		k := ref[1].String()
		if v, ok := ref[1].Value.(ast.Var); ok {
			orig, ok := a.rewritten[v]
			if !ok || orig.IsGenerated() || orig.IsWildcard() {
				// A variable the compiler made up (some v in input).
				a.unnarrowable("policy reads input with a non-constant key", loc)
				return
			}
			k = string(orig)
		}
		a.unnarrowable("policy reads input["+k+"], a key that is not a constant string", loc)
		return
	}
	if field, ok := inputKeys[string(key)]; ok {
		*field(&a.needs) = true
	}
	if key == "m1" {
		var path []string
		for _, t := range ref[2:] {
			s, ok := t.Value.(ast.String)
			if !ok {
				break
			}
			path = append(path, string(s))
		}
		if len(path) == 0 {
			a.m1Whole = true
		}
		a.m1Paths = append(a.m1Paths, path)
	}
	if key != "m1" {
		a.uncacheable(fmt.Sprintf("policy reads input.%s", string(key)), loc)
	}
}

// call records a call to the function named by op.
func (a *analyzer) call(op ast.Ref, loc *ast.Location) {
	if op.HasPrefix(ast.DefaultRootRef) {
		return // a user function: its body is walked with the rules
	}
	if name := op.String(); isNondeterministic(name) {
		a.uncacheable("policy calls non-deterministic built-in "+name, loc)
	}
}

func (a *analyzer) unnarrowable(what string, loc *ast.Location) {
	a.needs.All = true
	a.uncacheable(what, loc)
}

func (a *analyzer) uncacheable(what string, loc *ast.Location) {
	if a.reason != "" {
		return
	}
	if loc == nil && a.expr != nil {
		loc = a.expr.Location
	}
	if loc == nil && a.rule != nil {
		loc = a.rule.Location
	}
	a.reason = fmt.Sprintf("%s (%s)", what, location(loc))
}
