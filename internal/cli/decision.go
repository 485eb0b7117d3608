package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/code"

	"github.com/m1-agent/m1/authz"
	"github.com/m1-agent/m1/internal/deny"
	"github.com/m1-agent/m1/internal/policy"
)

// Decision values of result.Decision.
const (
	decisionAllow = "allow"
	decisionDeny  = "deny"
)

// result is one decision as the client behind Envoy would see it; it is
// also the --json output of m1 check and m1 policy eval.
type result struct {
	Decision        string            `json:"decision"`    // "allow" or "deny"
	Status          int               `json:"status"`      // HTTP status the client gets: 200 on allow
	Error           string            `json:"error"`       // deny code, "" on allow
	Reason          string            `json:"reason"`      // deny reason, "" on allow
	DecisionID      string            `json:"decision_id"` // "" when none (policy eval of a raw input)
	Headers         map[string]string `json:"headers"`     // set upstream (allow) or on the deny response
	HeadersToRemove []string          `json:"headers_to_remove"`
	Body            string            `json:"body"`      // deny body
	GRPCCode        string            `json:"grpc_code"` // CheckResponse status code name, "" for a raw input

	ResponseHeadersToAdd map[string]string `json:"response_headers_to_add,omitempty"`
	DynamicMetadata      map[string]any    `json:"dynamic_metadata,omitempty"`

	// policy eval only.
	Revision       string `json:"revision,omitempty"`
	Cacheable      *bool  `json:"cacheable,omitempty"`
	CacheOffReason string `json:"cache_off_reason,omitempty"`
}

// exitCode is 0 for an allow, 1 for a deny.
func (r *result) exitCode() int {
	if r.Decision == decisionAllow {
		return exitOK
	}
	return exitDeny
}

// fromCheckResponse reads a CheckResponse as Envoy would: status OK allows
// (HTTP 200 upstream); anything else denies with denied_response.status, 403
// when unset. The deny error and reason come from the JSON body M1 writes
// (DESIGN §6), else the error is the status message.
func fromCheckResponse(resp *authv3.CheckResponse) *result {
	c := code.Code(resp.GetStatus().GetCode())
	r := &result{
		GRPCCode:        c.String(),
		Headers:         map[string]string{},
		HeadersToRemove: []string{},
	}
	if c == code.Code_OK {
		ok := resp.GetOkResponse()
		r.Decision, r.Status = decisionAllow, 200
		addHeaders(r.Headers, ok.GetHeaders())
		r.HeadersToRemove = append(r.HeadersToRemove, ok.GetHeadersToRemove()...)
		if len(ok.GetResponseHeadersToAdd()) > 0 {
			r.ResponseHeadersToAdd = map[string]string{}
			addHeaders(r.ResponseHeadersToAdd, ok.GetResponseHeadersToAdd())
		}
	} else {
		denied := resp.GetDeniedResponse()
		r.Decision, r.Status = decisionDeny, int(denied.GetStatus().GetCode())
		if r.Status == 0 {
			r.Status = 403
		}
		addHeaders(r.Headers, denied.GetHeaders())
		r.Body = denied.GetBody()
		var body struct {
			Error      string `json:"error"`
			Reason     string `json:"reason"`
			DecisionID string `json:"decision_id"`
		}
		if json.Unmarshal([]byte(r.Body), &body) == nil {
			r.Error, r.Reason, r.DecisionID = body.Error, body.Reason, body.DecisionID
		}
		if r.Error == "" {
			r.Error = resp.GetStatus().GetMessage()
		}
	}
	md := resp.GetDynamicMetadata().AsMap()
	if len(md) > 0 {
		r.DynamicMetadata = md
	}
	if id := r.Headers[authz.HeaderDecisionID]; id != "" {
		r.DecisionID = id
	} else if id, ok := md["decision_id"].(string); ok && r.DecisionID == "" {
		r.DecisionID = id
	}
	return r
}

// addHeaders adds header options to m.
func addHeaders(m map[string]string, hs []*corev3.HeaderValueOption) {
	for _, h := range hs {
		v := h.GetHeader().GetValue()
		if raw := h.GetHeader().GetRawValue(); len(raw) > 0 {
			v = string(raw)
		}
		addHeader(m, h.GetHeader().GetKey(), v)
	}
}

// addHeader adds one header to m, joining a repeated name's values with ",".
func addHeader(m map[string]string, k, v string) {
	if old, ok := m[k]; ok {
		v = old + "," + v
	}
	m[k] = v
}

// fromPolicyDecision reads a decision evaluated for a raw policy input the
// way the sidecar turns it into a response: a deny is policy_denied with the
// policy's http_status (403 when unset) and reason.
func fromPolicyDecision(d *policy.Decision) *result {
	r := &result{Headers: map[string]string{}, HeadersToRemove: []string{}}
	for _, h := range d.Headers {
		addHeader(r.Headers, h.Key, h.Value)
	}
	if len(d.ResponseHeadersToAdd) > 0 {
		r.ResponseHeadersToAdd = map[string]string{}
		for _, h := range d.ResponseHeadersToAdd {
			addHeader(r.ResponseHeadersToAdd, h.Key, h.Value)
		}
	}
	r.DynamicMetadata = d.DynamicMetadata
	if d.Allowed {
		r.Decision, r.Status = decisionAllow, 200
		r.HeadersToRemove = append(r.HeadersToRemove, d.RequestHeadersToRemove...)
		return r
	}
	r.Decision, r.Status = decisionDeny, deny.Status(deny.PolicyDenied)
	if d.HTTPStatus != 0 {
		r.Status = d.HTTPStatus
	}
	r.Error, r.Reason = deny.PolicyDenied, d.Reason
	if r.Reason == "" {
		r.Reason = "denied by policy"
	}
	if d.HasBody {
		r.Body = d.Body
	}
	return r
}

// print writes r as one JSON object, or as aligned "name: value" lines.
func (r *result) print(w io.Writer, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		return enc.Encode(r)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	line := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	line("decision", r.Decision)
	line("status", fmt.Sprint(r.Status))
	if r.Decision == decisionDeny {
		line("error", r.Error)
		if e, ok := deny.Lookup(r.Error); ok {
			line("meaning", e.Meaning)
		}
		line("reason", r.Reason)
	}
	if r.DecisionID != "" {
		line("decision_id", r.DecisionID)
	}
	for _, k := range slices.Sorted(maps.Keys(r.Headers)) {
		line("header", k+": "+r.Headers[k])
	}
	for _, k := range r.HeadersToRemove {
		line("remove_header", k)
	}
	for _, k := range slices.Sorted(maps.Keys(r.ResponseHeadersToAdd)) {
		line("response_header", k+": "+r.ResponseHeadersToAdd[k])
	}
	if r.Body != "" {
		line("body", strings.TrimRight(r.Body, "\n"))
	}
	if r.GRPCCode != "" {
		line("grpc_code", r.GRPCCode)
	}
	if r.Revision != "" {
		line("revision", r.Revision)
	}
	if r.Cacheable != nil {
		if *r.Cacheable {
			line("cacheable", "yes")
		} else {
			line("cacheable", "no ("+r.CacheOffReason+")")
		}
	}
	return tw.Flush()
}
