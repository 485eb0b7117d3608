package devproxy

import (
	"net/http"
	"net/url"
	"slices"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func opt(k, v string, action corev3.HeaderValueOption_HeaderAppendAction) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v}, AppendAction: action}
}

func TestMutateHeaders(t *testing.T) {
	const (
		appendOrAdd    = corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
		addIfAbsent    = corev3.HeaderValueOption_ADD_IF_ABSENT
		overwriteOrAdd = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
		overwriteOnly  = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS
	)
	deprecated := func(k, v string, appendFlag bool) *corev3.HeaderValueOption {
		// append_action says overwrite: the deprecated flag must win.
		o := opt(k, v, overwriteOrAdd)
		o.Append = wrapperspb.Bool(appendFlag)
		return o
	}
	tests := []struct {
		name        string
		opt         *corev3.HeaderValueOption
		have        []string // existing values of X-A
		want        []string // values of X-A after
		wantSkipped bool
	}{
		{"append, present", opt("x-a", "2", appendOrAdd), []string{"1"}, []string{"1", "2"}, false},
		{"append, absent", opt("x-a", "2", appendOrAdd), nil, []string{"2"}, false},
		{"add if absent, present", opt("x-a", "2", addIfAbsent), []string{"1"}, []string{"1"}, false},
		{"add if absent, absent", opt("x-a", "2", addIfAbsent), nil, []string{"2"}, false},
		{"overwrite or add, present", opt("x-a", "2", overwriteOrAdd), []string{"1", "0"}, []string{"2"}, false},
		{"overwrite or add, absent", opt("x-a", "2", overwriteOrAdd), nil, []string{"2"}, false},
		{"overwrite if exists, present", opt("x-a", "2", overwriteOnly), []string{"1"}, []string{"2"}, false},
		{"overwrite if exists, absent", opt("x-a", "2", overwriteOnly), nil, nil, false},
		{"unknown action overwrites", opt("x-a", "2", 42), []string{"1"}, []string{"2"}, false},
		{"deprecated append true joins", deprecated("x-a", "2", true), []string{"1"}, []string{"1,2"}, false},
		{"deprecated append true, absent", deprecated("x-a", "2", true), nil, []string{"2"}, false},
		{"deprecated append false overwrites", deprecated("x-a", "2", false), []string{"1"}, []string{"2"}, false},
		{"raw_value", &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x-a", RawValue: []byte("raw")}, AppendAction: overwriteOrAdd},
			nil, []string{"raw"}, false},
		{"pseudo-header skipped", opt(":path", "/x", overwriteOrAdd), []string{"1"}, []string{"1"}, true},
		{"host skipped", opt("Host", "evil", overwriteOrAdd), []string{"1"}, []string{"1"}, true},
		{"CRLF value skipped", opt("x-a", "1\r\nx-b: 2", overwriteOrAdd), nil, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.have != nil {
				h["X-A"] = slices.Clone(tt.have)
			}
			skipped := mutateHeaders(h, []*corev3.HeaderValueOption{tt.opt})
			if got := h["X-A"]; !slices.Equal(got, tt.want) {
				t.Errorf("mutateHeaders(%s) X-A = %q, want %q", tt.name, got, tt.want)
			}
			if (len(skipped) > 0) != tt.wantSkipped {
				t.Errorf("mutateHeaders(%s) skipped %q, want skipped = %v", tt.name, skipped, tt.wantSkipped)
			}
			if len(h) > 1 {
				t.Errorf("mutateHeaders(%s) touched other headers: %v", tt.name, h)
			}
		})
	}
}

// TestApplyOK: mutations come before removals, Host stays, and the query
// is edited.
func TestApplyOK(t *testing.T) {
	u, _ := url.Parse("http://tool/mcp?keep=1&drop=2&set=old")
	out := &http.Request{URL: u, Host: "tool", Header: http.Header{
		"X-M1-Approval-Token": {"secret"},
		"X-M1-Decision-Id":    {"forged"},
		"Cookie":              {"c"},
	}}
	ok := &authv3.OkHttpResponse{
		Headers: []*corev3.HeaderValueOption{
			opt("x-m1-decision-id", "d1", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD),
			opt("x-tenant", "blue", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD),
		},
		HeadersToRemove:         []string{"x-m1-approval-token", "cookie", "x-tenant", "host", ":authority"},
		QueryParametersToSet:    []*corev3.QueryParameter{{Key: "set", Value: "new"}, {Key: "add", Value: "a b"}},
		QueryParametersToRemove: []string{"drop"},
	}
	skipped := applyOK(out, ok)
	want := http.Header{"X-M1-Decision-Id": {"d1"}}
	if len(out.Header) != len(want) || out.Header.Get("X-M1-Decision-Id") != "d1" {
		t.Errorf("headers = %v, want %v", out.Header, want)
	}
	if out.Host != "tool" {
		t.Errorf("Host = %q, want tool", out.Host)
	}
	if got := out.URL.RawQuery; got != "add=a+b&keep=1&set=new" {
		t.Errorf("query = %q, want add=a+b&keep=1&set=new", got)
	}
	if !slices.Equal(skipped, []string{"host", ":authority"}) {
		t.Errorf("skipped = %q, want host and :authority", skipped)
	}
}
