package policy

import (
	"encoding/json"
	"errors"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
)

const minimalPolicy = "package m1.authz\n\nimport rego.v1\n\ndefault decision := false\n"

func mapFS(files map[string]string) fstest.MapFS {
	fsys := fstest.MapFS{}
	for p, s := range files {
		fsys[p] = &fstest.MapFile{Data: []byte(s)}
	}
	return fsys
}

func writeDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for p, s := range files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// jsonData normalises data (json.Number and all) for comparison.
func jsonData(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var hashRevision = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

func TestLoad(t *testing.T) {
	tests := []struct {
		name         string
		files        map[string]string
		wantModules  []string
		wantTests    []string
		wantData     string
		wantRevision string // "" means a content hash
	}{
		{
			name: "layout",
			files: map[string]string{
				"authz.rego":            minimalPolicy,
				"authz_test.rego":       "package m1.authz_test\n",
				"lib/strings.rego":      "package lib\n",
				"lib/strings_test.rego": "package lib_test\n",
				"embed.go":              "package policies\n",
				"README.md":             "# bundle\n",
				".git/hooks/x.rego":     "not rego at all",
				"..data/authz.rego":     "not rego at all",
				".hidden.rego":          "not rego at all",
				"m1/notes.json":         "not data",
			},
			wantModules: []string{"authz.rego", "lib/strings.rego"},
			wantTests:   []string{"authz_test.rego", "lib/strings_test.rego"},
			wantData:    `{}`,
		},
		{
			name: "data mapped by directory",
			files: map[string]string{
				"authz.rego":         minimalPolicy,
				"data.json":          `{"top": 1, "m1": {"mode": "strict"}}`,
				"m1/tools/data.json": `{"read_file": {"risk": "read", "requires_approval": false}}`,
				"m1/limits/data.yaml": "max_args: 10\n" +
					"names: [a, b]\n",
				"other/data.yml": "- 1\n- 2\n",
			},
			wantModules: []string{"authz.rego"},
			wantData: `{"m1":{"limits":{"max_args":10,"names":["a","b"]},"mode":"strict",` +
				`"tools":{"read_file":{"requires_approval":false,"risk":"read"}}},"other":[1,2],"top":1}`,
		},
		{
			name: "manifest revision",
			files: map[string]string{
				"authz.rego": minimalPolicy,
				".manifest":  `{"revision": "v42", "roots": [""]}`,
			},
			wantModules:  []string{"authz.rego"},
			wantData:     `{}`,
			wantRevision: "v42",
		},
		{
			name: "manifest without revision",
			files: map[string]string{
				"authz.rego": minimalPolicy,
				".manifest":  `{"roots": [""]}`,
			},
			wantModules: []string{"authz.rego"},
			wantData:    `{}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fromFS, err := LoadFS(mapFS(tt.files))
			if err != nil {
				t.Fatalf("LoadFS(%s) error: %v", tt.name, err)
			}
			fromDir, err := LoadDir(writeDir(t, tt.files))
			if err != nil {
				t.Fatalf("LoadDir(%s) error: %v", tt.name, err)
			}
			for _, b := range []*Bundle{fromFS, fromDir} {
				if got := sortedKeys(b.Modules); !reflect.DeepEqual(got, tt.wantModules) {
					t.Errorf("Load(%s).Modules = %q, want %q", tt.name, got, tt.wantModules)
				}
				if got := sortedKeys(b.Tests); !reflect.DeepEqual(got, tt.wantTests) {
					t.Errorf("Load(%s).Tests = %q, want %q", tt.name, got, tt.wantTests)
				}
				if got := jsonData(t, b.Data); got != tt.wantData {
					t.Errorf("Load(%s).Data = %s, want %s", tt.name, got, tt.wantData)
				}
				if tt.wantRevision != "" {
					if b.Revision != tt.wantRevision {
						t.Errorf("Load(%s).Revision = %q, want %q", tt.name, b.Revision, tt.wantRevision)
					}
				} else if !hashRevision.MatchString(b.Revision) {
					t.Errorf("Load(%s).Revision = %q, want sha256:<hex>", tt.name, b.Revision)
				}
			}
			if fromFS.Revision != fromDir.Revision {
				t.Errorf("LoadFS(%s).Revision = %q, LoadDir = %q, want equal", tt.name, fromFS.Revision, fromDir.Revision)
			}
			if got := fromFS.Modules["authz.rego"]; got != tt.files["authz.rego"] {
				t.Errorf("Load(%s).Modules[authz.rego] = %q, want the file's source", tt.name, got)
			}
		})
	}
}

func sortedKeys(m map[string]string) []string {
	if len(m) == 0 {
		return nil
	}
	return slices.Sorted(maps.Keys(m))
}

func TestLoadRevisionHash(t *testing.T) {
	base := map[string]string{
		"authz.rego":         minimalPolicy,
		"authz_test.rego":    "package m1.authz_test\n",
		"m1/tools/data.json": `{"read_file": {"risk": "read"}}`,
	}
	with := func(p, s string) map[string]string {
		files := map[string]string{}
		for k, v := range base {
			files[k] = v
		}
		if s == "" {
			delete(files, p)
		} else {
			files[p] = s
		}
		return files
	}
	baseRev := mustLoad(t, base).Revision
	tests := []struct {
		name    string
		files   map[string]string
		changed bool
	}{
		{"same files", with("authz.rego", minimalPolicy), false},
		{"ignored file added", with("README.md", "hello"), false},
		{"module changed", with("authz.rego", minimalPolicy+"\n# comment\n"), true},
		{"test changed", with("authz_test.rego", "package m1.authz_test\n# x\n"), true},
		{"test removed", with("authz_test.rego", ""), true},
		{"data changed", with("m1/tools/data.json", `{"read_file": {"risk": "write"}}`), true},
		{"data moved", with("m1/tools/data.json", ""), true},
		{"module renamed", map[string]string{
			"main.rego":          minimalPolicy,
			"authz_test.rego":    "package m1.authz_test\n",
			"m1/tools/data.json": `{"read_file": {"risk": "read"}}`,
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rev := mustLoad(t, tt.files).Revision
			if changed := rev != baseRev; changed != tt.changed {
				t.Errorf("Revision(%s) changed = %v (%s vs %s), want %v", tt.name, changed, rev, baseRev, tt.changed)
			}
		})
	}
}

func mustLoad(t *testing.T, files map[string]string) *Bundle {
	t.Helper()
	b, err := LoadFS(mapFS(files))
	if err != nil {
		t.Fatalf("LoadFS: %v", err)
	}
	return b
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  string // substring of the LoadFS error, after "load bundle: "
	}{
		{
			name:  "bad json data",
			files: map[string]string{"authz.rego": minimalPolicy, "m1/x/data.json": "{\n  \"a\": 1,\n  \"b\": oops\n}\n"},
			want:  "parse data m1/x/data.json: line 3: invalid character",
		},
		{
			name:  "trailing json",
			files: map[string]string{"authz.rego": minimalPolicy, "m1/x/data.json": `{"a": 1} {"b": 2}`},
			want:  "parse data m1/x/data.json:",
		},
		{
			name:  "bad yaml data",
			files: map[string]string{"authz.rego": minimalPolicy, "m1/data.yaml": "a: 1\n b: [\n"},
			want:  "parse data m1/data.yaml: ",
		},
		{
			name:  "root data not an object",
			files: map[string]string{"authz.rego": minimalPolicy, "data.json": `[1]`},
			want:  "merge data data.json: root data must be an object, got array",
		},
		{
			name: "conflicting data",
			files: map[string]string{
				"authz.rego":         minimalPolicy,
				"data.json":          `{"m1": {"tools": {"read_file": {"risk": "read"}}}}`,
				"m1/tools/data.json": `{"read_file": {"risk": "write"}}`,
			},
			want: "conflict at data.m1.tools.read_file.risk",
		},
		{
			name:  "bad manifest",
			files: map[string]string{"authz.rego": minimalPolicy, ".manifest": `{"revision": 7}`},
			want:  "parse .manifest: revision is json.Number, want string",
		},
		{
			name:  "manifest not json",
			files: map[string]string{"authz.rego": minimalPolicy, ".manifest": "revision: x"},
			want:  "parse .manifest: line 1: invalid character",
		},
		{
			name:  "no modules",
			files: map[string]string{"m1/tools/data.json": `{}`, "authz_test.rego": "package x\n"},
			want:  "no .rego modules found",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadFS(mapFS(tt.files))
			if err == nil || !strings.HasPrefix(err.Error(), "load bundle: ") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("LoadFS(%s) error = %v, want %q", tt.name, err, "load bundle: ..."+tt.want)
			}
			dir := writeDir(t, tt.files)
			_, err = LoadDir(dir)
			prefix := `load bundle "` + dir + `": `
			if err == nil || !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("LoadDir(%s) error = %v, want %q", tt.name, err, prefix+"..."+tt.want)
			}
		})
	}
}

func TestLoadDirMissing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nope")
	_, err := LoadDir(dir)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), `load bundle "`+dir+`"`) {
		t.Errorf("LoadDir(missing) error = %v, want not-exist naming the dir", err)
	}
	file := filepath.Join(t.TempDir(), "authz.rego")
	if err := os.WriteFile(file, []byte(minimalPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadDir(file); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("LoadDir(file) error = %v, want not a directory", err)
	}
}
