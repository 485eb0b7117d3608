package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/toolcall"
)

const keysUsage = `Usage:
  m1 keys gen [--alg EdDSA|ES256|RS256] [--kid KID] [--out DIR] [--force] [--replace]

Commands:
  gen  generate an approval signing key and add its public half to DIR/jwks.json

Run 'm1 keys <command> -h' for its flags.
`

func runKeys(ctx context.Context, c *cmdIO, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(c.stderr, keysUsage)
		return exitError
	}
	switch args[0] {
	case "gen":
		return runKeysGen(ctx, c, args[1:])
	case "-h", "-help", "--help", "help":
		fmt.Fprint(c.stdout, keysUsage)
		return exitOK
	}
	fmt.Fprintf(c.stderr, "m1 keys: unknown command %q\n\n%s", args[0], keysUsage)
	return exitError
}

const keysGenDescription = `Generate a signing key for approval tokens and write two files:

  DIR/<kid>.jwk   the private JWK (file mode 0600), for 'm1 token mint --key';
                  keep it with the operator, never on a sidecar
  DIR/jwks.json   the public JWKS, for the sidecars' M1_JWKS_FILE

When DIR/jwks.json exists the new key is added to it, so that tokens signed
with the old keys keep verifying during a rotation (remove an old key from
the file once its tokens have expired; sidecars reload the file on change).
--replace starts a new set holding only the new key. The file is replaced
atomically. An existing private key file, or a kid already in the set, is
an error unless --force.

HS256 has no key pair (this command refuses it, also from
$M1_JWT_ALGORITHM): set the same random secret of 32 bytes or more as
M1_JWT_SECRET on every sidecar and where m1 signs, and sign with
M1_JWT_ALGORITHM=HS256 (or --alg HS256).`

// jwksFileName is the public key set m1 keys gen maintains in --out.
const jwksFileName = "jwks.json"

func runKeysGen(_ context.Context, c *cmdIO, args []string) int {
	fs := newFlagSet("keys gen", "m1 keys gen [--alg EdDSA|ES256|RS256] [--kid KID] [--out DIR] [--force] [--replace]",
		keysGenDescription, map[string]string{"alg": "M1_JWT_ALGORITHM"})
	alg := fs.String("alg", approval.AlgEdDSA, "signing `algorithm`: EdDSA (Ed25519), ES256 (P-256) or RS256 (RSA 3072)")
	kid := fs.String("kid", "", "key `id` (default: the algorithm in lower case, today's date and a random suffix)")
	out := fs.String("out", "keys", "`directory` for the key files (created with mode 0700 if missing)")
	force := fs.Bool("force", false, "overwrite an existing private key file and a key with the same kid in jwks.json")
	replace := fs.Bool("replace", false, "write a jwks.json holding only the new key instead of adding to it")
	asJSON := fs.Bool("json", false, "print the result as one JSON object")
	if code, ok := parse(fs, c, args, 0, 0); !ok {
		return code
	}
	switch *alg {
	case approval.AlgEdDSA, approval.AlgES256, approval.AlgRS256:
	case approval.AlgHS256:
		from := "--alg"
		if !fs.given["alg"] {
			from = "$M1_JWT_ALGORITHM"
		}
		return fail(c, "keys gen", fmt.Errorf("%s is HS256: HS256 keys are a shared secret (M1_JWT_SECRET), not a key pair, so there is nothing to generate. "+
			"Set the same random secret of 32 bytes or more (e.g. openssl rand -base64 48) as M1_JWT_SECRET on the sidecars and where m1 signs; "+
			"for a key pair, use --alg EdDSA, ES256 or RS256", from))
	default:
		code, _ := usageError(fs, c, fmt.Errorf("--alg %q: want EdDSA, ES256 or RS256", *alg))
		return code
	}
	if *kid == "" {
		*kid = defaultKID(*alg, time.Now())
	}
	if !validKID(*kid) {
		code, _ := usageError(fs, c, fmt.Errorf("--kid %q: want 1 to 128 of [A-Za-z0-9_.-], not starting with '.' (it names the key file)", *kid))
		return code
	}
	*out = filepath.Clean(*out)

	r, err := generateKey(*alg, *kid, *out, *force, *replace)
	if err != nil {
		return fail(c, "keys gen", err)
	}
	if *asJSON {
		return printJSON(c, "keys gen", r)
	}
	fmt.Fprintf(c.stdout, "kid          %s (%s)\n", r.KID, r.Alg)
	fmt.Fprintf(c.stdout, "private key  %s (mode 0600; for m1 token mint --key; keep it secret)\n", r.PrivateKey)
	keys := "keys"
	if len(r.KIDs) == 1 {
		keys = "key"
	}
	fmt.Fprintf(c.stdout, "public JWKS  %s (%d %s: %s; for the sidecars' M1_JWKS_FILE)\n", r.JWKS, len(r.KIDs), keys, strings.Join(r.KIDs, ", "))
	return exitOK
}

// keysGenResult is what m1 keys gen wrote; its --json output.
type keysGenResult struct {
	KID        string   `json:"kid"`
	Alg        string   `json:"alg"`
	PrivateKey string   `json:"private_key"` // path of the private JWK
	JWKS       string   `json:"jwks"`        // path of the public JWKS
	KIDs       []string `json:"kids"`        // every kid in the JWKS, sorted
}

// generateKey generates the key, merges its public half into dir's JWKS
// (checking the result parses as the sidecar will parse it), then writes
// the private key and the JWKS. Nothing is written when a check fails.
func generateKey(alg, kid, dir string, force, replace bool) (*keysGenResult, error) {
	key, err := approval.GenerateKey(alg, kid)
	if err != nil {
		return nil, err
	}
	private, err := key.MarshalPrivateJWK()
	if err != nil {
		return nil, err
	}
	public, err := key.PublicJWKS()
	if err != nil {
		return nil, err
	}
	r := &keysGenResult{
		KID:        kid,
		Alg:        alg,
		PrivateKey: filepath.Join(dir, kid+".jwk"),
		JWKS:       filepath.Join(dir, jwksFileName),
	}
	var existing []byte
	if !replace {
		existing, err = os.ReadFile(r.JWKS)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("read %s: %w", r.JWKS, err)
		}
	}
	set, err := mergeJWKS(existing, public, kid, force)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.JWKS, err)
	}
	ks, err := approval.ParseJWKS(set)
	if err != nil {
		return nil, fmt.Errorf("%s: the new set does not parse: %w", r.JWKS, err)
	}
	r.KIDs = ks.KIDs()

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create key directory: %w", err)
	}
	if err := writePrivateKey(r.PrivateKey, private, force); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(r.JWKS, set, 0o644); err != nil {
		os.Remove(r.PrivateKey) // a private key without its public half is of no use
		return nil, err
	}
	return r, nil
}

// mergeJWKS adds the single key of the JWKS public to the JWKS existing (or
// to an empty set when existing is empty). A key with the same kid is an
// error unless force, which replaces it. Other keys are kept byte for byte.
func mergeJWKS(existing, public []byte, kid string, force bool) ([]byte, error) {
	var add struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(public, &add); err != nil || len(add.Keys) != 1 {
		return nil, errors.New("public key: not a one-key JWKS")
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if len(existing) > 0 {
		if err := json.Unmarshal(existing, &set); err != nil {
			return nil, fmt.Errorf("existing JWKS does not parse (fix it, or --replace to start a new set): %w", err)
		}
	}
	keys := make([]json.RawMessage, 0, len(set.Keys)+1)
	for _, k := range set.Keys {
		var h struct {
			KID string `json:"kid"`
		}
		if err := json.Unmarshal(k, &h); err != nil {
			return nil, fmt.Errorf("existing JWKS has a key that is not an object (fix it, or --replace to start a new set): %w", err)
		}
		if h.KID == kid {
			if !force {
				return nil, fmt.Errorf("kid %q is already in the set; choose another --kid, or --force to replace it", kid)
			}
			continue
		}
		keys = append(keys, k)
	}
	keys = append(keys, add.Keys[0])
	out, err := json.MarshalIndent(map[string]any{"keys": keys}, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// writePrivateKey creates path with mode 0600, failing if it exists unless
// force. With force an existing file is removed first, so that the new one
// never inherits a looser mode.
func writePrivateKey(path string, data []byte, force bool) error {
	if force {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("replace private key: %w", err)
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s exists; choose another --kid, or --force to overwrite it", path)
		}
		return fmt.Errorf("write private key: %w", err)
	}
	err = f.Chmod(0o600) // whatever the umask
	if err == nil {
		_, err = f.Write(append(data, '\n'))
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("write private key %s: %w", path, err)
	}
	return nil
}

// writeFileAtomic replaces path with data through a temporary file in the
// same directory and a rename, so that a sidecar watching the file never
// reads half of it.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// defaultKID is e.g. "eddsa-20260301-3fa9c2".
func defaultKID(alg string, now time.Time) string {
	var b [3]byte
	_, _ = rand.Read(b[:]) // never fails
	return strings.ToLower(alg) + "-" + now.UTC().Format("20060102") + "-" + hex.EncodeToString(b[:])
}

// validKID reports whether kid is usable as a file name: 1 to 128 of
// [A-Za-z0-9_.-], not starting with '.'.
func validKID(kid string) bool { return toolcall.ValidName(kid) && kid[0] != '.' }

// printJSON writes v as one indented JSON object on stdout.
func printJSON(c *cmdIO, name string, v any) int {
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fail(c, name, err)
	}
	return exitOK
}
