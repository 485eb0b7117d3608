package orchestrator

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/m1-agent/m1/internal/store"
)

// maxAnswerBytes bounds what the dispatcher reads of a tool's answer.
const maxAnswerBytes = 4 << 20

// errAnswer is wrapped by post's error for an answer it could not read.
var errAnswer = errors.New("tool answer unreadable")

// noRedirects makes a client return a 3xx as is: following it would send
// the approval token and the arguments to wherever the tool points.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// mcpProtocolVersion is the MCP revision the dispatcher speaks.
const mcpProtocolVersion = "2025-06-18"

// dispatcher calls tools through their sidecar: MCP (initialize, then
// tools/call, then end the session) or REST.
type dispatcher struct {
	client          *http.Client
	approvalHeader  string
	mcpPath         string
	toolsPathPrefix string
	version         string
}

// Reason codes of a dispatch that did not succeed, in result audit events
// (a sidecar deny carries the sidecar's own code instead).
const (
	reasonUnreachable   = "tool_unreachable"     // no HTTP answer (connection refused, reset, …)
	reasonTimeout       = "tool_timeout"         // no answer within DispatchTimeout
	reasonHTTPStatus    = "tool_http_error"      // a non-2xx answer that is not a sidecar deny
	reasonToolError     = "tool_error"           // the tool answered isError: true
	reasonMCPError      = "mcp_error"            // a JSON-RPC error, or no answer to the request
	reasonInterrupted   = "dispatch_interrupted" // the orchestrator stopped during the dispatch
	reasonRedirect      = "tool_redirect"        // a 3xx: never followed, the token must not travel on
	reasonAnswerInvalid = "tool_answer_invalid"  // an answer too large or unreadable
)

// outcome is what a dispatch produced, for the tool call record.
type outcome struct {
	status     string // store.Call*
	code       string // "" on success, else a reason code above or the sidecar's
	httpStatus int
	decisionID string
	result     json.RawMessage
	err        string
	// retryAfter is the sidecar deny's retry-after, when it carried one
	// (hasRetryAfter): on state_reset, how long until an approval issued
	// then is accepted.
	retryAfter    time.Duration
	hasRetryAfter bool
}

// call dispatches one approved call. It never returns an error: a failure
// is an outcome.
func (d *dispatcher) call(ctx context.Context, spec ToolSpec, args json.RawMessage, token string) outcome {
	if spec.Protocol == ProtocolREST {
		return d.rest(ctx, spec, args, token)
	}
	return d.mcp(ctx, spec, args, token)
}

func (d *dispatcher) rest(ctx context.Context, spec ToolSpec, args json.RawMessage, token string) outcome {
	resp, body, err := d.post(ctx, spec.Endpoint+d.toolsPathPrefix+spec.Name, args, map[string]string{d.approvalHeader: token})
	if err != nil {
		return transportFailure("", err)
	}
	o := outcome{httpStatus: resp.StatusCode, decisionID: resp.Header.Get("x-m1-decision-id")}
	if o, failed := answerFailed("", resp, body); failed {
		return o
	}
	o.result = asJSON(body)
	o.status = store.CallSucceeded
	return o
}

func (d *dispatcher) mcp(ctx context.Context, spec ToolSpec, args json.RawMessage, token string) outcome {
	url := spec.Endpoint + d.mcpPath
	// Session set-up: initialize, then notifications/initialized.
	init := fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":%q,"capabilities":{},"clientInfo":{"name":"m1-orchestrator","version":%q}}}`, mcpProtocolVersion, d.version)
	resp, body, err := d.post(ctx, url, []byte(init), nil)
	if err != nil {
		return transportFailure("mcp initialize: ", err)
	}
	if o, failed := answerFailed("mcp initialize: ", resp, body); failed {
		return o
	}
	hdr := map[string]string{}
	if sid := resp.Header.Get("Mcp-Session-Id"); sid != "" {
		hdr["Mcp-Session-Id"] = sid
		defer d.endSession(url, sid)
	}
	if msg, err := rpcAnswer(resp, body, 1); err == nil {
		var r struct {
			ProtocolVersion string `json:"protocolVersion"`
		}
		if json.Unmarshal(msg.Result, &r) == nil && r.ProtocolVersion != "" {
			hdr["Mcp-Protocol-Version"] = r.ProtocolVersion
		}
	}
	resp, body, err = d.post(ctx, url, []byte(`{"jsonrpc":"2.0","method":"notifications/initialized"}`), hdr)
	if err != nil {
		return transportFailure("mcp notifications/initialized: ", err)
	}
	if o, failed := answerFailed("mcp notifications/initialized: ", resp, body); failed {
		return o
	}

	name, _ := json.Marshal(spec.Name)
	var call bytes.Buffer
	call.WriteString(`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":`)
	call.Write(name)
	call.WriteString(`,"arguments":`)
	call.Write(args) // exactly the approved bytes
	call.WriteString(`}}`)
	hdr[d.approvalHeader] = token
	resp, body, err = d.post(ctx, url, call.Bytes(), hdr)
	if err != nil {
		return transportFailure("mcp tools/call: ", err)
	}
	o := outcome{httpStatus: resp.StatusCode, decisionID: resp.Header.Get("x-m1-decision-id")}
	if o, failed := answerFailed("mcp tools/call: ", resp, body); failed {
		return o
	}
	msg, err := rpcAnswer(resp, body, 2)
	if err != nil {
		o.status, o.code, o.err = store.CallFailed, reasonMCPError, "mcp tools/call: "+err.Error()
		return o
	}
	if msg.Error != nil {
		o.status, o.code, o.err = store.CallFailed, reasonMCPError, fmt.Sprintf("mcp error %d: %s", msg.Error.Code, msg.Error.Message)
		return o
	}
	o.result = msg.Result
	var r struct {
		IsError bool `json:"isError"`
		Content []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		} `json:"content"`
	}
	if json.Unmarshal(msg.Result, &r) == nil && r.IsError {
		var texts []string
		for _, c := range r.Content {
			if c.Type == "text" {
				texts = append(texts, c.Text)
			}
		}
		o.status, o.code, o.err = store.CallFailed, reasonToolError, "tool error: "+strings.Join(texts, " ")
		return o
	}
	o.status = store.CallSucceeded
	return o
}

// endSession ends an MCP session (DELETE), best effort.
func (d *dispatcher) endSession(url, sid string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, url, nil)
	if err != nil {
		return
	}
	req.Header.Set("Mcp-Session-Id", sid)
	if resp, err := d.client.Do(req); err == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswerBytes))
		resp.Body.Close()
	}
}

func (d *dispatcher) post(ctx context.Context, url string, body []byte, hdr map[string]string) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		return nil, nil, fmt.Errorf("%w: %w", errAnswer, err)
	}
	if len(data) > maxAnswerBytes {
		return nil, nil, fmt.Errorf("%w: larger than %d bytes", errAnswer, maxAnswerBytes)
	}
	return resp, data, nil
}

// transportFailure is a request that got no HTTP answer.
func transportFailure(step string, err error) outcome {
	code := reasonUnreachable
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		code = reasonTimeout
	case errors.Is(err, errAnswer):
		code = reasonAnswerInvalid
	}
	return outcome{status: store.CallFailed, code: code, err: step + err.Error()}
}

// answerFailed turns an answer other than 2xx into an outcome: a sidecar
// deny, a redirect (never followed), or the tool's error status.
func answerFailed(step string, resp *http.Response, body []byte) (outcome, bool) {
	code := resp.StatusCode
	if code/100 == 2 {
		return outcome{}, false
	}
	o := outcome{httpStatus: code, status: store.CallFailed, decisionID: resp.Header.Get("x-m1-decision-id")}
	switch deny, isDeny := sidecarDeny(code, body); {
	case isDeny && deny.DecisionID == o.decisionID:
		o.status, o.code, o.decisionID, o.err = store.CallDenied, deny.Error, deny.DecisionID, step+deny.Error+": "+deny.Reason
		o.retryAfter, o.hasRetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"))
	case code/100 == 3:
		o.code, o.err = reasonRedirect, fmt.Sprintf("%sthe tool answered %d (redirects are not followed)", step, code)
	default:
		o.code, o.err, o.result = reasonHTTPStatus, fmt.Sprintf("%sthe tool answered %d", step, code), asJSON(body)
	}
	return o, true
}

// maxRetryAfter bounds a retry-after the dispatcher believes.
const maxRetryAfter = 24 * time.Hour

// parseRetryAfter reads a retry-after header in delta-seconds, the form
// the sidecar sends (DESIGN §4); an HTTP date or anything else is not
// understood (false).
func parseRetryAfter(h string) (time.Duration, bool) {
	h = strings.TrimSpace(h)
	if h == "" || len(h) > 6 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(h); i++ {
		if h[i] < '0' || h[i] > '9' {
			return 0, false
		}
		n = n*10 + int(h[i]-'0')
	}
	return min(time.Duration(n)*time.Second, maxRetryAfter), true
}

// denyBody is the sidecar's JSON deny body (DESIGN §6).
type denyBody struct {
	Error      string `json:"error"`
	Reason     string `json:"reason"`
	DecisionID string `json:"decision_id"`
}

// sidecarDeny recognises a deny by the sidecar: a 4xx/5xx with its JSON
// body, which names the decision. answerFailed also wants the decision id
// in the x-m1-decision-id header, which m1-authz sets on every deny: a
// tool's own error answer is not taken for a deny, after which a call
// (that did run) could be approved and sent again.
func sidecarDeny(status int, body []byte) (denyBody, bool) {
	if status < 400 {
		return denyBody{}, false
	}
	var d denyBody
	if json.Unmarshal(body, &d) != nil || d.Error == "" || d.DecisionID == "" {
		return denyBody{}, false
	}
	return d, true
}

// rpcMessage is a JSON-RPC response.
type rpcMessage struct {
	ID     json.RawMessage `json:"id"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// rpcAnswer finds the response to request id in a JSON or an SSE answer.
func rpcAnswer(resp *http.Response, body []byte, id int) (rpcMessage, error) {
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	var candidates [][]byte
	if mt == "text/event-stream" {
		sc := bufio.NewScanner(bytes.NewReader(body))
		sc.Buffer(make([]byte, 64<<10), maxAnswerBytes)
		var data []byte
		for sc.Scan() {
			line := sc.Bytes()
			if v, ok := bytes.CutPrefix(line, []byte("data:")); ok {
				data = append(data, bytes.TrimPrefix(v, []byte(" "))...)
				continue
			}
			if len(line) == 0 && len(data) > 0 {
				candidates, data = append(candidates, data), nil
			}
		}
		if len(data) > 0 {
			candidates = append(candidates, data)
		}
	} else {
		candidates = [][]byte{body}
	}
	want := fmt.Sprint(id)
	for _, c := range candidates {
		var m rpcMessage
		if json.Unmarshal(c, &m) == nil && string(m.ID) == want {
			return m, nil
		}
	}
	return rpcMessage{}, errors.New("no JSON-RPC answer to the request in the tool's reply")
}

// asJSON returns body as JSON: itself when it is JSON, else a JSON string
// of its text; nil when empty.
func asJSON(body []byte) json.RawMessage {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	if json.Valid(body) {
		return json.RawMessage(bytes.Clone(body))
	}
	s, _ := json.Marshal(string(body))
	return s
}
