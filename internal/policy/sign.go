package policy

import (
	"archive/tar"
	"compress/gzip"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/util"
)

// SignatureFiles reads the files of the bundle in dir that a signature
// covers: every regular file but dot-files (the .manifest excepted), files
// in dot-directories, and an existing .signatures.json. Paths are
// slash-separated and relative to dir.
func SignatureFiles(dir string) (map[string][]byte, error) {
	files, err := collect(os.DirFS(dir), func(p, name string) bool {
		return p == manifestFile || !strings.HasPrefix(name, ".")
	}, DefaultMaxBundleBytes)
	if err != nil {
		return nil, fmt.Errorf("read bundle %q: %w", dir, err)
	}
	m := make(map[string][]byte, len(files))
	for _, f := range files {
		m[f.path] = f.content
	}
	return m, nil
}

// Sign returns the content of .signatures.json for files (bundle path ->
// content), made with OPA's bundle signing code: each file hashed as OPA
// hashes it (JSON and YAML documents by their canonical form, others as
// bytes, SHA-256), the list signed as a JWT with the PEM private key,
// whose algorithm follows from the key (see KeyAlgorithm), and keyID as the
// token's kid ("default" when empty). An OPA configured with the public
// key and a bundle verification config accepts the result, and so does
// M1 with M1_POLICY_VERIFICATION_KEY.
func Sign(files map[string][]byte, keyPEM []byte, keyID string) ([]byte, error) {
	alg, err := KeyAlgorithm(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("sign bundle: signing key: %w", err)
	}
	if keyID == "" {
		keyID = "default"
	}
	h, err := bundle.NewSignatureHasher(bundle.SHA256)
	if err != nil {
		return nil, fmt.Errorf("sign bundle: %w", err)
	}
	var infos []bundle.FileInfo
	for _, p := range slices.Sorted(maps.Keys(files)) {
		if p == signaturesFile {
			continue
		}
		var v any = files[p]
		if bundle.IsStructuredDoc(p) {
			if err := util.Unmarshal(files[p], &v); err != nil {
				return nil, fmt.Errorf("sign bundle: parse %s: %w", p, err)
			}
		}
		sum, err := h.HashFile(v)
		if err != nil {
			return nil, fmt.Errorf("sign bundle: hash %s: %w", p, err)
		}
		infos = append(infos, bundle.NewFile(p, hex.EncodeToString(sum), string(bundle.SHA256)))
	}
	token, err := bundle.GenerateSignedToken(infos, bundle.NewSigningConfig(string(keyPEM), alg, ""), keyID)
	if err != nil {
		return nil, fmt.Errorf("sign bundle: %w", err)
	}
	out, err := json.MarshalIndent(bundle.SignaturesConfig{Signatures: []string{token}}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("sign bundle: %w", err)
	}
	return append(out, '\n'), nil
}

// WriteTarGz writes files (bundle path -> content) as a bundle tarball, in
// path order, as `opa build` lays one out (entries "/path", mode 0644,
// modification time mtime) so that it reads back with [ReadTarGz] and with
// OPA.
func WriteTarGz(w io.Writer, files map[string][]byte, mtime time.Time) error {
	gz := gzip.NewWriter(w)
	tw := tar.NewWriter(gz)
	for _, p := range slices.Sorted(maps.Keys(files)) {
		h := &tar.Header{Name: "/" + p, Mode: 0o644, Size: int64(len(files[p])), Typeflag: tar.TypeReg, ModTime: mtime}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("write bundle: %w", err)
		}
		if _, err := tw.Write(files[p]); err != nil {
			return fmt.Errorf("write bundle: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write bundle: %w", err)
	}
	if err := gz.Close(); err != nil {
		return fmt.Errorf("write bundle: %w", err)
	}
	return nil
}
