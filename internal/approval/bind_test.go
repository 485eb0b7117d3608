package approval_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/m1-agent/m1/internal/approval"
)

func TestBind(t *testing.T) {
	sha := strings.Repeat("a", 64)
	other := strings.Repeat("b", 64)
	approvalOf := &approval.Claims{Kind: approval.KindApproval, Tool: "write_file", ArgsSHA256: sha}
	grant := &approval.Claims{Kind: approval.KindGrant, Tools: []string{"read_file", "fs.*"}, MaxUses: 3}
	tests := []struct {
		name       string
		c          *approval.Claims
		tool, args string
		want       error // nil, ErrToolMismatch or ErrArgsMismatch
	}{
		{"approval, the call", approvalOf, "write_file", sha, nil},
		{"approval, other args", approvalOf, "write_file", other, approval.ErrArgsMismatch},
		{"approval, other tool", approvalOf, "read_file", sha, approval.ErrToolMismatch},
		{"approval, other tool and args", approvalOf, "read_file", other, approval.ErrToolMismatch}, // the tool is checked first
		{"approval, no tool", approvalOf, "", sha, approval.ErrToolMismatch},
		{"grant, exact name, any args", grant, "read_file", other, nil},
		{"grant, prefix", grant, "fs.write", sha, nil},
		{"grant, no pattern matches", grant, "write_file", sha, approval.ErrToolMismatch},
		{"grant, the prefix alone", grant, "fs", sha, approval.ErrToolMismatch},
		{"unknown kind", &approval.Claims{Kind: "other", Tool: "write_file", ArgsSHA256: sha}, "write_file", sha, approval.ErrToolMismatch},
	}
	for _, tt := range tests {
		err := tt.c.Bind(tt.tool, tt.args)
		switch {
		case tt.want == nil && err != nil:
			t.Errorf("Bind(%s) = %v, want nil", tt.name, err)
		case tt.want != nil && !errors.Is(err, tt.want):
			t.Errorf("Bind(%s) = %v, want %v", tt.name, err, tt.want)
		}
		if ae, ok := errors.AsType[*approval.Error](err); err != nil && (!ok || ae.Reason == "") {
			t.Errorf("Bind(%s) = %#v, want an *approval.Error with a reason", tt.name, err)
		}
	}
}

// A verified token is bound to the call it comes with: its tool and the
// SHA-256 of its arguments' RFC 8785 form.
func ExampleClaims_Bind() {
	c := &approval.Claims{
		Kind:       approval.KindApproval,
		Tool:       "github.create_issue",
		ArgsSHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
	}
	fmt.Println(c.Bind("github.create_issue", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"))
	err := c.Bind("github.delete_repo", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
	fmt.Println(errors.Is(err, approval.ErrToolMismatch), err)
	// Output:
	// <nil>
	// true tool_mismatch: token does not allow tool github.delete_repo
}
