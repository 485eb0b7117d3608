package demotool

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"go.uber.org/zap"
)

// FileContent is the result of read_file.
type FileContent struct {
	Path    string `json:"path"`
	Content string `json:"content"` // bytes that are not UTF-8 become U+FFFD
	Size    int64  `json:"size"`
}

// DirListing is the result of list_dir.
type DirListing struct {
	Path    string     `json:"path"`
	Entries []DirEntry `json:"entries"` // sorted by name
}

// DirEntry is one entry of a [DirListing].
type DirEntry struct {
	Name string `json:"name"`
	Type string `json:"type"` // "file", "dir", "symlink" or "other"
	Size int64  `json:"size"` // of a file; 0 otherwise
}

// WriteResult is the result of write_file.
type WriteResult struct {
	Path  string `json:"path"`
	Bytes int    `json:"bytes"`
}

// Error codes of a failed call (the "error" member of a REST failure).
const (
	CodeBadArguments = "bad_arguments"
	CodePathRefused  = "path_refused"
	CodeNotFound     = "not_found"
	CodeDisabled     = "disabled"
	CodeUnknownTool  = "unknown_tool"
	CodeTooLarge     = "too_large"
	CodeToolFailed   = "tool_failed"
)

// DisabledMessage is run_command's answer, always.
const DisabledMessage = "run_command is disabled in the demo tool"

// callError is a failed call: a stable code, the REST status and a message.
type callError struct {
	code    string
	status  int
	message string
}

func (e *callError) Error() string { return e.message }

func fail(code string, status int, format string, args ...any) *callError {
	return &callError{code: code, status: status, message: fmt.Sprintf(format, args...)}
}

// call runs tool with the JSON arguments args (empty means {}) and returns
// its result, or a *callError.
func (s *Server) call(tool string, args []byte) (any, error) {
	switch tool {
	case ReadFile, ListDir, WriteFile, RunCommand:
	default:
		return nil, fail(CodeUnknownTool, http.StatusNotFound, "unknown tool %q", tool)
	}
	s.count(tool)
	res, err := s.run(tool, args)
	if err != nil {
		s.logger.Debug("demotool call failed", zap.String("tool", tool), zap.Error(err))
		return nil, err
	}
	s.logger.Debug("demotool call", zap.String("tool", tool))
	return res, nil
}

func (s *Server) run(tool string, raw []byte) (any, error) {
	switch tool {
	case ReadFile:
		var a struct {
			Path *string `json:"path"`
		}
		if err := decodeArgs(tool, raw, &a); err != nil {
			return nil, err
		}
		return s.readFile(a.Path)
	case ListDir:
		var a struct {
			Path *string `json:"path"`
		}
		if err := decodeArgs(tool, raw, &a); err != nil {
			return nil, err
		}
		return s.listDir(a.Path)
	case WriteFile:
		var a struct {
			Path    *string `json:"path"`
			Content *string `json:"content"`
		}
		if err := decodeArgs(tool, raw, &a); err != nil {
			return nil, err
		}
		return s.writeFile(a.Path, a.Content)
	}
	return nil, fail(CodeDisabled, http.StatusForbidden, DisabledMessage)
}

// decodeArgs decodes one JSON object into v (a struct of pointer fields),
// refusing unknown members and trailing data.
func decodeArgs(tool string, raw []byte, v any) error {
	if len(bytes.TrimSpace(raw)) == 0 {
		raw = []byte("{}")
	}
	if t := bytes.TrimSpace(raw); t[0] != '{' {
		return fail(CodeBadArguments, http.StatusBadRequest, "%s: arguments must be a JSON object", tool)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fail(CodeBadArguments, http.StatusBadRequest, "%s: arguments: %v", tool, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fail(CodeBadArguments, http.StatusBadRequest, "%s: arguments: data after the JSON object", tool)
	}
	return nil
}

func (s *Server) readFile(path *string) (any, error) {
	p, err := localPath(ReadFile, path, false)
	if err != nil {
		return nil, err
	}
	f, err := s.root.Open(p)
	if err != nil {
		return nil, fsError(ReadFile, p, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, fsError(ReadFile, p, err)
	} else if !fi.Mode().IsRegular() {
		return nil, fail(CodeBadArguments, http.StatusBadRequest, "read_file: %q is not a regular file", p)
	}
	b, err := io.ReadAll(io.LimitReader(f, s.maxFileBytes+1))
	if err != nil {
		return nil, fsError(ReadFile, p, err)
	}
	if int64(len(b)) > s.maxFileBytes {
		return nil, fail(CodeTooLarge, http.StatusRequestEntityTooLarge, "read_file: %q is larger than %d bytes", p, s.maxFileBytes)
	}
	return FileContent{Path: filepath.ToSlash(p), Content: string(b), Size: int64(len(b))}, nil
}

func (s *Server) listDir(path *string) (any, error) {
	p, err := localPath(ListDir, path, true)
	if err != nil {
		return nil, err
	}
	f, err := s.root.Open(p)
	if err != nil {
		return nil, fsError(ListDir, p, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, fsError(ListDir, p, err)
	} else if !fi.IsDir() {
		return nil, fail(CodeBadArguments, http.StatusBadRequest, "list_dir: %q is not a directory", p)
	}
	des, err := f.ReadDir(-1)
	if err != nil {
		return nil, fsError(ListDir, p, err)
	}
	out := DirListing{Path: filepath.ToSlash(p), Entries: make([]DirEntry, 0, len(des))}
	for _, de := range des {
		e := DirEntry{Name: de.Name(), Type: "other"}
		switch t := de.Type(); {
		case t.IsRegular():
			e.Type = "file"
			if fi, err := de.Info(); err == nil {
				e.Size = fi.Size()
			}
		case t.IsDir():
			e.Type = "dir"
		case t&fs.ModeSymlink != 0:
			e.Type = "symlink"
		}
		out.Entries = append(out.Entries, e)
	}
	// File.ReadDir returns directory order; sort for stable answers.
	slices.SortFunc(out.Entries, func(a, b DirEntry) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func (s *Server) writeFile(path, content *string) (any, error) {
	p, err := localPath(WriteFile, path, false)
	if err != nil {
		return nil, err
	}
	if content == nil {
		return nil, fail(CodeBadArguments, http.StatusBadRequest, "write_file: content is required")
	}
	if int64(len(*content)) > s.maxFileBytes {
		return nil, fail(CodeTooLarge, http.StatusRequestEntityTooLarge, "write_file: content is larger than %d bytes", s.maxFileBytes)
	}
	if dir := filepath.Dir(p); dir != "." {
		if err := s.root.MkdirAll(dir, 0o755); err != nil {
			return nil, fsError(WriteFile, dir, err)
		}
	}
	if err := s.root.WriteFile(p, []byte(*content), 0o644); err != nil {
		return nil, fsError(WriteFile, p, err)
	}
	return WriteResult{Path: filepath.ToSlash(p), Bytes: len(*content)}, nil
}

// localPath checks a path argument lexically: present (unless the
// workspace itself is allowed), relative, and not leaving the workspace
// through "..". Symbolic links are [os.Root]'s to refuse.
func localPath(tool string, path *string, rootOK bool) (string, error) {
	p := ""
	if path != nil {
		p = *path
	}
	switch {
	case p == "" && rootOK:
		return ".", nil
	case p == "":
		return "", fail(CodeBadArguments, http.StatusBadRequest, "%s: path is required", tool)
	case strings.ContainsRune(p, 0):
		return "", fail(CodeBadArguments, http.StatusBadRequest, "%s: path has a NUL byte", tool)
	case filepath.IsAbs(p) || strings.HasPrefix(p, "/") || strings.HasPrefix(p, `\`):
		return "", fail(CodePathRefused, http.StatusForbidden, "%s: absolute path %q refused: paths are relative to the workspace", tool, p)
	case !filepath.IsLocal(p):
		return "", fail(CodePathRefused, http.StatusForbidden, "%s: path %q leaves the workspace", tool, p)
	}
	return filepath.Clean(p), nil
}

// fsError maps an [os.Root] error to a *callError.
func fsError(tool, p string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fail(CodeNotFound, http.StatusNotFound, "%s: %q does not exist", tool, p)
	case escapes(err):
		return fail(CodePathRefused, http.StatusForbidden, "%s: path %q leads out of the workspace", tool, p)
	case errors.Is(err, fs.ErrPermission):
		return fail(CodePathRefused, http.StatusForbidden, "%s: %q: permission denied", tool, p)
	case errors.Is(err, syscall.EISDIR), errors.Is(err, syscall.ENOTDIR):
		return fail(CodeBadArguments, http.StatusBadRequest, "%s: %q: %v", tool, p, errors.Unwrap(err))
	}
	return fail(CodeToolFailed, http.StatusInternalServerError, "%s: %q: %v", tool, p, err)
}

// escapes reports whether err is os.Root's refusal of a path that leads out
// of the root (the error is not exported; TestPathConfinement pins it).
func escapes(err error) bool {
	return strings.Contains(err.Error(), "path escapes from parent")
}
