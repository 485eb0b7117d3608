package toolcall

import (
	"bytes"
	"strconv"
)

// exactNumber reports whether the JSON number literal denotes exactly the
// value that JCS will print for it: the literal, read as a decimal, equals
// the shortest decimal that round-trips its IEEE-754 double. Literals such as
// 9007199254740993 or 0.10000000000000000001 fail, because JCS would hash
// them like a neighbouring value; 1.0, 1e2 and -0 pass.
func exactNumber(lit []byte) bool {
	if len(lit) <= 15 && isPlainInt(lit) {
		return true // at most 15 digits: always exact in a double
	}
	f, err := strconv.ParseFloat(string(lit), 64)
	if err != nil {
		return false // out of range
	}
	var buf [32]byte
	short := strconv.AppendFloat(buf[:0], f, 'e', -1, 64)
	var a, b [40]byte
	ad, ae, aneg := decimal(lit, a[:0])
	bd, be, bneg := decimal(short, b[:0])
	if len(ad) == 0 || len(bd) == 0 {
		return len(ad) == 0 && len(bd) == 0 // both zero, whatever the sign
	}
	return aneg == bneg && ae == be && bytes.Equal(ad, bd)
}

func isPlainInt(lit []byte) bool {
	i := 0
	if len(lit) > 0 && lit[0] == '-' {
		i = 1
	}
	if i == len(lit) {
		return false
	}
	for ; i < len(lit); i++ {
		if lit[i] < '0' || lit[i] > '9' {
			return false
		}
	}
	return true
}

// decimal normalises a number literal to its significant digits (no leading
// or trailing zeros), the decimal exponent of the first digit, and its sign.
// Zero has no digits. dst provides storage; digits beyond its capacity are
// compared by appending, which is fine for the short literals JSON carries.
func decimal(lit []byte, dst []byte) (digits []byte, exp int, neg bool) {
	i := 0
	if i < len(lit) && lit[i] == '-' {
		neg = true
		i++
	}
	point := -1
	n := 0 // digits seen in the mantissa
	lead := -1
	for ; i < len(lit); i++ {
		c := lit[i]
		if c == '.' {
			point = n
			continue
		}
		if c < '0' || c > '9' {
			break
		}
		if c != '0' && lead < 0 {
			lead = n
		}
		if lead >= 0 {
			dst = append(dst, c)
		}
		n++
	}
	if point < 0 {
		point = n
	}
	e := 0
	if i < len(lit) && (lit[i] == 'e' || lit[i] == 'E') {
		v, err := strconv.Atoi(string(lit[i+1:]))
		if err != nil {
			// An exponent beyond int: no double is that far from 1
			// unless the digits are zero. Far enough to match none.
			v = 1 << 30 // still past any double; fits a 32-bit int
			if lit[i+1] == '-' {
				v = -v
			}
		}
		e = v
	}
	dst = bytes.TrimRight(dst, "0")
	if len(dst) == 0 {
		return nil, 0, neg
	}
	return dst, point - lead + e, neg
}
