package orchestrator

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/m1-agent/m1/internal/store"
)

// Price is what a model charges, in US dollars per million tokens of each
// kind.
type Price struct {
	Input      float64 `json:"input"`
	Output     float64 `json:"output"`
	CacheRead  float64 `json:"cache_read"`
	CacheWrite float64 `json:"cache_write"` // 5-minute cache writes
}

// Prices maps a model id, or a model id prefix ending in "*", to its price.
type Prices map[string]Price

// DefaultPrices are Anthropic's list prices for current Claude models (USD
// per million tokens; cache writes at the 5-minute rate, 1.25× input; cache
// reads at 0.1× input). Override them with a prices file (M1_PRICES_FILE)
// when they change.
func DefaultPrices() Prices {
	return Prices{
		"claude-opus-4-5*":   {Input: 5, Output: 25, CacheRead: 0.50, CacheWrite: 6.25},
		"claude-opus-4-1*":   {Input: 15, Output: 75, CacheRead: 1.50, CacheWrite: 18.75},
		"claude-opus-4*":     {Input: 15, Output: 75, CacheRead: 1.50, CacheWrite: 18.75},
		"claude-sonnet-4*":   {Input: 3, Output: 15, CacheRead: 0.30, CacheWrite: 3.75},
		"claude-3-7-sonnet*": {Input: 3, Output: 15, CacheRead: 0.30, CacheWrite: 3.75},
		"claude-haiku-4-5*":  {Input: 1, Output: 5, CacheRead: 0.10, CacheWrite: 1.25},
		"claude-3-5-haiku*":  {Input: 0.80, Output: 4, CacheRead: 0.08, CacheWrite: 1},
		"scripted":           {},
	}
}

// LoadPrices reads a JSON prices file ({"<model or prefix*>": {"input":
// …, "output": …, "cache_read": …, "cache_write": …}}) over the defaults:
// its entries replace or add to DefaultPrices.
func LoadPrices(path string) (Prices, error) {
	p := DefaultPrices()
	if path == "" {
		return p, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read prices: %w", err)
	}
	var file map[string]Price
	if err := json.Unmarshal(data, &file); err != nil {
		return nil, fmt.Errorf("prices %s: %w", path, err)
	}
	for model, price := range file {
		if price.Input < 0 || price.Output < 0 || price.CacheRead < 0 || price.CacheWrite < 0 {
			return nil, fmt.Errorf("prices %s: model %q: negative price", path, model)
		}
		p[model] = price
	}
	return p, nil
}

// Lookup returns the price of model: an exact entry, else the longest
// matching prefix* entry.
func (p Prices) Lookup(model string) (Price, bool) {
	if pr, ok := p[model]; ok {
		return pr, true
	}
	best, found := "", false
	for k := range p {
		if prefix, ok := strings.CutSuffix(k, "*"); ok && strings.HasPrefix(model, prefix) && len(prefix) >= len(best) {
			best, found = prefix, true
		}
	}
	if !found {
		return Price{}, false
	}
	return p[best+"*"], true
}

// Cost prices one model call. Unknown models cost 0 and report false.
func (p Prices) Cost(u LLMUsage) (store.Usage, bool) {
	pr, ok := p.Lookup(u.Model)
	out := store.Usage{
		InputTokens: u.InputTokens, OutputTokens: u.OutputTokens,
		CacheReadTokens: u.CacheReadTokens, CacheWriteTokens: u.CacheWriteTokens,
	}
	out.CostUSD = (float64(u.InputTokens)*pr.Input + float64(u.OutputTokens)*pr.Output +
		float64(u.CacheReadTokens)*pr.CacheRead + float64(u.CacheWriteTokens)*pr.CacheWrite) / 1e6
	return out, ok
}
