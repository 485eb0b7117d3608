package policy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/tester"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// RunTests runs the bundle's Rego unit tests (the test_* rules of its
// *_test.rego files, compiled together with its modules and evaluated over
// its data) with OPA's test runner, and writes a verbose report to w: one
// PASS, FAIL or ERROR line per test in a stable order, failure details
// with the failing line and print output, and a summary.
//
// ok is false when any test failed or errored. err is for problems that
// stop the run: a parse or compile error (with file and line), a bad data
// document, a cancelled ctx, or an error writing the report. A bundle
// without tests reports so and is ok.
func RunTests(ctx context.Context, b *Bundle, w io.Writer) (ok bool, err error) {
	if b == nil {
		return false, errors.New("run policy tests: nil bundle")
	}
	sources := make(map[string]string, len(b.Modules)+len(b.Tests))
	maps.Copy(sources, b.Modules)
	maps.Copy(sources, b.Tests)
	modules, err := parseModules(b, sources)
	if err != nil {
		return false, err
	}
	data, err := dataObject(b.Data)
	if err != nil {
		return false, fmt.Errorf("run policy tests: %w", err)
	}

	runner := tester.NewRunner().
		SetCompiler(ast.NewCompiler().WithEnablePrintStatements(true)).
		SetStore(inmem.NewFromASTObject(data)).
		SetModules(modules).
		CapturePrintOutput(true).
		EnableTracing(true)
	ch, err := runner.RunTests(ctx, nil)
	if err != nil {
		var errs ast.Errors
		if errors.As(err, &errs) {
			return false, fmt.Errorf("compile policy tests: %w", err)
		}
		return false, fmt.Errorf("run policy tests: %w", err)
	}

	// Results arrive in any order; sort them so the report is stable.
	var results []*tester.Result
	ok = true
	for r := range ch {
		results = append(results, r)
		if r.Fail || r.Error != nil {
			ok = false
		}
	}
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("run policy tests: %w", err)
	}
	if len(results) == 0 {
		if _, err := io.WriteString(w, "no tests\n"); err != nil {
			return false, fmt.Errorf("run policy tests: write report: %w", err)
		}
		return true, nil
	}
	sortResults(results)
	for _, r := range results {
		r.Trace = failureEvent(r.Trace)
		for _, sr := range r.SubResults.Iter {
			sr.Trace = failureEvent(sr.Trace)
		}
	}
	sorted := make(chan *tester.Result, len(results))
	for _, r := range results {
		sorted <- r
	}
	close(sorted)
	rep := tester.PrettyReporter{Output: w, Verbose: true, FailureLine: true, LocalVars: true}
	if err := rep.Report(sorted); err != nil {
		return false, fmt.Errorf("run policy tests: write report: %w", err)
	}
	return ok, nil
}

// failureEvent keeps, of a failed test's trace, only the event that failed
// (the last failing expression with a location, as OPA's reporter picks it):
// the reporter then prints that line with its variable values instead of
// the whole trace.
func failureEvent(trace []*topdown.Event) []*topdown.Event {
	for _, e := range slices.Backward(trace) {
		if e.Op != topdown.FailOp || e.Location == nil || e.QueryID == 0 {
			continue
		}
		if expr, ok := e.Node.(*ast.Expr); ok {
			if _, ok := expr.Terms.(*ast.Every); ok {
				continue // the failing expression inside the every body comes first
			}
		}
		return []*topdown.Event{e}
	}
	return nil
}

// sortResults orders results as in the sources: by file, then line.
func sortResults(rs []*tester.Result) {
	slices.SortStableFunc(rs, func(a, b *tester.Result) int {
		var af, bf string
		var al, bl int
		if a.Location != nil {
			af, al = a.Location.File, a.Location.Row
		}
		if b.Location != nil {
			bf, bl = b.Location.File, b.Location.Row
		}
		return cmp.Or(strings.Compare(af, bf), cmp.Compare(al, bl),
			strings.Compare(a.Package, b.Package), strings.Compare(a.Name, b.Name))
	})
}
