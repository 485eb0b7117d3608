package loadtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// write writes report.json and report.html to dir, each atomically.
func (r *Report) write(dir string) error {
	j, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("report.json: %w", err)
	}
	if err := writeFile(filepath.Join(dir, "report.json"), append(j, '\n')); err != nil {
		return err
	}
	var h bytes.Buffer
	if err := r.HTML(&h); err != nil {
		return fmt.Errorf("report.html: %w", err)
	}
	return writeFile(filepath.Join(dir, "report.html"), h.Bytes())
}

func writeFile(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// HTML writes the report as one self-contained page: no script, no
// external resource; the charts are inline SVG.
func (r *Report) HTML(w io.Writer) error {
	return reportTmpl.Execute(w, r)
}

// FormatValue prints a figure's value in its unit.
func (f Figure) FormatValue() string { return formatIn(f.Value, f.Unit) }

// FormatTarget prints the target, or "—" for a figure without one.
func (f Figure) FormatTarget() string {
	if f.Cmp == "" {
		return "—"
	}
	cmp := "≥"
	if f.Cmp == "<=" {
		cmp = "≤"
	}
	return cmp + " " + formatIn(f.Target, f.Unit)
}

// Status is "met", "missed" or "" (no target).
func (f Figure) Status() string {
	switch {
	case f.Cmp == "":
		return ""
	case f.Met:
		return "met"
	default:
		return "missed"
	}
}

// FormatRounds prints the process's CPU in each target's rounds: cores,
// and CPU time per call of that target.
func (p Process) FormatRounds() string {
	var parts []string
	for _, r := range p.Rounds {
		parts = append(parts, fmt.Sprintf("%s rounds: %.2f cores, %s per call", r.Target, r.Cores, micros(r.CPUPerCall.Std())))
	}
	return strings.Join(parts, "; ")
}

// FormatChange prints the change against the baseline.
func (f Figure) FormatChange() string {
	if f.Baseline == nil {
		return ""
	}
	s := fmt.Sprintf("%+.1f%% vs %s", 100*f.Change, formatIn(*f.Baseline, f.Unit))
	if f.Regressed {
		s += " REGRESSION"
	}
	return s
}

func formatIn(v float64, unit string) string {
	switch unit {
	case unitOps, unitRunsPS, "":
		if v >= 100 || v == math.Trunc(v) {
			return fmt.Sprintf("%s %s", thousands(v), unit)
		}
		return fmt.Sprintf("%.2f %s", v, unit)
	case unitRatio:
		return fmt.Sprintf("%.2f%s", v, unit)
	case unitPercent:
		return fmt.Sprintf("%.1f%%", v)
	case unitMS:
		return fmt.Sprintf("%.2f ms", v)
	}
	return fmt.Sprintf("%g %s", v, unit)
}

// thousands formats v rounded, with thin spaces between thousands.
func thousands(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteRune(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

// svgEsc escapes text for SVG.
func svgEsc(s string) string { return template.HTMLEscapeString(s) }

// label is a chart's row label: escaped, and cut to fit left of the bars.
func label(s string) string {
	const most = 62
	if r := []rune(s); len(r) > most {
		s = "…" + string(r[len(r)-most+1:])
	}
	return svgEsc(s)
}

// targetChart draws each figure with a target as a bar of value/target:
// the target is the line at 1, green bars met it, red ones did not.
func targetChart(s Scenario) template.HTML {
	var fs []Figure
	for _, f := range s.Figures {
		if f.Cmp != "" && f.Target > 0 {
			fs = append(fs, f)
		}
	}
	if len(fs) == 0 {
		return ""
	}
	const (
		left, width, rowH = 400.0, 360.0, 26.0
		maxRatio          = 2.0
	)
	h := rowH*float64(len(fs)) + 30
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" role="img" aria-label="figures against targets of %s" width="%.0f" height="%.0f" xmlns="http://www.w3.org/2000/svg">`, svgEsc(s.Name), left+width+260, h)
	x1 := left + width/maxRatio
	for i, f := range fs {
		y := 10 + rowH*float64(i)
		ratio := f.Value / f.Target
		if f.Cmp == "<=" && f.Value > 0 { // lower is better: show target/value
			ratio = f.Target / f.Value
		}
		ratio = math.Min(math.Max(ratio, 0), maxRatio)
		color := "#2e7d32"
		if !f.Met {
			color = "#c62828"
		}
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="end" class="lbl">%s</text>`, left-8, y+15, label(f.Name))
		fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="%.1f" height="18" fill="%s"/>`, left, y+2, width/maxRatio*ratio, color)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" class="val">%s (target %s)</text>`, left+width/maxRatio*ratio+6, y+15, svgEsc(f.FormatValue()), svgEsc(f.FormatTarget()))
	}
	fmt.Fprintf(&b, `<line x1="%.1f" y1="4" x2="%.1f" y2="%.0f" stroke="#333" stroke-dasharray="4 3"/>`, x1, x1, h-14)
	fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle" class="axis">target</text>`, x1, h-2)
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // built from escaped text
}

// latencyChart draws p50, p95 and p99 of each figure that has a load.
func latencyChart(s Scenario) template.HTML {
	var fs []Figure
	maxMS := 0.0
	for _, f := range s.Figures {
		if f.Load != nil && f.Load.P99 > 0 {
			fs = append(fs, f)
			maxMS = math.Max(maxMS, float64(f.Load.P99)/1e6)
		}
	}
	if len(fs) == 0 || maxMS == 0 {
		return ""
	}
	const left, width, rowH = 400.0, 360.0, 44.0
	h := rowH*float64(len(fs)) + 30
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" role="img" aria-label="latency percentiles of %s" width="%.0f" height="%.0f" xmlns="http://www.w3.org/2000/svg">`, svgEsc(s.Name), left+width+120, h)
	colors := []string{"#90caf9", "#42a5f5", "#1565c0"}
	for i, f := range fs {
		y := 8 + rowH*float64(i)
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="end" class="lbl">%s</text>`, left-8, y+20, label(f.Name))
		for j, p := range []struct {
			name string
			d    Dur
		}{{"p50", f.Load.P50}, {"p95", f.Load.P95}, {"p99", f.Load.P99}} {
			ms := float64(p.d) / 1e6
			yy := y + float64(j)*12
			fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="%.1f" height="10" fill="%s"/>`, left, yy, width*ms/maxMS, colors[j])
			fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" class="small">%s %s</text>`, left+width*ms/maxMS+4, yy+9, p.name, svgEsc(p.d.String()))
		}
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" class="axis">0</text><text x="%.0f" y="%.0f" text-anchor="end" class="axis">%.1f ms</text>`, left, h-4, left+width, h-4, maxMS)
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // built from escaped text
}

// timelineChart draws the throughput over measured time of each figure
// whose load has a timeline, a row each, on scales shared by the rows (so
// that m1-authz and its no-op baseline compare), with each row's lowest
// and highest step.
func timelineChart(s Scenario) template.HTML {
	var fs []Figure
	maxOps, maxT := 0.0, 0.0
	for _, f := range s.Figures {
		if f.Load == nil || len(f.Load.Timeline) == 0 {
			continue
		}
		fs = append(fs, f)
		for _, p := range f.Load.Timeline {
			maxOps = math.Max(maxOps, p.OpsPerSec)
			maxT = math.Max(maxT, (p.Start + p.Step).Std().Seconds())
		}
	}
	if len(fs) == 0 || maxOps == 0 || maxT == 0 {
		return ""
	}
	const left, width, rowH, areaH = 400.0, 360.0, 44.0, 34.0
	h := rowH*float64(len(fs)) + 24
	var b strings.Builder
	fmt.Fprintf(&b, `<h3>Throughput over time</h3><svg class="chart" role="img" aria-label="throughput over time of %s" width="%.0f" height="%.0f" xmlns="http://www.w3.org/2000/svg">`, svgEsc(s.Name), left+width+200, h)
	for i, f := range fs {
		y := 6 + rowH*float64(i)
		base := y + areaH
		lo, hi := math.Inf(1), 0.0
		pts := fmt.Sprintf("%.1f,%.1f", left, base)
		for _, p := range f.Load.Timeline {
			lo, hi = math.Min(lo, p.OpsPerSec), math.Max(hi, p.OpsPerSec)
			yy := base - areaH*p.OpsPerSec/maxOps
			pts += fmt.Sprintf(" %.1f,%.1f %.1f,%.1f", left+width*p.Start.Std().Seconds()/maxT, yy, left+width*(p.Start+p.Step).Std().Seconds()/maxT, yy)
		}
		last := f.Load.Timeline[len(f.Load.Timeline)-1]
		pts += fmt.Sprintf(" %.1f,%.1f", left+width*(last.Start+last.Step).Std().Seconds()/maxT, base)
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="end" class="lbl">%s</text>`, left-8, y+areaH/2+4, label(f.Name))
		fmt.Fprintf(&b, `<polygon points="%s" fill="#90caf9" stroke="#1565c0" stroke-width="1"/>`, pts)
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" class="small">%s–%s/s per %s step</text>`, left+width+6, y+areaH/2+4, thousands(lo), thousands(hi), svgEsc(f.Load.Timeline[0].Step.String()))
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" class="axis">0 s</text><text x="%.0f" y="%.0f" text-anchor="end" class="axis">%.1f s of measured time; full height %s/s</text>`, left, h-4, left+width, h-4, maxT, thousands(maxOps))
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // built from escaped text
}

// histogramChart draws the latency histogram of each figure whose load has
// one, a row each, on one logarithmic axis shared by the rows; each row's
// bars are scaled to its own largest.
func histogramChart(s Scenario) template.HTML {
	var fs []Figure
	bounds := map[Dur]bool{}
	for _, f := range s.Figures {
		if f.Load == nil || len(f.Load.Histogram) == 0 {
			continue
		}
		fs = append(fs, f)
		for _, h := range f.Load.Histogram {
			bounds[h.UpTo] = true
		}
	}
	if len(fs) == 0 {
		return ""
	}
	axis := make([]Dur, 0, len(bounds))
	for d := range bounds {
		axis = append(axis, d)
	}
	slices.Sort(axis)
	const left, width, rowH, barH = 400.0, 360.0, 44.0, 34.0
	bw := width / float64(len(axis))
	h := rowH*float64(len(fs)) + 24
	var b strings.Builder
	fmt.Fprintf(&b, `<h3>Latency histogram</h3><svg class="chart" role="img" aria-label="latency histograms of %s" width="%.0f" height="%.0f" xmlns="http://www.w3.org/2000/svg">`, svgEsc(s.Name), left+width+40, h)
	for i, f := range fs {
		y := 6 + rowH*float64(i)
		var most uint64
		for _, bar := range f.Load.Histogram {
			most = max(most, bar.Count)
		}
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="end" class="lbl">%s</text>`, left-8, y+barH/2+4, label(f.Name))
		fmt.Fprintf(&b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="#ccc"/>`, left, y+barH, left+width, y+barH)
		for _, bar := range f.Load.Histogram {
			if bar.Count == 0 || most == 0 {
				continue
			}
			j, _ := slices.BinarySearch(axis, bar.UpTo)
			bh := math.Max(barH*float64(bar.Count)/float64(most), 1)
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#42a5f5"><title>≤ %s: %d calls</title></rect>`, left+bw*float64(j)+0.5, y+barH-bh, math.Max(bw-1, 1), bh, svgEsc(bar.UpTo.String()), bar.Count)
		}
	}
	// Ticks at the decades (1, 10, 100 … µs) that are on the axis.
	for j, d := range axis {
		us := float64(d.Std()) / float64(time.Microsecond)
		if e := math.Log10(us); math.Abs(e-math.Round(e)) > 1e-9 {
			continue
		}
		x := left + bw*float64(j) + bw
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle" class="axis">%s</text>`, x, h-4, svgEsc(d.String()))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // built from escaped text
}

// cpuChart draws the cores each process used.
func cpuChart(s Scenario) template.HTML {
	if len(s.Processes) == 0 {
		return ""
	}
	maxC := 0.0
	for _, p := range s.Processes {
		maxC = math.Max(maxC, p.Cores)
	}
	if maxC == 0 {
		return ""
	}
	const left, width, rowH = 400.0, 360.0, 22.0
	h := rowH*float64(len(s.Processes)) + 12
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" role="img" aria-label="CPU of each process of %s" width="%.0f" height="%.0f" xmlns="http://www.w3.org/2000/svg">`, svgEsc(s.Name), left+width+160, h)
	for i, p := range s.Processes {
		y := 4 + rowH*float64(i)
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="end" class="lbl">%s</text>`, left-8, y+13, label(p.Name))
		fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="%.1f" height="15" fill="#8d6e63"/>`, left, y+1, width*p.Cores/maxC)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" class="val">%.2f cores, %s</text>`, left+width*p.Cores/maxC+6, y+13, p.Cores, svgEsc(mib(p.RSSBytes)))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // built from escaped text
}

var reportTmpl = template.Must(template.New("report").Funcs(template.FuncMap{
	"targetChart":    targetChart,
	"latencyChart":   latencyChart,
	"cpuChart":       cpuChart,
	"timelineChart":  timelineChart,
	"histogramChart": histogramChart,
	"mib":            mib,
	"pct":            func(v float64) string { return fmt.Sprintf("%.1f%%", v) },
	"cores":          func(v float64) string { return fmt.Sprintf("%.2f", v) },
	"secs":           func(v float64) string { return fmt.Sprintf("%.1f s", v) },
	"join":           strings.Join,
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>m1 loadtest report</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.met{color:#2e7d32;font-weight:600}.missed{color:#c62828;font-weight:600}.regressed{color:#c62828;font-weight:700}
.chart{display:block;margin:.5em 0}.chart .lbl{font-size:12px}.chart .val{font-size:12px}.chart .small{font-size:10px}.chart .axis{font-size:11px;fill:#555}
.advice{background:#fff3e0;border-left:4px solid #ef6c00;padding:.5em 1em}.note{color:#555}
code{font-size:12px}
</style></head><body>
<h1>m1 loadtest</h1>
<p>Started {{.Started.Format "2006-01-02 15:04:05 UTC"}} on {{.Machine.CPUs}} CPUs{{with .Machine.Model}} ({{.}}){{end}}, {{.Machine.OS}}, {{.Machine.GoVersion}}; each measured phase {{.Duration.Std}}.
The load generator runs in the m1 loadtest process, and the no-op server of the approvals scenario in a process of its own, as m1-authz does (unless a note below says otherwise), all on the same cores as the processes measured: every figure is a floor.{{if .Baseline}}
Compared with <code>{{.Baseline}}</code>: <span class="{{if .Regressions}}regressed{{else}}met{{end}}">{{.Regressions}} regression(s)</span> (a figure more than 10% worse).{{end}}</p>

<h2 id="summary">Summary</h2>
<table><tr><th>scenario</th><th>figure</th><th>value</th><th>target</th><th></th><th>vs baseline</th></tr>
{{range $s := .Scenarios}}{{if $s.Error}}<tr><td>{{$s.Name}}</td><td colspan="5" class="missed">failed: {{$s.Error}}</td></tr>{{end}}{{if $s.Skipped}}<tr><td>{{$s.Name}}</td><td colspan="5" class="note">skipped: {{$s.Skipped}}</td></tr>{{end}}{{range $s.Figures}}
<tr><td>{{$s.Name}}</td><td>{{.Name}}</td><td class="num">{{.FormatValue}}</td><td class="num">{{.FormatTarget}}</td><td class="{{.Status}}">{{.Status}}</td><td{{if .Regressed}} class="regressed"{{end}}>{{.FormatChange}}</td></tr>{{end}}{{end}}
</table>

{{range $sc := .Scenarios}}
<h2 id="scenario-{{.Name}}">{{.Name}}</h2>
<p>{{.Description}}</p>
{{if .Error}}<p class="missed">The scenario failed: {{.Error}}</p>{{end}}
{{if .Skipped}}<p class="note">Skipped: {{.Skipped}}</p>{{end}}
{{with .Advice}}<div class="advice"><strong>Advice</strong><ul>{{range .}}<li>{{.}}</li>{{end}}</ul></div>{{end}}
{{targetChart .}}
{{if .Figures}}<table><tr><th>figure</th><th>value</th><th>target</th><th>ops/s</th><th>calls</th><th>errors</th><th>mean</th><th>p50</th><th>p95</th><th>p99</th><th>max</th></tr>
{{range .Figures}}<tr><td>{{.Name}}</td><td class="num">{{.FormatValue}}</td><td class="num">{{.FormatTarget}} <span class="{{.Status}}">{{.Status}}</span></td>{{with .Load}}<td class="num">{{printf "%.0f" .OpsPerSec}}</td><td class="num">{{.Calls}}</td><td class="num">{{.Errors}}{{with .ErrorTop}}<br><small>{{join . "; "}}</small>{{end}}</td><td class="num">{{.Mean}}</td><td class="num">{{.P50}}</td><td class="num">{{.P95}}</td><td class="num">{{.P99}}</td><td class="num">{{.Max}}</td>{{else}}<td colspan="8"></td>{{end}}</tr>
{{end}}</table>{{end}}
{{latencyChart .}}
{{timelineChart .}}
{{histogramChart .}}
{{with .Processes}}<h3>Processes</h3>{{cpuChart $sc}}<table><tr><th>process</th><th>pid</th><th>CPU</th><th>cores</th><th>RSS</th><th>peak RSS</th><th>CPU per call, in each target's rounds</th></tr>
{{range .}}<tr><td>{{.Name}}</td><td class="num">{{.PID}}</td><td class="num">{{secs .CPUSec}}</td><td class="num">{{cores .Cores}}</td><td class="num">{{mib .RSSBytes}}</td><td class="num">{{mib .PeakRSS}}</td><td>{{.FormatRounds}}</td></tr>
{{end}}</table>{{end}}
{{with .Profile}}<h3>CPU profile</h3><p>From {{.From}}{{with .Phase}}, during “{{.}}”{{end}}: {{printf "%.0f" .SampleMS}} ms of CPU sampled over {{printf "%.1f" .Seconds}} s ({{cores .Cores}} cores).</p>
<table><tr><th>top with callees (cumulative)</th><th>cum</th><th>flat</th></tr>
{{range .Cum}}<tr><td><code>{{.Name}}</code></td><td class="num">{{pct .CumPct}}</td><td class="num">{{pct .FlatPct}}</td></tr>
{{end}}</table>
<table><tr><th>top by own time (flat)</th><th>flat</th><th>cum</th></tr>
{{range .Flat}}<tr><td><code>{{.Name}}</code></td><td class="num">{{pct .FlatPct}}</td><td class="num">{{pct .CumPct}}</td></tr>
{{end}}</table>{{end}}
{{with .Notes}}<ul class="note">{{range .}}<li>{{.}}</li>{{end}}</ul>{{end}}
{{end}}
</body></html>
`))
