package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"
)

// runHealth probes a health endpoint (m1-authz, m1-orchestrator,
// m1-demo-tool): the containers' health checks (distroless has no curl) and
// a quick look for operators.
func runHealth(ctx context.Context, c *cmdIO, args []string) int {
	fs := newFlagSet("health", "m1 health [--url URL] [--timeout 2s] [--ca-file FILE]",
		"GET a health endpoint (m1-authz, m1-orchestrator, m1-demo-tool); exit 0 on 200, 1 on any other status, 2 when it cannot be reached. An https:// URL is verified against --ca-file ($M1_CA_FILE).", nil)
	url := fs.String("url", "http://127.0.0.1:9192/health/live", "health endpoint to GET (http:// or https://)")
	timeout := fs.Duration("timeout", 2*time.Second, "request timeout")
	var tf tlsFlags
	tf.register(fs, false)
	if code, ok := parse(fs, c, args, 0, 0); !ok {
		return code
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *url, nil)
	if err != nil {
		fmt.Fprintln(c.stderr, "m1 health:", err)
		return exitError
	}
	client, err := tf.httpClient()
	if err != nil {
		fmt.Fprintln(c.stderr, "m1 health:", err)
		return exitError
	}
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintln(c.stderr, "m1 health:", err)
		return exitError
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	fmt.Fprintf(c.stdout, "%d %s", resp.StatusCode, body)
	if resp.StatusCode != http.StatusOK {
		return exitDeny
	}
	return exitOK
}
