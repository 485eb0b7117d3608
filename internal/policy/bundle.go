package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/open-policy-agent/opa/v1/util"
)

// Bundle is a loaded OPA bundle in the standard layout:
//
//   - every *.rego file is a module; files named *_test.rego are kept apart in
//     Tests and only used by [RunTests];
//   - data.json, data.yaml and data.yml files are placed in the data document
//     at the path given by their directory (m1/tools/data.json becomes
//     data.m1.tools; a data file at the root must hold an object, which is
//     merged at the root);
//   - an optional .manifest (JSON) at the root whose "revision" names the
//     bundle revision.
//
// Other files (Go sources, READMEs, .signatures.json) are ignored, as are
// directories and files whose name starts with a dot (".git", or the
// "..data" links of a Kubernetes ConfigMap volume), except the .manifest.
//
// A Bundle is plain data: it is not safe to modify while [Prepare] or
// [RunTests] reads it, and an [Engine] prepared from it does not see later
// changes.
type Bundle struct {
	// Revision is the .manifest revision, or else "sha256:<hex>" of the
	// bundle's files (every .rego, data and .manifest file, sorted by path,
	// path and content both hashed), so any change to any of them changes
	// it. When empty, [Prepare] derives one from Modules, Tests and Data.
	Revision string
	// Digest is "sha256:<hex>" of the bundle's files whatever names the
	// revision (empty for a Bundle built in code): a source tells a change
	// of files from an unchanged bundle by it, and a reloader refuses new
	// files under the revision in force.
	Digest string
	// Modules maps a slash-separated path relative to the bundle root to
	// the source of each non-test .rego file.
	Modules map[string]string
	// Tests maps paths to the sources of the *_test.rego files.
	Tests map[string]string
	// Data is the bundle's data document, with numbers as json.Number.
	Data map[string]any

	// manifestRevision is true when Revision is the .manifest's.
	manifestRevision bool
	// dir is the directory the bundle was loaded from, if any; it prefixes
	// file names in parse and compile errors and in Cacheable reasons.
	dir string
}

const manifestFile = ".manifest"

// LoadDir loads the bundle rooted at dir (see [Bundle] for the layout).
// Errors name the bundle and the file, for example
// `load bundle "policies": parse data m1/x.json: line 3: ...`.
// Rego sources are not parsed here; [Prepare] and [RunTests] report their
// syntax errors with file and line.
func LoadDir(dir string) (*Bundle, error) {
	fi, err := os.Stat(dir)
	if err == nil && !fi.IsDir() {
		err = errors.New("not a directory")
	}
	if err != nil {
		return nil, fmt.Errorf("load bundle %q: %w", dir, err)
	}
	b, err := load(os.DirFS(dir))
	if err != nil {
		return nil, fmt.Errorf("load bundle %q: %w", dir, err)
	}
	b.dir = dir
	return b, nil
}

// LoadFS loads the bundle rooted at the root of fsys (see [Bundle] for the
// layout). Errors read `load bundle: <what>: ...` and name the file.
func LoadFS(fsys fs.FS) (*Bundle, error) {
	b, err := load(fsys)
	if err != nil {
		return nil, fmt.Errorf("load bundle: %w", err)
	}
	return b, nil
}

// bundleFile is one file that belongs to the bundle.
type bundleFile struct {
	path    string
	content []byte
}

func load(fsys fs.FS) (*Bundle, error) {
	files, err := collect(fsys, isBundleFile, 0)
	if err != nil {
		return nil, err
	}
	return fromFiles(files)
}

// collect reads the files of fsys that keep says belong to the bundle,
// skipping directories whose name starts with a dot. With limit > 0, a
// file or a total larger than limit bytes is an error.
func collect(fsys fs.FS, keep func(p, name string) bool, limit int64) ([]bundleFile, error) {
	var files []bundleFile
	var total int64
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if p != "." && strings.HasPrefix(name, ".") {
				return fs.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() && d.Type()&fs.ModeSymlink == 0 || !keep(p, name) {
			return nil
		}
		if limit > 0 {
			info, err := d.Info()
			if err != nil {
				return err
			}
			if total += info.Size(); info.Size() > limit || total > limit {
				return fmt.Errorf("%s: %w (limit %d bytes)", p, ErrTooLarge, limit)
			}
		}
		content, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		files = append(files, bundleFile{path: p, content: content})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return files, nil
}

// fromFiles builds a Bundle from its files (see [Bundle] for the layout);
// files that are not part of the layout are ignored.
func fromFiles(files []bundleFile) (*Bundle, error) {
	files = slices.DeleteFunc(slices.Clone(files), func(f bundleFile) bool { return !isBundleFile(f.path, path.Base(f.path)) })
	// Sort: the revision hash depends on the order.
	slices.SortFunc(files, func(a, b bundleFile) int { return strings.Compare(a.path, b.path) })

	b := &Bundle{
		Modules: map[string]string{},
		Tests:   map[string]string{},
		Data:    map[string]any{},
	}
	for _, f := range files {
		switch {
		case f.path == manifestFile:
			rev, err := parseManifest(f.content)
			if err != nil {
				return nil, fmt.Errorf("parse %s: %w", f.path, err)
			}
			b.Revision, b.manifestRevision = rev, rev != ""
		case strings.HasSuffix(f.path, "_test.rego"):
			b.Tests[f.path] = string(f.content)
		case strings.HasSuffix(f.path, ".rego"):
			b.Modules[f.path] = string(f.content)
		default:
			if err := addDataFile(b.Data, f); err != nil {
				return nil, err
			}
		}
	}
	if len(b.Modules) == 0 {
		return nil, errors.New("no .rego modules found")
	}
	b.Digest = hashFiles(files)
	if b.Revision == "" {
		b.Revision = b.Digest
	}
	return b, nil
}

func isBundleFile(p, name string) bool {
	switch {
	case p == manifestFile:
		return true
	case strings.HasPrefix(name, "."):
		return false
	case strings.HasSuffix(name, ".rego"):
		return true
	}
	switch name {
	case "data.json", "data.yaml", "data.yml":
		return true
	}
	return false
}

func parseManifest(content []byte) (string, error) {
	var m map[string]any
	if err := util.UnmarshalJSON(content, &m); err != nil {
		return "", jsonError(content, err)
	}
	if m == nil {
		return "", errors.New("not a JSON object")
	}
	rev, ok := m["revision"]
	if !ok {
		return "", nil
	}
	s, ok := rev.(string)
	if !ok {
		return "", fmt.Errorf("revision is %T, want string", rev)
	}
	return s, nil
}

// addDataFile decodes f and merges it into data at the path of its directory.
func addDataFile(data map[string]any, f bundleFile) error {
	var v any
	var err error
	if strings.HasSuffix(f.path, ".json") {
		err = util.UnmarshalJSON(f.content, &v)
		if err != nil {
			err = jsonError(f.content, err)
		}
	} else {
		// util.Unmarshal converts YAML to JSON and decodes numbers as
		// json.Number, as for JSON files.
		err = util.Unmarshal(f.content, &v)
	}
	if err != nil {
		return fmt.Errorf("parse data %s: %w", f.path, err)
	}
	var keys []string
	if dir := path.Dir(f.path); dir != "." {
		keys = strings.Split(dir, "/")
	}
	if err := mergeAt(data, keys, v); err != nil {
		return fmt.Errorf("merge data %s: %w", f.path, err)
	}
	return nil
}

// jsonError adds the line number to a JSON decoding error, which only carries
// a byte offset.
func jsonError(content []byte, err error) error {
	var offset int64
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		offset = syn.Offset
	case errors.As(err, &typ):
		offset = typ.Offset
	default:
		return err
	}
	offset = min(max(offset, 0), int64(len(content)))
	line := 1 + bytes.Count(content[:offset], []byte("\n"))
	return fmt.Errorf("line %d: %w", line, err)
}

// mergeAt merges v into data at keys. Objects merge key by key; any other
// overlap is a conflict.
func mergeAt(data map[string]any, keys []string, v any) error {
	if len(keys) == 0 {
		obj, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("root data must be an object, got %s", jsonType(v))
		}
		return mergeObjects(data, obj, nil)
	}
	parent := data
	for i, k := range keys[:len(keys)-1] {
		next, ok := parent[k]
		if !ok {
			m := map[string]any{}
			parent[k] = m
			parent = m
			continue
		}
		m, ok := next.(map[string]any)
		if !ok {
			return fmt.Errorf("conflict at data.%s: not an object", strings.Join(keys[:i+1], "."))
		}
		parent = m
	}
	last := keys[len(keys)-1]
	old, ok := parent[last]
	if !ok {
		parent[last] = v
		return nil
	}
	oldObj, ok1 := old.(map[string]any)
	newObj, ok2 := v.(map[string]any)
	if !ok1 || !ok2 {
		return fmt.Errorf("conflict at data.%s", strings.Join(keys, "."))
	}
	return mergeObjects(oldObj, newObj, keys)
}

func mergeObjects(dst, src map[string]any, at []string) error {
	for _, k := range slices.Sorted(maps.Keys(src)) {
		v := src[k]
		old, ok := dst[k]
		if !ok {
			dst[k] = v
			continue
		}
		p := append(slices.Clip(at), k)
		oldObj, ok1 := old.(map[string]any)
		newObj, ok2 := v.(map[string]any)
		if !ok1 || !ok2 {
			return fmt.Errorf("conflict at data.%s", strings.Join(p, "."))
		}
		if err := mergeObjects(oldObj, newObj, p); err != nil {
			return err
		}
	}
	return nil
}

func jsonType(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case string:
		return "string"
	case json.Number, float64, int, int64:
		return "number"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return fmt.Sprintf("%T", v)
}

// hashFiles returns "sha256:<hex>" over the sorted files. Each file
// contributes its path and content with their lengths, so no two different
// bundles share an encoding.
func hashFiles(files []bundleFile) string {
	h := sha256.New()
	var buf []byte
	for _, f := range files {
		buf = buf[:0]
		buf = strconv.AppendInt(buf, int64(len(f.path)), 10)
		buf = append(buf, ':')
		buf = append(buf, f.path...)
		buf = strconv.AppendInt(buf, int64(len(f.content)), 10)
		buf = append(buf, ':')
		h.Write(buf)
		h.Write(f.content)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// hashBundle derives a revision for a Bundle built in code, without files.
func hashBundle(b *Bundle) (string, error) {
	var files []bundleFile
	for p, src := range b.Modules {
		files = append(files, bundleFile{path: "module:" + p, content: []byte(src)})
	}
	for p, src := range b.Tests {
		files = append(files, bundleFile{path: "test:" + p, content: []byte(src)})
	}
	data, err := json.Marshal(b.Data) // map keys are sorted
	if err != nil {
		return "", fmt.Errorf("hash data: %w", err)
	}
	files = append(files, bundleFile{path: "data:", content: data})
	slices.SortFunc(files, func(a, b bundleFile) int { return strings.Compare(a.path, b.path) })
	return hashFiles(files), nil
}

// ManifestRevision reports whether Revision is the one the bundle's
// .manifest names (a source may otherwise name the revision, as a Git
// source does with the commit id).
func (b *Bundle) ManifestRevision() bool { return b.manifestRevision }

// fileName is the name used for a bundle path in errors and locations.
func (b *Bundle) fileName(p string) string {
	if b.dir == "" {
		return p
	}
	return filepath.Join(b.dir, filepath.FromSlash(p))
}
