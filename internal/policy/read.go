package policy

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/loader/filter"
)

// Limits of a bundle read from a source, unless ReadOptions say otherwise.
const (
	// DefaultMaxBundleBytes bounds a bundle's files, uncompressed, together.
	DefaultMaxBundleBytes = 64 << 20
	// DefaultMaxArchiveBytes bounds a .tar.gz as downloaded.
	DefaultMaxArchiveBytes = 16 << 20
)

// Errors a caller may branch on, wrapped by the Read functions.
var (
	// ErrTooLarge means a file, the bundle or the archive is over its limit
	// (a huge download or a gzip bomb is refused, not read to the end).
	ErrTooLarge = errors.New("bundle too large")
	// ErrUnsafePath means a tarball entry would land outside the bundle
	// root (an absolute path or a ".." segment) or is a link.
	ErrUnsafePath = errors.New("unsafe path in bundle")
	// ErrSignature means the bundle's signature is missing, does not
	// verify, or does not cover exactly the bundle's files.
	ErrSignature = errors.New("bundle signature")
)

// signaturesFile is OPA's signature file at the bundle root.
const signaturesFile = ".signatures.json"

// ReadOptions configure [ReadDir], [ReadFS] and [ReadTarGz].
type ReadOptions struct {
	// Verification, when set, requires an OPA bundle signature
	// (.signatures.json, as `opa build --signing-key` or `m1 policy sign`
	// writes it) made with its key; see [NewVerification].
	Verification *bundle.VerificationConfig
	// MaxBytes bounds the bundle's files, uncompressed, together;
	// 0 means DefaultMaxBundleBytes.
	MaxBytes int64
}

func (o ReadOptions) maxBytes() int64 {
	if o.MaxBytes > 0 {
		return o.MaxBytes
	}
	return DefaultMaxBundleBytes
}

// NewVerification returns the verification config for a PEM public key
// (PKIX "PUBLIC KEY", PKCS#1 "RSA PUBLIC KEY" or a certificate): the
// algorithm follows from the key (RSA: RS256, ECDSA: ES256/ES384/ES512 by
// curve, Ed25519: EdDSA). Whatever key id a signature names, it is checked
// against this key, as OPA does when its config names a keyid.
func NewVerification(keyPEM []byte) (*bundle.VerificationConfig, error) {
	alg, err := KeyAlgorithm(keyPEM)
	if err != nil {
		return nil, err
	}
	const id = "default"
	return bundle.NewVerificationConfig(map[string]*bundle.KeyConfig{
		id: {Key: string(keyPEM), Algorithm: alg},
	}, id, "", nil), nil
}

// KeyAlgorithm names the JWS algorithm for a PEM key, public or private.
func KeyAlgorithm(keyPEM []byte) (string, error) {
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return "", errors.New("no PEM block in the key")
	}
	var key any
	var err error
	switch block.Type {
	case "PUBLIC KEY":
		key, err = x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		key, err = x509.ParsePKCS1PublicKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "CERTIFICATE":
		var c *x509.Certificate
		if c, err = x509.ParseCertificate(block.Bytes); err == nil {
			key = c.PublicKey
		}
	default:
		return "", fmt.Errorf("unsupported PEM block %q", block.Type)
	}
	if err != nil {
		return "", fmt.Errorf("parse %s: %w", block.Type, err)
	}
	switch k := key.(type) {
	case *rsa.PublicKey, *rsa.PrivateKey:
		return "RS256", nil
	case *ecdsa.PublicKey:
		return ecAlg(k.Curve.Params().BitSize)
	case *ecdsa.PrivateKey:
		return ecAlg(k.Curve.Params().BitSize)
	case ed25519.PublicKey, ed25519.PrivateKey:
		return "EdDSA", nil
	}
	return "", fmt.Errorf("unsupported key type %T", key)
}

func ecAlg(bits int) (string, error) {
	switch bits {
	case 256:
		return "ES256", nil
	case 384:
		return "ES384", nil
	case 521:
		return "ES512", nil
	}
	return "", fmt.Errorf("unsupported ECDSA curve of %d bits", bits)
}

// ReadDir reads the bundle in directory dir as a source (M1_POLICY_DIR):
// as [LoadDir], bounded by o.MaxBytes, and with o.Verification checked by
// OPA's bundle reader over every file a signature may cover.
func ReadDir(dir string, o ReadOptions) (*Bundle, error) {
	fi, err := os.Stat(dir)
	if err == nil && !fi.IsDir() {
		err = errors.New("not a directory")
	}
	if err == nil {
		var b *Bundle
		if b, err = readFS(os.DirFS(dir), o); err == nil {
			b.dir = dir
			return b, nil
		}
	}
	{
		return nil, fmt.Errorf("load bundle %q: %w", dir, err)
	}
}

// ReadFS is [ReadDir] for a file system (a Git tree, a test's map).
func ReadFS(fsys fs.FS, o ReadOptions) (*Bundle, error) {
	b, err := readFS(fsys, o)
	if err != nil {
		return nil, fmt.Errorf("load bundle: %w", err)
	}
	return b, nil
}

func readFS(fsys fs.FS, o ReadOptions) (*Bundle, error) {
	keep := isBundleFile
	if o.Verification != nil {
		// A signature covers every file of the bundle (a README too),
		// so the verifier must see them all.
		keep = func(p, name string) bool {
			return p == signaturesFile || p == manifestFile || !strings.HasPrefix(name, ".")
		}
	}
	files, err := collect(fsys, keep, o.maxBytes())
	if err != nil {
		return nil, err
	}
	if o.Verification != nil {
		if err := verify(&memLoader{files: files}, o); err != nil {
			return nil, err
		}
	}
	return fromFiles(files)
}

// ReadTarGz reads an OPA bundle tarball (.tar.gz, as `opa build` writes
// it and a bundle server serves it) with OPA's bundle reader, which also
// checks o.Verification. Before OPA sees it, the archive is checked within
// bounds: at most o.MaxBytes uncompressed (a gzip bomb stops there), no
// entry outside the root (absolute, "..") and no links. The Bundle is then
// built from the same files as [LoadDir] builds it, so one bundle has one
// revision whichever source it came from.
func ReadTarGz(archive []byte, o ReadOptions) (*Bundle, error) {
	b, err := readTarGz(archive, o)
	if err != nil {
		return nil, fmt.Errorf("load bundle: %w", err)
	}
	return b, nil
}

func readTarGz(raw []byte, o ReadOptions) (*Bundle, error) {
	if int64(len(raw)) > o.maxBytes() {
		return nil, fmt.Errorf("archive: %w (limit %d bytes)", ErrTooLarge, o.maxBytes())
	}
	files, err := untar(raw, o.maxBytes())
	if err != nil {
		return nil, err
	}
	b, err := fromFiles(files)
	if err != nil {
		return nil, err
	}
	rd := bundle.NewCustomReader(bundle.NewTarballLoaderWithBaseURL(bytes.NewReader(raw), "")).
		WithSizeLimitBytes(o.maxBytes()).
		WithLazyLoadingMode(false)
	if o.Verification != nil {
		rd = rd.WithBundleVerificationConfig(o.Verification)
	} else {
		rd = rd.WithSkipBundleVerification(true)
	}
	if _, err := rd.Read(); err != nil {
		if o.Verification != nil && isSignatureError(err) {
			return nil, fmt.Errorf("%w: %w", ErrSignature, err)
		}
		return nil, fmt.Errorf("read OPA bundle: %w", err)
	}
	return b, nil
}

// untar extracts the regular files of a .tar.gz, refusing unsafe entries
// and stopping at limit bytes uncompressed.
func untar(raw []byte, limit int64) ([]bundleFile, error) {
	gz, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("not a gzip archive (a bundle is a .tar.gz): %w", err)
	}
	defer gz.Close()
	// The limit applies to the whole uncompressed stream, headers
	// included: a bomb is cut off after limit bytes, never expanded.
	lr := &io.LimitedReader{R: gz, N: limit + 1}
	tr := tar.NewReader(lr)
	var files []bundleFile
	seen := map[string]bool{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if lr.N <= 0 {
				return nil, fmt.Errorf("archive: %w (over %d bytes uncompressed)", ErrTooLarge, limit)
			}
			return nil, fmt.Errorf("not a tar archive (a bundle is a .tar.gz): %w", err)
		}
		// OPA writes entries as "/data.json": a leading slash is the
		// bundle root, not the file system's.
		name := strings.TrimLeft(strings.TrimPrefix(h.Name, "./"), "/")
		if hasDotDot(name) || strings.ContainsRune(name, '\\') {
			return nil, fmt.Errorf("entry %q: %w", h.Name, ErrUnsafePath)
		}
		clean := path.Clean("/" + name)[1:]
		switch {
		case h.Typeflag == tar.TypeDir:
			continue
		case h.Typeflag == tar.TypeSymlink || h.Typeflag == tar.TypeLink:
			return nil, fmt.Errorf("entry %q is a link: %w", h.Name, ErrUnsafePath)
		case h.Typeflag != tar.TypeReg:
			continue // pax headers and the like
		case clean == "":
			return nil, fmt.Errorf("entry %q: %w", h.Name, ErrUnsafePath)
		case seen[clean]:
			return nil, fmt.Errorf("entry %q appears twice", h.Name)
		case h.Size > limit:
			return nil, fmt.Errorf("entry %q: %w (%d bytes, limit %d)", h.Name, ErrTooLarge, h.Size, limit)
		}
		seen[clean] = true
		content, err := io.ReadAll(tr)
		if err != nil {
			if lr.N <= 0 {
				return nil, fmt.Errorf("archive: %w (over %d bytes uncompressed)", ErrTooLarge, limit)
			}
			return nil, fmt.Errorf("read entry %q: %w", h.Name, err)
		}
		files = append(files, bundleFile{path: clean, content: content})
	}
	if lr.N <= 0 {
		return nil, fmt.Errorf("archive: %w (over %d bytes uncompressed)", ErrTooLarge, limit)
	}
	return files, nil
}

func hasDotDot(p string) bool {
	for seg := range strings.SplitSeq(p, "/") {
		if seg == ".." {
			return true
		}
	}
	return false
}

// verify runs OPA's bundle reader over the loader's files to check the
// signature: present, made with the configured key, and covering exactly
// the files there are.
func verify(l bundle.DirectoryLoader, o ReadOptions) error {
	_, err := bundle.NewCustomReader(l).
		WithSizeLimitBytes(o.maxBytes()).
		WithLazyLoadingMode(false).
		WithBundleVerificationConfig(o.Verification).
		Read()
	if err != nil {
		if isSignatureError(err) {
			return fmt.Errorf("%w: %w", ErrSignature, err)
		}
		return fmt.Errorf("read OPA bundle: %w", err)
	}
	return nil
}

// isSignatureError tells OPA's signature errors from its other ones (its
// errors are plain strings).
func isSignatureError(err error) bool {
	msg := err.Error()
	for _, s := range []string{"signature", "digest mismatch", "verification key", "scope mismatch", "key ID"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// memLoader is a bundle.DirectoryLoader over files already read.
type memLoader struct {
	files []bundleFile
	i     int
}

var _ bundle.DirectoryLoader = (*memLoader)(nil)

func (m *memLoader) NextFile() (*bundle.Descriptor, error) {
	if m.i >= len(m.files) {
		return nil, io.EOF
	}
	f := m.files[m.i]
	m.i++
	p := "/" + f.path
	return bundle.NewDescriptor(p, p, bytes.NewBuffer(bytes.Clone(f.content))), nil
}

func (m *memLoader) WithFilter(filter.LoaderFilter) bundle.DirectoryLoader { return m }

func (m *memLoader) WithPathFormat(bundle.PathFormat) bundle.DirectoryLoader { return m }

func (m *memLoader) WithSizeLimitBytes(int64) bundle.DirectoryLoader { return m }

func (m *memLoader) WithFollowSymlinks(bool) bundle.DirectoryLoader { return m }
