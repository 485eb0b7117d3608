package policy_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/policies"
)

// Example loads the default bundle, prepares it once and evaluates a tool
// call that needs an approval token but carries none.
func Example() {
	ctx := context.Background()
	b, err := policy.LoadFS(policies.FS())
	if err != nil {
		log.Fatal(err)
	}
	e, err := policy.Prepare(ctx, b, policy.Options{Timeout: time.Second})
	if err != nil {
		log.Fatal(err)
	}
	cacheable, _ := e.Cacheable()
	fmt.Println("cacheable:", cacheable)
	fmt.Printf("needs: %+v\n", e.Needs())
	fmt.Println("write_file requires approval:", e.Tools()["write_file"].RequiresApproval)

	input := ast.MustParseTerm(`{"m1": {
		"kind": "tool_call", "tool": "write_file", "args": {"path": "a.txt"},
		"principal": "agent-42", "token": null
	}}`).Value
	d, err := e.Eval(ctx, input)
	if err != nil {
		log.Fatal(err) // a real caller denies with policy_error
	}
	fmt.Println(d.Allowed, d.Reason, d.HTTPStatus)
	// Output:
	// cacheable: true
	// needs: {All:false Attributes:false ParsedPath:false ParsedQuery:false ParsedBody:false TruncatedBody:false Version:false M1:true M1Paths:[[kind] [mcp_method] [token m1 kind] [tool]]}
	// write_file requires approval: true
	// false token_missing 401
}

// ExampleEngine_Eval shows the boolean decision form, as opa-envoy-plugin
// policies often use it, at a custom decision path.
func ExampleEngine_Eval() {
	ctx := context.Background()
	b := &policy.Bundle{Modules: map[string]string{"envoy.rego": `package envoy.authz

import rego.v1

default allow := false

allow if input.parsed_path[0] == "health"
`}}
	e, err := policy.Prepare(ctx, b, policy.Options{Path: "envoy/authz/allow"})
	if err != nil {
		log.Fatal(err)
	}
	d, err := e.Eval(ctx, ast.MustParseTerm(`{"parsed_path": ["health"]}`).Value)
	fmt.Println(d.Allowed, err)
	_, reason := e.Cacheable()
	fmt.Println(reason)
	// Output:
	// true <nil>
	// policy reads input.parsed_path (envoy.rego:7)
}
