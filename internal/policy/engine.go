// Package policy loads OPA bundles, prepares their decision query once per
// bundle revision and evaluates it for the authorization pipeline.
//
// An [Engine] is immutable and safe for concurrent use: callers prepare a
// new one when the bundle changes and swap it atomically. Besides
// evaluating decisions, the engine inspects the compiled policy to tell
// whether its decisions may be cached ([Engine.Cacheable]) and which parts
// of the input it reads at all ([Engine.Needs]), so the caller builds only
// those.
package policy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/metrics"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/topdown"
)

var noMetrics = metrics.NoOp()

// DefaultPath is the decision path used when [Options.Path] is empty.
const DefaultPath = "m1/authz/decision"

// Sentinel errors returned (wrapped) by [Engine.Eval].
var (
	// ErrUndefined means the decision is undefined for the input.
	ErrUndefined = errors.New("policy decision is undefined")
	// ErrBadDecision means the decision is neither a boolean nor a
	// well-formed object (see [Decision]).
	ErrBadDecision = errors.New("malformed policy decision")
)

// Options configure [Prepare].
type Options struct {
	// Path is the decision path, in slash form as M1_POLICY_PATH
	// ("m1/authz/decision", the default when empty) or dotted
	// ("m1.authz.decision", optionally with a leading "data.").
	Path string
	// Timeout bounds each evaluation; 0 means no limit beyond the
	// caller's context.
	Timeout time.Duration
}

// Engine is one prepared bundle revision. It is immutable and safe for
// concurrent use.
type Engine struct {
	revision  string
	cacheRev  string // see CacheRevision
	path      string // display form of the decision path, "data.m1.authz.decision"
	timeout   time.Duration
	query     rego.PreparedEvalQuery
	cacheable bool
	reason    string
	needs     Needs
	tools     map[string]Tool
}

// Tool is one entry of the tool registry data.m1.tools.
type Tool struct {
	// Risk is "read", "write" or "execute" by convention ("" if absent).
	Risk string `json:"risk"`
	// RequiresApproval is the entry's requires_approval; an entry without
	// it requires approval (the default policy fails closed the same way).
	RequiresApproval bool `json:"requires_approval"`
	// Sensitive is the entry's sensitive flag (false if absent).
	Sensitive bool `json:"sensitive"`
	// Raw is the whole entry, JSON-shaped (numbers as json.Number), with
	// any further fields (description, ...).
	Raw map[string]any `json:"raw"`
}

// Prepare parses and compiles the bundle's modules (not its tests), loads
// its data and prepares the decision query at opts.Path.
//
// Errors read `parse policy: ...` or `compile policy: ...` and carry the
// file name and line of each problem, for example
// `policies/authz.rego:12: rego_parse_error: unexpected identifier token`.
// Prepare also fails when nothing in the bundle defines the decision path
// and when data.m1.tools is not an object of objects with well-typed
// risk, requires_approval and sensitive fields, so a bad bundle is
// refused at load rather than denying every request.
func Prepare(ctx context.Context, b *Bundle, opts Options) (*Engine, error) {
	if b == nil {
		return nil, errors.New("prepare policy: nil bundle")
	}
	ref, err := decisionRef(opts.Path)
	if err != nil {
		return nil, fmt.Errorf("prepare policy: %w", err)
	}
	if opts.Timeout < 0 {
		return nil, fmt.Errorf("prepare policy: negative timeout %v", opts.Timeout)
	}
	revision := b.Revision
	if revision == "" {
		if revision, err = hashBundle(b); err != nil {
			return nil, fmt.Errorf("prepare policy: %w", err)
		}
	}

	modules, err := parseModules(b, b.Modules)
	if err != nil {
		return nil, err
	}
	if len(modules) == 0 {
		return nil, errors.New("prepare policy: bundle has no modules")
	}
	compiler := ast.NewCompiler().WithEnablePrintStatements(false)
	if compiler.Compile(modules); compiler.Failed() {
		return nil, fmt.Errorf("compile policy: %w", compiler.Errors)
	}

	data, err := dataObject(b.Data)
	if err != nil {
		return nil, fmt.Errorf("prepare policy: %w", err)
	}
	if len(compiler.GetRules(ref)) == 0 && !dataHas(data, ref) {
		return nil, fmt.Errorf("prepare policy: no rule or data defines the decision path %v", ref)
	}
	tools, err := parseTools(data)
	if err != nil {
		return nil, fmt.Errorf("prepare policy: %w", err)
	}

	r := rego.New(
		rego.Compiler(compiler),
		rego.Store(inmem.NewFromASTObject(data)),
		rego.ParsedQuery(ast.NewBody(ast.NewExpr(ast.NewTerm(ref)))),
		// Keep results as AST values: parseDecision reads them directly,
		// which saves converting every result to Go maps.
		rego.GenerateJSON(func(t *ast.Term, _ *rego.EvalContext) (any, error) { return t.Value, nil }),
	)
	query, err := r.PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("prepare policy: %w", err)
	}

	a := analyze(compiler)
	cacheRev := revision
	if b.Digest != "" && b.Digest != revision {
		cacheRev = revision + "\n" + b.Digest
	}
	return &Engine{
		revision:  revision,
		cacheRev:  cacheRev,
		path:      ref.String(),
		timeout:   opts.Timeout,
		query:     query,
		cacheable: a.reason == "",
		reason:    a.reason,
		needs:     a.needs,
		tools:     tools,
	}, nil
}

// Revision returns the bundle revision the engine was prepared from
// (Bundle.Revision, or a hash derived by Prepare when that was empty).
func (e *Engine) Revision() string { return e.revision }

// CacheRevision is what decision-cache keys hash for this engine: the
// revision and, when a .manifest or a Git commit names it, the digest of
// the bundle's files too. Two bundles under one revision name with other
// files never share a cached decision, though sidecars on one Redis may
// load them side by side (a sidecar refuses new files under the revision
// it has in force, but one that starts after the change loads them).
func (e *Engine) CacheRevision() string { return e.cacheRev }

// Path returns the decision's path, as data.m1.authz.decision.
func (e *Engine) Path() string { return e.path }

// Cacheable reports whether decisions may be cached by revision and
// input.m1: true only when the compiled policy reads nothing of the input
// but input.m1 and calls no non-deterministic built-in. When false, reason
// says why, naming the first offending use and its place, e.g.
// `policy reads input.attributes (policies/authz.rego:14)`.
func (e *Engine) Cacheable() (ok bool, reason string) { return e.cacheable, e.reason }

// Needs reports which top-level input keys the policy reads.
func (e *Engine) Needs() Needs { return e.needs }

// ArgsAuditable reports whether the registry marks tool non-sensitive
// explicitly ("sensitive": false), so that its arguments may be stored in
// the audit trail. Unknown tools and entries without the flag are
// sensitive. It does not copy the registry: cheap enough for every check.
func (e *Engine) ArgsAuditable(tool string) bool {
	t, ok := e.tools[tool]
	if !ok {
		return false
	}
	v, present := t.Raw["sensitive"]
	return present && v == false
}

// Tools returns the tool registry from data.m1.tools (an empty map if
// absent). The result is a deep copy the caller may keep or modify.
func (e *Engine) Tools() map[string]Tool {
	tools := make(map[string]Tool, len(e.tools))
	for name, t := range e.tools {
		t.Raw = cloneJSON(t.Raw).(map[string]any)
		tools[name] = t
	}
	return tools
}

// cloneJSON deep-copies a JSON-shaped value.
func cloneJSON(v any) any {
	switch v := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(v))
		for k, x := range v {
			m[k] = cloneJSON(x)
		}
		return m
	case []any:
		s := make([]any, len(v))
		for i, x := range v {
			s[i] = cloneJSON(x)
		}
		return s
	}
	return v
}

// Eval evaluates the decision for input, a JSON-shaped value (an
// ast.Object in practice; nil means no input). It applies Options.Timeout
// on top of ctx.
//
// Errors: an undefined decision wraps [ErrUndefined]; a malformed one wraps
// [ErrBadDecision]; an evaluation error, including a cancelled or expired
// context (then errors.Is(err, context.DeadlineExceeded) or
// context.Canceled holds), is returned wrapped. Callers deny on any error.
func (e *Engine) Eval(ctx context.Context, input ast.Value) (Decision, error) {
	if e.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, e.timeout)
		defer cancel()
	}
	// Cancel evaluation when ctx ends; AfterFunc costs less per evaluation
	// than the watcher goroutine rego starts otherwise.
	cancel := topdown.NewCancel()
	stop := context.AfterFunc(ctx, cancel.Cancel)
	defer stop()

	rs, err := e.query.Eval(ctx,
		rego.EvalParsedInput(input),
		rego.EvalExternalCancel(cancel),
		rego.EvalMetrics(noMetrics), // the caller measures; OPA's timers cost allocations
	)
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return Decision{}, fmt.Errorf("evaluate %s: %w: %w", e.path, cerr, err)
		}
		return Decision{}, fmt.Errorf("evaluate %s: %w", e.path, err)
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return Decision{}, fmt.Errorf("evaluate %s: %w", e.path, ErrUndefined)
	}
	v, ok := rs[0].Expressions[0].Value.(ast.Value)
	if !ok {
		return Decision{}, fmt.Errorf("evaluate %s: %w: unexpected result %T", e.path, ErrBadDecision, rs[0].Expressions[0].Value)
	}
	d, err := parseDecision(v)
	if err != nil {
		return Decision{}, fmt.Errorf("evaluate %s: %w", e.path, err)
	}
	return d, nil
}

// decisionRef turns "m1/authz/decision", "/m1/authz/decision",
// "m1.authz.decision" or "data.m1.authz.decision" into data.m1.authz.decision.
func decisionRef(p string) (ast.Ref, error) {
	p = strings.TrimSpace(p)
	if p == "" {
		p = DefaultPath
	}
	var parts []string
	if strings.Contains(p, "/") {
		parts = strings.Split(strings.Trim(p, "/"), "/")
	} else {
		parts = strings.Split(p, ".")
		if len(parts) > 1 && parts[0] == "data" {
			parts = parts[1:]
		}
	}
	ref := ast.Ref{ast.DefaultRootDocument}
	for _, s := range parts {
		if s == "" {
			return nil, fmt.Errorf("bad decision path %q: empty segment", p)
		}
		ref = append(ref, ast.StringTerm(s))
	}
	return ref, nil
}

// parseModules parses sources (bundle path -> source) as Rego v1. The
// returned map is keyed by file name, which is also each module's location
// file, so errors and reasons point at the file.
func parseModules(b *Bundle, sources map[string]string) (map[string]*ast.Module, error) {
	modules := make(map[string]*ast.Module, len(sources))
	for _, p := range slices.Sorted(maps.Keys(sources)) {
		name := b.fileName(p)
		m, err := ast.ParseModuleWithOpts(name, sources[p], ast.ParserOptions{RegoVersion: ast.RegoV1})
		if err != nil {
			return nil, fmt.Errorf("parse policy: %w", err)
		}
		modules[name] = m
	}
	return modules, nil
}

// dataObject converts the bundle data to an AST object owned by the engine.
func dataObject(data map[string]any) (ast.Object, error) {
	if data == nil {
		return ast.NewObject(), nil
	}
	v, err := ast.InterfaceToValue(data)
	if err != nil {
		return nil, fmt.Errorf("convert data: %w", err)
	}
	obj, ok := v.(ast.Object)
	if !ok {
		return nil, fmt.Errorf("convert data: got %s, want object", ast.ValueName(v))
	}
	return obj, nil
}

// dataHas reports whether data holds a value at ref (data.a.b...).
func dataHas(data ast.Object, ref ast.Ref) bool {
	var v ast.Value = data
	for _, t := range ref[1:] {
		obj, ok := v.(ast.Object)
		if !ok {
			return false
		}
		next := obj.Get(t)
		if next == nil {
			return false
		}
		v = next.Value
	}
	return true
}

var toolsRef = ast.MustParseRef("data.m1.tools")

// parseTools reads and checks the tool registry at data.m1.tools.
func parseTools(data ast.Object) (map[string]Tool, error) {
	tools := map[string]Tool{}
	if !dataHas(data, toolsRef) {
		return tools, nil
	}
	v, err := data.Find(toolsRef[1:])
	if err != nil {
		return nil, fmt.Errorf("data.m1.tools: %w", err)
	}
	obj, ok := v.(ast.Object)
	if !ok {
		return nil, fmt.Errorf("data.m1.tools: got %s, want object", ast.ValueName(v))
	}
	err = obj.Iter(func(k, v *ast.Term) error {
		name, ok := k.Value.(ast.String)
		if !ok {
			return fmt.Errorf("data.m1.tools: key %v is not a string", k)
		}
		entry, ok := v.Value.(ast.Object)
		if !ok {
			return fmt.Errorf("data.m1.tools[%q]: got %s, want object", string(name), ast.ValueName(v.Value))
		}
		raw, err := ast.JSON(entry)
		if err != nil {
			return fmt.Errorf("data.m1.tools[%q]: %w", string(name), err)
		}
		t := Tool{RequiresApproval: true, Raw: raw.(map[string]any)}
		if x := entry.Get(ast.InternedTerm("risk")); x != nil {
			s, ok := x.Value.(ast.String)
			if !ok {
				return fmt.Errorf("data.m1.tools[%q].risk: got %s, want string", string(name), ast.ValueName(x.Value))
			}
			t.Risk = string(s)
		}
		for _, f := range []struct {
			key string
			dst *bool
		}{{"requires_approval", &t.RequiresApproval}, {"sensitive", &t.Sensitive}} {
			x := entry.Get(ast.InternedTerm(f.key))
			if x == nil {
				continue
			}
			b, ok := x.Value.(ast.Boolean)
			if !ok {
				return fmt.Errorf("data.m1.tools[%q].%s: got %s, want boolean", string(name), f.key, ast.ValueName(x.Value))
			}
			*f.dst = bool(b)
		}
		tools[string(name)] = t
		return nil
	})
	if err != nil {
		return nil, err
	}
	return tools, nil
}

// location formats a location as "file:line" for messages.
func location(loc *ast.Location) string {
	if loc == nil {
		return "unknown location"
	}
	file := loc.File
	if file == "" {
		file = "<unknown file>"
	}
	return fmt.Sprintf("%s:%d", filepath.ToSlash(file), loc.Row)
}
