package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Prometheus reads series from a Prometheus server's HTTP API (/api/v1/query
// and /api/v1/query_range): the fleet dashboard's source of mesh-wide series
// (M1_PROMETHEUS_URL). It is safe for concurrent use.
type Prometheus struct {
	base   *url.URL
	client *http.Client
}

// promTimeout bounds one query.
const promTimeout = 10 * time.Second

// maxPromBytes bounds one answer read from Prometheus.
const maxPromBytes = 16 << 20

// NewPrometheus returns a reader of the server at rawURL (http or https,
// e.g. http://prometheus:9090, a path prefix allowed); client nil means a
// client with a 10-second timeout.
func NewPrometheus(rawURL string, client *http.Client) (*Prometheus, error) {
	u, err := ParsePrometheusURL(rawURL)
	if err != nil {
		return nil, err
	}
	if client == nil {
		client = &http.Client{Timeout: promTimeout}
	}
	return &Prometheus{base: u, client: client}, nil
}

// ParsePrometheusURL checks M1_PROMETHEUS_URL: an http or https URL with a
// host, without query or fragment.
func ParsePrometheusURL(rawURL string) (*url.URL, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("prometheus URL %q: want http(s)://host[:port][/prefix]", redactURL(rawURL))
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	return u, nil
}

// redactURL hides a URL's password.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	return u.Redacted()
}

// String is the server's URL, its password hidden.
func (p *Prometheus) String() string { return p.base.Redacted() }

// PromSample is one series of an instant query.
type PromSample struct {
	Labels map[string]string
	Value  *float64 // nil for NaN and infinities
}

// PromRange is one series of a range query: values at its timestamps.
type PromRange struct {
	Labels map[string]string
	Times  []int64 // unix seconds
	Values []*float64
}

type promAnswer struct {
	Status    string `json:"status"`
	ErrorType string `json:"errorType"`
	Error     string `json:"error"`
	Data      struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  []any             `json:"value"`
			Values [][]any           `json:"values"`
		} `json:"result"`
	} `json:"data"`
}

// Query evaluates an instant query at t.
func (p *Prometheus) Query(ctx context.Context, q string, t time.Time) ([]PromSample, error) {
	v := url.Values{"query": {q}, "time": {strconv.FormatFloat(float64(t.UnixMilli())/1e3, 'f', 3, 64)}} // not the second's start: the last scrape may be later
	a, err := p.get(ctx, "/api/v1/query", v)
	if err != nil {
		return nil, err
	}
	if a.Data.ResultType != "vector" {
		return nil, fmt.Errorf("prometheus query %q: result type %q, want vector", q, a.Data.ResultType)
	}
	out := make([]PromSample, 0, len(a.Data.Result))
	for _, r := range a.Data.Result {
		s := PromSample{Labels: r.Metric}
		if len(r.Value) == 2 {
			s.Value = promValue(r.Value[1])
		}
		out = append(out, s)
	}
	return out, nil
}

// QueryRange evaluates a range query from start to end every step.
func (p *Prometheus) QueryRange(ctx context.Context, q string, start, end time.Time, step time.Duration) ([]PromRange, error) {
	v := url.Values{"query": {q}, "start": {strconv.FormatInt(start.Unix(), 10)}, "end": {strconv.FormatInt(end.Unix(), 10)},
		"step": {strconv.FormatFloat(step.Seconds(), 'f', -1, 64)}}
	a, err := p.get(ctx, "/api/v1/query_range", v)
	if err != nil {
		return nil, err
	}
	if a.Data.ResultType != "matrix" {
		return nil, fmt.Errorf("prometheus query %q: result type %q, want matrix", q, a.Data.ResultType)
	}
	out := make([]PromRange, 0, len(a.Data.Result))
	for _, r := range a.Data.Result {
		pr := PromRange{Labels: r.Metric}
		for _, pt := range r.Values {
			if len(pt) != 2 {
				continue
			}
			ts, ok := pt[0].(float64)
			if !ok {
				continue
			}
			pr.Times = append(pr.Times, int64(ts))
			pr.Values = append(pr.Values, promValue(pt[1]))
		}
		out = append(out, pr)
	}
	return out, nil
}

func (p *Prometheus) get(ctx context.Context, path string, v url.Values) (*promAnswer, error) {
	u := *p.base
	u.Path += path
	u.RawQuery = v.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("prometheus %s: %w", p, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxPromBytes))
	if err != nil {
		return nil, fmt.Errorf("prometheus %s: read answer: %w", p, err)
	}
	var a promAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		return nil, fmt.Errorf("prometheus %s: HTTP %d, not the query API's JSON", p, resp.StatusCode)
	}
	if a.Status != "success" {
		return nil, fmt.Errorf("prometheus %s: %s: %s", p, a.ErrorType, a.Error)
	}
	return &a, nil
}

// promValue parses a sample value ("1.5", "NaN", "+Inf"); nil for what JSON
// cannot carry.
func promValue(v any) *float64 {
	s, ok := v.(string)
	if !ok {
		return nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return nil
	}
	return &f
}
