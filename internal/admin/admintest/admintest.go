// Package admintest is the suite every M1 HTTP server passes (the admin
// port of m1-authz, the port of m1-orchestrator): over real TCP on
// 127.0.0.1, with slow and oversized clients, it checks that the server
// bounds every connection and answers 401 without reading a body (DESIGN
// §7), and that every response carries the security headers (DESIGN §8).
package admintest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/admin"
)

// Patience is how long the suite waits for something the server must do
// at once (answer, hang up) before it fails. A server that waited for the
// client instead would wait for ReadTimeout, which must be longer.
const Patience = 10 * time.Second

// Target is a running server under test.
type Target struct {
	Addr  string // host:port
	Token string // the admin bearer token
	// BodyPath is an authenticated POST endpoint that reads a JSON body
	// (e.g. /api/m1/revocations).
	BodyPath string
	// Limits are the server's. Start it with short ReadHeaderTimeout and
	// IdleTimeout (the suite waits for them) and a ReadTimeout longer than
	// Patience (the suite shows that a 401 does not wait for it).
	Limits admin.Limits
}

// RunBounds runs the connection bounds suite against tg.
func RunBounds(t *testing.T, tg Target) {
	if tg.Limits.ReadTimeout <= Patience {
		t.Fatalf("admintest: Limits.ReadTimeout %v must exceed Patience %v, or a server that waits for the body would pass", tg.Limits.ReadTimeout, Patience)
	}
	if tg.Limits.ReadHeaderTimeout >= Patience || tg.Limits.IdleTimeout >= Patience {
		t.Fatalf("admintest: shorten Limits.ReadHeaderTimeout and IdleTimeout well below Patience %v", Patience)
	}
	t.Run("401 without waiting for the body", func(t *testing.T) {
		for _, auth := range []string{"", "Authorization: Bearer wrong\r\n"} {
			c := dial(t, tg.Addr)
			// A body of 1000 bytes is announced and one is sent.
			send(t, c, "POST "+tg.BodyPath+" HTTP/1.1\r\nHost: m1\r\nContent-Type: application/json\r\n"+auth+
				"Content-Length: 1000\r\n\r\n{")
			resp := readResponse(t, c)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("POST %s (%q) with 1 of 1000 body bytes = %d, want 401", tg.BodyPath, auth, resp.StatusCode)
			}
			if !resp.Close {
				t.Errorf("401 with an unread body keeps the connection open (Connection: %q), want it closed", resp.Header.Get("Connection"))
			}
			waitClosed(t, c, "after the 401")
		}
	})
	t.Run("401 before the body limit", func(t *testing.T) {
		// A body over the limit is announced (and one byte of it sent): a
		// caller without the token is answered 401 all the same, one with
		// it 413. A route that reads no body answers as usual, but does
		// not wait for the body after either: its connection ends.
		over := tg.Limits.MaxBodyBytes + 1
		for _, tc := range []struct {
			method, auth, path string
			want               int
		}{
			{"POST", "", tg.BodyPath, 401},
			{"POST", "Authorization: Bearer wrong\r\n", tg.BodyPath, 401},
			{"POST", "Authorization: Bearer " + tg.Token + "\r\n", tg.BodyPath, 413},
			{"GET", "", "/health", 0},
		} {
			c := dial(t, tg.Addr)
			send(t, c, tc.method+" "+tc.path+" HTTP/1.1\r\nHost: m1\r\nContent-Type: application/json\r\n"+tc.auth+
				"Content-Length: "+strconv.FormatInt(over, 10)+"\r\n\r\n{")
			resp := readResponse(t, c)
			if tc.want != 0 && resp.StatusCode != tc.want {
				t.Errorf("%s %s (%q) announcing %d bytes = %d, want %d", tc.method, tc.path, tc.auth, over, resp.StatusCode, tc.want)
			}
			if !resp.Close {
				t.Errorf("%s %s (%q) announcing %d bytes = %d keeps the connection open, want it closed", tc.method, tc.path, tc.auth, over, resp.StatusCode)
			}
			waitClosed(t, c, "after the answer")
		}
	})
	t.Run("trickled headers are cut off", func(t *testing.T) {
		c := dial(t, tg.Addr)
		closed := watchClosed(c)
		send(t, c, "GET /health HTTP/1.1\r\nHost: m1\r\n")
		tick := time.NewTicker(max(tg.Limits.ReadHeaderTimeout/10, time.Millisecond))
		defer tick.Stop()
		deadline := time.After(tg.Limits.ReadHeaderTimeout + Patience)
		for i := 0; ; i++ {
			select {
			case got := <-closed:
				if strings.HasPrefix(got, "HTTP/") {
					t.Fatalf("trickled request was answered %q, want the connection cut", firstLine(got))
				}
				return
			case <-deadline:
				t.Fatalf("a client trickling headers (%d so far) kept its connection past ReadHeaderTimeout %v + %v", i, tg.Limits.ReadHeaderTimeout, Patience)
			case <-tick.C:
				_, _ = fmt.Fprintf(c, "X-Slow-%d: x\r\n", i) // fails once the server has hung up
			}
		}
	})
	t.Run("idle keep-alive connection is closed", func(t *testing.T) {
		c := dial(t, tg.Addr)
		send(t, c, "GET /health/live HTTP/1.1\r\nHost: m1\r\n\r\n")
		resp := readResponse(t, c)
		if resp.StatusCode != http.StatusOK || resp.Close {
			t.Fatalf("GET /health/live = %d (close %v), want 200 on a kept-alive connection", resp.StatusCode, resp.Close)
		}
		_ = c.SetReadDeadline(time.Now().Add(tg.Limits.IdleTimeout + Patience))
		if n, err := c.Read(make([]byte, 1)); !closedErr(err) {
			t.Fatalf("idle connection: Read = %d, %v; want it closed within IdleTimeout %v", n, err, tg.Limits.IdleTimeout)
		}
	})
	t.Run("oversized body is 413", func(t *testing.T) {
		// Announced: answered before any of it is sent.
		c := dial(t, tg.Addr)
		send(t, c, "POST "+tg.BodyPath+" HTTP/1.1\r\nHost: m1\r\nAuthorization: Bearer "+tg.Token+
			"\r\nContent-Type: application/json\r\nContent-Length: "+strconv.FormatInt(tg.Limits.MaxBodyBytes+1, 10)+"\r\n\r\n")
		resp := readResponse(t, c)
		if resp.StatusCode != http.StatusRequestEntityTooLarge || !resp.Close {
			t.Fatalf("POST %s announcing %d bytes = %d (close %v), want 413 and the connection closed", tg.BodyPath, tg.Limits.MaxBodyBytes+1, resp.StatusCode, resp.Close)
		}
		// Chunked (no length announced): cut when it passes the limit.
		c = dial(t, tg.Addr)
		send(t, c, "POST "+tg.BodyPath+" HTTP/1.1\r\nHost: m1\r\nAuthorization: Bearer "+tg.Token+
			"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
		go func() { // the server may hang up before all of it is sent
			w := bufio.NewWriter(c)
			body := `{"jti":"` + strings.Repeat("a", int(tg.Limits.MaxBodyBytes)+1024)
			fmt.Fprintf(w, "%x\r\n%s\r\n", len(body), body)
			_ = w.Flush()
		}()
		resp = readResponse(t, c)
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("POST %s with a chunked body past %d bytes = %d, want 413", tg.BodyPath, tg.Limits.MaxBodyBytes, resp.StatusCode)
		}
	})
	t.Run("oversized header is 431", func(t *testing.T) {
		c := dial(t, tg.Addr)
		go func() {
			_, _ = fmt.Fprintf(c, "GET /health HTTP/1.1\r\nHost: m1\r\nX-Big: %s\r\n\r\n", strings.Repeat("b", tg.Limits.MaxHeaderBytes+8<<10))
		}()
		resp := readResponse(t, c)
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("GET /health with %d header bytes = %d, want 431", tg.Limits.MaxHeaderBytes+8<<10, resp.StatusCode)
		}
	})
}

// Headers are the security headers of every response (DESIGN §8).
var Headers = map[string]string{
	"X-Content-Type-Options": "nosniff",
	"X-Frame-Options":        "DENY",
	"Referrer-Policy":        "no-referrer",
}

// HSTS is the Strict-Transport-Security of every HTTPS response.
const HSTS = "max-age=63072000; includeSubDomains"

// CheckHeaders fails t when resp lacks a security header, or has HSTS
// although it came over plain HTTP, or lacks it over HTTPS.
func CheckHeaders(t *testing.T, what string, resp *http.Response) {
	t.Helper()
	for k, v := range Headers {
		if got := resp.Header.Get(k); got != v {
			t.Errorf("%s (%d): %s = %q, want %q", what, resp.StatusCode, k, got, v)
		}
	}
	want := ""
	if resp.TLS != nil {
		want = HSTS
	}
	if got := resp.Header.Get("Strict-Transport-Security"); got != want {
		t.Errorf("%s (%d): Strict-Transport-Security = %q, want %q", what, resp.StatusCode, got, want)
	}
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, Patience)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func send(t *testing.T, c net.Conn, s string) {
	t.Helper()
	_ = c.SetWriteDeadline(time.Now().Add(Patience))
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatalf("send: %v", err)
	}
}

// readResponse reads one response, waiting at most Patience.
func readResponse(t *testing.T, c net.Conn) *http.Response {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(Patience))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no response within %v: %v", Patience, err)
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil && resp.ContentLength != 0 {
		t.Fatalf("read response body: %v", err)
	}
	resp.Body.Close()
	if br.Buffered() > 0 {
		t.Fatalf("%d bytes after the response", br.Buffered())
	}
	return resp
}

// waitClosed fails t unless the server hangs up on c within Patience.
func waitClosed(t *testing.T, c net.Conn, when string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(Patience))
	if n, err := c.Read(make([]byte, 1)); !closedErr(err) {
		t.Fatalf("%s: Read = %d, %v; want the connection closed", when, n, err)
	}
}

// watchClosed reads c until the server hangs up and sends what it read.
func watchClosed(c net.Conn) <-chan string {
	out := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(c) // ends at EOF, a reset, or the test's Close
		out <- string(b)
	}()
	return out
}

// closedErr reports whether err means the peer closed the connection (as
// opposed to the read deadline passing).
func closedErr(err error) bool {
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		return false
	}
	return true // io.EOF, or a reset
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\r\n")
	return line
}
