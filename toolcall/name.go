package toolcall

// ValidName reports whether s is a tool name: [A-Za-z0-9_.-]{1,128}
// (DESIGN §3). The parser, the tokens and the CLI all use this one rule.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch b := s[i]; {
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9', b == '_', b == '.', b == '-':
		default:
			return false
		}
	}
	return true
}
