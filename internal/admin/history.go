package admin

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// HistoryDocument is the /api/m1/dashboard/history document: the series of
// a tab's charts over a time range, on one time grid.
type HistoryDocument struct {
	Source      string         `json:"source"` // process (sampled in memory) or prometheus
	Detail      string         `json:"detail"` // where the series come from, for a person
	StepSeconds float64        `json:"step_seconds"`
	Times       []float64      `json:"t"` // unix seconds (to the millisecond), oldest first
	Panels      []HistoryPanel `json:"panels"`
}

// HistoryPanel is one chart.
type HistoryPanel struct {
	ID     string          `json:"id"`
	Tab    string          `json:"tab"`
	Title  string          `json:"title"`
	Unit   string          `json:"unit"`
	Error  string          `json:"error,omitempty"` // a query failed
	Series []HistorySeries `json:"series"`
}

// HistorySeries is one line of a chart: a value (or null) per time of the
// document.
type HistorySeries struct {
	Label  string     `json:"label"`
	PromQL string     `json:"promql,omitempty"` // the query, for Prometheus-backed series
	Values []*float64 `json:"values"`
}

// History is a source of the dashboard's series.
type History interface {
	History(ctx context.Context, tab string, span time.Duration) (HistoryDocument, error)
}

// History ranges: the default, and the bounds of ?range=.
const (
	DefaultHistoryRange = time.Hour
	MinHistoryRange     = time.Minute
	MaxHistoryRange     = 7 * 24 * time.Hour
)

// HistoryDoc serves h as the history document: ?tab= one of the five tabs
// (default all), ?range= a Go duration from 1m to 168h (default 1h).
func HistoryDoc(h History) Document {
	return func(r *http.Request) (any, error) {
		tab := r.URL.Query().Get("tab")
		if tab != "" && !slices.Contains([]string{TabOperations, TabCache, TabPolicy, TabCost, TabHealth}, tab) {
			return nil, &DocError{http.StatusBadRequest, "bad_request", "tab must be operations, cache, policy, cost or health"}
		}
		span := DefaultHistoryRange
		if q := r.URL.Query().Get("range"); q != "" {
			d, err := time.ParseDuration(q)
			if err != nil || d < MinHistoryRange || d > MaxHistoryRange {
				return nil, &DocError{http.StatusBadRequest, "bad_request", "range must be a duration from 1m to 168h, e.g. 15m or 6h"}
			}
			span = d
		}
		return h.History(r.Context(), tab, span)
	}
}

// sample is one gathering of this process's metrics, with the extras.
type sample struct {
	t     time.Time
	fams  map[string]*dto.MetricFamily
	extra map[string]float64
}

// RingOptions configure a Ring.
type RingOptions struct {
	Gatherer prometheus.Gatherer
	// Extra returns values the registry lacks, by the Extra* keys; nil:
	// none. The process's heap, goroutines and CPU time are always added.
	Extra func(ctx context.Context) map[string]float64
	Step  time.Duration    // between samples; default 5s
	Size  int              // samples kept; default 720 (an hour at 5s)
	Now   func() time.Time // default time.Now
}

// maxLabelsPerPanel bounds the series of one chart (reasons, tools): the
// memory of a Ring is bounded whatever the label values.
const maxLabelsPerPanel = 24

// Ring samples this process's metrics every Step and keeps the last Size
// samples of every chart in memory: the dashboard's history without
// Prometheus, which survives a reload of the page (not a restart of the
// process). It is safe for concurrent use.
type Ring struct {
	o      RingOptions
	mu     sync.Mutex
	prev   *sample
	times  []float64
	head   int // next position
	n      int // positions filled
	series map[string]*ringPanel
}

type ringPanel struct {
	labels []string
	values map[string][]float64 // NaN: no value
}

// NewRing returns an empty ring; Run fills it.
func NewRing(o RingOptions) *Ring {
	if o.Step <= 0 {
		o.Step = 5 * time.Second
	}
	if o.Size <= 0 {
		o.Size = 720
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	r := &Ring{o: o, times: make([]float64, o.Size), series: map[string]*ringPanel{}}
	for _, p := range panels {
		if p.Local != nil {
			r.series[p.ID] = &ringPanel{values: map[string][]float64{}}
		}
	}
	return r
}

// Run samples at once and then every Step until ctx ends.
func (r *Ring) Run(ctx context.Context) {
	t := time.NewTicker(r.o.Step)
	defer t.Stop()
	for {
		r.Sample(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sample takes one sample now.
func (r *Ring) Sample(ctx context.Context) {
	s := &sample{t: r.o.Now(), fams: map[string]*dto.MetricFamily{}, extra: processExtras()}
	if mfs, err := r.o.Gatherer.Gather(); err == nil {
		for _, mf := range mfs {
			s.fams[mf.GetName()] = mf
		}
	}
	if r.o.Extra != nil {
		ectx, cancel := context.WithTimeout(ctx, r.o.Step)
		for k, v := range r.o.Extra(ectx) {
			s.extra[k] = v
		}
		cancel()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	pos := r.head
	r.times[pos] = float64(s.t.UnixMilli()) / 1000
	for _, p := range panels {
		rp := r.series[p.ID]
		if rp == nil {
			continue
		}
		for _, vs := range rp.values {
			vs[pos] = math.NaN()
		}
		for label, v := range p.Local(r.prev, s) {
			vs, ok := rp.values[label]
			if !ok {
				if len(rp.labels) >= maxLabelsPerPanel {
					continue
				}
				vs = make([]float64, r.o.Size)
				for i := range vs {
					vs[i] = math.NaN()
				}
				rp.values[label] = vs
				rp.labels = append(rp.labels, label)
				slices.Sort(rp.labels)
			}
			vs[pos] = v
		}
	}
	r.head = (r.head + 1) % r.o.Size
	r.n = min(r.n+1, r.o.Size)
	r.prev = s
}

// Detail says where the ring's series come from, for a person.
func (r *Ring) Detail() string {
	return fmt.Sprintf("this process, sampled every %s and kept in memory for %s", r.o.Step, time.Duration(r.o.Size)*r.o.Step)
}

// History returns the samples of the last span, oldest first.
func (r *Ring) History(_ context.Context, tab string, span time.Duration) (HistoryDocument, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	doc := HistoryDocument{Source: "process", StepSeconds: r.o.Step.Seconds(), Times: []float64{}, Panels: []HistoryPanel{}, Detail: r.Detail()}
	from := float64(r.o.Now().Add(-span).UnixMilli()) / 1000
	var idx []int
	for i := range r.n {
		pos := (r.head - r.n + i + r.o.Size) % r.o.Size
		if r.times[pos] >= from {
			idx = append(idx, pos)
			doc.Times = append(doc.Times, r.times[pos])
		}
	}
	for _, p := range panels {
		rp := r.series[p.ID]
		if rp == nil || (tab != "" && p.Tab != tab) {
			continue
		}
		hp := HistoryPanel{ID: p.ID, Tab: p.Tab, Title: p.Title, Unit: p.Unit, Series: []HistorySeries{}}
		for _, label := range rp.labels {
			vs := rp.values[label]
			s := HistorySeries{Label: label, Values: make([]*float64, len(idx))}
			for i, pos := range idx {
				if v := vs[pos]; !math.IsNaN(v) && !math.IsInf(v, 0) {
					s.Values[i] = ptr(v)
				}
			}
			hp.Series = append(hp.Series, s)
		}
		doc.Panels = append(doc.Panels, hp)
	}
	return doc, nil
}

// processExtras are the Go runtime's heap in use and goroutines, and the
// process's CPU time.
func processExtras() map[string]float64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	out := map[string]float64{extraHeapBytes: float64(ms.HeapInuse), extraGoroutines: float64(runtime.NumGoroutine())}
	if cpu, ok := cpuSeconds(); ok {
		out[extraCPUSeconds] = cpu
	}
	return out
}

// PromHistory reads the charts' series from Prometheus: mesh-wide, every
// query of every panel over the range.
type PromHistory struct {
	Prom *Prometheus
	Now  func() time.Time
}

// historyPoints is about how many points a chart gets.
const historyPoints = 240

// History runs the panels' queries of tab over the last span.
func (h *PromHistory) History(ctx context.Context, tab string, span time.Duration) (HistoryDocument, error) {
	step := max(time.Second, (span / historyPoints).Truncate(time.Second))
	window := max(time.Minute, step)
	end := h.Now().Truncate(step)
	start := end.Add(-span)
	doc := HistoryDocument{Source: "prometheus", StepSeconds: step.Seconds(), Panels: []HistoryPanel{},
		Detail: "Prometheus at " + h.Prom.String() + ", every M1 process it scrapes"}
	n := int(span/step) + 1
	for i := range n {
		doc.Times = append(doc.Times, float64(start.Add(time.Duration(i)*step).Unix()))
	}
	type job struct {
		panel int
		q     panelQuery
	}
	var jobs []job
	for _, p := range panels {
		if len(p.Queries) == 0 || (tab != "" && p.Tab != tab) {
			continue
		}
		doc.Panels = append(doc.Panels, HistoryPanel{ID: p.ID, Tab: p.Tab, Title: p.Title, Unit: p.Unit, Series: []HistorySeries{}})
		for _, q := range p.Queries {
			jobs = append(jobs, job{len(doc.Panels) - 1, q})
		}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, j := range jobs {
		wg.Go(func() {
			expr := strings.ReplaceAll(j.q.Expr, "$w", promDuration(window))
			res, err := h.Prom.QueryRange(ctx, expr, start, end, step)
			mu.Lock()
			defer mu.Unlock()
			hp := &doc.Panels[j.panel]
			if err != nil {
				hp.Error = err.Error()
				return
			}
			for _, r := range res {
				s := HistorySeries{Label: strings.TrimSpace(j.q.Label + " " + r.Labels[j.q.By]), PromQL: expr, Values: make([]*float64, n)}
				if s.Label == "" {
					s.Label = "value"
				}
				for i, t := range r.Times {
					if k := int((t - start.Unix()) / int64(step.Seconds())); k >= 0 && k < n {
						s.Values[k] = r.Values[i]
					}
				}
				hp.Series = append(hp.Series, s)
			}
		})
	}
	wg.Wait()
	for i := range doc.Panels {
		slices.SortFunc(doc.Panels[i].Series, func(a, b HistorySeries) int { return strings.Compare(a.Label, b.Label) })
	}
	trimLeading(&doc)
	return doc, nil
}

// trimLeading drops the times before the first value of any series (a
// fleet younger than the range), keeping one step before it.
func trimLeading(doc *HistoryDocument) {
	first := len(doc.Times)
	for _, p := range doc.Panels {
		for _, s := range p.Series {
			for i, v := range s.Values {
				if v != nil {
					first = min(first, i)
					break
				}
			}
		}
	}
	first = max(0, min(first, len(doc.Times)-1)-1)
	if first == 0 {
		return
	}
	doc.Times = doc.Times[first:]
	for i := range doc.Panels {
		for j := range doc.Panels[i].Series {
			doc.Panels[i].Series[j].Values = doc.Panels[i].Series[j].Values[first:]
		}
	}
}

// promDuration formats d as a PromQL duration (whole seconds).
func promDuration(d time.Duration) string {
	return fmt.Sprintf("%ds", int64(d.Seconds()))
}
