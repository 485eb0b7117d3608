package authz

import (
	"encoding/json"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/m1-agent/m1/internal/policy"
)

// Headers M1 sets on an allowed request.
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

// allow builds the OK response: M1's upstream headers overwrite anything the
// client sent, and every other client-sent x-m1-* header (the approval token
// among them) is removed before the request reaches the tool.
func (s *Service) allow(v *verdict, headers Headers) *authv3.CheckResponse {
	d := v.policy
	set := make([]*corev3.HeaderValueOption, 0, 3+len(d.Headers))
	for _, h := range d.Headers {
		set = append(set, setHeader(h.Key, h.Value))
	}
	set = append(set, setHeader(HeaderDecisionID, v.id))
	if v.principal != "" {
		set = append(set, setHeader(HeaderPrincipal, v.principal))
	}
	if v.runID != "" {
		set = append(set, setHeader(HeaderRunID, v.runID))
	}
	remove := make([]string, 0, 2+len(d.RequestHeadersToRemove))
	remove = append(remove, s.opts.ApprovalHeader)
	for k := range headers.Map() {
		if !strings.HasPrefix(k, headerPrefix) || k == s.opts.ApprovalHeader || isSet(set, k) {
			continue
		}
		remove = append(remove, k)
	}
	remove = append(remove, d.RequestHeadersToRemove...)
	ok := &authv3.OkHttpResponse{Headers: set, HeadersToRemove: remove}
	if len(d.ResponseHeadersToAdd) > 0 {
		ok.ResponseHeadersToAdd = make([]*corev3.HeaderValueOption, 0, len(d.ResponseHeadersToAdd))
		for _, h := range d.ResponseHeadersToAdd {
			ok.ResponseHeadersToAdd = append(ok.ResponseHeadersToAdd, setHeader(h.Key, h.Value))
		}
	}
	return &authv3.CheckResponse{
		Status:          okStatus,
		HttpResponse:    &authv3.CheckResponse_OkResponse{OkResponse: ok},
		DynamicMetadata: s.metadata(v, d),
	}
}

func isSet(set []*corev3.HeaderValueOption, k string) bool {
	for _, h := range set {
		if h.Header.Key == k {
			return true
		}
	}
	return false
}

// metadata is the dynamic_metadata of a decision: the policy's, then M1's
// decision_id, tool and principal, which the policy cannot override.
func (s *Service) metadata(v *verdict, d *policy.Decision) *structpb.Struct {
	fields := make(map[string]*structpb.Value, 3+len(d.DynamicMetadata))
	for k, val := range d.DynamicMetadata {
		if pv, err := structpb.NewValue(val); err == nil {
			fields[k] = pv
		}
	}
	fields["decision_id"] = structpb.NewStringValue(v.id)
	fields["tool"] = structpb.NewStringValue(v.call.Tool)
	fields["principal"] = structpb.NewStringValue(v.principal)
	return &structpb.Struct{Fields: fields}
}

// denyBody is the JSON body of every deny M1 writes itself (DESIGN §6).
type denyBody struct {
	Error      string `json:"error"`
	Reason     string `json:"reason"`
	DecisionID string `json:"decision_id"`
}

// deny builds the PERMISSION_DENIED response with the verdict's status and
// JSON body, or the policy's own body and headers when it gave them.
func (s *Service) deny(v *verdict, _ Headers) *authv3.CheckResponse {
	hdrs := []*corev3.HeaderValueOption{setHeader(HeaderDecisionID, v.id)}
	var body string
	if d := v.policy; d != nil && d.HasBody {
		body = d.Body
	} else {
		b, _ := json.Marshal(denyBody{Error: v.code, Reason: v.reason, DecisionID: v.id})
		body = string(b)
		hdrs = append(hdrs, setHeader(contentType, jsonType))
	}
	if d := v.policy; d != nil {
		for _, h := range d.Headers {
			hdrs = append(hdrs, setHeader(h.Key, h.Value))
		}
	}
	resp := &authv3.CheckResponse{
		Status: &status.Status{Code: denyStatusRP, Message: v.code},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(v.status)},
			Headers: hdrs,
			Body:    body,
		}},
	}
	md := &structpb.Struct{Fields: map[string]*structpb.Value{
		"decision_id": structpb.NewStringValue(v.id),
		"error":       structpb.NewStringValue(v.code),
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
