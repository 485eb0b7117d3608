package checkpoint

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Signed is one checkpoint read back, with the file it came from.
type Signed struct {
	File string
	Checkpoint
}

// ReadDir reads and verifies every *.jws file of dir, in name (time)
// order. A file that does not verify is returned in bad (file → why), not
// skipped silently: in write-once storage, a checkpoint that fails is
// itself a finding. Other files are ignored.
func ReadDir(dir string, keys Keys) (good []Signed, bad map[string]error, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("read checkpoints: %w", err)
	}
	bad = map[string]error{}
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), Ext) || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(path)
		if err != nil {
			bad[e.Name()] = err
			continue
		}
		if len(data) > 64<<20 {
			bad[e.Name()] = fmt.Errorf("%d bytes: too large for a checkpoint", len(data))
			continue
		}
		c, err := Parse(data, keys)
		if err != nil {
			bad[e.Name()] = err
			continue
		}
		good = append(good, Signed{File: e.Name(), Checkpoint: c})
	}
	slices.SortFunc(good, func(a, b Signed) int { return strings.Compare(a.File, b.File) })
	return good, bad, nil
}

// ByWriter gathers the heads the checkpoints hold by writer, lowest Seq
// first, each with the checkpoint that holds it.
func ByWriter(cps []Signed) map[string][]SignedHead {
	out := map[string][]SignedHead{}
	for _, c := range cps {
		for _, h := range c.Heads {
			out[h.Writer] = append(out[h.Writer], SignedHead{Head: h, File: c.File, Time: c.Time})
		}
	}
	for _, hs := range out {
		slices.SortStableFunc(hs, func(a, b SignedHead) int { return cmp.Compare(a.Seq, b.Seq) })
	}
	return out
}

// SignedHead is a head and the checkpoint it was signed in.
type SignedHead struct {
	Head
	File string
	Time time.Time
}
