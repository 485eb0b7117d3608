package envoy

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
)

// TestFromHTTPServer runs FromHTTP inside a real server and checks that the
// CheckRequest built from its result is the one Envoy would send.
func TestFromHTTPServer(t *testing.T) {
	got := make(chan Request, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("read body: %v", err)
		}
		got <- FromHTTP(r, body)
	}))
	t.Cleanup(srv.Close)

	req, err := http.NewRequest("POST", srv.URL+"/mcp?session=abc", strings.NewReader(toolsCallBody))
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "tools.local"
	req.Header.Set("Content-Type", "application/json")
	req.Header.Add("Accept", "application/json")
	req.Header.Add("Accept", "text/event-stream")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	r := <-got

	if r.Method != "POST" || r.Path != "/mcp?session=abc" || r.Host != "tools.local" || r.Scheme != "http" || r.Protocol != "HTTP/1.1" {
		t.Errorf("FromHTTP = %s %s host %s scheme %s %s, want POST /mcp?session=abc host tools.local scheme http HTTP/1.1", r.Method, r.Path, r.Host, r.Scheme, r.Protocol)
	}
	if r.DestAddr != srv.Listener.Addr().String() {
		t.Errorf("FromHTTP DestAddr = %q, want the listener %q", r.DestAddr, srv.Listener.Addr())
	}
	if !strings.HasPrefix(r.SourceAddr, "127.0.0.1:") {
		t.Errorf("FromHTTP SourceAddr = %q, want the client's 127.0.0.1:port", r.SourceAddr)
	}
	if string(r.Body) != toolsCallBody {
		t.Errorf("FromHTTP Body = %q, want %q", r.Body, toolsCallBody)
	}
	if !slices.IsSortedFunc(r.Headers, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) }) {
		t.Errorf("FromHTTP Headers = %q, want sorted by name", r.Headers)
	}

	cr, err := BuildCheckRequest(r)
	if err != nil {
		t.Fatalf("BuildCheckRequest(FromHTTP): %v", err)
	}
	h := cr.GetAttributes().GetRequest().GetHttp()
	wantHeaders(t, h, map[string]string{
		":authority":                "tools.local",
		":path":                     "/mcp?session=abc",
		"accept":                    "application/json,text/event-stream",
		"content-type":              "application/json",
		"content-length":            "110",
		"x-envoy-auth-partial-body": "false",
	})
	if _, ok := h.GetHeaders()["host"]; ok {
		t.Errorf("headers have host, want only :authority")
	}
	if h.GetSize() != 110 || h.GetBody() != toolsCallBody {
		t.Errorf("size, body = %d, %q, want 110 and the body", h.GetSize(), h.GetBody())
	}
}

func TestFromHTTPTLSPeer(t *testing.T) {
	spiffe, _ := url.Parse("spiffe://cluster.local/ns/agents/sa/agent-42")
	tests := []struct {
		name          string
		cert          *x509.Certificate
		wantPrincipal string
	}{
		{"uri san", &x509.Certificate{URIs: []*url.URL{spiffe}, Subject: pkix.Name{CommonName: "ignored"}}, spiffe.String()},
		{"subject", &x509.Certificate{Subject: pkix.Name{CommonName: "agent-42", Organization: []string{"m1"}}}, "CN=agent-42,O=m1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "https://tools.local/mcp", nil)
			r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{tt.cert}}
			r.ProtoMajor, r.ProtoMinor = 2, 0
			got := FromHTTP(r, nil)
			if got.SourcePrincipal != tt.wantPrincipal || got.Scheme != "https" || got.Protocol != "HTTP/2" {
				t.Errorf("FromHTTP(%s) principal, scheme, protocol = %q, %q, %q, want %q, https, HTTP/2",
					tt.name, got.SourcePrincipal, got.Scheme, got.Protocol, tt.wantPrincipal)
			}
		})
	}
}
