package authz

import (
	"encoding/json"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/toolcall"
)

// toolcall.Headers M1 sets on an allowed request.
const (
	HeaderDecisionID = "x-m1-decision-id"
	HeaderPrincipal  = "x-m1-principal"
	HeaderRunID      = "x-m1-run-id"
	headerPrefix     = "x-m1-"
)

var (
	okStatus     = &status.Status{Code: int32(code.Code_OK)}
	overwrite    = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
	jsonType     = "application/json"
	contentType  = "content-type"
	denyStatusRP = int32(code.Code_PERMISSION_DENIED)
)

func setHeader(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v}, AppendAction: overwrite}
}

// allowArena holds the messages of a typical allow response so that they
// cost one allocation instead of a dozen: Check's hot path is dominated by
// small allocations.
type allowArena struct {
	resp   authv3.CheckResponse
	wrap   authv3.CheckResponse_OkResponse
	ok     authv3.OkHttpResponse
	opts   [3]corev3.HeaderValueOption
	values [3]corev3.HeaderValue
	set    [3]*corev3.HeaderValueOption
	remove [4]string
	md     structpb.Struct
	vals   [3]structpb.Value
	strs   [3]structpb.Value_StringValue
}

// allow builds the OK response: M1's upstream headers overwrite anything the
// client sent, and every other client-sent x-m1-* header (the approval token
// among them) is removed before the request reaches the tool.
func (s *Service) allow(v *verdict, headers toolcall.Headers) *authv3.CheckResponse {
	d := v.policy
	a := new(allowArena)
	set := a.set[:0]
	for _, h := range d.Headers {
		set = append(set, setHeader(h.Key, h.Value))
	}
	own := func(i int, k, val string) {
		a.values[i] = corev3.HeaderValue{Key: k, Value: val}
		a.opts[i].Header, a.opts[i].AppendAction = &a.values[i], overwrite
		set = append(set, &a.opts[i])
	}
	own(0, HeaderDecisionID, v.id)
	if v.principal != "" {
		own(1, HeaderPrincipal, v.principal)
	}
	if v.runID != "" {
		own(2, HeaderRunID, v.runID)
	}
	remove := append(a.remove[:0], s.opts.ApprovalHeader)
	for k := range headers.Map() {
		if k == s.opts.ApprovalHeader || isSet(set, k) {
			continue // removed already, or overwritten
		}
		if hasPrefixDashed(k, headerPrefix) || equalDashed(k, s.opts.ApprovalHeader) {
			remove = append(remove, k)
		}
	}
	remove = append(remove, d.RequestHeadersToRemove...)
	a.ok.Headers, a.ok.HeadersToRemove = set, remove
	for _, h := range d.ResponseHeadersToAdd {
		a.ok.ResponseHeadersToAdd = append(a.ok.ResponseHeadersToAdd, setHeader(h.Key, h.Value))
	}
	a.wrap.OkResponse = &a.ok
	a.resp.Status, a.resp.HttpResponse = okStatus, &a.wrap
	a.resp.DynamicMetadata = s.metadata(a, v, d)
	return &a.resp
}

// hasPrefixDashed reports whether name starts with prefix when every '_' of
// name is read as '-': CGI, WSGI and PHP servers map x_m1_principal and
// x-m1-principal to the same variable (HTTP_X_M1_PRINCIPAL).
func hasPrefixDashed(name, prefix string) bool {
	return len(name) >= len(prefix) && equalDashed(name[:len(prefix)], prefix)
}

// equalDashed reports whether a and b are equal with '_' read as '-'.
func equalDashed(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range len(a) {
		x, y := a[i], b[i]
		if x == '_' {
			x = '-'
		}
		if y == '_' {
			y = '-'
		}
		if x != y {
			return false
		}
	}
	return true
}

func isSet(set []*corev3.HeaderValueOption, k string) bool {
	for _, h := range set {
		if h.Header.Key == k {
			return true
		}
	}
	return false
}

// metadata is the dynamic_metadata of an allow: the policy's, then M1's
// decision_id, tool and principal, which the policy cannot override.
func (s *Service) metadata(a *allowArena, v *verdict, d *policy.Decision) *structpb.Struct {
	fields := make(map[string]*structpb.Value, 3+len(d.DynamicMetadata))
	for k, val := range d.DynamicMetadata {
		if pv, err := structpb.NewValue(val); err == nil {
			fields[k] = pv
		}
	}
	for i, kv := range [3][2]string{{"decision_id", v.id}, {"tool", v.call.Tool}, {"principal", v.principal}} {
		a.strs[i].StringValue = kv[1]
		a.vals[i].Kind = &a.strs[i]
		fields[kv[0]] = &a.vals[i]
	}
	a.md.Fields = fields
	return &a.md
}

// denyBody is the JSON body of every deny M1 writes itself (DESIGN §6).
type denyBody struct {
	Error      string `json:"error"`
	Reason     string `json:"reason"`
	DecisionID string `json:"decision_id"`
	ProposalID string `json:"proposal_id,omitempty"` // approval_pending, approval_rejected (DESIGN §10)
}

// deny builds the PERMISSION_DENIED response with the verdict's status and
// JSON body, or the policy's own body and headers when it gave them.
func (s *Service) deny(v *verdict, _ toolcall.Headers) *authv3.CheckResponse {
	hdrs := []*corev3.HeaderValueOption{setHeader(HeaderDecisionID, v.id)}
	// The policy's body and headers are its deny's. After an allow that a
	// later check overturned (a replayed approval), they were meant for the
	// tool and must not reach the caller.
	d := v.policy
	if d != nil && d.Allowed {
		d = nil
	}
	if v.retryAfter > 0 {
		hdrs = append(hdrs, setHeader("retry-after", strconv.FormatInt(int64(v.retryAfter/time.Second), 10)))
	}
	var body string
	httpStatus := v.status
	if rpc, ok := s.mcpPending(v); ok {
		body, httpStatus = rpc, 200
		hdrs = append(hdrs, setHeader(contentType, jsonType))
	} else if d != nil && d.HasBody {
		body = d.Body
	} else {
		b, _ := json.Marshal(denyBody{Error: v.code, Reason: v.reason, DecisionID: v.id, ProposalID: v.proposalID})
		body = string(b)
		hdrs = append(hdrs, setHeader(contentType, jsonType))
	}
	if d != nil {
		for _, h := range d.Headers {
			hdrs = append(hdrs, setHeader(h.Key, h.Value))
		}
	}
	resp := &authv3.CheckResponse{
		Status: &status.Status{Code: denyStatusRP, Message: v.code},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(httpStatus)},
			Headers: hdrs,
			Body:    body,
		}},
	}
	md := &structpb.Struct{Fields: map[string]*structpb.Value{
		"decision_id": structpb.NewStringValue(v.id),
		"error":       structpb.NewStringValue(v.code),
		"reason":      structpb.NewStringValue(v.reason),
	}}
	if v.call.Tool != "" {
		md.Fields["tool"] = structpb.NewStringValue(v.call.Tool)
	}
	if v.principal != "" {
		md.Fields["principal"] = structpb.NewStringValue(v.principal)
	}
	resp.DynamicMetadata = md
	return resp
}
