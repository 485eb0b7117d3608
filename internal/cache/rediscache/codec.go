package rediscache

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/m1-agent/m1/internal/policy"
)

// Value encoding. A stored value is one version byte and then the
// encoding of that version; a reader that meets a version it does not know
// treats the entry as a miss, so sidecars of different versions can share
// a Redis during a rolling upgrade.
//
// Version 1 is compact JSON of the wire struct below: short field names,
// zero fields omitted (omitzero keeps an empty but non-nil slice or map
// apart from a nil one), headers as [key, value] pairs, dynamic metadata
// as the JSON it came from (numbers as json.Number, decoded with
// UseNumber). Decoding gives back a Decision that is reflect.DeepEqual to
// the one encoded.
const version1 byte = 1

type wire struct {
	Allowed              bool           `json:"a,omitzero"`
	Reason               string         `json:"r,omitzero"`
	HTTPStatus           int            `json:"s,omitzero"`
	Headers              [][2]string    `json:"h,omitzero"`
	ResponseHeadersToAdd [][2]string    `json:"rh,omitzero"`
	HeadersToRemove      []string       `json:"xh,omitzero"`
	Body                 string         `json:"b,omitzero"`
	HasBody              bool           `json:"hb,omitzero"`
	DynamicMetadata      map[string]any `json:"m,omitzero"`
}

// errInexact: the decision holds a value that JSON would not give back
// unchanged (invalid UTF-8, a Go type that is not JSON-shaped). Such a
// decision stays out of the shared tier rather than come back different.
var errInexact = errors.New("decision does not round-trip through JSON")

// encode returns the stored form of d.
func encode(d *policy.Decision) ([]byte, error) {
	if err := exact(d); err != nil {
		return nil, err
	}
	w := wire{
		Allowed:              d.Allowed,
		Reason:               d.Reason,
		HTTPStatus:           d.HTTPStatus,
		Headers:              pairs(d.Headers),
		ResponseHeadersToAdd: pairs(d.ResponseHeadersToAdd),
		HeadersToRemove:      d.RequestHeadersToRemove,
		Body:                 d.Body,
		HasBody:              d.HasBody,
		DynamicMetadata:      d.DynamicMetadata,
	}
	var buf bytes.Buffer
	buf.Grow(64)
	buf.WriteByte(version1)
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&w); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte{'\n'}), nil
}

// errVersion: the value was written in an encoding this build does not
// know.
var errVersion = errors.New("unknown value encoding")

// wireIn is wire as read: the metadata is decoded apart, with UseNumber,
// and only when present (most decisions carry none).
type wireIn struct {
	Allowed              bool            `json:"a"`
	Reason               string          `json:"r"`
	HTTPStatus           int             `json:"s"`
	Headers              [][2]string     `json:"h"`
	ResponseHeadersToAdd [][2]string     `json:"rh"`
	HeadersToRemove      []string        `json:"xh"`
	Body                 string          `json:"b"`
	HasBody              bool            `json:"hb"`
	DynamicMetadata      json.RawMessage `json:"m"`
}

// decode reads a stored value.
func decode(b []byte) (*policy.Decision, error) {
	if len(b) == 0 || b[0] != version1 {
		return nil, errVersion
	}
	var w wireIn
	if err := json.Unmarshal(b[1:], &w); err != nil {
		return nil, fmt.Errorf("decode cached decision: %w", err)
	}
	var meta map[string]any
	if len(w.DynamicMetadata) > 0 {
		dec := json.NewDecoder(bytes.NewReader(w.DynamicMetadata))
		dec.UseNumber()
		if err := dec.Decode(&meta); err != nil {
			return nil, fmt.Errorf("decode cached decision metadata: %w", err)
		}
	}
	return &policy.Decision{
		Allowed:                w.Allowed,
		Reason:                 w.Reason,
		HTTPStatus:             w.HTTPStatus,
		Headers:                headers(w.Headers),
		ResponseHeadersToAdd:   headers(w.ResponseHeadersToAdd),
		RequestHeadersToRemove: w.HeadersToRemove,
		Body:                   w.Body,
		HasBody:                w.HasBody,
		DynamicMetadata:        meta,
	}, nil
}

// pairs and headers convert between policy headers and [key, value]
// pairs, keeping nil apart from empty.
func pairs(hs []policy.Header) [][2]string {
	if hs == nil {
		return nil
	}
	out := make([][2]string, len(hs))
	for i, h := range hs {
		out[i] = [2]string{h.Key, h.Value}
	}
	return out
}

func headers(ps [][2]string) []policy.Header {
	if ps == nil {
		return nil
	}
	out := make([]policy.Header, len(ps))
	for i, p := range ps {
		out[i] = policy.Header{Key: p[0], Value: p[1]}
	}
	return out
}

// exact checks that JSON gives d back unchanged: every string valid UTF-8
// and the metadata made of JSON-shaped values only (what ast.JSON
// produces: nil, bool, string, json.Number, []any, map[string]any, none of
// them a typed nil).
func exact(d *policy.Decision) error {
	if !utf8.ValidString(d.Reason) || !utf8.ValidString(d.Body) {
		return errInexact
	}
	for _, hs := range [][]policy.Header{d.Headers, d.ResponseHeadersToAdd} {
		for _, h := range hs {
			if !utf8.ValidString(h.Key) || !utf8.ValidString(h.Value) {
				return errInexact
			}
		}
	}
	for _, s := range d.RequestHeadersToRemove {
		if !utf8.ValidString(s) {
			return errInexact
		}
	}
	for k, v := range d.DynamicMetadata {
		if !utf8.ValidString(k) || !exactValue(v) {
			return errInexact
		}
	}
	return nil
}

func exactValue(v any) bool {
	switch v := v.(type) {
	case nil, bool:
		return true
	case string:
		return utf8.ValidString(v)
	case json.Number:
		// "" would encode as 0; the encoder rejects other non-numbers.
		return v != "" && (v[0] == '-' || v[0] >= '0' && v[0] <= '9') && json.Valid([]byte(v))
	case []any:
		if v == nil {
			return false
		}
		for _, e := range v {
			if !exactValue(e) {
				return false
			}
		}
		return true
	case map[string]any:
		if v == nil {
			return false
		}
		for k, e := range v {
			if !utf8.ValidString(k) || !exactValue(e) {
				return false
			}
		}
		return true
	}
	return false
}
