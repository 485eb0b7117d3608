package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// defaultAdminURL is m1-authz's admin HTTP server on its default address.
const defaultAdminURL = "http://127.0.0.1:9192"

const revokeDescription = `Revoke approval tokens through m1-authz's revocation API,
authenticated with the admin bearer token:

  --jti JTI [--until T]   POST /api/m1/revocations {"jti": …}: that one token;
                          by default until it could no longer verify anyway
  --sub SUB [--until T]   POST /api/m1/revocations {"sub": …}: every token
                          for that agent; by default until lifted
  --sub SUB --lift        DELETE /api/m1/revocations/sub/SUB
  --list                  GET /api/m1/revocations

T is an RFC 3339 time (2026-03-01T12:00:00Z). A revocation is effective at
once in the sidecar that takes it, and, with Redis, in every sidecar. The
server's JSON answer is printed on stdout. An https:// --admin-url (a
sidecar with M1_TLS_CERT_FILE) is verified against --ca-file ($M1_CA_FILE).

Exit status: 0 done (201, 204, 200), 1 refused (4xx but 401, 5xx: the JSON
error is printed), 2 error (bad flags, the admin token refused (401),
connection failure, timeout), as for m1 approve and m1 reject.`

func runRevoke(ctx context.Context, c *cmdIO, args []string) int {
	fs := newFlagSet("revoke", "m1 revoke (--jti JTI | --sub SUB) [--until RFC3339] | --sub SUB --lift | --list [--admin-url URL] [--admin-token TOKEN]",
		revokeDescription, map[string]string{
			"admin-url":   "M1_ADMIN_URL",
			"admin-token": "M1_ADMIN_TOKEN",
		})
	jti := fs.String("jti", "", "revoke the token with this `jti`")
	sub := fs.String("sub", "", "revoke every token of this `agent` (the token sub)")
	until := fs.String("until", "", "revoke until this RFC 3339 `time`")
	lift := fs.Bool("lift", false, "with --sub: lift the agent's revocation")
	list := fs.Bool("list", false, "list the revocations in force")
	adminURL := fs.String("admin-url", defaultAdminURL, "base `URL` of m1-authz's admin server")
	adminToken := fs.String("admin-token", "", "admin bearer `token` (prefer the environment variable: flags show in ps)")
	timeout := fs.Duration("timeout", 5*time.Second, "request timeout")
	var tf tlsFlags
	tf.register(fs, false)
	if code, ok := parse(fs, c, args, 0, 0); !ok {
		return code
	}
	usageErr := func(msg string) int {
		code, _ := usageError(fs, c, errors.New(msg))
		return code
	}
	switch {
	case *list && (*jti != "" || *sub != "" || *until != "" || *lift):
		return usageErr("--list takes no other revocation flag")
	case *lift && (*sub == "" || *jti != ""):
		return usageErr("--lift needs --sub (a jti revocation ends by itself)")
	case *lift && *until != "":
		return usageErr("--lift and --until cannot be combined")
	case !*list && !*lift && (*jti == "") == (*sub == ""):
		return usageErr("exactly one of --jti and --sub is required (or --list)")
	case *adminToken == "":
		return usageErr("the admin token is required: set $M1_ADMIN_TOKEN (or --admin-token)")
	case *timeout <= 0:
		return usageErr("--timeout must be positive")
	}
	if *until != "" {
		if _, err := time.Parse(time.RFC3339, *until); err != nil {
			return usageErr(fmt.Sprintf("--until %q: want an RFC 3339 time such as 2026-03-01T12:00:00Z", *until))
		}
	}
	base, err := url.Parse(*adminURL)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return usageErr(fmt.Sprintf("--admin-url %q: want http://host:port or https://host:port", *adminURL))
	}
	endpoint := strings.TrimRight(*adminURL, "/") + "/api/m1/revocations"
	client, err := tf.httpClient()
	if err != nil {
		return usageErr(err.Error())
	}

	var method string
	var body io.Reader
	switch {
	case *list:
		method = http.MethodGet
	case *lift:
		method, endpoint = http.MethodDelete, endpoint+"/sub/"+url.PathEscape(*sub)
	default:
		req := map[string]string{}
		if *jti != "" {
			req["jti"] = *jti
		} else {
			req["sub"] = *sub
		}
		if *until != "" {
			req["until"] = *until
		}
		b, err := json.Marshal(req)
		if err != nil {
			return fail(c, "revoke", err)
		}
		method, body = http.MethodPost, bytes.NewReader(b)
	}

	status, answer, err := adminRequest(ctx, client, method, endpoint, *adminToken, body, *timeout)
	if err != nil {
		return fail(c, "revoke", err)
	}
	switch {
	case status == http.StatusNoContent:
		fmt.Fprintf(c.stdout, "lifted the revocation of sub %q\n", *sub)
	case len(answer) > 0:
		var out bytes.Buffer
		if json.Indent(&out, answer, "", "  ") != nil {
			out.Reset()
			out.Write(answer)
		}
		fmt.Fprintf(c.stdout, "%s\n", bytes.TrimRight(out.Bytes(), "\n"))
	}
	if status < 200 || status > 299 {
		fmt.Fprintf(c.stderr, "m1 revoke: %s %s: %d %s\n", method, endpoint, status, http.StatusText(status))
		if status == http.StatusUnauthorized { // a setting to fix, not a refusal of this revocation
			return exitError
		}
		return exitDeny
	}
	return exitOK
}

// adminRequest sends one request to the admin API and returns the status and
// up to 1 MiB of the answer, through client (tlsFlags.httpClient: TLS
// verified against --ca-file, redirects not followed). err is only for a
// request that got no answer.
func adminRequest(ctx context.Context, client *http.Client, method, endpoint, token string, body io.Reader, timeout time.Duration) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, endpoint, body)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w (is m1-authz's admin server there? set --admin-url or $M1_ADMIN_URL)", method, endpoint, err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: read answer: %w", method, endpoint, err)
	}
	return resp.StatusCode, answer, nil
}
