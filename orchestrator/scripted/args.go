package scripted

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Limits on a call's args, as m1-authz enforces them on the wire (DESIGN
// §3): a call beyond them could never be approved.
const (
	maxArgsDepth = 64
	maxArgsBytes = 1 << 20
	maxExactInt  = 1 << 53 // integers beyond ±2^53 do not survive a double
)

var errTooLarge = fmt.Errorf("larger than %d bytes of JSON", maxArgsBytes)

// argsJSON converts a call's args node to a JSON object, keeping the keys
// in the order written. An absent node is {}.
func argsJSON(n *yaml.Node) (json.RawMessage, error) {
	if n.Kind == 0 {
		return json.RawMessage(`{}`), nil
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind != yaml.MappingNode {
		return nil, errors.New("not a mapping")
	}
	var c converter
	if err := c.value(n, 1); err != nil {
		return nil, err
	}
	return json.RawMessage(c.buf.Bytes()), nil
}

type converter struct {
	buf bytes.Buffer
}

func (c *converter) value(n *yaml.Node, depth int) error {
	if depth > maxArgsDepth {
		return fmt.Errorf("line %d: nested deeper than %d", n.Line, maxArgsDepth)
	}
	if c.buf.Len() > maxArgsBytes {
		return errTooLarge
	}
	switch n.Kind {
	case yaml.AliasNode:
		// An alias costs one level, so that a cycle of aliases ends at
		// the depth limit.
		return c.value(n.Alias, depth+1)
	case yaml.DocumentNode:
		if len(n.Content) != 1 {
			return fmt.Errorf("line %d: empty document", n.Line)
		}
		return c.value(n.Content[0], depth)
	case yaml.MappingNode:
		return c.mapping(n, depth)
	case yaml.SequenceNode:
		c.buf.WriteByte('[')
		for i, e := range n.Content {
			if i > 0 {
				c.buf.WriteByte(',')
			}
			if err := c.value(e, depth+1); err != nil {
				return err
			}
		}
		c.buf.WriteByte(']')
		return nil
	case yaml.ScalarNode:
		if err := c.scalar(n); err != nil {
			return err
		}
		if c.buf.Len() > maxArgsBytes {
			return errTooLarge
		}
		return nil
	default:
		return fmt.Errorf("line %d: unexpected YAML node", n.Line)
	}
}

func (c *converter) mapping(n *yaml.Node, depth int) error {
	seen := make(map[string]int, len(n.Content)/2)
	c.buf.WriteByte('{')
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.AliasNode {
			k = k.Alias
		}
		switch {
		case k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge":
			return fmt.Errorf("line %d: merge keys (<<) are not supported", k.Line)
		case k.Kind != yaml.ScalarNode:
			return fmt.Errorf("line %d: a key is not a string", k.Line)
		case k.ShortTag() != "!!str":
			return fmt.Errorf("line %d: key %s is not a string (quote it)", k.Line, k.Value)
		}
		if line, dup := seen[k.Value]; dup {
			return fmt.Errorf("line %d: key %q already defined at line %d", k.Line, k.Value, line)
		}
		seen[k.Value] = k.Line
		if i > 0 {
			c.buf.WriteByte(',')
		}
		c.str(k.Value)
		c.buf.WriteByte(':')
		if err := c.value(v, depth+1); err != nil {
			return err
		}
	}
	c.buf.WriteByte('}')
	return nil
}

func (c *converter) scalar(n *yaml.Node) error {
	switch tag := n.ShortTag(); tag {
	case "!!str", "!!timestamp", "!!binary":
		// A timestamp stays the text written; binary stays base64.
		c.str(n.Value)
	case "!!null":
		c.buf.WriteString("null")
	case "!!bool":
		var b bool
		if err := n.Decode(&b); err != nil {
			return fmt.Errorf("line %d: %w", n.Line, err)
		}
		c.buf.WriteString(strconv.FormatBool(b))
	case "!!int":
		var v any
		if err := n.Decode(&v); err != nil {
			return fmt.Errorf("line %d: %w", n.Line, err)
		}
		var s string
		switch i := v.(type) {
		case int:
			if i > maxExactInt || i < -maxExactInt {
				return fmt.Errorf("line %d: integer %s does not fit a double exactly (quote it)", n.Line, n.Value)
			}
			s = strconv.Itoa(i)
		case int64:
			if i > maxExactInt || i < -maxExactInt {
				return fmt.Errorf("line %d: integer %s does not fit a double exactly (quote it)", n.Line, n.Value)
			}
			s = strconv.FormatInt(i, 10)
		default: // uint64 or a float: beyond int64
			return fmt.Errorf("line %d: integer %s does not fit a double exactly (quote it)", n.Line, n.Value)
		}
		c.buf.WriteString(s)
	case "!!float":
		var f float64
		if err := n.Decode(&f); err != nil {
			return fmt.Errorf("line %d: %w", n.Line, err)
		}
		if math.IsInf(f, 0) || math.IsNaN(f) {
			return fmt.Errorf("line %d: %s is not a JSON number", n.Line, n.Value)
		}
		if !strings.ContainsAny(n.Value, ".eE") {
			// An integer too large for int64, which a double would round.
			return fmt.Errorf("line %d: integer %s does not fit a double exactly (quote it)", n.Line, n.Value)
		}
		b, err := json.Marshal(f)
		if err != nil {
			return fmt.Errorf("line %d: %w", n.Line, err)
		}
		c.buf.Write(b)
	default:
		return fmt.Errorf("line %d: unsupported tag %s", n.Line, tag)
	}
	return nil
}

// str writes s as a JSON string, without escaping <, > and &.
func (c *converter) str(s string) {
	enc := json.NewEncoder(&c.buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)               // a string always encodes
	c.buf.Truncate(c.buf.Len() - 1) // Encode's newline
}
